"""One error model for the science library.

Every error a caller can cause is an :class:`InvalidInputError` whose message names the
parameter, what was expected and what came (the scikit-learn format). The service maps
these to RFC 9457 problem+json; workers store them in the same shape.
"""

from __future__ import annotations

from typing import Any


class InfoscoreError(Exception):
    """Base class of every error raised on purpose by infoscore."""


class InvalidInputError(InfoscoreError, ValueError):
    """A parameter or an input array is not acceptable."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NumericalError(InfoscoreError, ArithmeticError):
    """A computation failed numerically (e.g. a matrix not positive definite after jitter)."""


class Cancelled(InfoscoreError):
    """Raised by a long computation when its ``should_stop()`` check says so."""


def invalid(param: str, caller: str, expected: str, got: Any) -> InvalidInputError:
    """Build an :class:`InvalidInputError` in the one message format.

    >>> str(invalid("lam", "sample_info", "a float in (0, inf)", -1.0))
    "The 'lam' parameter of sample_info must be a float in (0, inf). Got -1.0 instead."
    """
    return InvalidInputError(
        f"The {param!r} parameter of {caller} must be {expected}. Got {got!r} instead.",
        param=param,
    )
