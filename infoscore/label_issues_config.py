"""The settings of :func:`infoscore.label_issues`, without torch.

Importing this module loads neither torch nor numpy. The strategies and their measured
defaults are explained on :class:`Method`, :class:`Threshold` and
:class:`LabelIssuesConfig`; the science is in :mod:`infoscore.label_issues`
(docs/jobs/label-issues.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from .errors import invalid
from .limit_config import QLaw


class Method(StrEnum):
    """How ``pred_probs`` are obtained.

    ``limit`` (default): one LIMIT training on all rows for a fixed number of epochs; the
    in-sample probabilities of its final classifier. The classifier never sees a label
    directly (its gradient is predicted by the q-network), so it does not memorize the
    flipped ones. One training instead of K; on digits and Gaussian mixtures at 20% and
    40% uniform and 20% pair noise (seeds 0-2) it had the best flag F1 on 5 of the 6
    settings (0.003 behind ``ensemble`` on the sixth), AUROC >= 0.993 on every seed, and
    better flags than cleanlab's 5-fold pipelines (docs/benchmarks/label-issues.md).
    ``cross-entropy-cv``: K-fold cross-fitting with plain cross-entropy training (each row
    is predicted by a model that never saw it; the confident-learning recipe).
    ``limit-cv``: K-fold cross-fitting with LIMIT training (K LIMIT trainings).
    ``ensemble``: the mean of the ``cross-entropy-cv`` and ``limit`` probabilities.
    """

    CROSS_ENTROPY_CV = "cross-entropy-cv"
    LIMIT = "limit"
    LIMIT_CV = "limit-cv"
    ENSEMBLE = "ensemble"


class Threshold(StrEnum):
    """Which rows are flagged.

    ``prune-by-noise-rate`` (default): for each off-diagonal cell (i, j) of the estimated
    joint, the round(n · Q[i, j]) rows given label i with the largest margin
    p̂(j | x) − p̂(i | x) (the paper's "prune by noise rate"); the number of flags
    follows the estimated noise, which kept precision and recall balanced in the benchmark.
    ``confident-joint``: the rows counted off the diagonal of the confident joint.
    ``both``: rows flagged by both of the above.
    ``argmax``: rows whose most probable class is not the given label.
    """

    PRUNE_BY_NOISE_RATE = "prune-by-noise-rate"
    CONFIDENT_JOINT = "confident-joint"
    BOTH = "both"
    ARGMAX = "argmax"


@dataclass(frozen=True)
class LabelIssuesConfig:
    """Settings of :func:`infoscore.label_issues` and :func:`find_label_issues`; field
    names and defaults are the ``label-issues`` job's params plus ``seed``.

    method, threshold: see :class:`Method` and :class:`Threshold` (defaults chosen by the
    benchmark, docs/benchmarks/label-issues.md).
    folds: K for the cross-fitted methods (default 5: each model sees 80% of the rows, the
    usual cross-validation trade-off between model quality and cost; ignored by ``limit``).
    epochs: training epochs of every model; None = the method's default (60 for
    cross-entropy: on digits at 20% noise, seed 0, flag F1 was 0.933 / 0.934 / 0.902 at
    30 / 60 / 150 epochs: longer training lets the fold models memorize noise; 300 for
    LIMIT, its measured default, docs/jobs/limit.md).
    lr, batch_size, weight_decay: Adam settings of every model (defaults: Adam 1e-3, batch
    128 as the rest of infoscore; no weight decay).
    beta, q_dist: LIMIT's settings (its defaults, docs/jobs/limit.md).
    relabel_confidence: a flagged row is relabelled when p̂(suggested | x) reaches this;
    None (default) = the suggested class's threshold t_j (confident learning's own notion
    of "confidently j"), else the row is dropped.
    seed: fold assignment and every model's init and data order derive from it.

    Nothing is checked at construction; :meth:`validated` (called before any training)
    raises :class:`infoscore.InvalidInputError` naming the field.
    """

    method: Method | str = Method.LIMIT
    threshold: Threshold | str = Threshold.PRUNE_BY_NOISE_RATE
    folds: int = 5
    epochs: int | None = None
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    beta: float = 30.0
    q_dist: QLaw | str = QLaw.LAPLACE
    relabel_confidence: float | None = None
    seed: int = 0

    def validated(self, n: int | None = None, caller: str = "find_label_issues") -> LabelIssuesConfig:
        """Check every field (``n``: training rows, to check ``folds``); returns a copy with
        enum fields as enums."""
        try:
            method = Method(self.method)
        except ValueError:
            raise invalid("method", caller, f"one of {[m.value for m in Method]}", self.method) from None
        try:
            threshold = Threshold(self.threshold)
        except ValueError:
            raise invalid(
                "threshold", caller, f"one of {[t.value for t in Threshold]}", self.threshold
            ) from None
        try:
            law = QLaw(self.q_dist)
        except ValueError:
            raise invalid("q_dist", caller, f"one of {[m.value for m in QLaw]}", self.q_dist) from None
        if not isinstance(self.folds, int) or self.folds < 2:
            raise invalid("folds", caller, "an integer >= 2", self.folds)
        if n is not None and self.folds > n:
            raise invalid("folds", caller, f"at most the number of training rows ({n})", self.folds)
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise invalid("epochs", caller, "a positive integer or None", self.epochs)
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise invalid("lr", caller, "a float in (0, inf)", self.lr)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise invalid("batch_size", caller, "a positive integer", self.batch_size)
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise invalid("weight_decay", caller, "a float in [0, inf)", self.weight_decay)
        if not math.isfinite(self.beta) or self.beta < 0:
            raise invalid("beta", caller, "a float in [0, inf)", self.beta)
        if self.relabel_confidence is not None and not 0.0 <= self.relabel_confidence <= 1.0:
            raise invalid("relabel_confidence", caller, "a float in [0, 1] or None", self.relabel_confidence)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise invalid("seed", caller, "a non-negative integer", self.seed)
        return LabelIssuesConfig(
            method=method,
            threshold=threshold,
            folds=self.folds,
            epochs=self.epochs,
            lr=float(self.lr),
            batch_size=self.batch_size,
            weight_decay=float(self.weight_decay),
            beta=float(self.beta),
            q_dist=law,
            relabel_confidence=self.relabel_confidence,
            seed=self.seed,
        )

    @property
    def q_law(self) -> QLaw:
        """``q_dist`` as a :class:`QLaw` (the name LIMIT's training code uses)."""
        return QLaw(self.q_dist)

    def resolved_epochs(self) -> dict[str, int]:
        """Epochs per training family for this config's method."""
        ce = self.epochs if self.epochs is not None else 60
        lim = self.epochs if self.epochs is not None else 300
        return {"cross_entropy": ce, "limit": lim}
