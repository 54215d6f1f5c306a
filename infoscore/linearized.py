"""Closed-form gradient-descent dynamics of a linearized network (docs/science.md §2.2).

Glossary: **n** samples, **k** outputs, **p** parameters, N = n*k. The network is
linearized at its reference weights w₀: f_w(x) ≈ f₀(x) + J(x)(w − w₀), J stacked
sample-major into (N, p), Θ = J Jᵀ (N, N). Targets are one-hot 0/1 vectors and the loss is
MSE, so gradient descent has a closed form.

Conventions (mean vs sum form)
------------------------------
Callers speak the *mean* form of the official code: the loss is
(1/n) Σ_i ½‖f(x_i) − y_i‖² + ½ λ' ‖w − w₀‖² with step ``lr``. The closed forms use the
equivalent *sum* form ½‖f(X) − Y‖² + ½ λ ‖w − w₀‖² with step η; they match when
**η = lr / n** and **λ = n λ'** (:func:`sum_form`). Leave-one-out (LOO) training on n − 1
samples uses η = lr / (n − 1) and, by default, the same λ (``loo_lambda="same"``);
``"rescaled"`` uses (n − 1) λ', which is what literally re-running the mean-form loss on
n − 1 samples does (:func:`loo_sum_form`).

Dynamics, with A = Θ + λI, r₀ = f₀(X) − Y (N,) and E_t = (I − ηA)ᵗ (``discrete``) or
exp(−ηAt) (``continuous``)::

    u_t      = A⁻¹ (I − E_t) r₀                  (N,)
    w_t − w₀ = −Jᵀ u_t
    f_t(x')  = f₀(x') − Θ_{x'X} u_t

t = ∞ (``t=None``) is the ridge solution u = A⁻¹ r₀ (needs A ≻ 0; η plays no role).
Finite t goes through ``eigh``: A⁻¹(I − E_t) = U diag(g(s)) Uᵀ with the stable
g(s) = −expm1(t·log1p(−ηs)) / s (discrete, ηs < 1), (1 − (1 − ηs)ᵗ) / s for 1 ≤ ηs < 2,
−expm1(−ηts) / s (continuous) and g → ηt as s → 0. Discrete GD with η·s_max ≥ 2 diverges
and is rejected.

All kernel algebra is float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import NumericalError, invalid

TimeMode = Literal["discrete", "continuous"]
LooLambda = Literal["same", "rescaled"]
TIME_MODES: tuple[str, ...] = ("discrete", "continuous")
LOO_LAMBDAS: tuple[str, ...] = ("same", "rescaled")
# Jitter ladder ε for Cholesky, relative to tr(A)/N (docs/science.md §1).
JITTER_LADDER: tuple[float, ...] = (0.0, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)


def sum_form(n: int, lr: float, l2: float) -> tuple[float, float]:
    """Mean-form (lr, λ') on n samples -> sum-form (η, λ) = (lr / n, n λ')."""
    return lr / n, n * l2


def loo_sum_form(n: int, lr: float, l2: float, loo_lambda: LooLambda = "same") -> tuple[float, float]:
    """Sum-form (η, λ) of the leave-one-out run on n − 1 samples.

    η = lr / (n − 1); λ = n λ' (``same``, the default: the ridge term is unchanged) or
    (n − 1) λ' (``rescaled``: the mean-form loss literally re-run on n − 1 samples).
    """
    if loo_lambda not in LOO_LAMBDAS:
        raise invalid("loo_lambda", "loo_sum_form", f"one of {list(LOO_LAMBDAS)}", loo_lambda)
    lam = n * l2 if loo_lambda == "same" else (n - 1) * l2
    return lr / (n - 1), lam


def one_hot(y: Tensor, k: int) -> Tensor:
    """y (n,) int -> (n, k) float64 0/1 targets."""
    return torch.nn.functional.one_hot(y.long(), k).to(torch.float64)  # on y's device


@dataclass
class Cholesky:
    """A Cholesky factor of A + jitter·I. ``eps`` is the relative jitter (0 when none)."""

    factor: Tensor  # (N, N) lower triangular
    eps: float
    jitter: float  # absolute amount added to the diagonal: eps * tr(A) / N


def cholesky_with_jitter(a: Tensor) -> Cholesky:
    """Cholesky of the symmetrized A (N, N) float64, adding ε·(tr A/N)·I on failure.

    ε climbs 1e-12 .. 1e-6; beyond that a :class:`NumericalError` is raised.
    """
    a = 0.5 * (a + a.T)
    n = a.shape[0]
    scale = float(torch.trace(a)) / max(n, 1)
    if not scale > 0:
        raise NumericalError(f"cholesky_with_jitter: the matrix has non-positive trace ({scale!r})")
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    for eps in JITTER_LADDER:
        factor, info = torch.linalg.cholesky_ex(a + (eps * scale) * eye if eps else a)
        if int(info) == 0:
            return Cholesky(factor=factor, eps=eps, jitter=eps * scale)
    raise NumericalError(
        f"A is not positive definite even with jitter {JITTER_LADDER[-1]:g}·tr(A)/N; "
        "increase the ridge 'l2' or use a finite 't'"
    )


def gd_filter(s: Tensor, *, eta: float, t: int | None, time: TimeMode = "discrete") -> Tensor:
    """g(s) such that A⁻¹(I − E_t) = U diag(g(s)) Uᵀ for the eigenvalues s (N,) of A.

    t None -> 1/s (requires s > 0). Raises InvalidInputError when discrete GD diverges
    (η·s_max ≥ 2).
    """
    s = s.to(torch.float64)
    if t is None:
        if bool((s <= 0).any()):
            raise NumericalError("t = infinity needs A positive definite; increase 'l2' or use a finite 't'")
        return 1.0 / s
    if t < 1:
        raise invalid("t", "gd_filter", "a positive integer or None (infinity)", t)
    if time == "continuous":
        x = eta * t * s
        safe = torch.where(s == 0, torch.ones_like(s), s)
        return torch.where(s == 0, torch.full_like(s, eta * t), -torch.expm1(-x) / safe)
    if time != "discrete":
        raise invalid("time", "gd_filter", f"one of {list(TIME_MODES)}", time)
    x = eta * s
    x_max = float(x.max()) if x.numel() else 0.0
    if x_max >= 2.0:
        raise invalid(
            "lr",
            "gd_filter",
            f"small enough that discrete GD converges, lr/n · s_max(A) < 2 (here η·s_max = {x_max:.4g}, "
            f"so lr must shrink by at least {x_max / 2:.4g}x)",
            f"η = {eta!r}",
        )
    safe = torch.where(s == 0, torch.ones_like(s), s)
    # Stable for ηs < 1: 1 − (1 − ηs)ᵗ = −expm1(t·log1p(−ηs)); direct power for 1 ≤ ηs < 2.
    small = -torch.expm1(t * torch.log1p(-torch.clamp(x, max=0.999999))) / safe
    large = (1.0 - torch.pow(1.0 - x, t)) / safe
    g = torch.where(x < 0.999999, small, large)
    return torch.where(s == 0, torch.full_like(s, eta * t), g)


def dynamics_coefficients(
    theta: Tensor,
    r0: Tensor,
    *,
    lam: float,
    eta: float,
    t: int | None,
    time: TimeMode = "discrete",
) -> tuple[Tensor, float]:
    """u_t = A⁻¹(I − E_t) r₀ for A = Θ + λI.

    theta (N, N) float64, r0 (N,) -> (u (N,), jitter added to A's diagonal (t = ∞ only)).
    """
    a = 0.5 * (theta + theta.T) + lam * torch.eye(theta.shape[0], dtype=torch.float64, device=theta.device)
    if t is None:
        chol = cholesky_with_jitter(a)
        u = torch.cholesky_solve(r0.reshape(-1, 1).to(torch.float64), chol.factor).reshape(-1)
        return u, chol.jitter
    s, vecs = torch.linalg.eigh(a)
    g = gd_filter(s, eta=eta, t=t, time=time)
    return vecs @ (g * (vecs.T @ r0.to(torch.float64))), 0.0


def explicit_gd_weights(
    jac: Tensor,
    r0: Tensor,
    *,
    lam: float,
    eta: float,
    t: int,
    time: TimeMode = "discrete",
) -> Tensor:
    """Reference: w_t − w₀ (p,) of the linearized model by explicit weight-space iteration.

    jac (N, p), r0 (N,). ``discrete`` runs t GD steps on ½‖r₀ + JΔ‖² + ½λ‖Δ‖²;
    ``continuous`` uses the weight-space closed form −(I − exp(−ηtH)) H⁻¹ Jᵀ r₀ with
    H = JᵀJ + λI (eigendecomposition of H, a different route from the kernel one).
    """
    j = jac.to(torch.float64)
    r = r0.to(torch.float64)
    if time == "continuous":
        h = j.T @ j + lam * torch.eye(j.shape[1], dtype=torch.float64, device=j.device)
        s, vecs = torch.linalg.eigh(h)
        g = gd_filter(s, eta=eta, t=t, time="continuous")
        return -(vecs @ (g * (vecs.T @ (j.T @ r))))
    delta = torch.zeros(j.shape[1], dtype=torch.float64, device=j.device)
    for _ in range(t):
        delta = delta - eta * (j.T @ (r + j @ delta) + lam * delta)
    return delta


def ridge_weights(jac: Tensor, r0: Tensor, *, lam: float) -> Tensor:
    """Reference for t = ∞: w_∞ − w₀ = −(JᵀJ + λI)⁻¹ Jᵀ r₀ (p,), solved in weight space."""
    j = jac.to(torch.float64)
    h = j.T @ j + lam * torch.eye(j.shape[1], dtype=torch.float64, device=j.device)
    return -torch.linalg.solve(h, j.T @ r0.to(torch.float64))
