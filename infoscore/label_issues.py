"""Label issues: which training rows are probably mislabeled, what their label should be,
and how noisy the labels are (docs/jobs/label-issues.md).

The ``label-issues`` job as one call: :func:`label_issues` (dataset, model spec,
:class:`LabelIssuesConfig`) -> :class:`LabelIssuesResult` (summary, per-row table,
decisions); :func:`find_label_issues` does the work on bare arrays. This module is
callable as :func:`label_issues`.

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

import io
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config_checks import model_spec
from .data import Dataset
from .errors import invalid
from .label_issues_config import LabelIssuesConfig, Method, Threshold
from .limit import CallableModule, LimitConfig, SplitData, prepare_split, train_limit
from .models import build_model
from .progress import ProgressFn, StopFn, check_stop
from .scores import auroc
from .training import as_tensor, predict_logits, train_classifier

FOLD_SEED_OFFSET = 50_000  # fold assignment
MODEL_SEED_STRIDE = 1_000  # model init / data order of fold f: seed + 1000 * (f + 1)
ACTIONS = ("keep", "drop", "relabel")


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
        epochs=epochs, beta=cfg.beta, q_dist=cfg.q_law, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed
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


# --------------------------------------------------------------------------- the job: infoscore.label_issues


def known_true_labels(dataset: Dataset) -> np.ndarray | None:
    """The clean labels when known: built-ins record them (or that none was flipped)."""
    if dataset.y_train_clean is not None:
        return np.asarray(dataset.y_train_clean)
    if dataset.noisy_mask is not None and not np.any(dataset.noisy_mask):
        return np.asarray(dataset.y_train)
    return None


def class_names(dataset: Dataset) -> list[str] | None:
    """The upload's class names (``info['class_names']``), when it had string labels."""
    names = (dataset.info or {}).get("class_names")
    if isinstance(names, list | tuple) and len(names) == dataset.n_classes:
        return [str(v) for v in names]
    return None


def named_labels(labels: np.ndarray, names: list[str] | None, missing: int | None = None) -> Any:
    """Integer labels (n,) -> the user's class names (``missing`` -> empty); without
    names the integers (a nullable integer array when ``missing`` is given)."""
    if names is None:
        if missing is None:
            return labels
        nullable = pd.array(labels, dtype="Int64")
        nullable[labels == missing] = pd.NA
        return nullable
    lookup = np.asarray(names, dtype=object)
    out = lookup[np.clip(labels, 0, len(names) - 1)]
    if missing is not None:
        out = np.where(labels == missing, None, out)
    return out


