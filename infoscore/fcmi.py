"""Sample-wise f-CMI generalization bounds for black-box classifiers (docs/science.md §3).

Glossary: **n** pairs in a supersample (the training-set size), **K** classes, **k1**
supersamples, **k2** selector draws per supersample. Information is in nats.

Construction (the official protocol):

* A supersample is 2n rows drawn without replacement from the training pool with its
  ``supersample_seed``; pair i is rows (2i, 2i+1) of that draw, so ``pairs`` is (n, 2).
* The selector S ~ Bernoulli(1/2)^n is drawn from ``selector_seed`` alone. The learner
  trains on rows ``pairs[i, S_i]`` and the other member of each pair is held out.
* One training returns the predicted classes on all 2n inputs, int16 (n, 2), and the
  train and held-out accuracies. ``train_units`` trains the k2 selector draws of one
  supersample together as one batched ensemble (``training.Ensemble``), and can record
  the predictions after several epochs of the same trainings (``eval_epochs``);
  ``train_unit`` is the one-at-a-time reference it equals within float tolerance.

Estimation, per supersample, from its k2 units:

* pair symbol u_i = K * yhat_{i,0} + yhat_{i,1};
* plug-in MI Î_i of (S_i, u_i) over the k2 draws, clipped at 0 (``MiEstimator.PLUGIN``),
  or Miller-Madow (``MiEstimator.MILLER_MADOW``, "bias-corrected": not a guaranteed
  bound): the Miller-Madow correction Ĥ + (m - 1)/(2 k2) applied to each entropy of
  Î = H(S) + H(U) - H(S, U), m the number of observed symbols, i.e.
  Î_MM = Î + (m_S + m_U - m_SU - 1) / (2 k2), clipped at 0. When S and u are independent
  and every (s, u) combination is observed (m_SU = m_S m_U) the correction is
  -(m_S - 1)(m_U - 1)/(2 k2); when u determines S (memorization, m_SU = m_U) it is
  +(m_S - 1)/(2 k2), a raise, not a cut;
* bound = (1/n) Σ_i sqrt(2 Î_i); gap = mean over the k2 units of (train acc - held-out acc).

The experiment (``fcmi_bound``, the ``fcmi-bound`` job kind) is three pure steps, which
the service's fan-out also calls, one unit per task: ``plan`` (config -> one
:class:`FcmiUnit` per (n, supersample), each carrying everything its result depends on),
``run_unit`` (one unit's k2 trainings, batched) and ``reduce`` (the units' predictions ->
:class:`FcmiResult`, with the summary, CSVs and figures of the job).

Seeds of a unit (``unit_seeds``):

* default: the init seed and the data-order seed both equal
  ``SeedSequence([seed, supersample_seed, selector_seed]).generate_state(1)[0]``, so the
  initialisation and the mini-batch order change with every selector draw (and supersample);
* ``deterministic=True``: both are 42 for every unit, so across selector draws only the
  training set changes (the official "deterministic" algorithm also seeds torch with 42
  before building the model and loads data in a single process).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config_checks import model_spec
from .errors import invalid
from .fcmi_config import FcmiConfig, Learner, MiEstimator
from .models import build_model
from .progress import ProgressFn, StopFn, check_stop
from .training import Ensemble, as_tensor, ensemble_supported, predict_logits, train_classifier

if TYPE_CHECKING:
    import pandas as pd

    from .data import Dataset

DETERMINISTIC_SEED = 42
# Domain tags keep the supersample and selector streams apart when their seeds coincide.
_SUPERSAMPLE_TAG = 0x5C1
_SELECTOR_TAG = 0x5E1


@dataclass(frozen=True)
class UnitResult:
    """One training. predictions (n, 2) int16: the class predicted for pool row pairs[i, c]."""

    predictions: np.ndarray
    train_accuracy: float
    heldout_accuracy: float


@dataclass(frozen=True)
class SupersampleEstimate:
    """Estimates from the k2 units of one supersample.

    mi (n,) nats per pair (after clipping and, if asked, bias correction) ·
    bias (n,) the plug-in bias Miller-Madow estimates, (m_SU - m_S - m_U + 1) / (2 k2)
    per pair, nats (negative where u determines S) ·
    bound = mean(sqrt(2 mi)) · gap = mean over k2 of train acc - held-out acc.
    """

    mi: np.ndarray
    bias: np.ndarray
    bound: float
    gap: float
    train_accuracy: float
    heldout_accuracy: float
    units: int


@dataclass(frozen=True)
class Aggregate:
    """Mean and std (ddof = 0) over supersamples of one n."""

    n: int
    gap_mean: float
    gap_std: float
    bound_mean: float
    bound_std: float
    train_accuracy: float
    heldout_accuracy: float
    units: int
    bias_estimate: float


# ---------------------------------------------------------------- construction


def make_supersample(pool_size: int, n: int, seed: int) -> np.ndarray:
    """Draw 2n distinct pool rows with ``seed``; pair i = draws (2i, 2i+1). -> (n, 2) int64."""
    if not isinstance(n, int | np.integer) or n < 1:
        raise invalid("n", "make_supersample", "a positive integer", n)
    if 2 * n > pool_size:
        raise invalid("n", "make_supersample", f"at most {pool_size // 2} (2n <= {pool_size} samples)", n)
    rng = np.random.default_rng([_SUPERSAMPLE_TAG, int(seed)])
    return rng.choice(pool_size, size=2 * int(n), replace=False).astype(np.int64).reshape(int(n), 2)


def draw_selector(n: int, seed: int) -> np.ndarray:
    """S ~ Bernoulli(1/2)^n from ``seed`` alone. -> (n,) int8 in {0, 1}."""
    rng = np.random.default_rng([_SELECTOR_TAG, int(seed)])
    return rng.integers(0, 2, size=int(n)).astype(np.int8)


def split_pairs(pairs: np.ndarray, selector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pairs (n, 2), selector (n,) -> (train rows pairs[i, S_i] (n,), held-out rows (n,))."""
    rows = np.arange(pairs.shape[0])
    s = selector.astype(np.int64)
    return pairs[rows, s], pairs[rows, 1 - s]


