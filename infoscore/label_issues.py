"""Label issues: which training rows are probably mislabeled, what their label should be,
and how noisy the labels are (docs/jobs/label-issues.md).

Glossary: **n** training rows, **k** classes. Probabilities are per row over the k classes.

Two stages:

1. *Out-of-sample-like class probabilities* ``pred_probs`` (n, k) for every training row,
   by one of the :class:`Method` strategies: K-fold cross-fitting (each row is predicted by
   a model that never saw it) with cross-entropy or LIMIT training, or one in-sample LIMIT
   training (its classifier never sees a label directly, so it does not memorize flipped
   ones: its in-sample predictions behave like held-out ones, docs/science.md). Every
   training runs a fixed number of epochs: no checkpoint is chosen on a noisy validation
   split, so the flags do not hinge on one.
2. *Confident learning* (Northcutt, Jiang and Chuang, JAIR 2021), implemented here from the
   paper's definitions: per-class thresholds t_j = mean of p̂(j | x) over the rows whose
   given label is j; the confident joint C[i, j] counts rows given label i whose
   probability for j reaches t_j (j the most probable such class); C calibrated to the
   given-label counts and normalized gives the joint Q of (given, true) labels, the noise
   matrix P(given = i | true = j) = Q[i, j] / Σ_i Q[i, j] and the noise rate 1 − tr Q.
   Rows are flagged by a :class:`Threshold` policy.

``label_quality`` is the self-confidence p̂(given label | x): the estimated probability
that the given label is right (higher = cleaner). ``issue_rank`` sorts rows by it (1 = the
most likely wrong). A flagged row's decision is ``relabel`` when its suggested label
(argmax p̂) is itself confident (p̂ ≥ that class's threshold t_j, the confident-learning
rule for "confidently class j"), else ``drop``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from .errors import invalid
from .limit import LimitConfig, QLaw, SplitData, prepare_split, train_limit
from .models import build_model
from .progress import ProgressFn, StopFn, check_stop
from .scores import auroc
from .training import as_tensor, predict_logits, train_classifier

FOLD_SEED_OFFSET = 50_000  # fold assignment
MODEL_SEED_STRIDE = 1_000  # model init / data order of fold f: seed + 1000 * (f + 1)
ACTIONS = ("keep", "drop", "relabel")


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
    """Settings of :func:`find_label_issues`.

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
    beta, q_law: LIMIT's settings (its defaults, docs/jobs/limit.md).
    relabel_confidence: a flagged row is relabelled when p̂(suggested | x) reaches this;
    None (default) = the suggested class's threshold t_j (confident learning's own notion
    of "confidently j"), else the row is dropped.
    seed: fold assignment and every model's init and data order derive from it.
    """

    method: Method | str = Method.LIMIT
    threshold: Threshold | str = Threshold.PRUNE_BY_NOISE_RATE
    folds: int = 5
    epochs: int | None = None
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    beta: float = 30.0
    q_law: QLaw | str = QLaw.LAPLACE
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
            law = QLaw(self.q_law)
        except ValueError:
            raise invalid("q_dist", caller, f"one of {[m.value for m in QLaw]}", self.q_law) from None
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
            q_law=law,
            relabel_confidence=self.relabel_confidence,
            seed=self.seed,
        )

    def resolved_epochs(self) -> dict[str, int]:
        """Epochs per training family for this config's method."""
        ce = self.epochs if self.epochs is not None else 60
        lim = self.epochs if self.epochs is not None else 300
        return {"cross_entropy": ce, "limit": lim}


@dataclass
class ConfidentLearning:
    """Confident-learning estimates from ``pred_probs`` (n, k) and given labels (n,).

    thresholds (k,) per-class average self-confidence t_j (NaN for a class no row has);
    confident_joint (k, k) int counts, rows = given, columns = confident (true) label;
    joint (k, k) calibrated joint Q of (given, true), sums to 1;
    noise_matrix (k, k) P(given = i | true = j), columns sum to 1 (a column with no
    estimated mass is the identity column); estimated_noise_rate 1 − tr Q;
    confident_label (n,) the column a row was counted in, −1 when no class reached its
    threshold.
    """

    thresholds: np.ndarray
    confident_joint: np.ndarray
    joint: np.ndarray
    noise_matrix: np.ndarray
    estimated_noise_rate: float
    confident_label: np.ndarray


