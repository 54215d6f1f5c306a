"""The settings of :func:`infoscore.limit` (and of ``train_limit``), without torch.

Importing this module loads neither torch nor numpy, so a caller can build and check a
:class:`LimitConfig` before deciding where to run it. The science is in
:mod:`infoscore.limit` (docs/jobs/limit.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from .errors import invalid


class QLaw(StrEnum):
    """Distance D between predicted and true logit gradients in the q loss."""

    LAPLACE = "laplace"  # default (our choice, docs/science.md §4.3): L1 (MAE), robust to flipped labels
    GAUSSIAN = "gaussian"  # squared L2, i.e. the Brier score


@dataclass(frozen=True)
class LimitConfig:
    """LIMIT's settings; field names and defaults are the ``limit`` job's params plus ``seed``.

    ``beta`` = 30 and ``epochs`` = 300 were chosen on digits (docs/benchmarks/limit.md):
    β ≤ 1 lets q memorize flipped labels at 80% noise; β = 10 and 30 tie on test accuracy,
    and only β = 30 kept the noisy-train accuracy within 0.1 of 1 − p on both measured
    seeds. At scale (gaussians, 13,500 rows, 80% noise, seeds 0-2) they reach 0.888-0.948
    final test accuracy at separation 4 and 0.964-0.990 at 5, noisy-train 0.203-0.221
    (benchmarks/limit_gaussians.py).
    ``q_dist`` = ``laplace``: the L1 distance is robust to flipped labels; with
    ``gaussian`` q memorizes them unless β is large (docs/jobs/limit.md, *Choosing β*).
    ``lr`` = 1e-3, ``batch_size`` = 256: Adam's usual step and the batch of the measured
    runs above (docs/science.md §4.3).
    ``validation_fraction`` = 0.2: the usual 80/20 hold-out; on digits the checkpoint is
    then chosen on 269 rows (docs/benchmarks/limit.md); 0 keeps the last epoch.
    ``clean_validation`` = False: a real dataset's clean labels are unknown, so the
    default validates on the given labels (True only where they are known, e.g. built-ins).
    ``baseline`` = True: the cross-entropy run on the same split, init and batches is
    what LIMIT is judged against (about doubles the cost).
    ``noise_level`` = None: Fano's bound uses the noise law the dataset records (built-ins);
    a number p means a known uniform law.
    ``sample_from_q`` = False, ``lamb`` = 1.0, ``warm_up`` = 0: the deterministic update
    of the paper's main algorithm; ``lamb`` is the precision of the ``sample_from_q``
    noise (ignored without it; 1 = the laws whose negative log-likelihoods are the q
    losses); ``warm_up`` trains q alone for that many epochs.
    ``patience`` = None: run all ``epochs`` (the checkpoint is still the best-validation
    one); P stops after P epochs without a better validation accuracy.
    ``seed``: every init, split, batch order and noise draw derives from it
    (docs/jobs/limit.md, *Seeds*).

    Nothing is checked at construction; :meth:`validated` (called by ``infoscore.limit``
    and ``train_limit`` before any work) raises :class:`infoscore.InvalidInputError`
    naming the field.
    """

    beta: float = 30.0
    q_dist: QLaw | Literal["laplace", "gaussian"] = QLaw.LAPLACE
    epochs: int = 300
    lr: float = 1e-3
    batch_size: int = 256
    validation_fraction: float = 0.2
    clean_validation: bool = False
    baseline: bool = True
    noise_level: float | None = None
    sample_from_q: bool = False
    warm_up: int = 0
    lamb: float = 1.0
    patience: int | None = None
    seed: int = 0

    @property
    def q_law(self) -> QLaw:
        """``q_dist`` as a :class:`QLaw` (the name the training code uses)."""
        return QLaw(self.q_dist)

    def validated(self, caller: str = "train_limit") -> LimitConfig:
        """Check every field; returns a copy with ``q_dist`` as a :class:`QLaw`."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise invalid("epochs", caller, "a positive integer", self.epochs)
        if not isinstance(self.beta, int | float) or not math.isfinite(self.beta) or self.beta < 0:
            raise invalid("beta", caller, "a float in [0, inf)", self.beta)
        try:
            law = QLaw(self.q_dist)
        except ValueError:
            raise invalid("q_dist", caller, f"one of {[m.value for m in QLaw]}", self.q_dist) from None
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise invalid("lr", caller, "a float in (0, inf)", self.lr)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise invalid("batch_size", caller, "a positive integer", self.batch_size)
        if not isinstance(self.warm_up, int) or not 0 <= self.warm_up < self.epochs:
            raise invalid("warm_up", caller, f"an integer in [0, epochs = {self.epochs})", self.warm_up)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise invalid("seed", caller, "a non-negative integer", self.seed)
        if not isinstance(self.lamb, int | float) or not math.isfinite(self.lamb) or self.lamb <= 0:
            raise invalid("lamb", caller, "a float in (0, inf)", self.lamb)
        if self.patience is not None and (
            not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 1
        ):
            raise invalid("patience", caller, "a positive integer or None (off)", self.patience)
        fraction = self.validation_fraction
        if not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
            raise invalid("validation_fraction", caller, "a float in [0, 1)", fraction)
        for name in ("clean_validation", "baseline", "sample_from_q"):
            if not isinstance(getattr(self, name), bool):
                raise invalid(name, caller, "True or False", getattr(self, name))
        level = self.noise_level
        if level is not None and (not isinstance(level, int | float) or not 0.0 <= level <= 1.0):
            raise invalid("noise_level", caller, "a float in [0, 1] or None (the dataset's own law)", level)
        return replace(
            self,
            beta=float(self.beta),
            q_dist=law,
            lr=float(self.lr),
            validation_fraction=float(fraction),
            noise_level=None if level is None else float(level),
            lamb=float(self.lamb),
        )
