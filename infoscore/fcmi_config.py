"""Settings of :func:`infoscore.fcmi_bound` (the ``fcmi-bound`` job kind), torch-free.

Importing this module loads neither torch nor numpy, so a caller can build and check a
config (and the gateway could) without the compute stack. See ``docs/jobs/fcmi-bound.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

from .config_checks import is_int
from .errors import invalid

OptimizerName = Literal["adam", "sgd"]
# The values of MiEstimator and Learner below (a test checks that they match).
MiEstimatorName = Literal["plugin", "miller_madow"]
LearnerName = Literal["model", "1nn"]
_CALLER = "FcmiConfig"
_E = TypeVar("_E", bound=StrEnum)


class MiEstimator(StrEnum):
    """How Î(S_i; u_i) is estimated from k2 draws."""

    PLUGIN = "plugin"  # default: the official estimator, the only one comparable with published numbers
    MILLER_MADOW = "miller_madow"  # Miller-Madow on each entropy of Î; labelled "bias-corrected"


class Learner(StrEnum):
    """What a unit trains."""

    MODEL = "model"  # default: a registered architecture (infoscore.models.build_model), trained by SGD/Adam
    ONE_NN = "1nn"  # 1-nearest-neighbour on flattened inputs: memorizes its training set (control)


@dataclass(frozen=True)
class FcmiConfig:
    """Settings of one f-CMI experiment; the fields are the ``fcmi-bound`` job's params plus
    ``seed``, with the job's defaults (docs/jobs/fcmi-bound.md).

    n: training-set sizes (pairs per supersample), distinct, each >= 1; 2 * max(n) must not
    exceed the dataset's training rows (checked by :func:`infoscore.fcmi.plan`). Default
    (50, 100, 200, 400): a doubling ladder that fits digits' 1347 training rows and shows
    how bound and gap fall with n.
    k1: supersamples per n (default 3: mean and std over supersamples at a third of the
    official MNIST cost of 5). k2: selector draws per supersample, >= 2 (default 30, the
    official MNIST value; the plug-in MI's upward bias shrinks as 1/k2, docs/jobs/fcmi-bound.md).
    epochs, lr, batch_size, optimizer: each training's recipe (default 100 epochs of Adam
    1e-3 in batches of 64, the official MNIST recipe). The last epoch is the evaluated one.
    deterministic: init and data-order seed 42 for every training (the official
    "deterministic" algorithm); default False: seeds derived per training from ``seed``.
    mi_estimator: a :class:`MiEstimator` value (default plug-in: the only one comparable with
    published numbers; Miller-Madow is labelled bias-corrected, not a guaranteed bound).
    learner: a :class:`Learner` value (default the model; ``1nn`` is the memorizing control).
    experimental: also report the unverified binary-KL form (default False: unverified).
    eval_epochs: also estimate after these epochs of the same trainings (distinct, each in
    [0, epochs], ``learner = model`` only; default none). Stored sorted.
    seed: the job's seed: with ``deterministic`` False, every training's init and
    data-order seed derives from (seed, supersample, selector) (``fcmi.unit_seeds``).

    Lists may be given for ``n`` and ``eval_epochs``; they are stored as tuples. Invalid
    values raise :class:`infoscore.InvalidInputError` naming the field.
    """

    n: tuple[int, ...] = (50, 100, 200, 400)
    k1: int = 3
    k2: int = 30
    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: OptimizerName = "adam"
    deterministic: bool = False
    mi_estimator: MiEstimatorName = "plugin"
    learner: LearnerName = "model"
    experimental: bool = False
    eval_epochs: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        n = _int_tuple("n", self.n, "a non-empty sequence of distinct positive integers")
        if not n or min(n) < 1 or len(set(n)) != len(n):
            raise invalid("n", _CALLER, "a non-empty sequence of distinct positive integers", self.n)
        for name, low in (("k1", 1), ("k2", 2), ("epochs", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise invalid(name, _CALLER, f"an integer >= {low}", value)
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise invalid("lr", _CALLER, "a finite float > 0", lr)
        if self.optimizer not in ("adam", "sgd"):
            raise invalid("optimizer", _CALLER, "one of 'adam', 'sgd'", self.optimizer)
        for name in ("deterministic", "experimental"):
            if not isinstance(getattr(self, name), bool):
                raise invalid(name, _CALLER, "a bool", getattr(self, name))
        estimator = _member(MiEstimator, "mi_estimator", self.mi_estimator)
        learner = _member(Learner, "learner", self.learner)
        epochs = _int_tuple("eval_epochs", self.eval_epochs, f"distinct epochs in [0, {self.epochs}]")
        if len(set(epochs)) != len(epochs) or any(not 0 <= e <= self.epochs for e in epochs):
            raise invalid("eval_epochs", _CALLER, f"distinct epochs in [0, {self.epochs}]", self.eval_epochs)
        if epochs and learner is not Learner.MODEL:
            raise invalid("eval_epochs", _CALLER, "empty unless learner = 'model'", self.eval_epochs)
        if not is_int(self.seed) or self.seed < 0:
            raise invalid("seed", _CALLER, "an integer >= 0", self.seed)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "eval_epochs", tuple(sorted(epochs)))
        object.__setattr__(self, "mi_estimator", estimator.value)
        object.__setattr__(self, "learner", learner.value)
        object.__setattr__(self, "lr", float(lr))


def _int_tuple(name: str, value: Any, expected: str) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise invalid(name, _CALLER, expected, value)
    items = tuple(value)
    # numpy integers pass through int(); bools and floats do not.
    if any(isinstance(v, bool | float) or not hasattr(v, "__index__") for v in items):
        raise invalid(name, _CALLER, expected, value)
    return tuple(int(v) for v in items)


def _member(enum: type[_E], name: str, value: Any) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise invalid(name, _CALLER, f"one of {[m.value for m in enum]}", value) from None
