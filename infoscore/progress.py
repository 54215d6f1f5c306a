"""Progress and cancellation hooks shared by every long computation."""

from __future__ import annotations

from collections.abc import Callable

from .errors import Cancelled

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


def no_progress(done: int, total: int) -> None:
    """Default ``progress`` callback: does nothing."""


def never_stop() -> bool:
    """Default ``should_stop`` check: never asks to stop."""
    return False


def check_stop(should_stop: StopFn | None) -> None:
    """Raise :class:`Cancelled` when ``should_stop()`` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled("computation cancelled")