def unit_seeds(seed: int, supersample_seed: int, selector_seed: int, *, deterministic: bool) -> int:
    """The init seed, which is also the data-order seed, of one unit (see the module docstring)."""
    if deterministic:
        return DETERMINISTIC_SEED
    state = np.random.SeedSequence([int(seed), int(supersample_seed), int(selector_seed)]).generate_state(1)
    return int(state[0])


# ---------------------------------------------------------------- one training unit


def _nearest_neighbour_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, batch: int = 1024
) -> np.ndarray:
    """1-NN in Euclidean distance on flattened inputs, ties to the lowest train index. -> (m,)."""
    a = x_train.reshape(x_train.shape[0], -1).astype(np.float64)
    b = x_query.reshape(x_query.shape[0], -1).astype(np.float64)
    a_sq = (a * a).sum(1)
    out = np.empty(b.shape[0], dtype=np.int64)
    for start in range(0, b.shape[0], batch):
        q = b[start : start + batch]
        # Squared distance up to the per-query constant |q|^2, which does not change the argmin.
        d = a_sq[None, :] - 2.0 * q @ a.T
        out[start : start + batch] = y_train[np.argmin(d, axis=1)]
    return out


def train_unit(
    x: np.ndarray,
    y: np.ndarray,
    pairs: np.ndarray,
    selector: np.ndarray,
    *,
    n_classes: int,
    learner: Learner | str = Learner.MODEL,
    model_spec: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
    device: torch.device | None = None,
    should_stop: StopFn | None = None,
) -> UnitResult:
    """Train one learner on rows pairs[i, S_i] of (x, y) and predict all 2n supersample inputs.

    x (N, ...) pool inputs, y (N,) labels in 0..K-1, pairs (n, 2) pool rows, selector (n,)
    in {0, 1}. ``seed`` is both the init seed and the data-order seed (``unit_seeds``).
    -> UnitResult with predictions (n, 2) int16. The one-at-a-time reference of
    :func:`train_units`, which trains many selector draws as one batched ensemble.
    """
    learner = Learner(learner)
    train_rows, _ = split_pairs(pairs, selector)
    flat_rows = pairs.reshape(-1)
    if learner is Learner.ONE_NN:
        flat_pred = _nearest_neighbour_predict(x[train_rows], y[train_rows], x[flat_rows])
        predictions = flat_pred.reshape(pairs.shape).astype(np.int16)
    else:
        if model_spec is None:
            raise invalid("model_spec", "train_unit", "a model spec dict when learner='model'", None)
        device = device or torch.device("cpu")
        shape = tuple(input_shape) if input_shape is not None else tuple(x.shape[1:])
        recorded = _train_one(
            as_tensor(x[flat_rows], device),
            torch.as_tensor(y[flat_rows], dtype=torch.int64, device=device),
            _train_positions(selector),
            model_spec=model_spec,
            input_shape=shape,
            n_classes=n_classes,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            record=(epochs,),
            should_stop=should_stop,
        )
        predictions = recorded[0].cpu().numpy().reshape(pairs.shape).astype(np.int16)
    train_acc, heldout_acc = pair_accuracies(predictions, y[pairs], selector)
    return UnitResult(predictions, train_acc, heldout_acc)


@dataclass(frozen=True)
class UnitBatch:
    """The M trainings of one unit (e.g. the k2 selector draws of one supersample).

    epochs (E,) the recorded epochs, ascending (the last is the trained length) ·
    predictions (E, M, n, 2) int16: the class predicted for pool row pairs[i, c] by
    training m after each recorded epoch · train_accuracy, heldout_accuracy (E, M).
    """

    epochs: np.ndarray
    predictions: np.ndarray
    train_accuracy: np.ndarray
    heldout_accuracy: np.ndarray


def recorded_epochs(epochs: int, eval_epochs: Sequence[int] = ()) -> tuple[int, ...]:
    """The epochs a unit records predictions at: ``eval_epochs`` and the last, ascending."""
    for e in eval_epochs:
        if not 0 <= int(e) <= epochs:
            raise invalid("eval_epochs", "train_units", f"epochs in [0, {epochs}]", list(eval_epochs))
    return tuple(sorted({int(e) for e in eval_epochs} | {int(epochs)}))


def _train_positions(selector: np.ndarray) -> np.ndarray:
    """Positions, in the flattened (2n,) supersample, of the training members pairs[i, S_i]."""
    s = np.asarray(selector).astype(np.int64)
    return 2 * np.arange(s.shape[0]) + s


def _train_one(
    x_flat: torch.Tensor,
    y_flat: torch.Tensor,
    train_pos: np.ndarray,
    *,
    model_spec: Mapping[str, Any],
    input_shape: tuple[int, ...],
    n_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    seed: int,
    record: tuple[int, ...],
    should_stop: StopFn | None,
) -> torch.Tensor:
    """One training on x_flat[train_pos]; predicted classes on all of x_flat (2n, ...) after
    each epoch in ``record``. -> (E, 2n) int64 on x_flat's device."""
    device = x_flat.device
    model = build_model(model_spec, input_shape, n_classes, seed=seed).to(device)
    pos = torch.as_tensor(train_pos, device=device)
    recorded: list[torch.Tensor] = []

    def keep(epoch: int, trained: torch.nn.Module) -> None:
        if epoch in record:
            recorded.append(predict_logits(trained, x_flat).argmax(1))

    train_classifier(
        model,
        x_flat[pos],
        y_flat[pos],
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        on_epoch=keep,
        should_stop=should_stop,
    )
    return torch.stack(recorded)


