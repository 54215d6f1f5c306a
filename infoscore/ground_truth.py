"""Ground truth for SI / F-SI: actually retrain without sample i (docs/science.md §2.6).

Glossary: **n** samples, **k** outputs, **p** parameters, **m** held-out inputs, **s**
samples in the checked subset.

Two references, both under the *same* protocol as the linearized estimate so that the
comparison measures the linearization and nothing else:

``network``
    The real network, copied to float64, BatchNorm and dropout in eval mode, trained from
    the same initial weights w₀ by **full-batch** gradient descent for t steps on the MSE
    mean loss (1/n)Σ½‖f(x_j) − e_{y_j}‖² + ½λ'‖w − w₀‖² with step ``lr``, i.e. the sum
    form with η = lr/n and λ = nλ' (:mod:`infoscore.linearized`). The run without i uses
    η = lr/(n − 1) and λ per ``loo_lambda``. Full batch means there is no data order to
    keep equal, and float64 keeps round-off far below ‖w − w₋ᵢ‖.
``linearized``
    The linearized model refit without i in weight space: t explicit GD steps, or the
    ridge solve (JᵀJ + λI)⁻¹ for t = ∞. It checks the closed-form LOO, not the
    linearization.

Both report ‖w − w₋ᵢ‖² and Σ_{x'}‖f_w(x') − f_{w₋ᵢ}(x')‖² (no 1/(2σ²): correlations do
not see a global scale). :func:`compare` gives Pearson (the official statistic) and
Spearman correlations against the estimates.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .errors import invalid
from .linearized import LooLambda, explicit_gd_weights, loo_sum_form, one_hot, ridge_weights, sum_form
from .ntk import flat_parameters, per_sample_jacobians
from .progress import ProgressFn, StopFn, check_stop


def choose_subset(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded subset of min(size, n) distinct indices in 0..n-1."""
    size = min(int(size), n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def _average_ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    sorted_a = np.asarray(a)[order]
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j)
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation with average ranks for ties."""
    return pearson(_average_ranks(np.asarray(a)), _average_ranks(np.asarray(b)))


@dataclass
class LooChanges:
    """sq_weights (s,) = ‖w − w₋ᵢ‖²; sq_predictions (s,) = Σ_{x'}‖Δf(x')‖² or None."""

    indices: np.ndarray
    sq_weights: np.ndarray
    sq_predictions: np.ndarray | None


def _full_batch_gd(
    net: nn.Module,
    w0: list[Tensor],
    x: Tensor,
    targets: Tensor,
    weight: Tensor,
    *,
    eta: float,
    lam: float,
    t: int,
    should_stop: StopFn | None,
) -> None:
    """t steps of w ← w − η(∇½Σ_j weight_j‖f(x_j) − y_j‖² + λ(w − w₀)), in place."""
    params = list(net.parameters())
    for _ in range(t):
        check_stop(should_stop)
        out = net(x)
        loss = 0.5 * (weight.reshape(-1, 1) * (out - targets) ** 2).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for prm, g, start in zip(params, grads, w0, strict=True):
                prm.sub_(eta * (g + lam * (prm - start)))


def network_loo(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    k: int,
    indices: np.ndarray,
    t: int,
    lr: float,
    l2: float,
    loo_lambda: LooLambda = "same",
    x_eval: Tensor | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LooChanges:
    """Retrain the real network on S and on S∖{i} for each i in ``indices`` (see module doc).

    x (n, ...), y (n,) int; x_eval (m, ...) or None. ``model`` is not modified.
    """
    if t is None or t < 1:
        raise invalid("t", "network_loo", "a positive integer (the network is retrained for t steps)", t)
    n = x.shape[0]
    eta, lam = sum_form(n, lr, l2)
    eta_loo, lam_loo = loo_sum_form(n, lr, l2, loo_lambda)
    base = copy.deepcopy(model).double().eval()
    w0 = [p.detach().clone() for p in base.parameters()]
    x64 = x.double()
    xe64 = None if x_eval is None else x_eval.double()
    targets = one_hot(y.to(x64.device), k)

    def run(weight: Tensor, eta_: float, lam_: float) -> tuple[Tensor, Tensor | None]:
        net = copy.deepcopy(base)
        _full_batch_gd(net, w0, x64, targets, weight, eta=eta_, lam=lam_, t=t, should_stop=should_stop)
        with torch.no_grad():
            f_eval = None if xe64 is None else net(xe64)
        return flat_parameters(net), f_eval

    ones = torch.ones(n, dtype=torch.float64, device=x64.device)
    w_full, f_full = run(ones, eta, lam)
    # Results stay on the device until the end (no host sync per retraining).
    sq_w = torch.empty(len(indices), dtype=torch.float64, device=x64.device)
    sq_f = torch.empty_like(sq_w) if f_full is not None else None
    for j, i in enumerate(indices):
        weight = ones.clone()
        weight[int(i)] = 0.0
        w_i, f_i = run(weight, eta_loo, lam_loo)
        sq_w[j] = ((w_full - w_i) ** 2).sum()
        if sq_f is not None and f_full is not None and f_i is not None:
            sq_f[j] = ((f_full - f_i) ** 2).sum()
        if progress is not None:
            progress(j + 1, len(indices))
    return LooChanges(np.asarray(indices), sq_w.cpu().numpy(), None if sq_f is None else sq_f.cpu().numpy())


def linearized_loo(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    k: int,
    indices: np.ndarray,
    t: int | None,
    lr: float,
    l2: float,
    loo_lambda: LooLambda = "same",
    x_eval: Tensor | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LooChanges:
    """Refit the linearized model without each i in weight space (explicit GD or ridge solve).

    Holds J (nk, p) in float64: for small problems and tests.
    """
    n = x.shape[0]
    eta, lam = sum_form(n, lr, l2)
    eta_loo, lam_loo = loo_sum_form(n, lr, l2, loo_lambda)
    with torch.no_grad():
        was = model.training
        model.eval()
        f0 = model(x).double()
        model.train(was)
    jac = per_sample_jacobians(model, x, should_stop=should_stop).double()
    p = jac.shape[2]
    jac = jac.reshape(n * k, p)
    jac_eval = None if x_eval is None else per_sample_jacobians(model, x_eval).double().reshape(-1, p)
    r0 = f0.reshape(-1) - one_hot(y.to(f0.device), k).reshape(-1)
    dev = r0.device

    def fit(rows: Tensor, eta_: float, lam_: float) -> Tensor:
        if t is None:
            return ridge_weights(jac[rows], r0[rows], lam=lam_)
        return explicit_gd_weights(jac[rows], r0[rows], lam=lam_, eta=eta_, t=t)

    full = fit(torch.ones(n * k, dtype=torch.bool, device=dev), eta, lam)
    sq_w = torch.empty(len(indices), dtype=torch.float64, device=dev)
    sq_f = torch.empty_like(sq_w) if jac_eval is not None else None
    for j, i in enumerate(indices):
        check_stop(should_stop)
        keep = torch.ones(n * k, dtype=torch.bool, device=dev)
        keep[int(i) * k : (int(i) + 1) * k] = False
        dw = full - fit(keep, eta_loo, lam_loo)
        sq_w[j] = (dw**2).sum()
        if sq_f is not None and jac_eval is not None:
            sq_f[j] = ((jac_eval @ dw) ** 2).sum()
        if progress is not None:
            progress(j + 1, len(indices))
    return LooChanges(np.asarray(indices), sq_w.cpu().numpy(), None if sq_f is None else sq_f.cpu().numpy())


def compare(
    predicted_weights: np.ndarray,
    actual: LooChanges,
    predicted_predictions: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Pearson and Spearman between estimates (on ``actual.indices``) and actual changes.

    predicted_* are the full (n,) score arrays; they are indexed by ``actual.indices``.
    """
    idx = actual.indices
    out: dict[str, float | int] = {
        "subset": int(idx.size),
        "pearson_weights": pearson(predicted_weights[idx], actual.sq_weights),
        "spearman_weights": spearman(predicted_weights[idx], actual.sq_weights),
    }
    if predicted_predictions is not None and actual.sq_predictions is not None:
        out["pearson_predictions"] = pearson(predicted_predictions[idx], actual.sq_predictions)
        out["spearman_predictions"] = spearman(predicted_predictions[idx], actual.sq_predictions)
    else:
        out["pearson_predictions"] = math.nan
        out["spearman_predictions"] = math.nan
    return out
