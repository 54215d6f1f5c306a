"""LIMIT: limiting label-noise information in the weights (docs/science.md §4).

The ``limit`` job as one call: :func:`limit` (dataset, model spec, :class:`LimitConfig`)
-> :class:`LimitResult` (summary, per-sample table, curves figure, best-validation model).
This module is callable as that function, so ``infoscore.limit(...)`` works however it was
reached. The pieces: :func:`train_limit`, :func:`train_cross_entropy`, Fano's bound
(:func:`fano_min_error`, :func:`label_information_lower_bound`), the losses.

Glossary: **n** training rows, **k** classes, **m** test rows. Information is in bits here
(Fano's inequality is stated in bits), everything else as in the rest of infoscore.

Algorithm (section 4.2). A classifier f_w and a q-network q_φ of the same architecture
(different init seeds). Per mini-batch B, with s_f = softmax(f_w(x)) (stop-gradient),
s_q = softmax(q_φ(x)) and e_y the one-hot label:

* predicted logit gradient  ĝ_i = s_f(x_i) − s_q(x_i); true one g_i = s_f(x_i) − e_{y_i};
* the classifier is updated by backpropagating ĝ_i as ∂L/∂f_w(x_i), **summed** over the
  batch: its gradient is Σ_i J_w f_w(x_i)ᵀ ĝ_i, i.e. that of the surrogate
  Σ_i ⟨f_w(x_i), sg(ĝ_i)⟩. Labels never enter it;
* L_q = mean_i D(ĝ_i, g_i) + β · mean_i ‖ĝ_i‖²₂ with D the squared L2 distance
  (``gaussian``) or the L1 distance (``laplace``) over classes. Since ĝ − g = e_y − s_q,
  D is the Brier score or 2(1 − s_q[y]);
* one Adam step on (w, φ) together.

Options: ``sample_from_q`` replaces ĝ in the classifier's update by a draw from the
q-distribution centred at ĝ with precision ``lamb`` (Gaussian σ = sqrt(1/(2·lamb)) per
logit, Laplace scale 1/lamb: at lamb = 1 the laws whose negative log-likelihoods are the
two D above; the official runs used larger lamb, i.e. smaller noise); the q loss keeps
the mean ĝ. ``warm_up`` trains q alone for that many epochs (classifier frozen, in eval
mode).

Early stopping: the classifier with the best validation accuracy (first epoch on ties) is
kept. With ``patience`` P, training also stops once P epochs have passed without a
strictly better validation accuracy (off when there are no validation rows); otherwise
it runs all ``epochs``. Seeds:
classifier init ``seed``, q init ``seed + 10_000``, validation split ``seed + 20_000``,
data order ``seed`` (the same batches as the cross-entropy baseline), q-sampling noise
``seed + 30_000``, dropout masks ``seed + 40_000`` (torch's global generator, seeded inside
``fork_rng`` and restored afterwards, so the caller's RNG state is untouched).
"""

from __future__ import annotations

import math
import os
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import nn

from .config_checks import model_spec
from .data import Dataset
from .errors import InvalidInputError, invalid
from .limit_config import LimitConfig, QLaw
from .models import build_model, save_safetensors
from .progress import ProgressFn, StopFn, check_stop
from .scores import auroc
from .threads import training_thread_count, using_threads
from .training import as_tensor, epoch_batches, make_optimizer, predict_logits, train_classifier

Q_SEED_OFFSET = 10_000
SPLIT_SEED_OFFSET = 20_000
NOISE_SEED_OFFSET = 30_000
DROPOUT_SEED_OFFSET = 40_000
GAUSSIAN_SIGMA = math.sqrt(0.5)  # N(ĝ, 1/2): negative log-likelihood = ‖g − ĝ‖² + const
LAPLACE_SCALE = 1.0  # Laplace(ĝ, 1): negative log-likelihood = ‖g − ĝ‖₁ + const
# (both at lamb = 1; lamb scales the precision: σ = sqrt(1/(2·lamb)), scale = 1/lamb)
FANO_GRID = np.round(np.arange(999, 0, -1) / 1000.0, 3)  # 0.999, 0.998, ..., 0.001


class NoiseLaw(StrEnum):
    """Label-noise laws for Fano's bound: a row (keep, others...) of the noise channel."""

    UNIFORM = "uniform"  # (1 − p, p/(k−1), ..., p/(k−1)); infoscore.data's 'uniform'
    PAIR = "pair"  # (1 − p, p, 0, ...); infoscore.data's 'pair'
    TRIPLE = "triple"  # (1 − p, p/2, p/2, 0, ...)
    CUSTOM = "custom"  # any probability vector of length ≤ k, first entry = keep


# --------------------------------------------------------------------------- Fano (bits)


