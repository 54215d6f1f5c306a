"""Smooth sample information (SI) and functional SI (F-SI) by exact leave-one-out (LOO).

docs/science.md §2. Glossary: **n** samples, **k** outputs, **p** parameters, N = n*k,
**m** held-out inputs, **d** projection dimension. Information is in nats.

For the linearized network trained by GD on MSE with one-hot targets (see
:mod:`infoscore.linearized` for the dynamics and the mean/sum conventions), sample i's
scores are

* ``si_weights``     = ‖w − w₋ᵢ‖² / (2σ²)            (weights-plain, Σ = σ²I)
* ``si_predictions`` = Σ_{x'} ‖f_w(x') − f_{w₋ᵢ}(x')‖² / (2σ²)   over m held-out x'
* ``si_weights_full`` = Δwᵀ(Σ + ε·(tr Σ/p)·I)⁻¹Δw with Σ the SGD steady-state covariance
  (Lyapunov equation HΣ + ΣH = C, C from the real network's per-example gradients at w_t;
  no ½ and no η/b factor: a global rescale); ``si_weights_full_linearized`` takes C from
  the linearized model's gradients instead

where w₋ᵢ is trained without sample i from the same w₀ with step lr/(n − 1).

Methods
-------
``exact`` (default)
    Full NTK Θ (N, N) in float64. t = ∞: one Cholesky and the p-free identities
    c_i = P_ii⁻¹ a_i, ‖Δw_i‖² = c_iᵀ(P − λP²)_ii c_i with P = A⁻¹, a = P r₀ (O(N³)).
    Finite t: one ``eigh`` of Θ and an exact blocked recurrence for all i (O(N³ + nkNt),
    :func:`loo_finite`), or one ``eigh`` of A₋ᵢ,₋ᵢ per i. Memory O(N² + Np).
``projected``
    Features Φ = J R (N, d) (:mod:`infoscore.projection`), primal algebra with
    M = ΦᵀΦ + λI_d (Woodbury): c_i = (I − H_ii)⁻¹ρ_i, Δv_i = −M⁻¹Φ_iᵀc_i. Never an
    (N, N) matrix; O(N d² + d³), memory O(N d). Finite t: one ``eigh`` of M − Φ_iᵀΦ_i per i.

F-SI uses Δf_i(x') = J(x')Δw_i (exact) or Φ(x')Δv_i (projected), contracted without
forming Θ_{X'X}; ``delta_f`` keeps those (n, m, k) changes. The reference point w₀ is the
model's current state: :func:`train_linearization_point` and :func:`load_checkpoint` move
it (job option ``linearize_at``). Everything stays on the model's device until returned.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .costs import IN_BLOCK_WEIGHT as IN_BLOCK_WEIGHT  # re-exported: callers read them here
from .costs import RECURRENCE_BLOCK as RECURRENCE_BLOCK
from .costs import finite_t_cost, projected_finite_t_cost, recurrence_block
from .errors import InvalidInputError, NumericalError, invalid
from .linearized import (
    JITTER_LADDER,
    LOO_LAMBDAS,
    TIME_MODES,
    LooLambda,
    TimeMode,
    cholesky_with_jitter,
    gd_filter,
    loo_sum_form,
    one_hot,
    sum_form,
)
from .ntk import (
    KERNEL_METHODS,
    KernelMethod,
    flat_parameters,
    ntk_cross_chunks,
    ntk_gram,
    parameter_count,
    per_sample_jacobians,
    resolve_kernel_method,
    structured_supported,
)
from .progress import ProgressFn, StopFn, check_stop
from .projection import (
    PROJECTION_KINDS,
    PROJECTION_STRUCTURES,
    ROW_BLOCK,
    FactoredFeatures,
    KroneckerProjector,
    ProjectionKind,
    ProjectionStructure,
    Projector,
    kronecker_features,
    projected_features,
    projector_for,
    trace_shares,
)

Measure = Literal["weights", "predictions", "weights_full", "weights_full_linearized"]
Method = Literal["exact", "projected"]
MEASURES: tuple[str, ...] = ("weights", "predictions", "weights_full", "weights_full_linearized")
FULL_MEASURES = ("weights_full", "weights_full_linearized")
METHODS: tuple[str, ...] = ("exact", "projected")

# Defaults (documented in docs/jobs/sample-information.md).
# One automatic-ridge rule for both methods: λ = scale · tr(Θ)/(nk) when l2 is None, scale 1.0.
# The projected path approximates the exact one at the same λ (Spearman 0.966 at n = 1000, d = 2048,
# Kronecker projection); at the former exact default 1e-3 the LOO changes live in the tail of Θ that
# any d-dimensional projection loses (Spearman 0.26-0.56), so the two methods estimated different things.
DEFAULT_L2_AUTO_SCALE: dict[str, float] = {"exact": 1.0, "projected": 1.0}
DEFAULT_MAX_EXACT_NK = 20_000  # Θ and P: 2 · 8 · N² bytes = 6.4 GB at N = 20000
DEFAULT_MAX_FULL_P = 5_000  # weights_full: p x p eigendecomposition
# Finite-t LOO has no fixed cap: its cost goes through the job estimator (contracts/estimate.py),
# which refuses at submit what would not fit the worker's time limit. Callers may still cap it.
DEFAULT_MAX_FINITE_T_COST: float | None = None
DEFAULT_MAX_DELTA_F_BYTES = 1 << 30  # delta_f (n, m, k) float32 held in memory and written as npz
# weights_full: Σ + ε·(tr Σ/p)·I. Relative, so the scores do not depend on the units of the
# gradients; 1e-6 as the other jitters of this project (the official absolute 1e-10 moved
# the median score 12x against 1e-6 on a toy problem: the scores are jitter-sensitive).
DEFAULT_FULL_COVARIANCE_JITTER = 1e-6


@dataclass
class KernelLoo:
    """Exact LOO on a kernel. sq_weight_change (n,) = ‖Δw_i‖²; delta (N, n): column i is
    δ_i = u − pad_i(u₋ᵢ), so Δw_i = −Jᵀδ_i; u (N,) the full run's coefficients."""

    sq_weight_change: Tensor
    delta: Tensor
    u: Tensor
    jitter: float = 0.0
    jitter_eps: float = 0.0
    eig_min: float = math.nan
    eig_max: float = math.nan


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.T)


def _diag_blocks(a: Tensor, n: int, k: int) -> Tensor:
    """(N, N) -> (n, k, k): the sample-major diagonal blocks."""
    return torch.diagonal(a.reshape(n, k, n, k), dim1=0, dim2=2).permute(2, 0, 1)


def _extreme_eigs(a: Tensor, factor: Tensor, shift: float = 0.0, iters: int = 30) -> tuple[float, float]:
    """Estimates of (s_min, s_max) of SPD a + shift·I = L Lᵀ (factor L) by power and inverse
    iteration (O(iters·N²), no copy of a)."""
    gen = torch.Generator(device=a.device).manual_seed(0)  # seeded, on the matrix's device
    v = torch.randn(a.shape[0], dtype=torch.float64, generator=gen, device=a.device)
    w = v.clone()
    s_max = s_inv = 0.0
    for _ in range(iters):
        v = a @ v + shift * v
        s_max = float(v.norm())
        v = v / s_max
        w = torch.cholesky_solve(w.reshape(-1, 1), factor).reshape(-1)
        s_inv = float(w.norm())
        w = w / s_inv
    return 1.0 / s_inv, s_max


# Block sizes of the t = ∞ leave-one-out passes (docs/benchmarks/sample-information.md). Any
# value gives the same numbers up to round-off; the tests shrink them to exercise every branch.
TRI_INVERSE_BASE = 1024  # side at which the recursive triangular inverse stops splitting
TRI_INVERSE_PANEL = 1024  # columns / rows of the off-diagonal block per triangular solve
LOO_ROW_BLOCK = 1024  # rows of W per pass (the products skip W's zero upper triangle)
LOO_SAMPLE_BLOCK = 256  # samples per batched k x k block product
# Lanczos steps of each extreme-eigenvalue estimate (cond_A). On the digits kernel (n = 600,
# k = 10, auto ridge) 12 steps give s_max to 1e-4 and s_min to 3e-3 relative, closer than the
# 20-iteration block subspace iteration it replaces (2e-3 and 6e-3) at a third of the passes.
COND_LANCZOS_STEPS = 12
# Relative difference below which λ_loo is taken as λ (a float64 round-off, far from (n−1)/n).
LOO_LAMBDA_RTOL = 1e-12


def _tri_inverse_(low: Tensor, base: int | None = None) -> Tensor:
    """L⁻¹ of a lower-triangular matrix (zeros above the diagonal), written over it.

    Recursive 2 x 2 blocking: with L = [[L₁₁, 0], [L₂₁, L₂₂]], L⁻¹ has blocks L₁₁⁻¹, L₂₂⁻¹
    and −L₂₂⁻¹L₂₁L₁₁⁻¹; the off-diagonal block is two triangular solves on the original
    blocks, then both diagonal blocks recurse. N³/3 flops (LAPACK trtri's count, one
    Cholesky's) against N³ for a triangular solve with the identity as right-hand side,
    which spends two thirds of its work on the known zeros above the diagonal. Extra memory:
    one contiguous copy of a diagonal block (N²/4 at the top level) and one panel.
    """
    base = TRI_INVERSE_BASE if base is None else base
    n_side = low.shape[0]
    if n_side <= max(base, 1):
        eye = torch.eye(n_side, dtype=low.dtype, device=low.device)
        low.copy_(torch.linalg.solve_triangular(low, eye, upper=False))
        return low
    h = n_side // 2
    l11, l21, l22 = low[:h, :h], low[h:, :h], low[h:, h:]
    # L₂₁ <- −L₂₂⁻¹L₂₁L₁₁⁻¹ in place, by column then row panels of L₂₁ against one contiguous
    # copy of a diagonal block at a time (the strided views would be copied at every call).
    diag = l22.contiguous()
    for c0 in range(0, h, TRI_INVERSE_PANEL):
        panel = l21[:, c0 : c0 + TRI_INVERSE_PANEL]
        panel.copy_(torch.linalg.solve_triangular(diag, panel, upper=False))
    del diag
    diag = l11.contiguous()
    for r0 in range(0, n_side - h, TRI_INVERSE_PANEL):
        panel = l21[r0 : r0 + TRI_INVERSE_PANEL]
        panel.copy_(torch.linalg.solve_triangular(diag, panel, upper=False, left=False).neg_())
    del diag
    _tri_inverse_(l11, base)
    _tri_inverse_(l22, base)
    return low