def source_npz(dataset: Dataset) -> bytes:
    """The dataset's arrays in the canonical upload layout (x, y, x_test, y_test, ids?,
    n_classes, input_shape): what a dataset cleaned by the decisions is cut from."""
    arrays: dict[str, np.ndarray] = {
        "x": np.ascontiguousarray(dataset.x_train, dtype=np.float32).reshape(dataset.n_train, -1),
        "y": np.asarray(dataset.y_train, dtype=np.int64),
        "x_test": np.ascontiguousarray(dataset.x_test, dtype=np.float32).reshape(dataset.n_test, -1),
        "y_test": np.asarray(dataset.y_test, dtype=np.int64),
        "n_classes": np.asarray(dataset.n_classes, dtype=np.int64),
        "input_shape": np.asarray(dataset.input_shape, dtype=np.int64).reshape(-1),
    }
    if dataset.ids is not None:
        arrays["ids"] = np.asarray(dataset.ids).astype(str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


@dataclass
class LabelIssuesResult:
    """What :func:`label_issues` returns: the :class:`LabelIssues` found on a dataset,
    with what the job reports beside them.

    issues: the per-row decisions and estimates; class_names: the upload's string class
    names (None for integer labels); ids (n,) or None; n_classes; evaluation: detection
    quality against the known clean labels (:meth:`LabelIssues.evaluate`; None when
    unknown); config: the validated settings; device; seconds: wall time of the call.
    """

    issues: LabelIssues
    class_names: list[str] | None
    ids: np.ndarray | None
    n_classes: int
    evaluation: dict[str, float | None] | None
    config: LabelIssuesConfig
    device: str
    seconds: float

    @property
    def n_train(self) -> int:
        return int(self.issues.given_label.shape[0])

    def summary(self) -> dict[str, Any]:
        """The ``label-issues`` job's summary (docs/jobs/label-issues.md)."""
        res, cfg = self.issues, self.config
        cl = res.confident
        out: dict[str, Any] = {
            "n_issues": res.n_issues,
            "estimated_noise_rate": cl.estimated_noise_rate,
            "noise_matrix": cl.noise_matrix.tolist(),
            "noise_matrix_axes": "rows = given label, columns = true label: P(given = i | true = j)",
            "method": str(res.method),
            "folds": res.folds,
            "threshold": str(res.threshold),
            "thresholds": cl.thresholds.tolist(),
            "confident_joint": cl.confident_joint.tolist(),
            "actions": {a: int((res.action == a).sum()) for a in ACTIONS},
            "class_names": self.class_names,
            "n_train": self.n_train,
            "n_classes": self.n_classes,
            "trainings": res.trainings,
            "epochs": res.epochs,
            "score_columns": list(res.scores),
            "settings": {
                "method": str(res.method),
                "folds": cfg.folds,
                "threshold": str(res.threshold),
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "batch_size": cfg.batch_size,
                "weight_decay": cfg.weight_decay,
                "beta": cfg.beta,
                "q_dist": str(cfg.q_dist),
                "relabel_confidence": cfg.relabel_confidence,
                "seed": cfg.seed,
                "device": self.device,
                "checkpoint": "final weights of every model (no validation split, no checkpoint choice)",
            },
        }
        if self.evaluation is not None:
            out.update(self.evaluation)
        out["seconds"] = self.seconds
        return out

    def table(self) -> pd.DataFrame:
        """Per-row table in row order: ``given_label``, ``suggested_label`` (class names
        when the upload had them), ``suggested_label_confidence``, ``label_quality``,
        ``is_label_issue``, ``issue_rank``, then the method's underlying scores."""
        res, names = self.issues, self.class_names
        columns: dict[str, Any] = {
            "given_label": named_labels(res.given_label, names),
            "suggested_label": named_labels(res.suggested_label, names),
            "suggested_label_confidence": res.suggested_label_confidence,
            "label_quality": res.label_quality,
            "is_label_issue": res.is_label_issue,
            "issue_rank": res.issue_rank,
        }
        columns.update(res.scores)
        return pd.DataFrame(columns)

    def decisions(self) -> pd.DataFrame:
        """One row per training row: ``index``, ``id``, ``action`` (keep | drop | relabel)
        and ``new_label`` (empty unless relabelled): what a cleaned dataset is cut by."""
        res, n = self.issues, self.n_train
        return pd.DataFrame(
            {
                "index": np.arange(n),
                "id": self.ids if self.ids is not None else np.full(n, None, dtype=object),
                "action": res.action.astype(str),
                "new_label": named_labels(res.new_label, self.class_names, missing=-1),
            }
        )

    def decisions_csv(self) -> bytes:
        """:meth:`decisions` as CSV bytes (the job's ``decisions.csv``)."""
        return self.decisions().to_csv(index=False).encode()

    def figures(self) -> dict[str, bytes]:
        """The job draws no figure."""
        return {}


def label_issues(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: LabelIssuesConfig = LabelIssuesConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LabelIssuesResult:
    """The ``label-issues`` job as a library call: :func:`find_label_issues` on ``dataset``'s
    training rows (an ``infoscore.data.Dataset``), with its class names and ids, and the
    detection quality when the clean labels are known.

    ``model``: the architecture of every model trained (None = the default MLP);
    ``progress``/``should_stop`` as in :func:`find_label_issues`.
    """
    started = time.perf_counter()
    cfg = config.validated(dataset.n_train, "label_issues")
    dev = torch.device(device)
    res = find_label_issues(
        model_spec(model, "label_issues"),
        dataset.x_train,
        dataset.y_train,
        n_classes=dataset.n_classes,
        config=cfg,
        device=dev,
        progress=progress,
        should_stop=should_stop,
    )
    truth = known_true_labels(dataset)
    return LabelIssuesResult(
        issues=res,
        class_names=class_names(dataset),
        ids=dataset.ids,
        n_classes=dataset.n_classes,
        evaluation=None if truth is None else res.evaluate(truth),
        config=cfg,
        device=str(dev),
        seconds=time.perf_counter() - started,
    )


sys.modules[__name__].__class__ = CallableModule