def noise_law(
    kind: str | NoiseLaw,
    noise_level: float | None = None,
    *,
    n_classes: int,
    distribution: Sequence[float] | None = None,
) -> np.ndarray:
    """The noise channel's row for one true class: (k,) float64, entry 0 = keep the label.

    ``uniform``/``pair``/``triple`` take ``noise_level`` p in [0, 1]; ``custom`` takes
    ``distribution`` (non-negative, sums to 1, length ≤ k, padded with zeros).
    """
    caller = "noise_law"
    if not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise invalid("n_classes", caller, "an integer >= 2", n_classes)
    try:
        law = NoiseLaw(kind)
    except ValueError:
        raise invalid("noise", caller, f"one of {[m.value for m in NoiseLaw]}", kind) from None
    row = np.zeros(n_classes, dtype=np.float64)
    if law is NoiseLaw.CUSTOM:
        if distribution is None:
            raise invalid("distribution", caller, "a probability vector for the 'custom' law", None)
        vec = np.asarray(distribution, dtype=np.float64).ravel()
        if (
            vec.size < 1
            or vec.size > n_classes
            or not np.all(np.isfinite(vec))
            or np.any(vec < 0)
            or abs(vec.sum() - 1.0) > 1e-6
        ):
            raise invalid(
                "distribution",
                caller,
                f"non-negative numbers summing to 1, at most {n_classes} of them",
                list(map(float, vec)),
            )
        row[: vec.size] = vec / vec.sum()
        return row
    if noise_level is None or not isinstance(noise_level, int | float) or not 0.0 <= noise_level <= 1.0:
        raise invalid("noise_level", caller, "a float in [0, 1]", noise_level)
    p = float(noise_level)
    row[0] = 1.0 - p
    if law is NoiseLaw.UNIFORM:
        row[1:] = p / (n_classes - 1)
    elif law is NoiseLaw.PAIR:
        row[1] = p
    else:
        if n_classes < 3:
            raise invalid("n_classes", caller, "an integer >= 3 for the 'triple' law", n_classes)
        row[1:3] = p / 2.0
    return row