def _tri_matvec(w: Tensor, v: Tensor, rows: int | None = None) -> Tensor:
    """W v for lower-triangular W (N, N), v (N,) or (N, b): row blocks, zeros skipped."""
    rows = LOO_ROW_BLOCK if rows is None else rows
    n_side = w.shape[0]
    out = torch.empty_like(v)
    for z0 in range(0, n_side, rows):
        z1 = min(n_side, z0 + rows)
        out[z0:z1] = w[z0:z1, :z1] @ v[:z1]
    return out


def _tri_rmatvec(w: Tensor, y: Tensor, rows: int | None = None) -> Tensor:
    """Wᵀ y for lower-triangular W (N, N), y (N,) or (N, b): row blocks, zeros skipped."""
    rows = LOO_ROW_BLOCK if rows is None else rows
    n_side = w.shape[0]
    out = torch.zeros_like(y)
    for z0 in range(0, n_side, rows):
        z1 = min(n_side, z0 + rows)
        out[:z1] += w[z0:z1, :z1].T @ y[z0:z1]
    return out


def _lanczos_extremes(matvec: Callable[[Tensor], Tensor], like: Tensor, steps: int) -> tuple[float, float]:
    """Smallest and largest Ritz values of a symmetric operator after ``steps`` Lanczos steps
    (full reorthogonalization, seeded start on ``like``'s device). Ritz values lie inside the
    spectrum: the largest is a lower bound of λ_max, the smallest an upper bound of λ_min."""
    n_dim = like.shape[0]
    steps = max(1, min(steps, n_dim))
    gen = torch.Generator(device=like.device).manual_seed(0)
    basis = torch.empty((steps, n_dim), dtype=torch.float64, device=like.device)
    v = torch.randn(n_dim, dtype=torch.float64, generator=gen, device=like.device)
    basis[0] = v / v.norm()
    alpha: list[float] = []
    beta: list[float] = []
    for j in range(steps):
        w = matvec(basis[j])
        alpha.append(float(basis[j] @ w))
        for _ in range(2):  # full reorthogonalization, twice (Kahan–Parlett)
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        b = float(w.norm())
        if j + 1 == steps or not b > 1e-12 * max(abs(a) for a in alpha):  # invariant subspace
            break
        beta.append(b)
        basis[j + 1] = w / b
    m = len(alpha)
    tri = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(beta[: m - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(tri)
    return float(ritz[0]), float(ritz[-1])


def _inverse_diag_blocks(w: Tensor, k: int, samples: int | None = None) -> Tensor:
    """(n, k, k) diagonal blocks of P = WᵀW for lower-triangular W: block i is
    W_{:,i}ᵀW_{:,i} over the rows at or below the block (the rows above are zero)."""
    samples = LOO_SAMPLE_BLOCK if samples is None else samples
    n_side = w.shape[0]
    n = n_side // k
    out = torch.empty((n, k, k), dtype=w.dtype, device=w.device)
    for i0 in range(0, n, samples):
        i1 = min(n, i0 + samples)
        cols = w[i0 * k :, i0 * k : i1 * k].reshape(n_side - i0 * k, i1 - i0, k)
        out[i0:i1] = torch.einsum("zia,zib->iab", cols, cols)
    return out


def _inverse_times_block_diag(w: Tensor, c: Tensor, rows: int | None = None) -> Tensor:
    """P C (N, n) for P = WᵀW (W lower triangular) and C (N, n) block-diagonal with c_i
    (c: (n, k)) in block i: column i is P_{:,i}c_i. Per block of rows of W, Y = W C (column
    i is W_{:,i}c_i, zero above row ik) and P C += W_blockᵀ Y_block, skipping the zeros of
    both: about 0.4 of the flops of the dense N x N x n product."""
    rows = LOO_ROW_BLOCK if rows is None else rows
    n_side = w.shape[0]
    n, k = c.shape
    out = torch.zeros((n_side, n), dtype=w.dtype, device=w.device)
    for z0 in range(0, n_side, rows):
        z1 = min(n_side, z0 + rows)
        i1 = min(n, -(-z1 // k))  # samples whose block starts above row z1
        y = torch.einsum("zia,ia->zi", w[z0:z1, : i1 * k].reshape(z1 - z0, i1, k), c[:i1])
        out[:z1, :i1].addmm_(w[z0:z1, :z1].T, y)
    return out


def _factor_in_place(theta: Tensor, lam: float, out: Tensor | None = None) -> tuple[Tensor, float, float]:
    """Lower Cholesky factor of Θ + λI written over ``out`` (or a fresh copy of Θ), with the
    jitter ladder of :func:`infoscore.linearized.cholesky_with_jitter` (ε·tr(A)/N on
    failure). Returns (factor, eps, jitter). Memory: one N² buffer beside Θ (no eye, no
    symmetrized copy: Cholesky reads one triangle). The buffer is column-major (a transposed
    view), the layout LAPACK factors in place: a row-major one costs torch another N² copy."""
    n_total = theta.shape[0]
    buf = torch.empty_like(theta, dtype=torch.float64).mT if out is None else out
    scale = (float(torch.trace(theta.to(torch.float64))) + lam * n_total) / max(n_total, 1)
    if not scale > 0:
        raise NumericalError(f"loo_infinite: Θ + λI has non-positive trace ({scale!r})")
    info = torch.empty((), dtype=torch.int32, device=theta.device)
    for eps in JITTER_LADDER:
        buf.mT.copy_(theta)  # a plain copy: buf = Θᵀ = Θ
        buf.diagonal().add_(lam + eps * scale)
        torch.linalg.cholesky_ex(buf, out=(buf, info))
        if int(info) == 0:
            return buf, eps, eps * scale
    raise NumericalError(
        f"A is not positive definite even with jitter {JITTER_LADDER[-1]:g}·tr(A)/N; "
        "increase the ridge 'l2' or use a finite 't'"
    )


def _factor_solve(factor: Tensor, b: Tensor) -> Tensor:
    """(L Lᵀ)⁻¹ b by two triangular solves: ``torch.cholesky_solve`` copies the N² factor."""
    y = torch.linalg.solve_triangular(factor, b.reshape(-1, 1), upper=False)
    return torch.linalg.solve_triangular(factor.mT, y, upper=True).reshape(-1)


def loo_infinite(theta: Tensor, r0: Tensor, *, k: int, lam: float, lam_loo: float | None = None) -> KernelLoo:
    """Exact LOO at t = ∞ (docs/science.md §2.3), independent of p.

    theta (N, N) float64, r0 (N,) -> KernelLoo. The full run solves (Θ + λI)u = r₀; each
    leave-one-out run uses the ridge λ_loo (default λ; ``loo_lambda: rescaled`` passes
    (n−1)/n·λ). With P' = (Θ + λ_loo I)⁻¹, a' = P'r₀ and c'_i = P'_ii⁻¹a'_i the LOO
    coefficients are pad(u₋ᵢ) = a' − P'_{:,i}c'_i, so δ_i = u − pad(u₋ᵢ) = e + P'_{:,i}c'_i
    with e = u − a' (zero when λ_loo = λ), and, using ΘP' = I − λ_loo P',
    ‖Δw_i‖² = δ_iᵀΘδ_i = eᵀΘe + 2 g_iᵀc'_i + c'_iᵀ(P' − λ_loo P'²)_ii c'_i, g = e − λ_loo P'e.
    Jitter added by the ladder is part of the ridge.

    Cost (docs/benchmarks/sample-information.md): one Cholesky L of A' = Θ + λ_loo I, W = L⁻¹
    in place by a recursive triangular inverse (the flops of one more Cholesky), so that
    P' = WᵀW; the blocks P'_ii and the columns P'_{:,i}c'_i from W's nonzero triangle (about
    0.4 Cholesky), and cond(A) by two short Lanczos runs (on Θ and on WᵀW: 2·12 passes over
    N² numbers). When λ_loo equals λ up to round-off (LOO_LAMBDA_RTOL) it is λ: one
    factorization. Peak memory: Θ, one N² buffer (the factor, then W) and the inverse's
    temporaries (about N²/4), then δ (N, n).
    """
    n_total = theta.shape[0]
    n = n_total // k
    theta = theta.to(torch.float64)
    r0 = r0.to(torch.float64).to(theta.device)
    # λ_loo = λ up to round-off (the mean-form ridge n·(λ/n) of loo_lambda 'same') is λ: a
    # second factorization would change the scores by round-off only, at the cost of a Cholesky.
    if lam_loo is None or abs(float(lam_loo) - lam) <= LOO_LAMBDA_RTOL * abs(lam):
        lam_loo = lam
    lam_loo = float(lam_loo)
    factor, eps, jitter = _factor_in_place(theta, lam)
    u = _factor_solve(factor, r0)
    shift_full = lam + jitter
    if lam_loo != lam:
        factor, eps_loo, jitter_loo = _factor_in_place(theta, lam_loo, out=factor)
        eps, jitter = max(eps, eps_loo), max(jitter, jitter_loo)
        lam_loo_eff = lam_loo + jitter_loo
    else:
        lam_loo_eff = lam + jitter
    a = _factor_solve(factor, r0)
    w = _tri_inverse_(factor)  # W = L⁻¹ over the factor: P' = WᵀW
    del factor
    # cond(A) with A = Θ + λ_eff I: s_max from Θ, s_min = 1/s_max(P'), P' = (A + (λ_loo_eff − λ_eff)I)⁻¹.
    _, theta_max = _lanczos_extremes(lambda v: theta @ v, r0, COND_LANCZOS_STEPS)
    _, inv_max = _lanczos_extremes(lambda v: _tri_rmatvec(w, _tri_matvec(w, v)), r0, COND_LANCZOS_STEPS)
    s_max = theta_max + shift_full
    s_min = 1.0 / inv_max - lam_loo_eff + shift_full
    p_ii = _inverse_diag_blocks(w, k)
    c = torch.linalg.solve(p_ii, a.reshape(n, k, 1)).squeeze(-1)  # (n, k)
    delta = _inverse_times_block_diag(w, c)  # column i = P'_{:,i} c_i
    # c_iᵀ(P' − λ_loo P'²)_ii c_i = c_iᵀP'_ii c_i − λ_loo‖P'_{:,i}c_i‖².
    sq = torch.einsum("ia,iab,ib->i", c, p_ii, c) - lam_loo_eff * torch.linalg.vector_norm(delta, dim=0) ** 2
    if lam_loo != lam:
        e = u - a
        g = (e - lam_loo_eff * _tri_rmatvec(w, _tri_matvec(w, e))).reshape(n, k)
        sq = sq + float(e @ (theta @ e)) + 2.0 * (g * c).sum(1)
        delta += e.reshape(-1, 1)
    return KernelLoo(sq.clamp_min(0.0), delta, u, jitter, eps, s_min, s_max)


FiniteTRoute = Literal["auto", "recurrence", "eigh"]
FINITE_T_ROUTES: tuple[str, ...] = ("auto", "recurrence", "eigh")
FINITE_T_CHUNK_BYTES = 256 * 1024**2  # working memory of one chunk of samples (both routes)
# The finite-t cost model (RECURRENCE_BLOCK, IN_BLOCK_WEIGHT, recurrence_block, finite_t_cost,
# projected_finite_t_cost) lives in infoscore.costs, torch-free, so that the job estimator
# (contracts/estimate.py) imports the same formula; imported at the top of this module.


def choose_projected_finite_t_route(n: int, k: int, d: int, t: int, time: str) -> str:
    """``recurrence`` (:func:`loo_primal_finite`) unless one ``eigh`` of the d x d system per
    sample (:func:`loo_primal`) is cheaper (small d and large k·t) or time is continuous."""
    if time != "discrete":
        return "eigh"
    return "recurrence" if projected_finite_t_cost(n, k, d, t, time) <= 10.0 * n * float(d) ** 3 else "eigh"


def choose_finite_t_route(n: int, k: int, t: int, time: str) -> str:
    """``recurrence`` (discrete time only) unless one ``eigh`` per sample is cheaper (t far
    beyond N²/k)."""
    if time != "discrete":
        return "eigh"
    cheaper = finite_t_cost(n, k, t, "recurrence") <= finite_t_cost(n, k, t, "eigh")
    return "recurrence" if cheaper else "eigh"


def loo_finite(
    theta: Tensor,
    r0: Tensor,
    *,
    k: int,
    lam: float,
    lam_loo: float,
    eta: float,
    eta_loo: float,
    t: int,
    time: TimeMode = "discrete",
    route: FiniteTRoute = "auto",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> KernelLoo:
    """Exact LOO after t GD steps (docs/science.md §2.4) for every sample, on theta's device.

    theta (N, N) float64, r0 (N,). The full run uses (η, λ); each LOO run (η_loo, λ_loo).
    Routes (same numbers up to round-off; ``auto`` picks by :func:`choose_finite_t_route`):

    ``recurrence`` (discrete time)
        One ``eigh`` of Θ for all samples. The LOO run is the unmasked run with (η_loo,
        λ_loo) driven by a k-vector z_j on block i that keeps block i of its coefficients
        at zero: u_{j+1} = (I − η'A')u_j + η'r₀ − η'E_i z_j. Block i of that constraint is
        a causal convolution with M_i(q) = E_iᵀ(I − η'A')^q E_i, M_i(0) = I, solved by
        forward substitution (O(k²t²) per sample); then u⁽⁻ⁱ⁾ in Θ's eigenbasis.
    ``eigh``
        One ``eigh`` of A₋ᵢ,₋ᵢ per sample (batched by memory), any t and ``time``.
    """
    n_total = theta.shape[0]
    n = n_total // k
    if route not in FINITE_T_ROUTES:
        raise invalid("route", "loo_finite", f"one of {list(FINITE_T_ROUTES)}", route)
    if route == "auto":
        route = choose_finite_t_route(n, k, t, time)  # type: ignore[assignment]
    if route == "recurrence" and time != "discrete":
        raise invalid("route", "loo_finite", "'eigh' or 'auto' for continuous time", route)
    dev = theta.device
    theta = _sym(theta.to(torch.float64))
    r0 = r0.to(device=dev, dtype=torch.float64)
    theta_eigs, vecs = torch.linalg.eigh(theta)
    coef = vecs.T @ r0  # r₀ in Θ's eigenbasis
    g_full = gd_filter(theta_eigs + lam, eta=eta, t=t, time=time)
    # Raises naming 'lr' when the LOO runs' discrete GD would diverge.
    g_loo = gd_filter(theta_eigs + lam_loo, eta=eta_loo, t=t, time=time)
    u = vecs @ (g_full * coef)
    eig_min, eig_max = float(theta_eigs.min()) + lam, float(theta_eigs.max()) + lam
    if route == "recurrence":
        delta_t, sq = _loo_recurrence(
            theta_eigs, vecs, coef, g_full - g_loo, k=k, lam_loo=lam_loo, eta_loo=eta_loo, t=t,
            progress=progress, should_stop=should_stop,
        )  # fmt: skip
        delta = vecs @ delta_t.T
        del delta_t
    else:
        delta, sq = _loo_eigh(
            theta, r0, u, k=k, lam_loo=lam_loo, eta_loo=eta_loo, t=t, time=time,
            progress=progress, should_stop=should_stop,
        )  # fmt: skip
    return KernelLoo(sq.clamp_min(0.0), delta, u, 0.0, 0.0, eig_min, eig_max)


def _loo_recurrence(
    theta_eigs: Tensor,
    vecs: Tensor,
    coef: Tensor,
    g_diff: Tensor,
    *,
    k: int,
    lam_loo: float,
    eta_loo: float,
    t: int,
    block: int | None = None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[Tensor, Tensor]:
    """The ``recurrence`` route: returns δ̃ (n, N) = Uᵀδ_i (rows) and ‖Δw_i‖² (n,).

    theta_eigs (N,), vecs U (N, N), coef = Uᵀr₀, g_diff = g_full − g_loo (N,), all on one
    device. Time runs in blocks of ``block`` steps. Inside a block the forward substitution
    z_j = rhs_j − Σ_{q≥1} M_i(q) z_{j−q} uses the short Markov blocks M_i(q), q < block, for
    the block's own z; everything older is carried as one state per eigen-direction,
    s = Σ_{i<j0} bᵗʲ⁰⁻¹⁻ⁱ ∘ U_iᵀz_i (b = 1 − η'(θ + λ')), so a block costs GEMMs of
    O(k·N·block) per sample and nothing grows with t. At the end s = Σ_j bᵗ⁻¹⁻ʲ U_iᵀz_j.
    """
    n_total = vecs.shape[0]
    n = n_total // k
    dev, f64 = vecs.device, torch.float64
    base = 1.0 - eta_loo * (theta_eigs + lam_loo)  # |b| ≤ 1: gd_filter checked η'·s'_max < 2
    width = recurrence_block(n_total, k, t) if block is None else max(1, min(block, t))
    steps = torch.arange(width + 1, dtype=f64, device=dev)
    powers = base.reshape(1, -1) ** steps.reshape(-1, 1)  # (width + 1, N): P[q] = b^q
    cum = torch.cumsum(powers[:width], 0).mul_(eta_loo)  # (width, N): η' Σ_{q'≤q} b^q'
    delta_t = torch.empty((n, n_total), dtype=f64, device=dev)
    per_sample = 8 * (k * k * (n_total + width) + 6 * k * n_total + 2 * n_total + 4 * k * width)
    chunk = max(1, min(n, FINITE_T_CHUNK_BYTES // per_sample))
    for lo in range(0, n, chunk):
        check_stop(should_stop)
        hi = min(n, lo + chunk)
        c = hi - lo
        u_blk = vecs[lo * k : hi * k].reshape(c, k, n_total)  # U's rows of block i
        outer = (u_blk.unsqueeze(2) * u_blk.unsqueeze(1)).reshape(c * k * k, n_total)
        # (c, a, q, b): a q-slice viewed as (c, a, q·b) is a strided batch of matrices, no copy.
        markov = (outer @ powers[:width].T).reshape(c, k, k, width).permute(0, 1, 3, 2).contiguous()
        del outer
        weighted = (u_blk * coef).reshape(c * k, n_total)
        state = torch.zeros((c, n_total), dtype=f64, device=dev)
        curve = torch.zeros(n_total, dtype=f64, device=dev)  # g_{j0}: η' Σ_{q<j0} b^q
        power = torch.ones(n_total, dtype=f64, device=dev)  # b^{j0}
        for j0 in range(0, t, width):
            w = min(width, t - j0)
            # rhs_j = [u_{j+1}]_i / η' of the unmasked run, j = j0 .. j0 + w − 1.
            curves = curve + power * cum[:w]  # (w, N): g_{j+1}
            rhs = (weighted @ curves.T).reshape(c, k, w) / eta_loo
            history = (u_blk * state.unsqueeze(1)).reshape(c * k, n_total) @ powers[1 : w + 1].T
            rhs -= history.reshape(c, k, w)
            z_rev = torch.zeros((c, w, k), dtype=f64, device=dev)  # z_rev[:, w−1−q] = z_{j0+q}
            for q in range(w):
                z_q = rhs[:, :, q]
                if q:
                    past = markov[:, :, 1 : q + 1].reshape(c, k, q * k)
                    z_q = z_q - (past @ z_rev[:, w - q :].reshape(c, q * k, 1)).squeeze(2)
                z_rev[:, w - 1 - q] = z_q
            pushed = (z_rev.permute(0, 2, 1).reshape(c * k, w) @ powers[:w]).reshape(c, k, n_total)
            state = powers[w] * state + (u_blk * pushed).sum(1)
            curve = curves[w - 1]
            power = power * powers[w]
        delta_t[lo:hi] = g_diff * coef + eta_loo * state
        if progress is not None:
            progress(hi, n)
    sq = (delta_t * delta_t * theta_eigs).sum(1)
    return delta_t, sq


def _loo_eigh(
    theta: Tensor,
    r0: Tensor,
    u: Tensor,
    *,
    k: int,
    lam_loo: float,
    eta_loo: float,
    t: int,
    time: TimeMode,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[Tensor, Tensor]:
    """The ``eigh`` route: δ (N, n) and ‖Δw_i‖² (n,), batched eigendecompositions."""
    n_total = theta.shape[0]
    n = n_total // k
    dev, f64 = theta.device, torch.float64
    blocks = torch.arange(n_total, device=dev).reshape(n, k)
    eye = torch.eye(n_total - k, dtype=f64, device=dev)
    delta = u.reshape(-1, 1).repeat(1, n)
    sq = torch.empty(n, dtype=f64, device=dev)
    batch = max(1, min(n, FINITE_T_CHUNK_BYTES // (3 * 8 * (n_total - k) ** 2)))
    for lo in range(0, n, batch):
        check_stop(should_stop)
        hi = min(n, lo + batch)
        keep = torch.stack(
            [torch.cat([blocks[:i].reshape(-1), blocks[i + 1 :].reshape(-1)]) for i in range(lo, hi)]
        )  # (b, N − k)
        a_b = theta[keep.unsqueeze(2), keep.unsqueeze(1)] + lam_loo * eye
        s_b, v_b = torch.linalg.eigh(a_b)
        del a_b
        g_b = gd_filter(s_b.reshape(-1), eta=eta_loo, t=t, time=time).reshape(s_b.shape)
        r_b = r0[keep]  # (b, N − k)
        u_b = (v_b @ (g_b * (v_b.transpose(1, 2) @ r_b.unsqueeze(2)).squeeze(2)).unsqueeze(2)).squeeze(2)
        for j, i in enumerate(range(lo, hi)):
            delta[keep[j], i] -= u_b[j]
        d_b = delta[:, lo:hi]
        sq[lo:hi] = (d_b * (theta @ d_b)).sum(0)
        if progress is not None:
            progress(hi, n)
    return delta, sq


@dataclass
class PrimalLoo:
    """Exact LOO in a d-dimensional feature space (projected method).

    sq_weight_change (n,) = ‖Δv_i‖²; sq_prediction_change (n,) = Σ_{x'}‖Φ(x')Δv_i‖² or
    None; v (d,) = the full run's v_t − v₀; dv (n, d) when kept, else None. All on the
    features' device.
    """

    sq_weight_change: Tensor
    sq_prediction_change: Tensor | None
    v: Tensor
    dv: Tensor | None = None
    jitter: float = 0.0
    jitter_eps: float = 0.0
    eig_min: float = math.nan
    eig_max: float = math.nan


def loo_primal(
    phi: Tensor | FactoredFeatures,
    r0: Tensor,
    *,
    k: int,
    lam: float,
    lam_loo: float | None = None,
    eta: float = 0.0,
    eta_loo: float = 0.0,
    t: int | None = None,
    time: TimeMode = "discrete",
    phi_eval: Tensor | None = None,
    keep_dv: bool = False,
    chunk: int = 512,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PrimalLoo:
    """Exact LOO for the linear model r₀ + Φv with ridge λ (docs/science.md §2.5, primal route).

    phi (N, d) any float dtype (cast to float64 chunk by chunk), r0 (N,), phi_eval (M', d)
    or None. t = ∞ uses Woodbury with M = ΦᵀΦ + λI; finite t one ``eigh`` per i. The
    (N, N) kernel is never formed.
    """
    n_total, d = phi.shape
    n = n_total // k
    lam_loo = lam if lam_loo is None else lam_loo
    dev = phi.device  # the algebra and its results stay where the features are
    r0 = r0.to(device=dev, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    gram = torch.zeros((d, d), dtype=torch.float64, device=dev)
    b = torch.zeros(d, dtype=torch.float64, device=dev)
    rows = chunk * k
    for lo in range(0, n_total, rows):
        block = phi[lo : lo + rows].to(torch.float64)
        gram += block.T @ block
        b += block.T @ r0[lo : lo + rows]
    gram = _sym(gram)
    cov_eval = None
    if phi_eval is not None:
        pe = phi_eval.to(device=dev, dtype=torch.float64)
        cov_eval = _sym(pe.T @ pe)
    sq = torch.empty(n, dtype=torch.float64, device=dev)
    sq_f = torch.empty(n, dtype=torch.float64, device=dev) if cov_eval is not None else None
    dv_all = torch.empty((n, d), dtype=torch.float64, device=dev) if keep_dv else None

    def record(i0: int, dv: Tensor) -> None:  # dv (b, d)
        sq[i0 : i0 + dv.shape[0]] = (dv * dv).sum(1)
        if sq_f is not None and cov_eval is not None:
            sq_f[i0 : i0 + dv.shape[0]] = ((dv @ cov_eval) * dv).sum(1)
        if dv_all is not None:
            dv_all[i0 : i0 + dv.shape[0]] = dv

    if t is None:
        chol = cholesky_with_jitter(gram + lam * eye)
        factor = chol.factor
        v = -torch.cholesky_solve(b.reshape(-1, 1), factor).reshape(-1)
        s_min, s_max = _extreme_eigs(gram + lam * eye, factor, shift=chol.jitter)
        jitter, jitter_eps = chol.jitter, chol.eps
        # LOO runs with their own ridge (loo_lambda 'rescaled'): Δv_i = (v − v') + (v' − v'₋ᵢ)
        # where v' is the full run at λ_loo and v' − v'₋ᵢ the Woodbury identity at λ_loo.
        v_ref, offset = v, None
        if lam_loo != lam:
            chol = cholesky_with_jitter(gram + lam_loo * eye)
            factor = chol.factor
            v_ref = -torch.cholesky_solve(b.reshape(-1, 1), factor).reshape(-1)
            offset = v - v_ref
            jitter, jitter_eps = max(jitter, chol.jitter), max(jitter_eps, chol.eps)
        for i0 in range(0, n, chunk):
            check_stop(should_stop)
            block = phi[i0 * k : (i0 + chunk) * k].to(torch.float64)  # (bk, d)
            nb = block.shape[0] // k
            rho = (r0[i0 * k : i0 * k + block.shape[0]] + block @ v_ref).reshape(nb, k)
            z = torch.linalg.solve_triangular(factor, block.T, upper=False).reshape(d, nb, k)
            h = torch.einsum("zia,zib->iab", z, z)
            c = torch.linalg.solve(eye[:k, :k] - h, rho.unsqueeze(-1)).squeeze(-1)
            y = torch.einsum("zia,ia->zi", z, c)
            dv = -torch.linalg.solve_triangular(factor.T, y, upper=True).T  # (nb, d)
            record(i0, dv if offset is None else dv + offset)
            if progress is not None:
                progress(min(i0 + chunk, n), n)
        return PrimalLoo(sq.clamp_min(0.0), sq_f, v, dv_all, jitter, jitter_eps, s_min, s_max)

    s, vecs = torch.linalg.eigh(gram + lam * eye)
    v = -(vecs @ (gd_filter(s, eta=eta, t=t, time=time) * (vecs.T @ b)))
    for i in range(n):
        check_stop(should_stop)
        phi_i = phi[i * k : (i + 1) * k].to(torch.float64)  # (k, d)
        m_i = gram - phi_i.T @ phi_i + lam_loo * eye
        b_i = b - phi_i.T @ r0[i * k : (i + 1) * k]
        s_i, v_i = torch.linalg.eigh(_sym(m_i))
        v_loo = -(v_i @ (gd_filter(s_i, eta=eta_loo, t=t, time=time) * (v_i.T @ b_i)))
        record(i, (v - v_loo).reshape(1, -1))
        if progress is not None:
            progress(i + 1, n)
    return PrimalLoo(sq.clamp_min(0.0), sq_f, v, dv_all, 0.0, 0.0, float(s.min()), float(s.max()))


def loo_primal_finite(
    phi: Tensor | FactoredFeatures,
    r0: Tensor,
    *,
    k: int,
    lam: float,
    lam_loo: float,
    eta: float,
    eta_loo: float,
    t: int,
    phi_eval: Tensor | None = None,
    keep_dv: bool = False,
    block: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PrimalLoo:
    """Exact LOO after t discrete GD steps for the linear model r₀ + Φv (projected method),
    with one ``eigh`` of ΦᵀΦ for all samples instead of one per sample.

    phi (N, d), r0 (N,), phi_eval (M', d) or None; same result as the finite-t branch of
    :func:`loo_primal` (round-off only). The run without i is the unmasked run with
    (η', λ') plus a rank-k correction through Φ_iᵀ: v⁽⁻ⁱ⁾_s = v_s^{ref} + η'Σ_{j<s}
    (I − η'M')^{s−1−j}Φ_iᵀz_j with z_j = r_i + Φ_i v⁽⁻ⁱ⁾_j (sample i's residual), an explicit
    causal recursion run in blocks of ``block`` steps as in :func:`loo_finite`'s recurrence:
    O(d³ + N d² + n k d t) instead of O(n d³).
    """
    n_total, d = phi.shape
    n = n_total // k
    dev, f64 = phi.device, torch.float64
    r0 = r0.to(device=dev, dtype=f64)
    gram = torch.zeros((d, d), dtype=f64, device=dev)
    b = torch.zeros(d, dtype=f64, device=dev)
    for lo in range(0, n_total, 65536):
        rows = phi[lo : lo + 65536].to(f64)
        gram += rows.T @ rows
        b += rows.T @ r0[lo : lo + 65536]
    mu, vecs = torch.linalg.eigh(_sym(gram))
    cb = vecs.T @ b
    g_full = gd_filter(mu + lam, eta=eta, t=t)
    g_loo = gd_filter(mu + lam_loo, eta=eta_loo, t=t)  # raises naming 'lr' when GD diverges
    v = -(vecs @ (g_full * cb))
    base = 1.0 - eta_loo * (mu + lam_loo)
    width = recurrence_block(d, k, t) if block is None else max(1, min(block, t))
    steps = torch.arange(width + 1, dtype=f64, device=dev)
    powers = base.reshape(1, -1) ** steps.reshape(-1, 1)  # (width + 1, d)
    cum_excl = (torch.cumsum(powers[:width], 0) - powers[:width]) * eta_loo  # η'Σ_{q'<q} b^q'
    cov_eval = None
    if phi_eval is not None:
        pe = phi_eval.to(device=dev, dtype=f64) @ vecs
        cov_eval = _sym(pe.T @ pe)  # in the eigenbasis
    sq = torch.empty(n, dtype=f64, device=dev)
    sq_f = torch.empty(n, dtype=f64, device=dev) if cov_eval is not None else None
    dv_all = torch.empty((n, d), dtype=f64, device=dev) if keep_dv else None
    per_sample = 8 * (k * k * width + 7 * k * d + 2 * d + 4 * k * width)
    chunk = max(1, min(n, FINITE_T_CHUNK_BYTES // per_sample))
    for lo in range(0, n, chunk):
        check_stop(should_stop)
        hi = min(n, lo + chunk)
        c = hi - lo
        feats = (phi[lo * k : hi * k].to(f64) @ vecs).reshape(c, k, d)  # F_i = Φ_i V
        resid0 = r0[lo * k : hi * k].reshape(c, k)
        markov = torch.einsum(
            "cad,qd,cbd->caqb", feats, powers[:width], feats
        ).contiguous()  # K_i(q), q < width
        flat = feats.reshape(c * k, d)
        state = torch.zeros((c, d), dtype=f64, device=dev)
        curve = torch.zeros(d, dtype=f64, device=dev)  # g_{j0}
        power = torch.ones(d, dtype=f64, device=dev)  # b^{j0}
        for j0 in range(0, t, width):
            check_stop(should_stop)
            w = min(width, t - j0)
            curves = curve + power * cum_excl[:w]  # (w, d): g_s, s = j0 .. j0 + w − 1
            rhs = resid0.unsqueeze(2) - ((flat * cb) @ curves.T).reshape(c, k, w)
            rhs += eta_loo * ((feats * state.unsqueeze(1)).reshape(c * k, d) @ powers[:w].T).reshape(c, k, w)
            z_rev = torch.zeros((c, w, k), dtype=f64, device=dev)  # z_rev[:, w−1−q] = z_{j0+q}
            for q in range(w):
                z_q = rhs[:, :, q]
                if q:
                    past = markov[:, :, :q].reshape(c, k, q * k)
                    z_q = z_q + eta_loo * (past @ z_rev[:, w - q :].reshape(c, q * k, 1)).squeeze(2)
                z_rev[:, w - 1 - q] = z_q
            pushed = (z_rev.permute(0, 2, 1).reshape(c * k, w) @ powers[:w]).reshape(c, k, d)
            state = powers[w] * state + (feats * pushed).sum(1)
            curve = curve + power * (cum_excl[w - 1] + eta_loo * powers[w - 1])  # g_{j0+w}
            power = power * powers[w]
        dv_t = (g_loo - g_full) * cb - eta_loo * state  # Vᵀ(v − v⁽⁻ⁱ⁾), (c, d)
        sq[lo:hi] = (dv_t * dv_t).sum(1)
        if sq_f is not None and cov_eval is not None:
            sq_f[lo:hi] = ((dv_t @ cov_eval) * dv_t).sum(1)
        if dv_all is not None:
            dv_all[lo:hi] = dv_t @ vecs.T
        if progress is not None:
            progress(hi, n)
    s_all = mu + lam
    return PrimalLoo(sq.clamp_min(0.0), sq_f, v, dv_all, 0.0, 0.0, float(s_all.min()), float(s_all.max()))


def lyapunov_covariance(h: Tensor, c: Tensor) -> Tensor:
    """Σ solving HΣ + ΣH = C for symmetric H ≻ 0 (p, p) and C (p, p), float64.

    With H = V diag(h) Vᵀ: Σ = V [(VᵀCV)_ab / (h_a + h_b)] Vᵀ.
    """
    s, vecs = torch.linalg.eigh(_sym(h.to(torch.float64)))
    ct = vecs.T @ c.to(torch.float64) @ vecs
    return _sym(vecs @ (ct / (s.reshape(-1, 1) + s.reshape(1, -1))) @ vecs.T)


def weights_full_scores(
    h: Tensor, grads: Tensor, dw: Tensor, *, rel_jitter: float = DEFAULT_FULL_COVARIANCE_JITTER
) -> Tensor:
    """Δw_iᵀ(Σ + ε·(tr Σ/p)·I)⁻¹Δw_i (n,) for HΣ + ΣH = C, C = (1/n)Σ g_igᵢᵀ − ḡḡᵀ.

    h (p, p); grads (n, p) per-example loss gradients at the final weights; dw (n, p).
    The jitter is relative to Σ's mean eigenvalue, so the scores scale as 1/c² when the
    gradients scale by c (an absolute jitter would make them depend on the units).
    """
    g = grads.to(torch.float64)
    gbar = g.mean(0)
    c = g.T @ g / g.shape[0] - torch.outer(gbar, gbar)
    sigma = lyapunov_covariance(h, c)
    p = sigma.shape[0]
    scale = float(torch.trace(sigma)) / p
    if not scale > 0:
        raise NumericalError(
            "weights_full: the gradient covariance is zero (every sample has the same gradient)"
        )
    eye = torch.eye(p, dtype=torch.float64, device=sigma.device)
    chol = cholesky_with_jitter(sigma + (rel_jitter * scale) * eye)
    sol = torch.cholesky_solve(dw.to(torch.float64).T, chol.factor)
    return (dw.to(torch.float64).T * sol).sum(0)


def per_sample_loss_gradients(
    model: nn.Module,
    weights: Tensor,
    x: Tensor,
    targets: Tensor,
    *,
    batch_size: int = 128,
    should_stop: StopFn | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, G)`` with G (b, p) the gradients of ½‖f_w(x_i) − y_i‖² of the *real*
    network at the flat weights ``weights`` (p,), for x[start:start+b]; targets (n, k).

    Eval mode (BatchNorm running statistics, dropout off), the model itself untouched.
    """
    was_training = model.training
    model.eval()
    try:
        names = [name for name, _ in model.named_parameters()]
        shapes = [prm.shape for _, prm in model.named_parameters()]
        dtype = next(model.parameters()).dtype
        pieces = torch.split(weights.to(dtype), [math.prod(sh) for sh in shapes])
        params = {name: piece.reshape(sh) for name, piece, sh in zip(names, pieces, shapes, strict=True)}
        buffers = {name: buf.detach() for name, buf in model.named_buffers()}

        def loss(prm: dict[str, Tensor], x_single: Tensor, y_single: Tensor) -> Tensor:
            out = functional_call(model, (prm, buffers), (x_single.unsqueeze(0),))[0]
            return 0.5 * ((out - y_single.to(out.dtype)) ** 2).sum()

        grad_fn = vmap(grad(loss), in_dims=(None, 0, 0))
        for start in range(0, x.shape[0], batch_size):
            check_stop(should_stop)
            grads = grad_fn(params, x[start : start + batch_size], targets[start : start + batch_size])
            b = min(batch_size, x.shape[0] - start)
            yield start, torch.cat([grads[name].reshape(b, -1) for name in names], dim=1)
    finally:
        model.train(was_training)


def _lift(projector: Projector, v: Tensor) -> Tensor:
    """R v (p,) for v (d,): the weight change of the projected model w₀ + R v."""
    parts = []
    for ti, size in enumerate(projector.sizes):
        for bi in range(0, (size + ROW_BLOCK - 1) // ROW_BLOCK):
            parts.append(projector.block(ti, bi).to(device=v.device, dtype=torch.float64) @ v)
    return torch.cat(parts)


@dataclass
class SampleInformation:
    """Scores of one job. Arrays (n,) float64 numpy in nats, None when not requested.

    si_weights_full: the network's per-example gradients at w_t (official); with
    ``method="projected"`` it is the same score for the network restricted to the random
    subspace w₀ + R v (computed in the projection space: see :meth:`columns`).
    si_weights_full_linearized: the linearized model's gradients J(w₀)ᵀ(f_t − y) instead.
    delta_f: (n, m, k) float32 numpy, Δf_i(x') = f_w(x') − f_{w₋ᵢ}(x'), when requested.
    train_accuracy / test_accuracy: of the linearized model at step t on the (possibly
    noisy) training labels / on the held-out set (NaN without held-out labels).
    info: n, k, p, d, m, l2, lam, eta, t, jitter, cond_A, timings and the like.
    """

    si_weights: np.ndarray | None
    si_predictions: np.ndarray | None
    si_weights_full: np.ndarray | None
    train_accuracy: float
    test_accuracy: float
    info: dict[str, Any] = field(default_factory=dict)
    si_weights_full_linearized: np.ndarray | None = None
    delta_f: np.ndarray | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """Score columns under honest names: in projected mode the full-covariance scores
        live in the d-dim projection space and get a ``_projected`` suffix."""
        suffix = "_projected" if self.info.get("method") == "projected" else ""
        out: dict[str, np.ndarray] = {}
        for name in ("si_weights", "si_predictions"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("si_weights_full", "si_weights_full_linearized"):
            if getattr(self, name) is not None:
                out[name + suffix] = getattr(self, name)
        return out


def _check_params(
    n: int,
    k: int,
    t: int | None,
    lr: float,
    l2: float | None,
    l2_auto_scale: float | None,
    sigma: float,
    measures: Sequence[str],
    method: str,
    projection_dim: int,
    projection: str,
    time: str,
    loo_lambda: str,
) -> None:
    caller = "sample_information"
    if n < 2:
        raise invalid("x_train", caller, "at least 2 samples", n)
    if k < 1:
        raise invalid("k", caller, "a positive integer", k)
    if t is not None and (not isinstance(t, int) or t < 1):
        raise invalid("t", caller, "a positive integer or None (infinity)", t)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise invalid("lr", caller, "a float in (0, inf)", lr)
    if l2 is not None and not (isinstance(l2, int | float) and math.isfinite(l2) and l2 >= 0):
        raise invalid("l2", caller, "a float in [0, inf) or None (automatic)", l2)
    if l2_auto_scale is not None and not (math.isfinite(l2_auto_scale) and l2_auto_scale > 0):
        raise invalid("l2_auto_scale", caller, "a float in (0, inf)", l2_auto_scale)
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
        raise invalid("sigma", caller, "a float in (0, inf)", sigma)
    if not measures or any(mm not in MEASURES for mm in measures):
        raise invalid("measures", caller, f"a non-empty list drawn from {list(MEASURES)}", list(measures))
    if method not in METHODS:
        raise invalid("method", caller, f"one of {list(METHODS)}", method)
    if not isinstance(projection_dim, int) or projection_dim < 1:
        raise invalid("projection_dim", caller, "a positive integer", projection_dim)
    if projection not in PROJECTION_KINDS:
        raise invalid("projection", caller, f"one of {list(PROJECTION_KINDS)}", projection)
    if time not in TIME_MODES:
        raise invalid("time", caller, f"one of {list(TIME_MODES)}", time)
    if loo_lambda not in LOO_LAMBDAS:
        raise invalid("loo_lambda", caller, f"one of {list(LOO_LAMBDAS)}", loo_lambda)


@torch.no_grad()
def _logits64(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).to(torch.float64)


def _accuracy(logits: Tensor, y: Tensor | None) -> float:
    if y is None or y.numel() == 0:
        return math.nan
    return float((logits.argmax(1) == y.to(logits.device)).to(torch.float64).mean())


def exact_memory_bytes(n: int, k: int, p: int, m: int) -> int:
    """Rough peak of the exact method with the structured kernel at t = ∞: Θ factored in
    place plus one work matrix and a quarter (about 2.25 N²; digits, N = 13,470: 3.56 GiB
    measured), δ (N n) and one block of the cross kernel (128 k × N). The J Jᵀ fallback and
    ``weights_full`` add J (N p)."""
    del p, m  # the structured path's peak does not depend on them (signature kept)
    big_n = n * k
    return 8 * (9 * big_n * big_n // 4 + 2 * big_n * n + 128 * k * big_n)


def finite_t_refusal(
    n: int, k: int, t: int, method: str, projection_dim: int, time: str, max_cost: float
) -> str | None:
    """None when finite-t LOO fits ``max_cost`` (flop-like units of :func:`finite_t_cost`),
    else the reason, naming the cost and the fixes."""
    if method == "exact":
        cost = min(
            finite_t_cost(n, k, t, choose_finite_t_route(n, k, t, time)), finite_t_cost(n, k, t, "eigh")
        )
        what = "(nk)^3 + nk*nk*t"
    else:
        cost = min(
            projected_finite_t_cost(n, k, projection_dim, t, time), 10.0 * n * float(projection_dim) ** 3
        )
        what = "d^3 + nk*d*t or n*d^3"
    if cost <= max_cost:
        return None
    fix = (
        ", or method 'projected' with a small projection_dim."
        if method == "exact"
        else ", or a smaller projection_dim."
    )
    return (
        f"The 't' parameter of sample_information is {t}: exact LOO at finite t costs about {cost:.3g} "
        f"(order {what}) > {max_cost:.3g}. Use t = null (infinity), fewer samples" + fix
    )


def sample_information(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    k: int,
    x_eval: Tensor | None = None,
    y_eval: Tensor | None = None,
    t: int | None = None,
    lr: float = 1e-3,
    l2: float | None = None,
    l2_auto_scale: float | None = None,
    sigma: float = 1.0,
    measures: Sequence[Measure] = ("weights", "predictions"),
    method: Method = "exact",
    projection_dim: int = 2048,
    projection: ProjectionKind = "rademacher",
    time: TimeMode = "discrete",
    loo_lambda: LooLambda = "same",
    seed: int = 0,
    batch_size: int = 128,
    max_exact_nk: int = DEFAULT_MAX_EXACT_NK,
    max_full_p: int = DEFAULT_MAX_FULL_P,
    max_finite_t_cost: float | None = DEFAULT_MAX_FINITE_T_COST,
    weights_full_jitter: float = DEFAULT_FULL_COVARIANCE_JITTER,
    delta_f: bool = False,
    max_delta_f_bytes: int = DEFAULT_MAX_DELTA_F_BYTES,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    kernel_method: KernelMethod = "auto",
    projection_structure: ProjectionStructure = "kronecker",
) -> SampleInformation:
    """SI / F-SI of every training sample for ``model`` linearized at its current weights.

    x_train (n, ...) and y_train (n,) int on the model's device; x_eval (m, ...) held-out
    inputs for F-SI (required when ``"predictions"`` is measured or ``delta_f``), y_eval (m,)
    optional labels for the linearized test accuracy. ``lr``/``l2`` are in the mean-loss
    form (η = lr/n, λ = n·l2); ``l2=None`` picks λ = l2_auto_scale · tr(Θ)/(nk) (scale-free).
    ``l2_auto_scale=None`` means 1.0 for both methods (one rule; see
    ``DEFAULT_L2_AUTO_SCALE``). ``t=None`` is t = ∞. method: ``exact`` (default; refused beyond nk > max_exact_nk)
    or ``projected`` (d = projection_dim, R seeded by ``seed``). ``max_finite_t_cost``: None
    (default) runs any finite t; a number refuses costlier ones (:func:`finite_t_refusal`).
    ``weights_full_jitter``: ε of the relative jitter ε·tr(Σ)/p (:func:`weights_full_scores`).
    ``delta_f``: also return Δf (n, m, k) float32 (refused beyond ``max_delta_f_bytes``).

    Everything stays on the model's device until the result is returned.
    progress(done, total) counts stages: Jacobians of x_train, the LOO, held-out Jacobians.
    The two routes are :func:`_exact_route` (Θ in full) and :func:`_projected_route`
    (features Φ = J R); everything they share is in :class:`_SiRun`.
    """
    n = int(x_train.shape[0])
    p = parameter_count(model)
    m = 0 if x_eval is None else int(x_eval.shape[0])
    _check_params(
        n, k, t, lr, l2, l2_auto_scale, sigma, measures, method, projection_dim, projection, time, loo_lambda
    )
    _check_request(
        n=n, k=k, p=p, m=m, y_train=y_train, x_eval=x_eval, t=t, measures=measures, method=method,
        projection_dim=projection_dim, time=time, max_exact_nk=max_exact_nk, max_full_p=max_full_p,
        max_finite_t_cost=max_finite_t_cost, weights_full_jitter=weights_full_jitter, delta_f=delta_f,
        max_delta_f_bytes=max_delta_f_bytes, kernel_method=kernel_method,
        projection_structure=projection_structure,
    )  # fmt: skip
    if l2_auto_scale is None:
        l2_auto_scale = DEFAULT_L2_AUTO_SCALE[method]
    eta, _ = sum_form(n, lr, 0.0)
    eta_loo, _ = loo_sum_form(n, lr, 0.0)
    n_eval_units = m if ("predictions" in measures or y_eval is not None or delta_f) else 0
    stages = _Stages(total=n + n + n_eval_units, progress=progress)

    tic = _time.perf_counter()
    f0_train = _logits64(model, x_train)
    y_dev = y_train.to(f0_train.device).long()
    targets = one_hot(y_dev, k)  # (n, k) on the device
    if f0_train.shape[1] != k:
        raise invalid("k", "sample_information", f"the model's output width {f0_train.shape[1]}", k)
    info: dict[str, Any] = {
        "n": n,
        "k": k,
        "p": p,
        "m": m,
        "t": t,
        "lr": lr,
        "eta": eta,
        "time": time,
        "method": method,
        "loo_lambda": loo_lambda,
        "sigma": sigma,
        "units": "nats",
    }
    run = _SiRun(
        model=model, x_train=x_train, x_eval=x_eval if n_eval_units else None, n=n, k=k, m=m, t=t, lr=lr,
        l2=l2, l2_auto_scale=l2_auto_scale, eta=eta, eta_loo=eta_loo, loo_lambda=loo_lambda, time=time,
        measures=tuple(measures), batch_size=batch_size, weights_full_jitter=weights_full_jitter,
        delta_f=delta_f, should_stop=should_stop, f0_train=f0_train, targets=targets,
        r0=f0_train.reshape(-1) - targets.reshape(-1), stages=stages, info=info, timings={}, started=tic,
    )  # fmt: skip
    if method == "exact":
        out = _exact_route(run, kernel_method)
    else:
        out = _projected_route(run, projection_dim, projection, projection_structure, seed)

    info.update(
        l2=out.lam / n, lam=out.lam, lam_loo=out.lam_loo, l2_auto=l2 is None, l2_auto_scale=l2_auto_scale
    )
    if run.want_full or run.want_full_lin:
        info["weights_full_jitter"] = weights_full_jitter
        info["weights_full_space"] = "weights" if method == "exact" else "projection"
    info["cond_A"] = info["eig_max"] / info["eig_min"] if info["eig_min"] > 0 else math.inf
    train_accuracy = _accuracy(out.train_logits, y_dev)
    test_accuracy = math.nan if out.eval_logits is None else _accuracy(out.eval_logits, y_eval)
    scale = 1.0 / (2.0 * sigma**2)
    info["timings"] = run.timings

    def host(x: Tensor | None, factor: float = 1.0) -> np.ndarray | None:
        return None if x is None else (x * factor).cpu().numpy()

    return SampleInformation(
        si_weights=host(out.sq_weights, scale) if "weights" in measures else None,
        si_predictions=host(out.sq_pred, scale),
        si_weights_full=host(out.full_scores),
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        info=info,
        si_weights_full_linearized=host(out.full_lin_scores),
        delta_f=None if out.delta_f is None else out.delta_f.cpu().numpy(),
    )


def _check_request(
    *,
    n: int,
    k: int,
    p: int,
    m: int,
    y_train: Tensor,
    x_eval: Tensor | None,
    t: int | None,
    measures: Sequence[str],
    method: str,
    projection_dim: int,
    time: str,
    max_exact_nk: int,
    max_full_p: int,
    max_finite_t_cost: float | None,
    weights_full_jitter: float,
    delta_f: bool,
    max_delta_f_bytes: int,
    kernel_method: str,
    projection_structure: str,
) -> None:
    """The checks of :func:`sample_information` beyond :func:`_check_params`: options, shapes
    and the size limits (all before any Jacobian)."""
    caller = "sample_information"
    if not (
        isinstance(weights_full_jitter, int | float)
        and math.isfinite(weights_full_jitter)
        and weights_full_jitter > 0
    ):
        raise invalid("weights_full_jitter", caller, "a float in (0, inf)", weights_full_jitter)
    if kernel_method not in KERNEL_METHODS:
        raise invalid("kernel_method", caller, f"one of {list(KERNEL_METHODS)}", kernel_method)
    if projection_structure not in PROJECTION_STRUCTURES:
        raise invalid(
            "projection_structure", caller, f"one of {list(PROJECTION_STRUCTURES)}",
            projection_structure,
        )  # fmt: skip
    if y_train.shape[0] != n:
        raise invalid("y_train", caller, f"{n} labels", int(y_train.shape[0]))
    if "predictions" in measures and x_eval is None:
        raise invalid("x_eval", caller, "held-out inputs when 'predictions' is measured", None)
    if delta_f and x_eval is None:
        raise invalid("x_eval", caller, "held-out inputs when delta_f is requested", None)
    big_n = n * k
    if delta_f and 4 * n * m * k > max_delta_f_bytes:
        raise InvalidInputError(
            f"The 'delta_f' parameter of sample_information asks for an (n, m, k) = ({n}, {m}, {k}) float32 "
            f"array of {4 * n * m * k / 2**30:.2f} GiB, over the limit of {max_delta_f_bytes / 2**30:.2f} GiB. "
            "Use a smaller eval_size (m) or fewer samples.",
            param="delta_f",
        )
    if method == "exact" and big_n > max_exact_nk:
        est = exact_memory_bytes(n, k, p, m)
        raise InvalidInputError(
            f"The 'method' parameter of sample_information is 'exact', which needs the full "
            f"(nk x nk) NTK with nk = {n}*{k} = {big_n} > {max_exact_nk} (about {est / 2**30:.1f} GiB "
            f"and O((nk)^3) time). Use method 'projected' (memory O(nk*d)) or fewer samples.",
            param="method",
        )
    dim = p if method == "exact" else projection_dim
    if any(mm in FULL_MEASURES for mm in measures) and dim > max_full_p:
        raise InvalidInputError(
            f"The 'measures' parameter of sample_information asks for 'weights_full', which needs a "
            f"{dim} x {dim} eigendecomposition (limit {max_full_p}: {'p' if method == 'exact' else 'd'} = {dim}). "
            "Drop 'weights_full', use a smaller model or method 'projected' with a small projection_dim.",
            param="measures",
        )
    if t is not None and max_finite_t_cost is not None:
        reason = finite_t_refusal(n, k, t, method, projection_dim, time, max_finite_t_cost)
        if reason is not None:
            raise InvalidInputError(reason, param="t")


@dataclass
class _Stages:
    """Progress of :func:`sample_information` in units: Jacobians of x_train (n), the LOO
    (n, whatever its own steps), held-out evaluation (m when evaluated)."""

    total: int
    progress: ProgressFn | None
    done: int = 0

    def at(self, offset: int) -> ProgressFn:
        def report(i: int, _total: int) -> None:
            self.done = offset + i
            if self.progress is not None:
                self.progress(self.done, self.total)

        return report

    def loo(self, n: int) -> ProgressFn:
        def report(i: int, total_i: int) -> None:
            self.at(n)(round(n * i / max(total_i, 1)), n)

        return report


@dataclass
class _SiRun:
    """The checked request and the state both routes of :func:`sample_information` share."""

    model: nn.Module
    x_train: Tensor
    x_eval: Tensor | None  # None when nothing is evaluated on held-out inputs
    n: int
    k: int
    m: int
    t: int | None
    lr: float
    l2: float | None
    l2_auto_scale: float
    eta: float
    eta_loo: float
    loo_lambda: LooLambda
    time: TimeMode
    measures: tuple[str, ...]
    batch_size: int
    weights_full_jitter: float
    delta_f: bool
    should_stop: StopFn | None
    f0_train: Tensor  # (n, k) float64 logits at w₀
    targets: Tensor  # (n, k) one-hot
    r0: Tensor  # (nk,) f₀(X) − Y
    stages: _Stages
    info: dict[str, Any]
    timings: dict[str, float]
    started: float  # perf_counter at the start of the first stage

    @property
    def want_full(self) -> bool:
        return "weights_full" in self.measures

    @property
    def want_full_lin(self) -> bool:
        return "weights_full_linearized" in self.measures

    def ridges(self, trace: float) -> tuple[float, float]:
        """λ of the full run (from tr Θ when ``l2`` is None) and λ of the leave-one-out runs."""
        lam = _resolve_lambda(self.l2, self.l2_auto_scale, trace, self.n, self.k)
        _, lam_loo = loo_sum_form(self.n, self.lr, lam / self.n, self.loo_lambda)
        return lam, lam_loo

    def start_eval(self) -> tuple[Tensor, Tensor | None, ProgressFn]:
        """f₀(X') (m, k) float64, the Δf buffer when asked (n, m, k) float32, the progress."""
        assert self.x_eval is not None
        f0_eval = _logits64(self.model, self.x_eval)
        delta_f_out = (
            torch.empty((self.n, self.m, self.k), dtype=torch.float32, device=f0_eval.device)
            if self.delta_f
            else None
        )
        return f0_eval, delta_f_out, self.stages.at(2 * self.n)


@dataclass
class _SiOutcome:
    """What a route of :func:`sample_information` computed (tensors on the job's device)."""

    lam: float
    lam_loo: float
    sq_weights: Tensor
    train_logits: Tensor
    sq_pred: Tensor | None = None
    full_scores: Tensor | None = None
    full_lin_scores: Tensor | None = None
    eval_logits: Tensor | None = None
    delta_f: Tensor | None = None


def _exact_route(run: _SiRun, kernel_method: KernelMethod) -> _SiOutcome:
    """Θ (nk x nk, float64) in full, the exact leave-one-out (t = ∞ or finite t), the
    weight-space full-covariance scores when asked, F-SI from the cross kernel."""
    model, x_train, n, k, info, timings = run.model, run.x_train, run.n, run.k, run.info, run.timings
    # Θ from per-layer factors (structured) unless the model needs the J Jᵀ reference.
    info["kernel_method"] = resolve_kernel_method(model, kernel_method)
    theta = ntk_gram(
        model, x_train, kernel="full", batch_size=run.batch_size, should_stop=run.should_stop,
        method=info["kernel_method"],
    )  # fmt: skip
    run.stages.at(0)(n, n)
    timings["kernel_s"] = _time.perf_counter() - run.started
    tic = _time.perf_counter()
    lam, lam_loo = run.ridges(float(torch.trace(theta)))
    r0 = run.r0.to(theta.device)
    if run.t is None:
        res = loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam_loo)
    else:
        route = choose_finite_t_route(n, k, run.t, run.time)
        info["finite_t_route"] = route
        res = loo_finite(
            theta, r0, k=k, lam=lam, lam_loo=lam_loo, eta=run.eta, eta_loo=run.eta_loo, t=run.t,
            time=run.time, route=route,  # type: ignore[arg-type]
            progress=run.stages.loo(n), should_stop=run.should_stop,
        )  # fmt: skip
    run.stages.at(n)(n, n)
    timings["loo_s"] = _time.perf_counter() - tic
    out = _SiOutcome(
        lam=lam,
        lam_loo=lam_loo,
        sq_weights=res.sq_weight_change,
        train_logits=(run.f0_train.reshape(-1).to(theta.device) - theta @ res.u).reshape(n, k),
    )
    info.update(jitter=res.jitter, jitter_eps=res.jitter_eps, eig_min=res.eig_min, eig_max=res.eig_max)
    del theta
    if run.want_full or run.want_full_lin:  # p <= max_full_p: J is small here
        _exact_full_scores(run, res, out)
    info["d"] = None
    if run.x_eval is not None:
        tic = _time.perf_counter()
        f0_eval, out.delta_f, report = run.start_eval()
        # Δf_i(X') = −Θ(X', X)δ_i and f_t(X') = f₀(X') − Θ(X', X)u, one held-out chunk
        # of the cross kernel at a time (no J, no weight-space vectors).
        coef = torch.cat([res.delta, res.u.reshape(-1, 1)], dim=1)  # (nk, n+1)
        sq_f = torch.zeros(n, dtype=torch.float64, device=coef.device)
        eval_logits = f0_eval.clone().to(coef.device)
        for start, block in ntk_cross_chunks(
            model, run.x_eval, x_train, kernel="full", batch_size=run.batch_size,
            method=info["kernel_method"], should_stop=run.should_stop,
        ):  # fmt: skip
            b = block.shape[0] // k
            cols = block.to(coef) @ coef  # (bk, n+1)
            sq_f += (cols[:, :n] ** 2).sum(0)
            eval_logits[start : start + b] -= cols[:, n].reshape(b, k)
            if out.delta_f is not None:  # Δf_i(x') = J(x')Δw_i = −J(x')·(column i)
                out.delta_f[:, start : start + b] = (-cols[:, :n].T).reshape(n, b, k).to(out.delta_f)
            report(min(start + b, run.m), run.m)
        if "predictions" in run.measures:
            out.sq_pred = sq_f
        out.eval_logits = eval_logits
        timings["eval_s"] = _time.perf_counter() - tic
    return out


def _exact_full_scores(run: _SiRun, res: KernelLoo, out: _SiOutcome) -> None:
    """``weights_full`` (the network's gradients at w_t) and ``weights_full_linearized``
    (J(w₀)ᵀ residuals) in weight space, from J of the training set."""
    tic = _time.perf_counter()
    model, n, k = run.model, run.n, run.k
    p = parameter_count(model)
    jac = per_sample_jacobians(model, run.x_train, batch_size=run.batch_size, should_stop=run.should_stop)
    jac = jac.to(torch.float64).reshape(n * k, p).to(res.delta.device)
    dw_cols = jac.T @ torch.cat([res.delta, res.u.reshape(-1, 1)], dim=1)  # (p, n+1)
    hess = jac.T @ jac + (out.lam + res.jitter) * torch.eye(p, dtype=torch.float64, device=jac.device)
    dw = dw_cols[:, :n].T
    if run.want_full_lin:
        resid = (out.train_logits - run.targets.to(out.train_logits.device)).reshape(n, k)  # f_t(X) − Y
        grads = torch.einsum("ikp,ik->ip", jac.reshape(n, k, p), resid)
        out.full_lin_scores = weights_full_scores(hess, grads, dw, rel_jitter=run.weights_full_jitter)
    if run.want_full:
        w_t = flat_parameters(model).to(torch.float64).to(jac.device) - dw_cols[:, n]
        grads = torch.cat(
            [g.to(torch.float64) for _, g in per_sample_loss_gradients(
                model, w_t, run.x_train, run.targets, batch_size=run.batch_size, should_stop=run.should_stop
            )]
        ).to(jac.device)  # fmt: skip
        out.full_scores = weights_full_scores(hess, grads, dw, rel_jitter=run.weights_full_jitter)
    run.timings["weights_full_s"] = _time.perf_counter() - tic


def _projected_route(
    run: _SiRun,
    projection_dim: int,
    projection: ProjectionKind,
    projection_structure: ProjectionStructure,
    seed: int,
) -> _SiOutcome:
    """Features Φ = J R (nk x d) without J, the primal leave-one-out in the projection space,
    the full-covariance scores there when asked, F-SI from Φ(X')."""
    model, x_train, n, k, m, info, timings = (
        run.model,
        run.x_train,
        run.n,
        run.k,
        run.m,
        run.info,
        run.timings,
    )
    big_n = n * k
    # Kronecker-factored projection from per-layer factors (no per-sample gradient) when
    # the model allows it; the dense per-sample projection of J chunks otherwise.
    structure = projection_structure
    if structure == "kronecker" and not structured_supported(model):
        structure = "dense"
    info["projection_structure"] = structure
    phi: Tensor | FactoredFeatures
    features_eval: Tensor | None = None
    kron: KroneckerProjector | None = None
    projector: Projector | None = None
    if structure == "kronecker":
        # d split over layers by their share of tr Θ on the first samples (deterministic).
        kron = KroneckerProjector(
            model,
            projection_dim,
            kind=projection,
            seed=seed,
            device=x_train.device,
            weights=trace_shares(model, x_train[:512]),
        )
        d = kron.d
        info["projection_layer_dims"] = [g.d for g in kron.groups]
        phi = kronecker_features(
            model, x_train, kron, batch_size=max(run.batch_size, 512), progress=run.stages.at(0),
            should_stop=run.should_stop,
        )  # fmt: skip
    else:
        d = projection_dim
        projector = projector_for(model, d, kind=projection, seed=seed, device=x_train.device)
        phi = projected_features(
            model, x_train, projector, batch_size=run.batch_size, progress=run.stages.at(0),
            should_stop=run.should_stop,
        ).reshape(big_n, d)  # fmt: skip
    timings["projected_features_s"] = _time.perf_counter() - run.started
    pdev = phi.device
    if run.x_eval is not None:
        tic = _time.perf_counter()
        if kron is not None:
            features_eval = kronecker_features(
                model, run.x_eval, kron, batch_size=max(run.batch_size, 512), should_stop=run.should_stop
            ).dense()
        else:
            assert projector is not None
            features_eval = projected_features(
                model, run.x_eval, projector, batch_size=run.batch_size, should_stop=run.should_stop
            ).reshape(m * k, d)
        timings["projected_eval_features_s"] = _time.perf_counter() - tic
    tic = _time.perf_counter()
    trace = float(sum(float((phi[lo : lo + 65536].double() ** 2).sum()) for lo in range(0, big_n, 65536)))
    lam, lam_loo = run.ridges(trace)
    keep_dv = run.want_full or run.want_full_lin or run.delta_f
    phi_eval = features_eval if "predictions" in run.measures else None
    t = run.t
    primal_route = None if t is None else choose_projected_finite_t_route(n, k, d, t, run.time)
    if t is not None and primal_route == "recurrence":  # one eigh for all samples, not one per sample
        info["finite_t_route"] = "recurrence"
        pres = loo_primal_finite(
            phi, run.r0.to(pdev), k=k, lam=lam, lam_loo=lam_loo, eta=run.eta, eta_loo=run.eta_loo, t=t,
            phi_eval=phi_eval, keep_dv=keep_dv, progress=run.stages.loo(n), should_stop=run.should_stop,
        )  # fmt: skip
    else:
        if t is not None:
            info["finite_t_route"] = "eigh"
        pres = loo_primal(
            phi, run.r0.to(pdev), k=k, lam=lam, lam_loo=lam_loo, eta=run.eta, eta_loo=run.eta_loo, t=t,
            time=run.time, phi_eval=phi_eval, keep_dv=keep_dv, progress=run.stages.at(n),
            should_stop=run.should_stop,
        )  # fmt: skip
    timings["loo_s"] = _time.perf_counter() - tic
    train_logits = torch.empty((n, k), dtype=torch.float64, device=pdev)
    for lo in range(0, big_n, 65536):
        train_logits.view(-1)[lo : lo + 65536] = phi[lo : lo + 65536].double() @ pres.v
    train_logits += run.f0_train.to(pdev)
    out = _SiOutcome(
        lam=lam,
        lam_loo=lam_loo,
        sq_weights=pres.sq_weight_change,
        sq_pred=pres.sq_prediction_change,
        train_logits=train_logits,
    )
    info.update(jitter=pres.jitter, jitter_eps=pres.jitter_eps, eig_min=pres.eig_min, eig_max=pres.eig_max)
    if run.want_full or run.want_full_lin:
        _projected_full_scores(run, phi, pres, out, kron, projector)
    info["d"] = d
    info["projection_dim"] = projection_dim
    info["projection"] = projection
    del phi
    if run.x_eval is not None:
        tic = _time.perf_counter()
        f0_eval, out.delta_f, report = run.start_eval()
        assert features_eval is not None
        fe = features_eval.double()
        out.eval_logits = f0_eval.to(fe.device) + (fe @ pres.v).reshape(m, k)
        if out.delta_f is not None:
            assert pres.dv is not None
            for lo in range(0, n, 256):
                blk = pres.dv[lo : lo + 256] @ fe.T  # (b, m k): Φ(X')Δv_i
                out.delta_f[lo : lo + blk.shape[0]] = blk.reshape(-1, m, k).to(out.delta_f)
        report(m, m)
        timings["eval_s"] = _time.perf_counter() - tic
    return out


def _projected_full_scores(
    run: _SiRun,
    phi: Tensor | FactoredFeatures,
    pres: PrimalLoo,
    out: _SiOutcome,
    kron: KroneckerProjector | None,
    projector: Projector | None,
) -> None:
    """The full-covariance scores in the projection space: ``weights_full`` from the
    network restricted to w₀ + R v (its v-gradients are Rᵀ∇_w at w_t = w₀ + R v) and
    ``weights_full_linearized`` from Φᵀ residuals."""
    assert pres.dv is not None
    tic = _time.perf_counter()
    n, k = run.n, run.k
    big_n = n * k
    d = pres.v.shape[0]
    pdev = phi.device
    gram = torch.zeros((d, d), dtype=torch.float64, device=pdev)
    for lo in range(0, big_n, 65536):
        blk = phi[lo : lo + 65536].double()
        gram += blk.T @ blk
    hess = gram + (out.lam + pres.jitter) * torch.eye(d, dtype=torch.float64, device=pdev)
    if run.want_full_lin:
        resid = (out.train_logits - run.targets.to(pdev)).reshape(n, k)
        grads = torch.einsum("ikd,ik->id", phi.reshape(n, k, d).double(), resid)
        out.full_lin_scores = weights_full_scores(hess, grads, pres.dv, rel_jitter=run.weights_full_jitter)
    if run.want_full:
        w0 = flat_parameters(run.model).to(torch.float64)
        r_dense: Tensor | None = None
        if kron is not None:  # R in full (p x d; d <= max_full_p here)
            r_dense = kron.dense().to(device=w0.device, dtype=torch.float64)
            w_t = w0 + r_dense @ pres.v.to(w0.device)
        else:
            assert projector is not None
            w_t = w0 + _lift(projector, pres.v.to(w0.device))
        grads = torch.empty((n, d), dtype=torch.float64, device=pdev)
        for start, g in per_sample_loss_gradients(
            run.model, w_t, run.x_train, run.targets.to(w0.device), batch_size=run.batch_size,
            should_stop=run.should_stop,
        ):  # fmt: skip
            projected = (
                g.to(torch.float64) @ r_dense
                if r_dense is not None
                else projector.project(g.unsqueeze(1)).reshape(-1, d)  # type: ignore[union-attr]
            )
            grads[start : start + g.shape[0]] = projected.to(device=pdev, dtype=torch.float64)
        out.full_scores = weights_full_scores(hess, grads, pres.dv, rel_jitter=run.weights_full_jitter)
    run.timings["weights_full_s"] = _time.perf_counter() - tic


LINEARIZE_AT: tuple[str, ...] = ("init", "trained", "checkpoint")


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load safetensors weights into ``model`` in place, after checking that the file holds
    exactly the model's state (same names, same shapes, floating point where the model is):
    a checkpoint of another spec, dataset shape or class count is refused naming
    ``linearize_at``. safetensors only: no pickle. Returns {"checkpoint_tensors", ...}."""
    from safetensors import SafetensorError, safe_open

    caller = "sample_information"
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            names = set(fh.keys())
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or extra:
                raise invalid(
                    "linearize_at", caller, f"a checkpoint of this model's tensors {sorted(expected)[:6]}...",
                    f"missing {missing[:4]}, unexpected {extra[:4]}",
                )  # fmt: skip
            state = {}
            for name in sorted(names):
                tensor = fh.get_tensor(name)
                want = expected[name]
                if tuple(tensor.shape) != tuple(want.shape):
                    raise invalid(
                        "linearize_at", caller,
                        f"tensor {name!r} of shape {tuple(want.shape)} (same model spec, input shape and classes)",
                        tuple(tensor.shape),
                    )  # fmt: skip
                if want.is_floating_point() != tensor.is_floating_point():
                    raise invalid(
                        "linearize_at", caller, f"tensor {name!r} of dtype {want.dtype}", tensor.dtype
                    )
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise invalid("linearize_at", caller, f"finite values in tensor {name!r}", "NaN or inf")
                state[name] = tensor.to(dtype=want.dtype)
    except (SafetensorError, OSError) as err:  # not a safetensors file, truncated, unreadable
        raise invalid(
            "linearize_at", caller, "a readable safetensors checkpoint", f"{type(err).__name__}: {err}"
        ) from err
    model.load_state_dict(state)
    return {"checkpoint_tensors": len(state)}


def train_linearization_point(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """``linearize_at="trained"``: train ``model`` in place with the project's training recipe
    (:func:`infoscore.training.train_classifier`: mini-batch cross-entropy, batch order drawn
    from ``seed``) for ``epochs`` on (x, y), so SI is then computed for the remaining,
    linearized dynamics from there. Returns the run's final train loss and accuracy."""
    from .training import train_classifier

    result = train_classifier(
        model, x, y.to(x.device).long(), epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        seed=seed, progress=progress, should_stop=should_stop,
    )  # fmt: skip
    return {
        "train_epochs": epochs,
        "trained_loss": result.train_loss[-1] if result.train_loss else math.nan,
        "trained_accuracy": result.train_accuracy[-1] if result.train_accuracy else math.nan,
    }


def _resolve_lambda(l2: float | None, scale: float, trace: float, n: int, k: int) -> float:
    """Sum-form λ: n·l2, or scale · tr(Θ)/(nk) when l2 is None (automatic)."""
    if l2 is not None:
        return n * float(l2)
    if not trace > 0:
        raise NumericalError("the NTK has zero trace: the model's outputs do not depend on its weights")
    return scale * trace / (n * k)