def train_units(
    x: np.ndarray,
    y: np.ndarray,
    pairs: np.ndarray,
    selectors: np.ndarray,
    *,
    n_classes: int,
    seeds: Sequence[int],
    learner: Learner | str = Learner.MODEL,
    model_spec: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    eval_epochs: Sequence[int] = (),
    device: torch.device | None = None,
    batched: bool = True,
    should_stop: StopFn | None = None,
) -> UnitBatch:
    """Train M learners on one supersample, one per selector, and predict all 2n inputs.

    x (N, ...), y (N,) the pool; pairs (n, 2) pool rows; selectors (M, n) in {0, 1};
    seeds (M,) the init and data-order seed of each training (``unit_seeds``). Predictions
    are recorded after each epoch in ``eval_epochs`` and after the last.

    With ``batched`` (default) the M models train together as one :class:`Ensemble`
    (stacked weights, ``vmap``), equal to M :func:`train_unit` calls within float
    tolerance; models with batch norm or dropout, and ``batched=False``, train one at a
    time. The supersample's 2n inputs go to ``device`` once; predictions come back to
    the host once, at the end.
    """
    learner = Learner(learner)
    selectors = np.asarray(selectors).reshape(len(seeds), -1) if len(seeds) else np.asarray(selectors)
    m = selectors.shape[0]
    if m < 1 or len(seeds) != m or selectors.shape[1] != pairs.shape[0]:
        raise invalid(
            "selectors", "train_units", f"(M, {pairs.shape[0]}) with one seed per row", selectors.shape
        )
    flat_rows = pairs.reshape(-1)
    if learner is Learner.ONE_NN:
        record: tuple[int, ...] = (int(epochs),)
        train_rows = [split_pairs(pairs, s)[0] for s in selectors]
        flat = np.stack([_nearest_neighbour_predict(x[r], y[r], x[flat_rows]) for r in train_rows])[None]
    else:
        if model_spec is None:
            raise invalid("model_spec", "train_units", "a model spec dict when learner='model'", None)
        record = recorded_epochs(epochs, eval_epochs)
        device = device or torch.device("cpu")
        shape = tuple(input_shape) if input_shape is not None else tuple(x.shape[1:])
        x_flat = as_tensor(x[flat_rows], device)
        y_flat = torch.as_tensor(y[flat_rows], dtype=torch.int64, device=device)
        positions = np.stack([_train_positions(s) for s in selectors])
        models = [build_model(model_spec, shape, n_classes, seed=int(seed)) for seed in seeds]
        if batched and ensemble_supported(models[0]):
            ensemble = Ensemble(models, device)
            del models
            pos = torch.as_tensor(positions, device=device)
            kept: list[torch.Tensor] = []

            def keep(epoch: int, trained: Ensemble) -> None:
                if epoch in record:
                    kept.append(trained.predict_logits(x_flat, shared=True).argmax(2))

            ensemble.train(
                x_flat,
                y_flat,
                pos,
                seeds=[int(s) for s in seeds],
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                optimizer=optimizer,
                on_epoch=keep,
                should_stop=should_stop,
            )
            stacked = torch.stack(kept)  # (E, M, 2n)
        else:
            stacked = torch.stack(
                [
                    _train_one(
                        x_flat,
                        y_flat,
                        positions[i],
                        model_spec=model_spec,
                        input_shape=shape,
                        n_classes=n_classes,
                        epochs=epochs,
                        batch_size=batch_size,
                        lr=lr,
                        optimizer=optimizer,
                        seed=int(seeds[i]),
                        record=record,
                        should_stop=should_stop,
                    )
                    for i in range(m)
                ],
                dim=1,
            )
        flat = stacked.to(torch.int16).cpu().numpy()
    predictions = flat.reshape(len(record), m, *pairs.shape).astype(np.int16)
    labels = y[pairs]
    accs = np.array(
        [
            [pair_accuracies(predictions[e, i], labels, selectors[i]) for i in range(m)]
            for e in range(len(record))
        ]
    ).reshape(len(record), m, 2)
    return UnitBatch(
        epochs=np.asarray(record, dtype=np.int64),
        predictions=predictions,
        train_accuracy=accs[..., 0],
        heldout_accuracy=accs[..., 1],
    )


def pair_accuracies(predictions: np.ndarray, labels: np.ndarray, selector: np.ndarray) -> tuple[float, float]:
    """predictions (n, 2), labels (n, 2), selector (n,) -> (train accuracy, held-out accuracy)."""
    rows = np.arange(predictions.shape[0])
    s = selector.astype(np.int64)
    correct = predictions.astype(np.int64) == labels.astype(np.int64)
    return float(correct[rows, s].mean()), float(correct[rows, 1 - s].mean())


# ---------------------------------------------------------------- estimation