def entropy_bits(distribution: np.ndarray) -> float:
    """Shannon entropy in bits of a probability vector (k,); 0 log 0 = 0."""
    p = np.asarray(distribution, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _fano_rhs(r: np.ndarray | float, n_classes: int) -> np.ndarray:
    """H_b(r) + r·log2(k − 1), bits; r in (0, 1)."""
    r = np.asarray(r, dtype=np.float64)
    hb = -(r * np.log2(r) + (1 - r) * np.log2(1 - r))
    return np.asarray(hb + r * math.log2(n_classes - 1))


def fano_min_error(law: np.ndarray, *, info_bits_per_sample: float = 0.0) -> float:
    """Fano lower bound r₀ on the train error on noisy labels.

    law (k,): the noise row (see :func:`noise_law`); its entropy is H(y|x), taking the
    clean label as a function of x. r₀ = smallest r on the grid 0.999, ..., 0.001 with
    H(y|x) − I/n ≤ H_b(r) + r·log2(k − 1), I/n = ``info_bits_per_sample`` (label
    information in the weights per sample, bits). Returns 0.0 when H(y|x) − I/n ≤ 0
    (r = 0 satisfies it; nothing is forced).
    """
    law = np.asarray(law, dtype=np.float64)
    if law.ndim != 1 or law.size < 2:
        raise invalid("law", "fano_min_error", "a probability vector of length k >= 2", law.shape)
    if not math.isfinite(info_bits_per_sample) or info_bits_per_sample < 0:
        raise invalid("info_bits_per_sample", "fano_min_error", "a float in [0, inf)", info_bits_per_sample)
    lhs = entropy_bits(law) - info_bits_per_sample
    if lhs <= 1e-12:
        return 0.0
    # 1e-12: the uniform law sits exactly on the curve at r = p; don't lose it to rounding.
    ok = lhs <= _fano_rhs(FANO_GRID, law.size) + 1e-12
    return float(FANO_GRID[ok].min()) if ok.any() else float(FANO_GRID[0])


def label_information_lower_bound(law: np.ndarray, train_error: float) -> float:
    """I/n ≥ H(y|x) − H_b(r) − r·log2(k−1), bits per sample, clipped at 0.

    The other reading of Fano's inequality: a model with train error r on the noisy
    labels holds at least this much label-noise information per sample in its weights.
    Valid for r ≤ (k−1)/k (beyond it the right side is decreasing; 0 is returned).
    """
    law = np.asarray(law, dtype=np.float64)
    k = law.size
    if not 0.0 <= train_error <= 1.0:
        raise invalid("train_error", "label_information_lower_bound", "a float in [0, 1]", train_error)
    if train_error >= (k - 1) / k:
        return 0.0
    rhs = 0.0 if train_error == 0.0 else float(_fano_rhs(train_error, k))
    return max(0.0, entropy_bits(law) - rhs)


# --------------------------------------------------------------------------- the update


def predicted_logit_gradient(classifier_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """ĝ = softmax(f).detach() − softmax(q). (B, k), (B, k) -> (B, k); grads flow to q only."""
    return torch.softmax(classifier_logits.detach(), dim=1) - torch.softmax(q_logits, dim=1)


def true_logit_gradient(classifier_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """g = softmax(f) − e_y, the cross-entropy logit gradient. (B, k), (B,) -> (B, k), detached."""
    s_f = torch.softmax(classifier_logits.detach(), dim=1)
    return s_f - nn.functional.one_hot(labels, s_f.shape[1]).to(s_f.dtype)


def q_loss(
    classifier_logits: torch.Tensor,
    q_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    law: QLaw = QLaw.LAPLACE,
) -> torch.Tensor:
    """L_q = mean_i D(ĝ_i, g_i) + β·mean_i ‖ĝ_i‖²₂; scalar, differentiable in q only.

    classifier_logits, q_logits (B, k); labels (B,) int64.
    """
    g_hat = predicted_logit_gradient(classifier_logits, q_logits)
    diff = g_hat - true_logit_gradient(classifier_logits, labels)  # = e_y − s_q
    return Q_DISTANCES[QLaw(law)](diff).mean() + beta * g_hat.pow(2).sum(1).mean()


# D(ĝ, g) over classes, by law. (B, k) -> (B,).
Q_DISTANCES: dict[QLaw, Callable[[torch.Tensor], torch.Tensor]] = {
    QLaw.LAPLACE: lambda diff: diff.abs().sum(1),
    QLaw.GAUSSIAN: lambda diff: diff.pow(2).sum(1),
}


def classifier_surrogate(classifier_logits: torch.Tensor, g_hat: torch.Tensor) -> torch.Tensor:
    """Σ_i ⟨f(x_i), sg(ĝ_i)⟩: its gradient in w is Σ_i J_iᵀ ĝ_i (a sum, not a mean)."""
    return (classifier_logits * g_hat.detach()).sum()


def sample_q_noise(
    shape: torch.Size | tuple[int, ...], law: QLaw, generator: torch.Generator, lamb: float = 1.0
) -> torch.Tensor:
    """Zero-mean noise (CPU, float32) of the q law with precision ``lamb`` > 0, per entry:
    N(0, 1/(2·lamb)) or Laplace(0, 1/lamb). lamb = 1 gives N(0, 1/2) and Laplace(0, 1)."""
    if not isinstance(lamb, int | float) or not math.isfinite(lamb) or lamb <= 0:
        raise invalid("lamb", "sample_q_noise", "a float in (0, inf)", lamb)
    return Q_NOISE[QLaw(law)](shape, generator, float(lamb))


def _gaussian_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, lamb: float
) -> torch.Tensor:
    return (GAUSSIAN_SIGMA / math.sqrt(lamb)) * torch.randn(shape, generator=generator)


def _laplace_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, lamb: float
) -> torch.Tensor:
    # Laplace(0, b) = b·(E₁ − E₂) for independent Exp(1) draws E₁, E₂.
    e1 = torch.empty(shape).exponential_(1.0, generator=generator)
    e2 = torch.empty(shape).exponential_(1.0, generator=generator)
    return (LAPLACE_SCALE / lamb) * (e1 - e2)


Q_NOISE: dict[QLaw, Callable[[torch.Size | tuple[int, ...], torch.Generator, float], torch.Tensor]] = {
    QLaw.LAPLACE: _laplace_noise,
    QLaw.GAUSSIAN: _gaussian_noise,
}


def limit_losses(
    classifier: nn.Module,
    q_network: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    law: QLaw = QLaw.LAPLACE,
    update_classifier: bool = True,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate, q loss) for one batch; backpropagate their sum for one LIMIT step.

    x (B, ...), labels (B,); ``noise`` (B, k) is added to ĝ in the classifier's update
    only (``sample_from_q``). With ``update_classifier=False`` the classifier runs in
    no-grad mode and the surrogate is a zero constant.
    """
    if update_classifier:
        f_logits = classifier(x)
    else:
        with torch.no_grad():
            f_logits = classifier(x)
    q_logits = q_network(x)
    lq = q_loss(f_logits, q_logits, labels, beta=beta, law=law)
    if not update_classifier:
        return torch.zeros((), device=x.device), lq
    g_used = predicted_logit_gradient(f_logits, q_logits).detach()
    if noise is not None:
        g_used = g_used + noise
    return classifier_surrogate(f_logits, g_used), lq


# --------------------------------------------------------------------------- data and bookkeeping


@dataclass
class SplitData:
    """Training rows split into a fitting part and a validation part, on one device.

    x (n, ...) all training rows · y_noisy (n,) the given labels · y_clean (n,) or None ·
    fit_idx (n_fit,), val_idx (n_val,) disjoint row indices covering 0..n−1 ·
    y_val (n_val,) validation labels (noisy, or clean with ``clean_validation``) ·
    x_test (m, ...), y_test (m,) · n_classes k.
    """

    x: torch.Tensor
    y_noisy: torch.Tensor
    y_clean: torch.Tensor | None
    fit_idx: torch.Tensor
    val_idx: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]

    @property
    def n(self) -> int:
        return int(self.y_noisy.shape[0])


def split_validation(n: int, fraction: float, *, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (fit, validation) row indices; round(fraction·n) rows, at least 1 if fraction > 0."""
    n_val = 0 if fraction <= 0 else max(1, round(fraction * n))
    if n - n_val < 1:
        raise invalid(
            "validation_fraction",
            "split_validation",
            f"small enough to leave a training row (n = {n})",
            fraction,
        )
    perm = torch.randperm(n, generator=generator).numpy()
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def prepare_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    x_test: np.ndarray,
    y_test: np.ndarray,
    y_clean: np.ndarray | None = None,
    validation_fraction: float = 0.2,
    clean_validation: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SplitData:
    """Validate arrays and split off the validation rows (seed ``seed + 20_000``).

    x (n, ...), y (n,) noisy labels, y_clean (n,) or None, x_test (m, ...), y_test (m,).
    """
    caller = "prepare_split"
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or x.shape[0] < 2:
        raise invalid("x", caller, "an array of shape (n, ...) with n >= 2", x.shape)
    if y.shape != (x.shape[0],):
        raise invalid("y", caller, f"a 1-d array of length {x.shape[0]}", y.shape)
    if not 0.0 <= validation_fraction < 1.0:
        raise invalid("validation_fraction", caller, "a float in [0, 1)", validation_fraction)
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= n_classes)):
        raise invalid("y", caller, f"integer labels in 0..{n_classes - 1}", f"{y.dtype} {y.min()}..{y.max()}")
    if clean_validation and y_clean is None:
        raise invalid("clean_validation", caller, "False when the clean labels are unknown", clean_validation)
    if y_clean is not None and np.asarray(y_clean).shape != y.shape:
        raise invalid("y_clean", caller, f"a 1-d array of length {y.shape[0]}", np.asarray(y_clean).shape)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed) + SPLIT_SEED_OFFSET)
    fit, val = split_validation(int(x.shape[0]), validation_fraction, generator=gen)
    y_t = as_tensor(y, dev, torch.int64)
    y_clean_t = None if y_clean is None else as_tensor(np.asarray(y_clean), dev, torch.int64)
    val_t = as_tensor(val, dev, torch.int64)
    y_val = (y_clean_t if clean_validation and y_clean_t is not None else y_t)[val_t]
    return SplitData(
        x=as_tensor(x, dev),
        y_noisy=y_t,
        y_clean=y_clean_t,
        fit_idx=as_tensor(fit, dev, torch.int64),
        val_idx=val_t,
        y_val=y_val,
        x_test=as_tensor(np.asarray(x_test), dev),
        y_test=as_tensor(np.asarray(y_test), dev, torch.int64),
        n_classes=int(n_classes),
        input_shape=tuple(int(s) for s in x.shape[1:]),
    )


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float("nan") if y.numel() == 0 else float((pred == y).float().mean())