def _check_probs(pred_probs: np.ndarray, labels: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred_probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise invalid("pred_probs", caller, "an array of shape (n, k) with n >= 1, k >= 2", p.shape)
    if not np.all(np.isfinite(p)) or p.min() < 0 or np.abs(p.sum(1) - 1.0).max() > 1e-4:
        raise invalid("pred_probs", caller, "finite rows of probabilities summing to 1", "other values")
    if y.shape != (p.shape[0],) or y.dtype.kind not in "iu":
        raise invalid("labels", caller, f"an integer array of shape ({p.shape[0]},)", f"{y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise invalid("labels", caller, f"labels in 0..{p.shape[1] - 1}", f"{y.min()}..{y.max()}")
    return p, y.astype(np.int64)


def confident_learning(pred_probs: np.ndarray, labels: np.ndarray) -> ConfidentLearning:
    """The confident joint, its calibration, the noise matrix and the noise rate (see the
    module docstring and :class:`ConfidentLearning`). pred_probs (n, k), labels (n,)."""
    p, y = _check_probs(pred_probs, labels, "confident_learning")
    k = p.shape[1]
    given_counts = np.bincount(y, minlength=k).astype(np.float64)
    thresholds = np.full(k, np.nan)
    for j in range(k):
        if given_counts[j] > 0:
            thresholds[j] = float(p[y == j, j].mean())
    # A class nobody was given can never be a confident label (its threshold is unknown).
    above = p >= np.where(np.isnan(thresholds), np.inf, thresholds)[None, :]
    masked = np.where(above, p, -np.inf)
    confident = masked.argmax(1)
    confident[~above.any(1)] = -1
    counted = confident >= 0
    cj = np.zeros((k, k), dtype=np.int64)
    np.add.at(cj, (y[counted], confident[counted]), 1)
    # Calibrate: each row of C rescaled to the number of rows given that label.
    row_sums = cj.sum(1).astype(np.float64)
    calibrated = np.zeros((k, k))
    for i in range(k):
        if row_sums[i] > 0:
            calibrated[i] = cj[i] / row_sums[i] * given_counts[i]
        elif given_counts[i] > 0:
            calibrated[i, i] = given_counts[i]  # no confident row: assume the label is right
    joint = calibrated / calibrated.sum()
    col = joint.sum(0)
    noise = np.eye(k)
    nz = col > 0
    noise[:, nz] = joint[:, nz] / col[nz]
    return ConfidentLearning(
        thresholds=thresholds,
        confident_joint=cj,
        joint=joint,
        noise_matrix=noise,
        estimated_noise_rate=float(1.0 - np.trace(joint)),
        confident_label=confident,
    )


def prune_by_noise_rate(pred_probs: np.ndarray, labels: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """(n,) bool: for each i ≠ j, the round(n · joint[i, j]) rows given label i with the
    largest margin p̂(j | x) − p̂(i | x) (ties: lower index first). A row picked for two
    cells is flagged once."""
    p, y = _check_probs(pred_probs, labels, "prune_by_noise_rate")
    n, k = p.shape
    flags = np.zeros(n, dtype=bool)
    for i in range(k):
        rows = np.flatnonzero(y == i)
        if rows.size == 0:
            continue
        for j in range(k):
            if i == j:
                continue
            count = min(round(n * float(joint[i, j])), rows.size)
            if count <= 0:
                continue
            margin = p[rows, j] - p[rows, i]
            order = np.argsort(-margin, kind="stable")
            flags[rows[order[:count]]] = True
    return flags


def flag_issues(
    pred_probs: np.ndarray, labels: np.ndarray, cl: ConfidentLearning, policy: Threshold
) -> np.ndarray:
    """(n,) bool flags under ``policy`` (see :class:`Threshold`)."""
    p, y = _check_probs(pred_probs, labels, "flag_issues")
    off_diagonal = (cl.confident_label >= 0) & (cl.confident_label != y)
    policy = Threshold(policy)
    if policy is Threshold.CONFIDENT_JOINT:
        return off_diagonal
    if policy is Threshold.ARGMAX:
        return np.asarray(p.argmax(1) != y)
    pbnr = prune_by_noise_rate(p, y, cl.joint)
    if policy is Threshold.PRUNE_BY_NOISE_RATE:
        return pbnr
    return pbnr & off_diagonal


@dataclass
class LabelIssues:
    """Per-row decisions and the estimates behind them; arrays are (n,) unless noted.

    given_label, suggested_label (argmax p̂), suggested_label_confidence (max p̂),
    label_quality (p̂(given | x)), is_label_issue, issue_rank (1 = most likely wrong;
    by label_quality, ties by index), action (``keep`` | ``drop`` | ``relabel``),
    new_label (the suggested label where action is ``relabel``, else −1),
    pred_probs (n, k), scores (named underlying per-row scores), confident (the
    :class:`ConfidentLearning` estimates), method, threshold, folds (None for ``limit``),
    epochs, trainings (number of models trained), details (method-specific numbers).
    """

    given_label: np.ndarray
    suggested_label: np.ndarray
    suggested_label_confidence: np.ndarray
    label_quality: np.ndarray
    is_label_issue: np.ndarray
    issue_rank: np.ndarray
    action: np.ndarray
    new_label: np.ndarray
    pred_probs: np.ndarray
    scores: dict[str, np.ndarray]
    confident: ConfidentLearning
    method: Method
    threshold: Threshold
    folds: int | None
    epochs: dict[str, int]
    trainings: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_issues(self) -> int:
        return int(self.is_label_issue.sum())

    def evaluate(self, true_labels: np.ndarray) -> dict[str, float | None]:
        """Detection quality against known clean labels (n,): ``auroc_noisy`` (of
        1 − label_quality for the rows whose given label is wrong), ``flag_precision``,
        ``flag_recall``, ``suggested_label_accuracy`` (suggested = true, over the flagged
        rows) and ``true_noise_rate``. None where undefined (no noisy row, no flag)."""
        truth = np.asarray(true_labels).astype(np.int64)
        if truth.shape != self.given_label.shape:
            raise invalid(
                "true_labels", "LabelIssues.evaluate", f"shape {self.given_label.shape}", truth.shape
            )
        noisy = truth != self.given_label
        flags = self.is_label_issue
        out: dict[str, float | None] = {
            "true_noise_rate": float(noisy.mean()),
            "auroc_noisy": None,
            "flag_precision": float(noisy[flags].mean()) if flags.any() else None,
            "flag_recall": float(flags[noisy].mean()) if noisy.any() else None,
            "suggested_label_accuracy": (
                float((self.suggested_label[flags] == truth[flags]).mean()) if flags.any() else None
            ),
        }
        if 0 < noisy.sum() < noisy.size:
            out["auroc_noisy"] = auroc(1.0 - self.label_quality, noisy)
        return out


def decide(
    pred_probs: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: Threshold = Threshold.PRUNE_BY_NOISE_RATE,
    relabel_confidence: float | None = None,
) -> tuple[ConfidentLearning, dict[str, np.ndarray]]:
    """Confident learning plus per-row outputs from given probabilities (n, k).

    Returns (estimates, columns) with columns ``suggested_label``,
    ``suggested_label_confidence``, ``label_quality``, ``is_label_issue``,
    ``issue_rank``, ``action``, ``new_label`` and the underlying ``normalized_margin``
    p̂(given) − max_{j ≠ given} p̂(j).
    """
    p, y = _check_probs(pred_probs, labels, "decide")
    n = p.shape[0]
    cl = confident_learning(p, y)
    flags = flag_issues(p, y, cl, Threshold(threshold))
    suggested = p.argmax(1)
    confidence = p[np.arange(n), suggested]
    quality = p[np.arange(n), y]
    others = p.copy()
    others[np.arange(n), y] = -np.inf
    margin = quality - others.max(1)
    order = np.lexsort((np.arange(n), quality))  # ascending quality, ties by index
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    t_suggested = np.nan_to_num(cl.thresholds, nan=np.inf)[suggested]
    needed = t_suggested if relabel_confidence is None else np.full(n, float(relabel_confidence))
    relabel = flags & (suggested != y) & (confidence >= needed)
    action = np.where(flags, np.where(relabel, "relabel", "drop"), "keep").astype(object)
    new_label = np.where(relabel, suggested, -1).astype(np.int64)
    columns = {
        "suggested_label": suggested.astype(np.int64),
        "suggested_label_confidence": confidence,
        "label_quality": quality,
        "is_label_issue": flags,
        "issue_rank": rank,
        "action": action,
        "new_label": new_label,
        "normalized_margin": margin,
    }
    return cl, columns


# --------------------------------------------------------------------------- probabilities


def stratified_folds(labels: np.ndarray, folds: int, *, seed: int) -> np.ndarray:
    """(n,) fold index in 0..folds−1, each class spread evenly over the folds, seeded."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(y.shape[0], dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        fold[rows] = (np.arange(rows.size) + offset) % folds
        offset += rows.size  # rotate so small classes do not all start at fold 0
    return fold


def _softmax64(logits: torch.Tensor) -> np.ndarray:
    out: np.ndarray = torch.softmax(logits.double(), dim=1).cpu().numpy()
    return out


class _Progress:
    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def stage(self, size: int) -> ProgressFn:
        base = self.done
        self.done += size

        def report(done: int, _total: int) -> None:
            if self.progress is not None:
                self.progress(base + done, self.total)

        return report


def _cross_entropy_cv(
    spec: Mapping[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    fold: np.ndarray,
    k: int,
    input_shape: tuple[int, ...],
    cfg: LabelIssuesConfig,
    epochs: int,
    tracker: _Progress,
    should_stop: StopFn | None,
) -> np.ndarray:
    probs = np.zeros((x.shape[0], k))
    for f in range(cfg.folds):
        check_stop(should_stop)
        train_rows = as_tensor(np.flatnonzero(fold != f), x.device, torch.int64)
        held = np.flatnonzero(fold == f)
        seed = cfg.seed + MODEL_SEED_STRIDE * (f + 1)
        model = build_model(spec, input_shape, k, seed=seed).to(x.device)
        with torch.random.fork_rng(devices=[]):  # dropout masks: seeded, caller's RNG untouched
            torch.manual_seed(seed)
            train_classifier(
                model,
                x[train_rows],
                y[train_rows],
                epochs=epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                seed=seed,
                progress=tracker.stage(epochs),
                should_stop=should_stop,
            )
        probs[held] = _softmax64(predict_logits(model, x[as_tensor(held, x.device, torch.int64)]))
    return probs


def _limit_split(
    x: torch.Tensor, y: torch.Tensor, fit: np.ndarray, k: int, shape: tuple[int, ...]
) -> SplitData:
    """All rows with ``fit`` as the fitting rows and no validation rows (so the final
    classifier is kept: no noisy-validation checkpoint choice)."""
    dev = x.device
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    return SplitData(
        x=x,
        y_noisy=y,
        y_clean=None,
        fit_idx=as_tensor(fit, dev, torch.int64),
        val_idx=empty,
        y_val=empty,
        x_test=x[:0],
        y_test=empty,
        n_classes=k,
        input_shape=shape,
    )


def _limit_probs(
    spec: Mapping[str, Any],
    data: SplitData,
    cfg: LabelIssuesConfig,
    epochs: int,
    seed: int,
    tracker: _Progress,
    should_stop: StopFn | None,
) -> np.ndarray:
    config = LimitConfig(
        epochs=epochs, beta=cfg.beta, q_law=QLaw(cfg.q_law), lr=cfg.lr, batch_size=cfg.batch_size, seed=seed
    )
    result = train_limit(spec, data, config, progress=tracker.stage(epochs), should_stop=should_stop)
    return _softmax64(predict_logits(result.classifier, data.x))


def find_label_issues(
    model_spec: Mapping[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int | None = None,
    config: LabelIssuesConfig = LabelIssuesConfig(),
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LabelIssues:
    """Find label issues in (x (n, ...), y (n,)) with ``config`` (see the module docstring).

    ``model_spec`` is the architecture of every model trained (``infoscore.models``).
    ``progress(done, total)`` counts training epochs over all models; ``should_stop()`` is
    checked every epoch (raises :class:`infoscore.Cancelled`).
    """
    caller = "find_label_issues"
    x_np = np.asarray(x)
    y_np = np.asarray(y)
    if x_np.ndim < 2 or x_np.shape[0] < 2:
        raise invalid("x", caller, "an array of shape (n, ...) with n >= 2", x_np.shape)
    k = int(n_classes) if n_classes is not None else int(y_np.max(initial=0)) + 1
    cfg = config.validated(int(x_np.shape[0]), caller)
    # prepare_split validates x, y and the label range and puts the arrays on the device.
    base = prepare_split(
        x_np, y_np, n_classes=k, x_test=x_np[:0], y_test=y_np[:0], validation_fraction=0.0, device=device
    )
    xt, yt, shape = base.x, base.y_noisy, base.input_shape
    n = int(yt.shape[0])
    labels = y_np.astype(np.int64)
    epochs = cfg.resolved_epochs()
    method = Method(cfg.method)
    fold = stratified_folds(labels, cfg.folds, seed=cfg.seed + FOLD_SEED_OFFSET)
    plan = {
        Method.CROSS_ENTROPY_CV: cfg.folds * epochs["cross_entropy"],
        Method.LIMIT: epochs["limit"],
        Method.LIMIT_CV: cfg.folds * epochs["limit"],
        Method.ENSEMBLE: cfg.folds * epochs["cross_entropy"] + epochs["limit"],
    }[method]
    tracker = _Progress(progress, plan)
    scores: dict[str, np.ndarray] = {}
    trainings = 0
    probs_ce = probs_limit = None
    if method in (Method.CROSS_ENTROPY_CV, Method.ENSEMBLE):
        probs_ce = _cross_entropy_cv(
            model_spec, xt, yt, fold, k, shape, cfg, epochs["cross_entropy"], tracker, should_stop
        )
        trainings += cfg.folds
        scores["cv_cross_entropy_quality"] = probs_ce[np.arange(n), labels]
    if method in (Method.LIMIT, Method.ENSEMBLE):
        data = _limit_split(xt, yt, np.arange(n), k, shape)
        probs_limit = _limit_probs(model_spec, data, cfg, epochs["limit"], cfg.seed, tracker, should_stop)
        trainings += 1
        scores["limit_quality"] = probs_limit[np.arange(n), labels]
    if method is Method.LIMIT_CV:
        probs_limit = np.zeros((n, k))
        for f in range(cfg.folds):
            check_stop(should_stop)
            data = _limit_split(xt, yt, np.flatnonzero(fold != f), k, shape)
            seed = cfg.seed + MODEL_SEED_STRIDE * (f + 1)
            held = fold == f
            probs_limit[held] = _limit_probs(
                model_spec, data, cfg, epochs["limit"], seed, tracker, should_stop
            )[held]
            trainings += 1
        scores["cv_limit_quality"] = probs_limit[np.arange(n), labels]
    if probs_ce is not None and probs_limit is not None:
        probs = (probs_ce + probs_limit) / 2.0
    else:
        probs = probs_ce if probs_ce is not None else probs_limit
    assert probs is not None
    cl, columns = decide(
        probs, labels, threshold=Threshold(cfg.threshold), relabel_confidence=cfg.relabel_confidence
    )
    scores["normalized_margin"] = columns["normalized_margin"]
    return LabelIssues(
        given_label=labels,
        suggested_label=columns["suggested_label"],
        suggested_label_confidence=columns["suggested_label_confidence"],
        label_quality=columns["label_quality"],
        is_label_issue=columns["is_label_issue"],
        issue_rank=columns["issue_rank"],
        action=columns["action"],
        new_label=columns["new_label"],
        pred_probs=probs,
        scores=scores,
        confident=cl,
        method=method,
        threshold=Threshold(cfg.threshold),
        folds=None if method is Method.LIMIT else cfg.folds,
        epochs={
            key: v
            for key, v in epochs.items()
            if (key == "limit") == (method in (Method.LIMIT, Method.LIMIT_CV)) or method is Method.ENSEMBLE
        },
        trainings=trainings,
    )