def pair_symbols(predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """predictions (..., n, 2) -> u = K * yhat_0 + yhat_1, (..., n) int64."""
    p = predictions.astype(np.int64)
    return n_classes * p[..., 0] + p[..., 1]


def _check_draws(selectors: np.ndarray, symbols: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(selectors)
    u = np.asarray(symbols)
    if s.ndim == 1:
        s = s[:, None]
    if u.ndim == 1:
        u = u[:, None]
    if s.shape != u.shape or s.ndim != 2 or s.shape[0] < 1:
        raise invalid("symbols", caller, f"an array of the selectors' shape {s.shape} (k2, n)", u.shape)
    return s.astype(np.int64), u.astype(np.int64)


def _counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of values (k2, n): (codes (k2, n) in 0..c_i-1, number of distinct values (n,))."""
    codes = np.empty_like(values)
    distinct = np.empty(values.shape[1], dtype=np.int64)
    for i in range(values.shape[1]):
        uniq, inv = np.unique(values[:, i], return_inverse=True)
        codes[:, i] = inv.reshape(-1)
        distinct[i] = uniq.size
    return codes, distinct


def plugin_mi(selectors: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Plug-in MI of (S_i, u_i) from k2 joint draws, nats, clipped at 0.

    selectors (k2, n) or (k2,), symbols of the same shape -> (n,) float64.
    Î_i = Σ_{s,u} p̂(s,u) log[p̂(s,u) / (p̂(s) p̂(u))].
    """
    s, u = _check_draws(selectors, symbols, "plugin_mi")
    k2, n = s.shape
    s_code, s_distinct = _counts(s)
    u_code, u_distinct = _counts(u)
    mi = np.zeros(n, dtype=np.float64)
    for i in range(n):
        joint = np.zeros((int(s_distinct[i]), int(u_distinct[i])), dtype=np.float64)
        np.add.at(joint, (s_code[:, i], u_code[:, i]), 1.0)
        ps = joint.sum(1, keepdims=True)
        pu = joint.sum(0, keepdims=True)
        nz = joint > 0
        # counts, not probabilities: p(s,u)/(p(s)p(u)) = c(s,u) k2 / (c(s) c(u))
        ratio = joint * k2 / (ps * pu)
        mi[i] = float((joint[nz] * np.log(ratio[nz])).sum() / k2)
    return np.clip(mi, 0.0, None)


def miller_madow_term(selectors: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """The plug-in MI's first-order bias per pair, nats: (m_SU - m_S - m_U + 1) / (2 k2).

    (k2, n) -> (n,). m_S, m_U, m_SU = observed symbols of S_i, u_i and the pair (S_i, u_i)
    over the k2 draws. Each plug-in entropy is low by about (m - 1)/(2 k2) (Miller-Madow),
    so Î = Ĥ(S) + Ĥ(U) - Ĥ(S, U) is high by this term, and the corrected
    Î_MM = Î - term. Positive when S and u look independent (all m_S·m_U combinations
    seen: (m_S - 1)(m_U - 1)/(2 k2)), negative when u determines S (m_SU = m_U:
    -(m_S - 1)/(2 k2)).
    """
    s, u = _check_draws(selectors, symbols, "miller_madow_term")
    k2 = s.shape[0]
    _, s_distinct = _counts(s)
    _, u_distinct = _counts(u)
    # One code per (s, u): s takes few values, u is shifted past its largest value.
    u_shifted = u - u.min()
    joint = s * (int(u_shifted.max()) + 1) + u_shifted
    _, joint_distinct = _counts(joint)
    return (joint_distinct - s_distinct - u_distinct + 1) / (2.0 * k2)


def estimate_mi(
    selectors: np.ndarray, symbols: np.ndarray, estimator: MiEstimator | str = MiEstimator.PLUGIN
) -> np.ndarray:
    """Per-pair MI (n,) in nats with ``estimator`` (see :class:`MiEstimator`), clipped at 0.

    ``miller_madow``: Î_MM = Î + (m_S + m_U - m_SU - 1)/(2 k2) (see :func:`miller_madow_term`).
    """
    estimator = MiEstimator(estimator)
    mi = plugin_mi(selectors, symbols)
    if estimator is MiEstimator.MILLER_MADOW:
        mi = np.clip(mi - miller_madow_term(selectors, symbols), 0.0, None)
    return mi


def samplewise_bound(mi: np.ndarray) -> float:
    """(1/n) Σ_i sqrt(2 Î_i) for mi (n,) in nats (clipped at 0 first)."""
    return float(np.sqrt(2.0 * np.clip(np.asarray(mi, dtype=np.float64), 0.0, None)).mean())


def estimate_supersample(
    predictions: np.ndarray,
    selectors: np.ndarray,
    train_accuracy: np.ndarray,
    heldout_accuracy: np.ndarray,
    *,
    n_classes: int,
    estimator: MiEstimator | str = MiEstimator.PLUGIN,
) -> SupersampleEstimate:
    """predictions (k2, n, 2), selectors (k2, n), accuracies (k2,) -> one supersample's estimate."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 3 or predictions.shape[2] != 2:
        raise invalid(
            "predictions", "estimate_supersample", "an array of shape (k2, n, 2)", predictions.shape
        )
    symbols = pair_symbols(predictions, n_classes)
    mi = estimate_mi(selectors, symbols, estimator)
    train = np.asarray(train_accuracy, dtype=np.float64).reshape(-1)
    heldout = np.asarray(heldout_accuracy, dtype=np.float64).reshape(-1)
    return SupersampleEstimate(
        mi=mi,
        bias=miller_madow_term(selectors, symbols),
        bound=samplewise_bound(mi),
        gap=float((train - heldout).mean()),
        train_accuracy=float(train.mean()),
        heldout_accuracy=float(heldout.mean()),
        units=int(predictions.shape[0]),
    )


def aggregate(n: int, estimates: Sequence[SupersampleEstimate]) -> Aggregate:
    """Mean and std (ddof = 0) of bound and gap over the k1 supersamples of one n."""
    if not estimates:
        raise invalid("estimates", "aggregate", "at least one supersample estimate", [])
    bounds = np.array([e.bound for e in estimates])
    gaps = np.array([e.gap for e in estimates])
    return Aggregate(
        n=int(n),
        gap_mean=float(gaps.mean()),
        gap_std=float(gaps.std()),
        bound_mean=float(bounds.mean()),
        bound_std=float(bounds.std()),
        train_accuracy=float(np.mean([e.train_accuracy for e in estimates])),
        heldout_accuracy=float(np.mean([e.heldout_accuracy for e in estimates])),
        units=int(sum(e.units for e in estimates)),
        bias_estimate=float(np.mean(np.concatenate([e.bias for e in estimates]))),
    )


# ---------------------------------------------------------------- experimental (unverified)


def binary_kl(p: float, q: float) -> float:
    """d(p || q) between Bernoulli(p) and Bernoulli(q), nats; inf where q hits 0 or 1 with p off it."""

    def term(a: float, b: float) -> float:
        if a == 0.0:
            return 0.0
        if b == 0.0:
            return math.inf
        return a * math.log(a / b)

    return term(p, q) + term(1.0 - p, 1.0 - q)


def binary_kl_test_error_bound(
    empirical_error: float, info_per_sample: float, *, tol: float = 1e-12
) -> float:
    """[unverified, experimental] The largest test error L with d(e || (e + L)/2) <= c, capped at 1.

    e = ``empirical_error`` in [0, 1], c = ``info_per_sample`` (nats). docs/science.md §3.2 item 3
    states d(E L_emp || (E L_emp + E L_test)/2) <= f-CMI_D / n; for e = 0 this is
    L <= 2 (1 - exp(-c)). Not verified against the paper; never an acceptance target.
    """
    e = float(min(max(empirical_error, 0.0), 1.0))
    c = float(max(info_per_sample, 0.0))
    # q = (e + L)/2 ranges over [e, (e + 1)/2], where d(e || q) grows with q: bisect on q.
    lo, hi = e, (e + 1.0) / 2.0
    if binary_kl(e, hi) <= c:
        return 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if binary_kl(e, mid) <= c:
            lo = mid
        else:
            hi = mid
    return float(min(2.0 * lo - e, 1.0))


def experimental_binary_kl(estimate: SupersampleEstimate) -> dict[str, float]:
    """[unverified] Binary-KL form for one supersample, with mean_i Î_i standing in for f-CMI/n.

    The stand-in is itself unverified: Σ_i I(F_i; S_i) is not f-CMI in general.
    -> {"info_per_sample", "train_error", "test_error_bound", "gap_bound"}.
    """
    c = float(np.mean(estimate.mi))
    train_error = 1.0 - estimate.train_accuracy
    test_bound = binary_kl_test_error_bound(train_error, c)
    return {
        "info_per_sample": c,
        "train_error": train_error,
        "test_error_bound": test_bound,
        "gap_bound": test_bound - train_error,
    }


# ---------------------------------------------------------------- the experiment: plan, units, reduce

MI_LABELS = {
    MiEstimator.PLUGIN: "plug-in (biased upward; comparable with published numbers)",
    MiEstimator.MILLER_MADOW: "bias-corrected (Miller-Madow; not a guaranteed bound)",
}
_KIND = "fcmi-bound"


def unit_name(n: int, supersample: int) -> str:
    """The name of the unit of size ``n`` and supersample seed ``supersample``."""
    return f"n{n}-s{supersample}"


@dataclass(frozen=True)
class FcmiUnit:
    """One independent piece of an f-CMI experiment: the k2 selector draws
    ``selector_seeds`` of the supersample of size ``n`` drawn with ``supersample_seed``,
    trained together (one batched ensemble).

    It holds everything its result depends on besides the dataset, so :func:`run_unit`
    needs nothing else (no plan). ``learner = "model"``: the model spec, the training
    recipe, the init and data-order seed of each draw (``init_seeds``, :func:`unit_seeds`)
    and ``eval_epochs``, the epochs it records (the config's ``eval_epochs`` and the last).
    ``learner = "1nn"``: those fields are None (the 1-NN control depends on none of them).
    """

    name: str
    n: int
    supersample_seed: int
    selector_seeds: tuple[int, ...]
    learner: str = Learner.MODEL.value
    model: Mapping[str, Any] | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    init_seeds: tuple[int, ...] | None = None
    eval_epochs: tuple[int, ...] | None = None

    def params(self) -> dict[str, Any]:
        """The unit as a JSON-able dict (the service hashes it into the unit's cache key;
        :meth:`from_params` reads it back)."""
        params: dict[str, Any] = {
            "n": self.n,
            "supersample_seed": self.supersample_seed,
            "selector_seeds": list(self.selector_seeds),
            "learner": self.learner,
        }
        if Learner(self.learner) is Learner.MODEL:
            params.update(
                model=self.model,
                epochs=self.epochs,
                lr=self.lr,
                batch_size=self.batch_size,
                optimizer=self.optimizer,
                init_seeds=list(self.init_seeds or ()),
                eval_epochs=list(self.eval_epochs or ()),
            )
        return params

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> FcmiUnit:
        """The unit :meth:`params` describes; keys it does not know (e.g. the service's
        dataset reference) are ignored."""
        learner = Learner(params["learner"])
        n = int(params["n"])
        supersample = int(params["supersample_seed"])
        selectors = tuple(int(j) for j in params["selector_seeds"])
        if learner is not Learner.MODEL:
            return cls(name, n, supersample, selectors, learner.value)
        return cls(
            name,
            n,
            supersample,
            selectors,
            learner.value,
            model=params["model"],
            epochs=int(params["epochs"]),
            lr=float(params["lr"]),
            batch_size=int(params["batch_size"]),
            optimizer=str(params["optimizer"]),
            init_seeds=tuple(int(v) for v in params["init_seeds"]),
            eval_epochs=tuple(int(e) for e in params["eval_epochs"]),
        )


def check_pool(pool_size: int, config: FcmiConfig) -> None:
    """2 * max(n) <= the training rows, else InvalidInputError naming ``n``."""
    if 2 * max(config.n) > pool_size:
        raise invalid(
            "n",
            _KIND,
            f"a list of sizes with 2 * max(n) <= {pool_size} (the training samples)",
            list(config.n),
        )


def _model_spec(model: Mapping[str, Any] | None) -> dict[str, Any]:
    from .models import ARCHITECTURES

    spec = model_spec(model, _KIND)
    if spec.get("arch") not in ARCHITECTURES:
        raise invalid("model", _KIND, f"a model spec with 'arch' one of {sorted(ARCHITECTURES)}", model)
    return spec


def plan(dataset: Dataset, model: Mapping[str, Any] | None, config: FcmiConfig) -> list[FcmiUnit]:
    """One unit per (n, supersample s < k1), n in config order; each holds the k2 selector
    draws j < k2 of its supersample. Pure: draws nothing, trains nothing.

    Raises InvalidInputError (``n``) when 2 * max(n) exceeds the dataset's training rows.
    """
    check_pool(dataset.n_train, config)
    learner = Learner(config.learner)
    selectors = tuple(range(config.k2))
    if learner is not Learner.MODEL:
        return [
            FcmiUnit(unit_name(n, s), n, s, selectors, learner.value)
            for n in config.n
            for s in range(config.k1)
        ]
    spec = _model_spec(model)
    recorded = recorded_epochs(config.epochs, config.eval_epochs)
    units = []
    for n in config.n:
        for s in range(config.k1):
            units.append(
                FcmiUnit(
                    unit_name(n, s),
                    n,
                    s,
                    selectors,
                    learner.value,
                    model=spec,
                    epochs=config.epochs,
                    lr=config.lr,
                    batch_size=config.batch_size,
                    optimizer=config.optimizer,
                    init_seeds=tuple(
                        unit_seeds(config.seed, s, j, deterministic=config.deterministic) for j in selectors
                    ),
                    eval_epochs=recorded,
                )
            )
    return units


def run_unit(
    dataset: Dataset,
    unit: FcmiUnit,
    *,
    device: torch.device | str = "cpu",
    should_stop: StopFn | None = None,
) -> dict[str, np.ndarray]:
    """Train the unit's k2 learners (batched) on ``dataset``'s training rows.

    -> predictions (E, k2, n, 2) int16 after each recorded epoch, epochs (E,) int64,
    selectors (k2, n) int8, accuracy (E, k2, 2) float64 = [train, held-out],
    seconds (1,) float64. Reads only ``unit`` and the dataset, so a unit's result is the
    same in every experiment that plans it (the service caches units by content).
    """
    start = time.perf_counter()
    n = unit.n
    pairs = make_supersample(dataset.n_train, n, unit.supersample_seed)
    selectors = np.stack([draw_selector(n, j) for j in unit.selector_seeds])
    learner = Learner(unit.learner)
    if learner is Learner.MODEL:
        if (
            unit.model is None
            or unit.epochs is None
            or unit.lr is None
            or unit.batch_size is None
            or unit.optimizer is None
            or unit.init_seeds is None
        ):
            raise invalid("unit", "fcmi.run_unit", "a model unit with its model, recipe and seeds", unit)
        batch = train_units(
            dataset.x_train,
            dataset.y_train,
            pairs,
            selectors,
            n_classes=dataset.n_classes,
            seeds=list(unit.init_seeds),
            learner=learner,
            model_spec=unit.model,
            input_shape=dataset.input_shape,
            epochs=unit.epochs,
            batch_size=unit.batch_size,
            lr=unit.lr,
            optimizer=unit.optimizer,
            eval_epochs=list(unit.eval_epochs or ()),
            device=_device(device),
            should_stop=should_stop,
        )
    else:
        batch = train_units(
            dataset.x_train,
            dataset.y_train,
            pairs,
            selectors,
            n_classes=dataset.n_classes,
            seeds=list(range(len(selectors))),
            learner=learner,
        )
    return {
        "predictions": batch.predictions,
        "epochs": batch.epochs,
        "selectors": selectors,
        "accuracy": np.stack([batch.train_accuracy, batch.heldout_accuracy], axis=-1).astype(np.float64),
        "seconds": np.array([time.perf_counter() - start], dtype=np.float64),
    }


def _device(device: torch.device | str) -> torch.device:
    from .training import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


@dataclass
class FcmiResult:
    """The estimates of one f-CMI experiment.

    estimates: n -> the k1 supersamples' estimates after the last epoch, n in config order ·
    aggregates: one :class:`Aggregate` per n (mean and std over supersamples), config order ·
    by_epoch_estimates: n -> recorded epoch -> the k1 estimates after that epoch (empty
    unless ``config.eval_epochs``) · settings: the run's settings as the summary reports
    them · seconds: the units' training seconds plus the reduce time.
    """

    config: FcmiConfig
    estimates: dict[int, list[SupersampleEstimate]]
    aggregates: list[Aggregate]
    by_epoch_estimates: dict[int, dict[int, list[SupersampleEstimate]]]
    settings: dict[str, Any]
    seconds: float

    def results(self) -> list[dict[str, Any]]:
        """One row per n (config order): bound and gap mean and std, accuracies, units."""
        return [_result_row(agg) for agg in self.aggregates]

    def by_epoch(self) -> list[dict[str, Any]]:
        """One row per (n, recorded epoch), n in config order and epochs ascending: the keys
        of :meth:`results` plus ``epoch`` and ``mi_mean``. Empty without eval_epochs."""
        rows = []
        for n, per_epoch in self.by_epoch_estimates.items():
            for epoch, ests in per_epoch.items():
                row = _result_row(aggregate(n, ests))
                row["mi_mean"] = float(np.mean([est.mi.mean() for est in ests]))
                rows.append({"epoch": epoch, **row})
        return rows

    def summary(self) -> dict[str, Any]:
        """The ``fcmi-bound`` job's summary (docs/jobs/fcmi-bound.md)."""
        estimator = MiEstimator(self.config.mi_estimator)
        bias_by_n = [{"n": agg.n, "bias_estimate": agg.bias_estimate} for agg in self.aggregates]
        summary: dict[str, Any] = {
            "kind": _KIND,
            "results": self.results(),
            "settings": self.settings,
            "mi_estimator": estimator.value,
            "mi_estimator_label": MI_LABELS[estimator],
            "units_of_information": "nats",
            # Mean over pairs of the plug-in bias Miller-Madow estimates, (m_SU - m_S - m_U + 1)/(2 k2), nats per pair.
            "bias_estimate": float(np.mean([b["bias_estimate"] for b in bias_by_n])),
            "bias_estimate_by_n": bias_by_n,
            "seconds": self.seconds,
        }
        if self.config.eval_epochs:
            summary["by_epoch"] = self.by_epoch()
        if self.config.experimental:
            summary["experimental"] = {
                "label": "unverified: binary-KL form, mean per-pair MI standing in for f-CMI/n",
                "supersamples": [
                    {"n": n, "supersample": s, **experimental_binary_kl(est)}
                    for n, ests in self.estimates.items()
                    for s, est in enumerate(ests)
                ],
            }
        return summary

    def table(self) -> pd.DataFrame | None:
        """None: no per-sample table: a pair's MI belongs to a pair of a random supersample, not
        to one training sample (``data_files`` has the per-pair MI)."""
        return None

    def data_files(self) -> dict[str, bytes]:
        """``mi.csv`` (n, supersample, pair, mi) after the last epoch and, with eval_epochs,
        ``mi_by_epoch.csv`` (epoch, n, supersample, pair, mi). MI in nats."""
        rows = ["n,supersample,pair,mi"]
        for n, ests in self.estimates.items():
            for s, est in enumerate(ests):
                rows.extend(f"{n},{s},{i},{v:.10g}" for i, v in enumerate(est.mi))
        files = {"mi.csv": ("\n".join(rows) + "\n").encode()}
        if self.config.eval_epochs:
            epoch_rows = ["epoch,n,supersample,pair,mi"]
            for n, per_epoch in self.by_epoch_estimates.items():
                for epoch, ests in per_epoch.items():
                    for s, est in enumerate(ests):
                        epoch_rows.extend(f"{epoch},{n},{s},{i},{v:.10g}" for i, v in enumerate(est.mi))
            files["mi_by_epoch.csv"] = ("\n".join(epoch_rows) + "\n").encode()
        return files

    def figures(self) -> dict[str, bytes]:
        """PNG files: ``bound.png`` (bound and gap vs n) and, with eval_epochs,
        ``bound_epochs.png`` (bound and gap vs epoch, one colour per n)."""
        estimator = MiEstimator(self.config.mi_estimator)
        figures = {"bound.png": plot_bound(self.results(), estimator)}
        if self.config.eval_epochs:
            figures["bound_epochs.png"] = plot_bound_epochs(self.by_epoch(), estimator)
        return figures


def _result_row(agg: Aggregate) -> dict[str, Any]:
    return {
        "n": agg.n,
        "gap_mean": agg.gap_mean,
        "gap_std": agg.gap_std,
        "bound_mean": agg.bound_mean,
        "bound_std": agg.bound_std,
        "train_acc": agg.train_accuracy,
        "test_acc": agg.heldout_accuracy,
        "units": agg.units,
    }


def reduce(
    dataset: Dataset,
    model: Mapping[str, Any] | None,
    config: FcmiConfig,
    results: Mapping[str, Mapping[str, np.ndarray]],
) -> FcmiResult:
    """The units' results (unit name -> what :func:`run_unit` returned) -> per supersample:
    per-pair MI, bound, gap; per n: mean and std over supersamples; the same after every
    recorded epoch. Every planned unit must be there (InvalidInputError ``results``)."""
    start = time.perf_counter()
    estimator = MiEstimator(config.mi_estimator)
    learner = Learner(config.learner)
    missing = [unit_name(n, s) for n in config.n for s in range(config.k1) if unit_name(n, s) not in results]
    if missing:
        raise invalid("results", "fcmi.reduce", "one result per planned unit", f"{len(missing)} missing")
    unit_seconds = 0.0
    estimates: dict[int, list[SupersampleEstimate]] = {}
    by_epoch: dict[int, dict[int, list[SupersampleEstimate]]] = {}
    aggregates = []
    for n in config.n:
        draws = [results[unit_name(n, s)] for s in range(config.k1)]
        unit_seconds += float(sum(float(d["seconds"][0]) for d in draws))
        epochs = [int(e) for e in draws[0]["epochs"]]
        per_epoch = {
            epoch: [
                estimate_supersample(
                    d["predictions"][e_i],
                    d["selectors"],
                    d["accuracy"][e_i, :, 0],
                    d["accuracy"][e_i, :, 1],
                    n_classes=dataset.n_classes,
                    estimator=estimator,
                )
                for d in draws
            ]
            for e_i, epoch in enumerate(epochs)
        }
        if epochs[-1] != config.epochs and learner is Learner.MODEL:
            raise invalid("results", "fcmi.reduce", f"units trained for {config.epochs} epochs", epochs[-1])
        estimates[n] = per_epoch[epochs[-1]]
        aggregates.append(aggregate(n, estimates[n]))
        if config.eval_epochs:
            by_epoch[n] = per_epoch
    return FcmiResult(
        config=config,
        estimates=estimates,
        aggregates=aggregates,
        by_epoch_estimates=by_epoch,
        settings=_settings(dataset, model, config),
        seconds=unit_seconds + (time.perf_counter() - start),
    )


def _settings(dataset: Dataset, model: Mapping[str, Any] | None, config: FcmiConfig) -> dict[str, Any]:
    learner = Learner(config.learner)
    settings: dict[str, Any] = {
        "n": list(config.n),
        "k1": config.k1,
        "k2": config.k2,
        "learner": learner.value,
        "n_classes": dataset.n_classes,
        "pool_size": dataset.n_train,
        "supersample_seeds": list(range(config.k1)),
        "selector_seeds": list(range(config.k2)),
        "gap": "train accuracy - held-out accuracy on the supersample (0-1 loss)",
        "bound": "(1/n) sum_i sqrt(2 I_i), sample-wise",
    }
    if learner is Learner.MODEL:
        settings.update(
            model=_model_spec(model),
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            optimizer=config.optimizer,
            deterministic=config.deterministic,
            eval_epochs=list(config.eval_epochs),
            seed=config.seed,
            init_seed=(
                DETERMINISTIC_SEED
                if config.deterministic
                else "SeedSequence([seed, supersample_seed, selector_seed]).generate_state(1)[0]"
            ),
        )
    return settings


def fcmi_bound(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: FcmiConfig = FcmiConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> FcmiResult:
    """Sample-wise f-CMI bound vs the measured generalization gap (docs/jobs/fcmi-bound.md).

    :func:`plan`, then :func:`run_unit` for each unit in turn (k2 trainings batched per
    unit), then :func:`reduce`, in this process; the service's fan-out calls the same three
    functions. ``model`` is a spec of :func:`infoscore.models.build_model` (None = the
    default MLP, ``infoscore.config_checks.DEFAULT_MODEL``); ignored by ``learner = "1nn"``. ``progress(done,
    total)`` counts units (len(n) * k1); ``should_stop()`` is checked between units and
    inside each training (raises :class:`infoscore.Cancelled`).
    """
    if not isinstance(config, FcmiConfig):
        raise invalid("config", "fcmi_bound", "an FcmiConfig", type(config).__name__)
    units = plan(dataset, model, config)
    dev = _device(device)
    results: dict[str, dict[str, np.ndarray]] = {}
    for i, unit in enumerate(units):
        check_stop(should_stop)
        results[unit.name] = run_unit(dataset, unit, device=dev, should_stop=should_stop)
        if progress is not None:
            progress(i + 1, len(units))
    return reduce(dataset, model, config, results)


# ---------------------------------------------------------------- figures


def plot_bound_epochs(rows: Sequence[Mapping[str, Any]], estimator: MiEstimator | str) -> bytes:
    """Bound (solid) and gap (dashed) vs epoch, one colour per n, mean ± std over
    supersamples; rows as :meth:`FcmiResult.by_epoch`. -> PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    label = "bound" if MiEstimator(estimator) is MiEstimator.PLUGIN else "bound (bias-corrected)"
    for i, n in enumerate(sorted({int(r["n"]) for r in rows})):
        mine = sorted((r for r in rows if int(r["n"]) == n), key=lambda r: int(r["epoch"]))
        ep = np.array([r["epoch"] for r in mine], dtype=np.float64)
        color = f"C{i % 10}"
        for key, style, what in (("bound", "-o", label), ("gap", "--s", "gap")):
            mean = np.array([r[f"{key}_mean"] for r in mine])
            std = np.array([r[f"{key}_std"] for r in mine])
            ax.plot(ep, mean, style, color=color, markersize=3, label=f"{what}, n = {n}")
            ax.fill_between(ep, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (0-1 loss)")
    ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_bound(results: Sequence[Mapping[str, Any]], estimator: MiEstimator | str) -> bytes:
    """Bound and gap (mean ± std over supersamples) vs n, log-x; rows as
    :meth:`FcmiResult.results`. -> PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ns = np.array([r["n"] for r in results], dtype=np.float64)
    order = np.argsort(ns)
    ns = ns[order]

    def col(key: str) -> np.ndarray:
        return np.array([results[i][key] for i in order], dtype=np.float64)

    fig = Figure(figsize=(5.0, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    plugin = MiEstimator(estimator) is MiEstimator.PLUGIN
    label = "f-CMI bound" if plugin else "f-CMI bound (bias-corrected)"
    ax.errorbar(ns, col("bound_mean"), yerr=col("bound_std"), marker="o", capsize=3, label=label)
    ax.errorbar(ns, col("gap_mean"), yerr=col("gap_std"), marker="s", capsize=3, label="generalization gap")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(v)) for v in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("n (training samples)")
    ax.set_ylabel("error (0-1 loss)")
    ax.set_ylim(bottom=0.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