@dataclass
class TrainingRecord:
    """Per-epoch curves and the best-validation checkpoint of one classifier.

    curves: ``epoch`` (1..E), ``train_accuracy_noisy`` (fitting rows, given labels),
    ``train_accuracy_clean`` (fitting rows, clean labels; only when known),
    ``validation_accuracy``, ``test_accuracy`` (NaN when there are no such rows).
    ``stopped_epoch``: the epoch at which patience ended training, or None (ran them all).
    """

    curves: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    best_validation_accuracy: float = float("nan")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_epoch: int | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.curves.get("epoch", []))

    def at(self, key: str, epoch: int) -> float:
        return self.curves[key][epoch - 1] if key in self.curves else float("nan")

    @property
    def test_accuracy(self) -> float:
        """Test accuracy of the best-validation checkpoint."""
        return self.at("test_accuracy", self.best_epoch)

    @property
    def final_test_accuracy(self) -> float:
        return self.curves["test_accuracy"][-1]

    @property
    def train_accuracy_noisy(self) -> float:
        """Final (end of training) accuracy on the noisy labels of the fitting rows."""
        return self.curves["train_accuracy_noisy"][-1]

    @property
    def train_accuracy_clean(self) -> float | None:
        return self.curves["train_accuracy_clean"][-1] if "train_accuracy_clean" in self.curves else None

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers (NaN -> None)."""
        out = {
            "test_accuracy": self.test_accuracy,
            "final_test_accuracy": self.final_test_accuracy,
            "train_accuracy_noisy": self.train_accuracy_noisy,
            "train_accuracy_clean": self.train_accuracy_clean,
            "train_accuracy_noisy_at_best": self.at("train_accuracy_noisy", self.best_epoch),
            "best_epoch": self.best_epoch,
            "best_validation_accuracy": self.best_validation_accuracy,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_epoch is not None,
        }
        return {k: _finite_or_none(v) for k, v in out.items()}


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class EpochTracker:
    """Evaluates a classifier after each epoch and keeps the best-validation weights.

    ``patience`` P: :attr:`exhausted` turns true once P epochs have passed since the best
    validation accuracy (ties do not count as better) and since epoch ``patience_start``
    (LIMIT's warm-up, whose frozen classifier cannot improve); never without validation rows.
    """

    def __init__(self, data: SplitData, patience: int | None = None, patience_start: int = 0) -> None:
        self.data = data
        self.patience = patience
        self.patience_start = patience_start
        self.record = TrainingRecord()
        keys = ["epoch", "train_accuracy_noisy", "validation_accuracy", "test_accuracy"]
        if data.y_clean is not None:
            keys.insert(2, "train_accuracy_clean")
        self.record.curves = {k: [] for k in keys}

    def __call__(self, epoch: int, model: nn.Module) -> None:
        if epoch == 0:
            return
        d, curves = self.data, self.record.curves
        pred = predict_logits(model, d.x).argmax(1)
        curves["epoch"].append(float(epoch))
        curves["train_accuracy_noisy"].append(_acc(pred[d.fit_idx], d.y_noisy[d.fit_idx]))
        if d.y_clean is not None:
            curves["train_accuracy_clean"].append(_acc(pred[d.fit_idx], d.y_clean[d.fit_idx]))
        val_acc = _acc(pred[d.val_idx], d.y_val)
        curves["validation_accuracy"].append(val_acc)
        test_pred = predict_logits(model, d.x_test).argmax(1) if d.y_test.numel() else d.y_test
        curves["test_accuracy"].append(_acc(test_pred, d.y_test))
        # Without validation rows, "best" is simply the latest epoch.
        better = math.isnan(val_acc) or not val_acc <= self.record.best_validation_accuracy
        if self.record.best_epoch == 0 or better:
            self.record.best_epoch = epoch
            self.record.best_validation_accuracy = val_acc
            self.record.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.exhausted:
            self.record.stopped_epoch = epoch

    @property
    def exhausted(self) -> bool:
        """Patience ran out: stop training (always False without patience or validation rows)."""
        if self.patience is None or self.data.val_idx.numel() == 0 or self.record.best_epoch == 0:
            return False
        return self.record.epochs_run - max(self.record.best_epoch, self.patience_start) >= self.patience


class _PatienceExhausted(Exception):
    """Raised from an epoch callback to leave :func:`train_classifier` early."""


# --------------------------------------------------------------------------- training


@dataclass
class SampleScores:
    """Per-sample outputs for all n training rows (validation rows included), (n,) each.

    label_noise_score: ‖e_y − s_q(x)‖₁ = 2(1 − s_q[y]) in [0, 2], final q-network;
    predicted_label: argmax f(x) of the best-validation classifier (the saved model; it
    never saw a label directly, and its flags recalled more flipped labels than argmax s_q
    in benchmarks/limit_digits.py); suspected_mislabeled: predicted_label ≠ y;
    predicted_gradient_sq_norm: ‖ĝ‖²₂ = ‖s_f − s_q‖²₂ (final classifier and q);
    classifier_label_noise_score: 2(1 − s_f[y]) from the ``predicted_label`` network: with
    ``gaussian`` q, q memorizes flipped labels and this label-blind score ranks them better.
    """

    label_noise_score: np.ndarray
    predicted_label: np.ndarray
    suspected_mislabeled: np.ndarray
    predicted_gradient_sq_norm: np.ndarray
    classifier_label_noise_score: np.ndarray


@dataclass
class LimitTraining:
    """What :func:`train_limit` returns. classifier: best-validation weights loaded;
    q_network: final weights."""

    classifier: nn.Module
    q_network: nn.Module
    record: TrainingRecord
    scores: SampleScores
    config: LimitConfig


@torch.no_grad()
def score_samples(
    q_logits: torch.Tensor,
    classifier_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    predictor_logits: torch.Tensor | None = None,
) -> SampleScores:
    """Label-noise scores (see :class:`SampleScores`), in float64.

    q_logits, classifier_logits (n, k) of the final networks; labels (n,);
    predictor_logits (n, k) give ``predicted_label`` (default: ``classifier_logits``).
    """
    s_q = torch.softmax(q_logits.double(), dim=1)
    s_f = torch.softmax(classifier_logits.double(), dim=1)
    s_pred = s_f if predictor_logits is None else torch.softmax(predictor_logits.double(), dim=1)
    one_hot = nn.functional.one_hot(labels, s_q.shape[1]).double()
    predicted = s_pred.argmax(1)
    return SampleScores(
        label_noise_score=(one_hot - s_q).abs().sum(1).clamp(0.0, 2.0).cpu().numpy(),
        predicted_label=predicted.cpu().numpy().astype(np.int64),
        suspected_mislabeled=(predicted != labels).cpu().numpy(),
        predicted_gradient_sq_norm=(s_f - s_q).pow(2).sum(1).cpu().numpy(),
        classifier_label_noise_score=(one_hot - s_pred).abs().sum(1).clamp(0.0, 2.0).cpu().numpy(),
    )


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG inside a fork of it, restored on exit.

    Dropout draws its masks from the global generator; forking keeps runs with a
    dropout spec reproducible without leaking a seed into the caller's state.
    """
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _offset_progress(progress: ProgressFn | None, offset: int, total: int) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda done, _n: progress(offset + done, total)


def train_limit(
    model_spec: Mapping[str, Any],
    data: SplitData,
    config: LimitConfig = LimitConfig(),
    *,
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
    should_stop: StopFn | None = None,
) -> LimitTraining:
    """Train a LIMIT classifier and q-network on ``data``'s fitting rows.

    Evaluates after every epoch (see :class:`TrainingRecord`), keeps the best-validation
    classifier, and scores all n training rows (see :class:`SampleScores`). ``progress`` gets
    (progress_offset + epoch, progress_total or epochs).
    """
    cfg = config.validated()
    device = data.x.device
    k = data.n_classes
    classifier = build_model(model_spec, data.input_shape, k, seed=cfg.seed).to(device)
    q_network = build_model(model_spec, data.input_shape, k, seed=cfg.seed + Q_SEED_OFFSET).to(device)
    opt = make_optimizer("adam", [*classifier.parameters(), *q_network.parameters()], lr=cfg.lr)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed + NOISE_SEED_OFFSET)
    tracker = EpochTracker(data, cfg.patience, patience_start=cfg.warm_up)
    x_fit, y_fit = data.x[data.fit_idx], data.y_noisy[data.fit_idx]
    total = progress_total if progress_total is not None else cfg.epochs
    threads = training_thread_count([classifier, q_network], x_fit, cfg.batch_size)
    with seeded_global_rng(cfg.seed + DROPOUT_SEED_OFFSET, device):
        for epoch in range(1, cfg.epochs + 1):
            check_stop(should_stop)
            update_classifier = epoch > cfg.warm_up
            classifier.train(update_classifier)
            q_network.train()
            # The order and the noise are drawn on the host (the same numbers on every
            # device) and reach the device once per epoch, not once per batch.
            batches = epoch_batches(x_fit.shape[0], cfg.batch_size, order_gen, device)
            noises: list[torch.Tensor | None] = [None] * len(batches)
            if cfg.sample_from_q and update_classifier:
                drawn = [sample_q_noise((b.numel(), k), cfg.q_law, noise_gen, cfg.lamb) for b in batches]
                noises = list(torch.cat(drawn).to(device).split([b.numel() for b in batches]))
            with using_threads(threads):
                for idx, noise in zip(batches, noises, strict=True):
                    surrogate, lq = limit_losses(
                        classifier,
                        q_network,
                        x_fit[idx],
                        y_fit[idx],
                        beta=cfg.beta,
                        law=cfg.q_law,
                        update_classifier=update_classifier,
                        noise=noise,
                    )
                    opt.zero_grad(set_to_none=True)
                    (surrogate + lq).backward()
                    opt.step()
            tracker(epoch, classifier)
            if progress is not None:
                progress(progress_offset + epoch, total)
            if tracker.exhausted:
                break
    q_logits = predict_logits(q_network, data.x)
    final_logits = predict_logits(classifier, data.x)
    classifier.load_state_dict(tracker.record.best_state)
    classifier.eval()
    q_network.eval()
    best_logits = predict_logits(classifier, data.x)
    scores = score_samples(q_logits, final_logits, data.y_noisy, predictor_logits=best_logits)
    return LimitTraining(classifier, q_network, tracker.record, scores, cfg)


def train_cross_entropy(
    model_spec: Mapping[str, Any],
    data: SplitData,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    patience: int | None = None,
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
    should_stop: StopFn | None = None,
) -> tuple[nn.Module, TrainingRecord]:
    """The cross-entropy baseline on LIMIT's recipe: same split, init seed, batches, epochs
    and ``patience``.

    Returns (classifier with best-validation weights loaded, record).
    """
    LimitConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, patience=patience).validated(
        "train_cross_entropy"
    )
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise invalid("weight_decay", "train_cross_entropy", "a float in [0, inf)", weight_decay)
    model = build_model(model_spec, data.input_shape, data.n_classes, seed=seed).to(data.x.device)
    tracker = EpochTracker(data, patience)

    def on_epoch(epoch: int, net: nn.Module) -> None:
        tracker(epoch, net)
        if tracker.exhausted:
            raise _PatienceExhausted

    with seeded_global_rng(seed + DROPOUT_SEED_OFFSET, data.x.device), suppress(_PatienceExhausted):
        train_classifier(
            model,
            data.x[data.fit_idx],
            data.y_noisy[data.fit_idx],
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer="adam",
            weight_decay=weight_decay,
            seed=seed,
            on_epoch=on_epoch,
            progress=_offset_progress(progress, progress_offset, progress_total or epochs),
            should_stop=should_stop,
        )
    model.load_state_dict(tracker.record.best_state)
    model.eval()
    return model, tracker.record


def split_from_dataset(
    dataset: Any,
    *,
    validation_fraction: float = 0.2,
    clean_validation: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SplitData:
    """:func:`prepare_split` for an ``infoscore.data.Dataset``.

    Clean labels are known when ``y_train_clean`` is set, or when ``noisy_mask`` says no
    label was flipped (then they are the given labels).
    """
    y_clean = dataset.y_train_clean
    if y_clean is None and dataset.noisy_mask is not None and not np.any(dataset.noisy_mask):
        y_clean = dataset.y_train
    if clean_validation and y_clean is None:
        raise InvalidInputError(
            "The 'clean_validation' parameter of limit must be False for this dataset: "
            "its clean labels are unknown. Got True instead.",
            param="clean_validation",
        )
    return prepare_split(
        dataset.x_train,
        dataset.y_train,
        n_classes=dataset.n_classes,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        y_clean=y_clean,
        validation_fraction=validation_fraction,
        clean_validation=clean_validation,
        seed=seed,
        device=device,
    )


# --------------------------------------------------------------------------- the job: infoscore.limit

FANO_INFO_GRID_BITS = (0.0, 0.25, 0.5, 1.0, 2.0)  # I/n at which the summary reports r₀


def known_noise_law(dataset: Dataset, noise_level: float | None) -> tuple[str, float] | None:
    """(law name, p) when the label-noise law is known, else None.

    ``noise_level`` (the job parameter) wins and means the uniform law; otherwise a
    built-in dataset records its ``label_noise`` and ``noise`` kind in ``info``.
    """
    if noise_level is not None:
        return "uniform", float(noise_level)
    info = dataset.info or {}
    if "label_noise" in info and info.get("noise") in ("uniform", "pair"):
        return str(info["noise"]), float(info["label_noise"])
    return None


def fano_summary(
    dataset: Dataset, noise_level: float | None, train_errors: Mapping[str, float | None]
) -> tuple[float | None, dict[str, Any] | None]:
    """(fano_bound, details). fano_bound = r₀ at I = 0: the least train error on noisy
    labels of a model holding no label-noise information. details add r₀ at a few I/n
    and, per trained model, the label information its train error implies (bits/sample).
    """
    known = known_noise_law(dataset, noise_level)
    if known is None:
        return None, None
    kind, p = known
    law = noise_law(kind, p, n_classes=dataset.n_classes)
    implied = {
        name: None if err is None else label_information_lower_bound(law, err)
        for name, err in train_errors.items()
    }
    details = {
        "units": "bits",
        "noise": kind,
        "noise_level": p,
        "n_classes": dataset.n_classes,
        "conditional_entropy_bits": entropy_bits(law),
        "min_train_error_at_info_bits_per_sample": {
            str(i): fano_min_error(law, info_bits_per_sample=i) for i in FANO_INFO_GRID_BITS
        },
        "implied_label_information_bits_per_sample": implied,
    }
    return fano_min_error(law), details


def curves_png(
    limit_curves: Mapping[str, list[float]],
    baseline_curves: Mapping[str, list[float]] | None,
    noise_level: float | None,
) -> bytes:
    """Figure 1 of the paper as PNG bytes: train accuracy on noisy labels (with the 1 − p
    line for a known uniform ``noise_level``) and test accuracy per epoch."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    panels = (("train_accuracy_noisy", "train accuracy (noisy labels)"), ("test_accuracy", "test accuracy"))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(limit_curves["epoch"], limit_curves[key], label="LIMIT")
        if baseline_curves is not None:
            ax.plot(baseline_curves["epoch"], baseline_curves[key], label="cross-entropy")
        if key == "train_accuracy_noisy" and noise_level is not None:
            ax.axhline(1.0 - noise_level, color="grey", linestyle="--", linewidth=1, label="1 − p")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.set_ylim(0.0, 1.02)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


@dataclass
class LimitResult:
    """What :func:`limit` returns: the LIMIT run, its cross-entropy baseline and Fano's bound.

    training: the LIMIT run (classifier with best-validation weights, q-network, record,
    per-sample scores); baseline, baseline_classifier: the cross-entropy run's record and
    best-validation model (None without ``baseline``); split: the fit/validation split;
    fano_bound, fano: Fano's r₀ at I = 0 and its details (None when the noise law is
    unknown); detection: AUROCs and flag precision/recall against the known flipped rows
    (None when unknown); uniform_noise_level: p of a known uniform law (the 1 − p line of
    the curves); config: the validated settings; device; seconds: wall time of the call.
    """

    training: LimitTraining
    baseline: TrainingRecord | None
    baseline_classifier: nn.Module | None
    split: SplitData
    fano_bound: float | None
    fano: dict[str, Any] | None
    detection: dict[str, float | None] | None
    uniform_noise_level: float | None
    config: LimitConfig
    device: str
    seconds: float

    @property
    def classifier(self) -> nn.Module:
        """The best-validation LIMIT classifier (what ``model.safetensors`` holds)."""
        return self.training.classifier

    @property
    def scores(self) -> SampleScores:
        return self.training.scores

    def curves(self) -> dict[str, list[float]]:
        """LIMIT's per-epoch curves plus the baseline's with a ``baseline_`` prefix."""
        out: dict[str, list[float]] = dict(self.training.record.curves)
        if self.baseline is not None:
            out.update({f"baseline_{k}": v for k, v in self.baseline.curves.items() if k != "epoch"})
        return out

    def summary(self) -> dict[str, Any]:
        """The ``limit`` job's summary (docs/jobs/limit.md); NaN where a number is undefined
        is already None in the record parts."""
        cfg, data, record = self.config, self.split, self.training.record
        patience_active = cfg.patience is not None and data.val_idx.numel() > 0
        return {
            **record.summary(),
            "fano_bound": self.fano_bound,
            "noisy_label_detection": self.detection,
            "fano": self.fano,
            "baseline": None if self.baseline is None else self.baseline.summary(),
            "curves": self.curves(),
            "n_train": data.n,
            "n_fit": int(data.fit_idx.numel()),
            "n_validation": int(data.val_idx.numel()),
            "n_test": int(data.y_test.numel()),
            "n_classes": data.n_classes,
            "n_suspected_mislabeled": int(self.scores.suspected_mislabeled.sum()),
            "settings": {
                "beta": cfg.beta,
                "q_dist": str(cfg.q_dist),
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "batch_size": cfg.batch_size,
                "validation_fraction": cfg.validation_fraction,
                "clean_validation": cfg.clean_validation,
                "sample_from_q": cfg.sample_from_q,
                "warm_up": cfg.warm_up,
                "lamb": cfg.lamb,
                "patience": cfg.patience,
                "patience_active": patience_active,
                "seed": cfg.seed,
                "device": self.device,
                "label_noise_score": "L1 norm ||e_y - softmax(q(x))||_1 = 2(1 - s_q[y]), final q-network",
                "predicted_label": "argmax f(x), best-validation classifier (model.safetensors)",
                "scored_rows": "all training rows, validation rows included (q never trained on those)",
                "checkpoint": "model.safetensors holds the best-validation classifier",
                "early_stopping": (
                    "best-validation checkpoint; training stops after `patience` epochs without a better "
                    "validation accuracy"
                    if patience_active
                    else "best-validation checkpoint (last epoch without validation rows); all epochs run"
                ),
            },
            "seconds": self.seconds,
        }

    def table(self) -> Any:
        """Per-sample scores, one row per training row in order (pandas.DataFrame):
        ``label_noise_score``, ``predicted_label``, ``suspected_mislabeled``,
        ``predicted_gradient_sq_norm``, ``classifier_label_noise_score``, ``in_validation``."""
        import pandas as pd

        in_validation = np.zeros(self.split.n, dtype=bool)
        in_validation[self.split.val_idx.cpu().numpy()] = True
        s = self.scores
        return pd.DataFrame(
            {
                "label_noise_score": s.label_noise_score,
                "predicted_label": s.predicted_label,
                "suspected_mislabeled": s.suspected_mislabeled,
                "predicted_gradient_sq_norm": s.predicted_gradient_sq_norm,
                "classifier_label_noise_score": s.classifier_label_noise_score,
                "in_validation": in_validation,
            }
        )

    def figures(self) -> dict[str, bytes]:
        """``curves.png``: Figure 1 of the paper, LIMIT and (when run) cross-entropy."""
        baseline = None if self.baseline is None else self.baseline.curves
        return {"curves.png": curves_png(self.training.record.curves, baseline, self.uniform_noise_level)}

    def save_model(self, path: str | os.PathLike[str]) -> None:
        """Write the best-validation LIMIT classifier as safetensors (``build_model`` layout)."""
        save_safetensors(
            self.classifier,
            str(path),
            metadata={
                "kind": "limit",
                "checkpoint": "best-validation",
                "epoch": str(self.training.record.best_epoch),
            },
        )


def _detection(scores: SampleScores, noisy_mask: np.ndarray | None) -> dict[str, float | None] | None:
    """AUROCs of both scores and flag precision/recall against the known flipped rows."""
    mask = noisy_mask
    if mask is None or not 0 < int(np.sum(mask)) < mask.shape[0]:
        return None
    flags = scores.suspected_mislabeled
    return {
        "auroc_label_noise_score": auroc(scores.label_noise_score, mask),
        "auroc_classifier_label_noise_score": auroc(scores.classifier_label_noise_score, mask),
        "flag_precision": float(mask[flags].mean()) if flags.any() else None,
        "flag_recall": float(flags[mask].mean()),
    }


def limit(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: LimitConfig = LimitConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LimitResult:
    """The ``limit`` job as a library call: LIMIT training on ``dataset`` (an
    ``infoscore.data.Dataset``), its cross-entropy baseline on the same recipe (when
    ``config.baseline``), Fano's bound and the per-sample label-noise scores.

    ``model``: the spec of both networks (``infoscore.models.build_model``; None = the
    default MLP). ``progress(done, total)`` counts epochs over both runs; ``should_stop()``
    is checked every epoch (raises :class:`infoscore.Cancelled`). Bad settings raise
    :class:`infoscore.InvalidInputError` naming the field before any training.
    """
    started = time.perf_counter()
    cfg = config.validated("limit")
    spec = model_spec(model, "limit")
    dev = torch.device(device)
    data = split_from_dataset(
        dataset,
        validation_fraction=cfg.validation_fraction,
        clean_validation=cfg.clean_validation,
        seed=cfg.seed,
        device=dev,
    )
    total = cfg.epochs * (2 if cfg.baseline else 1)
    training = train_limit(spec, data, cfg, progress=progress, progress_total=total, should_stop=should_stop)
    baseline_classifier = baseline = None
    if cfg.baseline:
        baseline_classifier, baseline = train_cross_entropy(
            spec,
            data,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            patience=cfg.patience,
            progress=progress,
            progress_offset=cfg.epochs,
            progress_total=total,
            should_stop=should_stop,
        )
    errors: dict[str, float | None] = {"limit": 1.0 - training.record.train_accuracy_noisy}
    if baseline is not None:
        errors["baseline"] = 1.0 - baseline.train_accuracy_noisy
    fano_bound, fano = fano_summary(dataset, cfg.noise_level, errors)
    known = known_noise_law(dataset, cfg.noise_level)
    return LimitResult(
        training=training,
        baseline=baseline,
        baseline_classifier=baseline_classifier,
        split=data,
        fano_bound=fano_bound,
        fano=fano,
        detection=_detection(training.scores, dataset.noisy_mask),
        uniform_noise_level=None if known is None or known[0] != "uniform" else known[1],
        config=cfg,
        device=str(dev),
        seconds=time.perf_counter() - started,
    )


class CallableModule(types.ModuleType):
    """``infoscore.limit`` is this module and the job's library call at once: once the
    submodule is imported, Python binds the package attribute ``limit`` to the module, so
    the module itself must be callable for ``infoscore.limit(dataset, ...)`` to keep working.
    The function named after the module is what a call runs."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule
