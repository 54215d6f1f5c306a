"""Smooth sample information (SI) and functional SI (F-SI) by exact leave-one-out (LOO).

SCIENCE.md section 2. Glossary: **n** samples, **k** outputs, **p** parameters, N = n*k,
**m** held-out inputs, **d** projection dimension. Information is in nats.

For the linearized network trained by GD on MSE with one-hot targets (see
:mod:`infoscore.linearized` for the dynamics and the mean/sum conventions), sample i's
scores are

* ``si_weights``     = ‖w − w₋ᵢ‖² / (2σ²)            (weights-plain, Σ = σ²I)
* ``si_predictions`` = Σ_{x'} ‖f_w(x') − f_{w₋ᵢ}(x')‖² / (2σ²)   over m held-out x'
* ``si_weights_full`` = Δwᵀ(Σ + 1e-10·I)⁻¹Δw with Σ the SGD steady-state covariance
  (Lyapunov equation HΣ + ΣH = C; no ½ and no η/b factor: a global rescale)

where w₋ᵢ is trained without sample i from the same w₀ with step lr/(n − 1).

Methods
-------
``exact`` (default)
    Full NTK Θ (N, N) in float64. t = ∞: one Cholesky and the p-free identities
    c_i = P_ii⁻¹ a_i, ‖Δw_i‖² = c_iᵀ(P − λP²)_ii c_i with P = A⁻¹, a = P r₀ (O(N³)).
    Finite t: one ``eigh`` of A₋ᵢ,₋ᵢ per i (O(n N³)). Memory O(N² + Np).
``projected``
    Features Φ = J R (N, d) (:mod:`infoscore.projection`), primal algebra with
    M = ΦᵀΦ + λI_d (Woodbury): c_i = (I − H_ii)⁻¹ρ_i, Δv_i = −M⁻¹Φ_iᵀc_i. Never an
    (N, N) matrix; O(N d² + d³), memory O(N d). Finite t: one ``eigh`` of M − Φ_iᵀΦ_i per i.

F-SI uses Δf_i(x') = J(x')Δw_i (exact) or Φ(x')Δv_i (projected), contracted without
forming Θ_{X'X}.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InvalidInputError, NumericalError, invalid
from .linearized import (
    JITTER_LADDER,
    LOO_LAMBDAS,
    TIME_MODES,
    TimeMode,
    cholesky_with_jitter,
    gd_filter,
    loo_sum_form,
    one_hot,
    sum_form,
)
from .ntk import (
    KERNEL_METHODS,
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
    FactoredFeatures,
    KroneckerProjector,
    kronecker_features,
    projected_features,
    projector_for,
    trace_shares,
)

Measure = Literal["weights", "predictions", "weights_full"]
Method = Literal["exact", "projected"]
MEASURES: tuple[str, ...] = ("weights", "predictions", "weights_full")
METHODS: tuple[str, ...] = ("exact", "projected")

# Defaults (documented in docs/jobs/sample-information.md).
# One automatic-ridge rule for both methods: λ = scale · tr(Θ)/(nk) when l2 is None, scale 1.0.
# The projected path approximates the exact one at the same λ (Spearman 0.966 at n = 1000, d = 2048,
# Kronecker projection); at the former exact default 1e-3 the LOO changes live in the tail of Θ that
# any d-dimensional projection loses (Spearman 0.26-0.56), so the two methods estimated different things.
DEFAULT_L2_AUTO_SCALE: dict[str, float] = {"exact": 1.0, "projected": 1.0}
DEFAULT_MAX_EXACT_NK = 20_000  # Θ and P: 2 · 8 · N² bytes = 6.4 GB at N = 20000
DEFAULT_MAX_FULL_P = 5_000  # weights_full: p x p eigendecomposition
DEFAULT_MAX_FINITE_T_COST = 3e11  # n · N³ (exact) or n · d³ (projected) for finite-t LOO
FULL_COVARIANCE_JITTER = 1e-10


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
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(a.shape[0], dtype=torch.float64, generator=gen).to(a.device)
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


def _extreme_eigs_block(
    theta: Tensor, w: Tensor, shift: float, iters: int = 20, block: int = 8
) -> tuple[float, float]:
    """(s_min, s_max) of A = Θ + shift·I by block subspace iteration (Rayleigh–Ritz) on A and
    on A⁻¹ = WᵀW (W = L⁻¹): BLAS-3 passes over N² instead of one-vector triangular solves."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(theta.shape[0], min(block, theta.shape[0]), dtype=torch.float64, generator=gen)
    v = torch.linalg.qr(start.to(theta.device)).Q
    u = v.clone()
    for _ in range(iters):
        v = torch.linalg.qr(theta @ v + shift * v).Q
        u = torch.linalg.qr(w.T @ (w @ u)).Q
    s_max = float(torch.linalg.eigvalsh(_sym(v.T @ (theta @ v))).max()) + shift
    wu = w @ u
    inv_max = float(torch.linalg.eigvalsh(_sym(wu.T @ wu)).max())
    return 1.0 / inv_max, s_max


def _factor_in_place(theta: Tensor, lam: float, out: Tensor | None = None) -> tuple[Tensor, float, float]:
    """Lower Cholesky factor of Θ + λI written over ``out`` (or a fresh copy of Θ), with the
    jitter ladder of :func:`infoscore.linearized.cholesky_with_jitter` (ε·tr(A)/N on
    failure). Returns (factor, eps, jitter). Memory: one N² buffer beside Θ (no eye, no
    symmetrized copy: Cholesky reads one triangle)."""
    n_total = theta.shape[0]
    buf = torch.empty_like(theta, dtype=torch.float64) if out is None else out
    scale = (float(torch.trace(theta.to(torch.float64))) + lam * n_total) / max(n_total, 1)
    if not scale > 0:
        raise NumericalError(f"loo_infinite: Θ + λI has non-positive trace ({scale!r})")
    info = torch.empty((), dtype=torch.int32, device=theta.device)
    for eps in JITTER_LADDER:
        buf.copy_(theta)
        buf.diagonal().add_(lam + eps * scale)
        torch.linalg.cholesky_ex(buf, out=(buf, info))
        if int(info) == 0:
            return buf, eps, eps * scale
    raise NumericalError(
        f"A is not positive definite even with jitter {JITTER_LADDER[-1]:g}·tr(A)/N; "
        "increase the ridge 'l2' or use a finite 't'"
    )


def loo_infinite(theta: Tensor, r0: Tensor, *, k: int, lam: float, lam_loo: float | None = None) -> KernelLoo:
    """Exact LOO at t = ∞ (SCIENCE 2.3), independent of p.

    theta (N, N) float64, r0 (N,) -> KernelLoo. The full run solves (Θ + λI)u = r₀; each
    leave-one-out run uses the ridge λ_loo (default λ; ``loo_lambda: rescaled`` passes
    (n−1)/n·λ). With P' = (Θ + λ_loo I)⁻¹, a' = P'r₀ and c'_i = P'_ii⁻¹a'_i the LOO
    coefficients are pad(u₋ᵢ) = a' − P'_{:,i}c'_i, so δ_i = u − pad(u₋ᵢ) = e + P'_{:,i}c'_i
    with e = u − a' (zero when λ_loo = λ), and, using ΘP' = I − λ_loo P',
    ‖Δw_i‖² = δ_iᵀΘδ_i = eᵀΘe + 2 g_iᵀc'_i + c'_iᵀ(P' − λ_loo P'²)_ii c'_i, g = e − λ_loo P'e.
    Jitter added by the ladder is part of the ridge. Peak memory: Θ plus two N² buffers
    (the factor and W = L⁻¹, briefly together), then Θ and W.
    """
    n_total = theta.shape[0]
    n = n_total // k
    theta = theta.to(torch.float64)
    r0 = r0.to(torch.float64).to(theta.device)
    lam_loo = lam if lam_loo is None else float(lam_loo)
    factor, eps, jitter = _factor_in_place(theta, lam)
    u = torch.cholesky_solve(r0.reshape(-1, 1), factor).reshape(-1)
    shift_full = lam + jitter
    if lam_loo != lam:
        factor, eps_loo, jitter_loo = _factor_in_place(theta, lam_loo, out=factor)
        eps, jitter = max(eps, eps_loo), max(jitter, jitter_loo)
        lam_loo_eff = lam_loo + jitter_loo
    else:
        lam_loo_eff = lam + jitter
    a = torch.cholesky_solve(r0.reshape(-1, 1), factor).reshape(-1)
    # W = L⁻¹ by one triangular solve (BLAS-3; LAPACK's potri is several times slower here),
    # so P' = WᵀW: P'_ii = W_{:,i}ᵀW_{:,i} and P'_{:,i}c_i = Wᵀ(W C) with C block-diagonal.
    w = torch.eye(n_total, dtype=torch.float64, device=theta.device)
    torch.linalg.solve_triangular(factor, w, upper=False, out=w)
    del factor
    if lam_loo == lam:  # W is A⁻¹'s factor: estimate cond(A) from it
        s_min, s_max = _extreme_eigs_block(theta, w, shift_full)
    else:  # W belongs to the LOO ridge: s(A) = s(A_loo) − λ_loo_eff + λ_eff
        s_min_loo, s_max_loo = _extreme_eigs_block(theta, w, lam_loo_eff)
        s_min, s_max = s_min_loo - lam_loo_eff + shift_full, s_max_loo - lam_loo_eff + shift_full
    w_cols = w.reshape(n_total, n, k)
    p_ii = torch.empty((n, k, k), dtype=torch.float64, device=theta.device)
    for lo in range(0, n, 256):
        blk = w_cols[:, lo : lo + 256, :]
        p_ii[lo : lo + 256] = torch.einsum("zia,zib->iab", blk, blk)
    c = torch.linalg.solve(p_ii, a.reshape(n, k, 1)).squeeze(-1)  # (n, k)
    # W C (C block-diagonal with c_i in block i) is W_{:,i}c_i per column: O(N²), no GEMM.
    delta = w.T @ torch.einsum("zia,ia->zi", w_cols, c)  # column i = P'_{:,i} c_i
    # c_iᵀ(P' − λ_loo P'²)_ii c_i = c_iᵀP'_ii c_i − λ_loo‖P'_{:,i}c_i‖².
    sq = torch.einsum("ia,iab,ib->i", c, p_ii, c) - lam_loo_eff * (delta * delta).sum(0)
    if lam_loo != lam:
        e = u - a
        g = (e - lam_loo_eff * (w.T @ (w @ e))).reshape(n, k)
        sq = sq + float(e @ (theta @ e)) + 2.0 * (g * c).sum(1)
        delta += e.reshape(-1, 1)
    return KernelLoo(sq.clamp_min(0.0), delta, u, jitter, eps, s_min, s_max)


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
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> KernelLoo:
    """Exact LOO after t GD steps (SCIENCE 2.4): one ``eigh`` of A₋ᵢ,₋ᵢ per i.

    theta (N, N) float64, r0 (N,). The full run uses (η, λ); each LOO run (η_loo, λ_loo).
    """
    n_total = theta.shape[0]
    n = n_total // k
    theta = _sym(theta.to(torch.float64))
    r0 = r0.to(torch.float64)
    eye = torch.eye(n_total, dtype=torch.float64)
    s, vecs = torch.linalg.eigh(theta + lam * eye)
    u = vecs @ (gd_filter(s, eta=eta, t=t, time=time) * (vecs.T @ r0))
    if time == "discrete" and eta_loo * (float(s.max()) - lam + lam_loo) >= 2.0:
        # Cheap sufficient check before n eigendecompositions (eigenvalues interlace).
        gd_filter(s - lam + lam_loo, eta=eta_loo, t=t, time=time)
    delta = u.reshape(-1, 1).repeat(1, n)
    sq = torch.empty(n, dtype=torch.float64)
    blocks = torch.arange(n_total).reshape(n, k)
    for i in range(n):
        check_stop(should_stop)
        keep = torch.cat([blocks[:i].reshape(-1), blocks[i + 1 :].reshape(-1)])
        a_i = theta[keep][:, keep] + lam_loo * torch.eye(keep.numel(), dtype=torch.float64)
        s_i, v_i = torch.linalg.eigh(a_i)
        u_i = v_i @ (gd_filter(s_i, eta=eta_loo, t=t, time=time) * (v_i.T @ r0[keep]))
        delta[keep, i] -= u_i
        d_i = delta[:, i]
        sq[i] = d_i @ (theta @ d_i)
        if progress is not None:
            progress(i + 1, n)
    return KernelLoo(sq.clamp_min(0.0), delta, u, 0.0, 0.0, float(s.min()), float(s.max()))


@dataclass
class PrimalLoo:
    """Exact LOO in a d-dimensional feature space (projected method).

    sq_weight_change (n,) = ‖Δv_i‖²; sq_prediction_change (n,) = Σ_{x'}‖Φ(x')Δv_i‖² or
    None; v (d,) = the full run's v_t − v₀; dv (n, d) when kept, else None.
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
    """Exact LOO for the linear model r₀ + Φv with ridge λ (SCIENCE 2.5, primal route).

    phi (N, d) any float dtype (cast to float64 chunk by chunk), r0 (N,), phi_eval (M', d)
    or None. t = ∞ uses Woodbury with M = ΦᵀΦ + λI; finite t one ``eigh`` per i. The
    (N, N) kernel is never formed.
    """
    n_total, d = phi.shape
    n = n_total // k
    lam_loo = lam if lam_loo is None else lam_loo
    dev = phi.device  # the algebra runs where the features are; results come back on the host
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
        return PrimalLoo(*_host(sq.clamp_min(0.0), sq_f, v, dv_all), jitter, jitter_eps, s_min, s_max)

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
    return PrimalLoo(*_host(sq.clamp_min(0.0), sq_f, v, dv_all), 0.0, 0.0, float(s.min()), float(s.max()))


def _host(
    sq: Tensor, sq_f: Tensor | None, v: Tensor, dv: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    return sq.cpu(), None if sq_f is None else sq_f.cpu(), v.cpu(), None if dv is None else dv.cpu()


def lyapunov_covariance(h: Tensor, c: Tensor) -> Tensor:
    """Σ solving HΣ + ΣH = C for symmetric H ≻ 0 (p, p) and C (p, p), float64.

    With H = V diag(h) Vᵀ: Σ = V [(VᵀCV)_ab / (h_a + h_b)] Vᵀ.
    """
    s, vecs = torch.linalg.eigh(_sym(h.to(torch.float64)))
    ct = vecs.T @ c.to(torch.float64) @ vecs
    return _sym(vecs @ (ct / (s.reshape(-1, 1) + s.reshape(1, -1))) @ vecs.T)


def weights_full_scores(h: Tensor, grads: Tensor, dw: Tensor) -> Tensor:
    """Δw_iᵀ(Σ + 1e-10·I)⁻¹Δw_i (n,) for HΣ + ΣH = C, C = (1/n)Σ g_igᵢᵀ − ḡḡᵀ.

    h (p, p); grads (n, p) per-example loss gradients at the final weights; dw (n, p).
    """
    g = grads.to(torch.float64)
    gbar = g.mean(0)
    c = g.T @ g / g.shape[0] - torch.outer(gbar, gbar)
    sigma = lyapunov_covariance(h, c)
    eye = torch.eye(sigma.shape[0], dtype=torch.float64)
    chol = cholesky_with_jitter(sigma + FULL_COVARIANCE_JITTER * eye)
    sol = torch.cholesky_solve(dw.to(torch.float64).T, chol.factor)
    return (dw.to(torch.float64).T * sol).sum(0)


@dataclass
class SampleInformation:
    """Scores of one job. Arrays (n,) float64 numpy in nats, None when not requested.

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
    return torch.cat(out).to(torch.float64).cpu()


def _accuracy(logits: Tensor, y: Tensor | None) -> float:
    if y is None or y.numel() == 0:
        return math.nan
    return float((logits.argmax(1) == y.cpu()).to(torch.float64).mean())


def exact_memory_bytes(n: int, k: int, p: int, m: int) -> int:
    """Rough peak of the exact method with the structured kernel: Θ, the factor and W = L⁻¹
    (N² each), δ (N n) and one block of the cross kernel (128 k × N). The J Jᵀ fallback and
    ``weights_full`` add J (N p)."""
    del p, m  # the structured path's peak does not depend on them (signature kept)
    big_n = n * k
    return 8 * (3 * big_n * big_n + 2 * big_n * n + 128 * k * big_n)


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
    measures: Sequence[str] = ("weights", "predictions"),
    method: str = "exact",
    projection_dim: int = 2048,
    projection: str = "rademacher",
    time: str = "discrete",
    loo_lambda: str = "same",
    seed: int = 0,
    batch_size: int = 128,
    max_exact_nk: int = DEFAULT_MAX_EXACT_NK,
    max_full_p: int = DEFAULT_MAX_FULL_P,
    max_finite_t_cost: float = DEFAULT_MAX_FINITE_T_COST,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    kernel_method: str = "auto",
    projection_structure: str = "kronecker",
) -> SampleInformation:
    """SI / F-SI of every training sample for ``model`` linearized at its current weights.

    x_train (n, ...) and y_train (n,) int on the model's device; x_eval (m, ...) held-out
    inputs for F-SI (required when ``"predictions"`` is measured), y_eval (m,) optional
    labels for the linearized test accuracy. ``lr``/``l2`` are in the mean-loss form
    (η = lr/n, λ = n·l2); ``l2=None`` picks λ = l2_auto_scale · tr(Θ)/(nk) (scale-free).
    ``l2_auto_scale=None`` means 1.0 for both methods (one rule; see
    ``DEFAULT_L2_AUTO_SCALE``). ``t=None`` is t = ∞. method: ``exact`` (default; refused beyond nk > max_exact_nk)
    or ``projected`` (d = projection_dim, R seeded by ``seed``).

    progress(done, total) counts stages: Jacobians of x_train, the LOO, held-out Jacobians.
    """
    n = int(x_train.shape[0])
    p = parameter_count(model)
    _check_params(
        n, k, t, lr, l2, l2_auto_scale, sigma, measures, method, projection_dim, projection, time, loo_lambda
    )
    if kernel_method not in KERNEL_METHODS:
        raise invalid("kernel_method", "sample_information", f"one of {list(KERNEL_METHODS)}", kernel_method)
    if projection_structure not in PROJECTION_STRUCTURES:
        raise invalid(
            "projection_structure", "sample_information", f"one of {list(PROJECTION_STRUCTURES)}",
            projection_structure,
        )  # fmt: skip
    if y_train.shape[0] != n:
        raise invalid("y_train", "sample_information", f"{n} labels", int(y_train.shape[0]))
    if "predictions" in measures and x_eval is None:
        raise invalid("x_eval", "sample_information", "held-out inputs when 'predictions' is measured", None)
    m = 0 if x_eval is None else int(x_eval.shape[0])
    big_n = n * k
    if method == "exact" and big_n > max_exact_nk:
        est = exact_memory_bytes(n, k, p, m)
        raise InvalidInputError(
            f"The 'method' parameter of sample_information is 'exact', which needs the full "
            f"(nk x nk) NTK with nk = {n}*{k} = {big_n} > {max_exact_nk} (about {est / 2**30:.1f} GiB "
            f"and O((nk)^3) time). Use method 'projected' (memory O(nk*d)) or fewer samples.",
            param="method",
        )
    dim = p if method == "exact" else projection_dim
    if "weights_full" in measures and dim > max_full_p:
        raise InvalidInputError(
            f"The 'measures' parameter of sample_information asks for 'weights_full', which needs a "
            f"{dim} x {dim} eigendecomposition (limit {max_full_p}: {'p' if method == 'exact' else 'd'} = {dim}). "
            "Drop 'weights_full', use a smaller model or method 'projected' with a small projection_dim.",
            param="measures",
        )
    if t is not None:
        cost = n * float(big_n - k) ** 3 if method == "exact" else n * float(projection_dim) ** 3
        if cost > max_finite_t_cost:
            raise InvalidInputError(
                f"The 't' parameter of sample_information is {t}: exact LOO at finite t needs one "
                f"eigendecomposition per sample, cost n*{'(nk)' if method == 'exact' else 'd'}^3 = {cost:.3g} "
                f"> {max_finite_t_cost:.3g}. Use t = null (infinity), fewer samples"
                + (
                    ", or method 'projected' with a small projection_dim."
                    if method == "exact"
                    else ", or a smaller projection_dim."
                ),
                param="t",
            )
    if l2_auto_scale is None:
        l2_auto_scale = DEFAULT_L2_AUTO_SCALE[method]
    eta, _ = sum_form(n, lr, 0.0)
    eta_loo, _ = loo_sum_form(n, lr, 0.0)
    timings: dict[str, float] = {}
    n_eval_units = m if ("predictions" in measures or y_eval is not None) else 0
    total = n + (n if t is not None else 1) + n_eval_units
    done = [0]

    def stage_progress(offset: int) -> ProgressFn:
        def report(i: int, _total: int) -> None:
            done[0] = offset + i
            if progress is not None:
                progress(done[0], total)

        return report

    tic = _time.perf_counter()
    y_cpu = y_train.cpu().long()
    targets = one_hot(y_cpu, k).reshape(-1)
    f0_train = _logits64(model, x_train)
    if f0_train.shape[1] != k:
        raise invalid("k", "sample_information", f"the model's output width {f0_train.shape[1]}", k)
    r0 = f0_train.reshape(-1) - targets
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
    dw_cols: Tensor | None = None  # (p or d, n+1): columns −Δw_i ... and the full run's w_t − w₀
    features_eval: Tensor | None = None
    sq_weights: Tensor
    sq_pred: Tensor | None = None
    full_scores: Tensor | None = None

    if method == "exact":
        # Θ from per-layer factors (structured) unless the model needs the J Jᵀ reference.
        info["kernel_method"] = resolve_kernel_method(model, kernel_method)
        theta = ntk_gram(
            model, x_train, kernel="full", batch_size=batch_size, should_stop=should_stop,
            method=info["kernel_method"],
        ).cpu()  # fmt: skip
        stage_progress(0)(n, n)
        timings["kernel_s"] = _time.perf_counter() - tic
        tic = _time.perf_counter()
        lam = _resolve_lambda(l2, l2_auto_scale, float(torch.trace(theta)), n, k)
        l2_eff = lam / n
        _, lam_loo = loo_sum_form(n, lr, l2_eff, loo_lambda)  # type: ignore[arg-type]
        if t is None:
            res = loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam_loo)
        else:
            res = loo_finite(
                theta, r0, k=k, lam=lam, lam_loo=lam_loo, eta=eta, eta_loo=eta_loo, t=t,
                time=time,  # type: ignore[arg-type]
                progress=stage_progress(n), should_stop=should_stop,
            )  # fmt: skip
        stage_progress(n)(n if t is not None else 1, 1)
        timings["loo_s"] = _time.perf_counter() - tic
        sq_weights = res.sq_weight_change
        train_logits = (f0_train.reshape(-1) - theta @ res.u).reshape(n, k)
        info.update(jitter=res.jitter, jitter_eps=res.jitter_eps, eig_min=res.eig_min, eig_max=res.eig_max)
        del theta
        if "weights_full" in measures:  # p <= max_full_p: J is small here
            tic = _time.perf_counter()
            jac = per_sample_jacobians(model, x_train, batch_size=batch_size, should_stop=should_stop)
            jac = jac.to(torch.float64).reshape(big_n, p).cpu()
            dw_cols = jac.T @ torch.cat([res.delta, res.u.reshape(-1, 1)], dim=1)  # (p, n+1)
            resid = train_logits.reshape(-1) - targets  # f_t(X) − Y
            grads = torch.einsum("ikp,ik->ip", jac.reshape(n, k, p), resid.reshape(n, k))
            hess = jac.T @ jac + (lam + res.jitter) * torch.eye(p, dtype=torch.float64)
            full_scores = weights_full_scores(hess, grads, dw_cols[:, :n].T)
            timings["weights_full_s"] = _time.perf_counter() - tic
            del jac, dw_cols
        info["d"] = None
    else:
        # Kronecker-factored projection from per-layer factors (no per-sample gradient) when
        # the model allows it; the dense per-sample projection of J chunks otherwise.
        structure = projection_structure
        if structure == "kronecker" and not structured_supported(model):
            structure = "dense"
        info["projection_structure"] = structure
        phi: Tensor | FactoredFeatures
        if structure == "kronecker":
            # d split over layers by their share of tr Θ on the first samples (deterministic).
            kron = KroneckerProjector(
                model,
                projection_dim,
                kind=projection,  # type: ignore[arg-type]
                seed=seed,
                device=x_train.device,
                weights=trace_shares(model, x_train[:512]),
            )
            d = kron.d
            info["projection_layer_dims"] = [g.d for g in kron.groups]
            phi = kronecker_features(
                model, x_train, kron, batch_size=max(batch_size, 512), progress=stage_progress(0),
                should_stop=should_stop,
            )  # fmt: skip
        else:
            d = projection_dim
            projector = projector_for(model, d, kind=projection, seed=seed, device=x_train.device)  # type: ignore[arg-type]
            phi = projected_features(
                model, x_train, projector, batch_size=batch_size, progress=stage_progress(0),
                should_stop=should_stop,
            ).reshape(big_n, d)  # fmt: skip
        timings["projected_features_s"] = _time.perf_counter() - tic
        if x_eval is not None and n_eval_units:
            tic = _time.perf_counter()
            if structure == "kronecker":
                features_eval = kronecker_features(
                    model, x_eval, kron, batch_size=max(batch_size, 512), should_stop=should_stop
                ).dense()
            else:
                features_eval = projected_features(
                    model, x_eval, projector, batch_size=batch_size, should_stop=should_stop
                ).reshape(m * k, d)
            timings["projected_eval_features_s"] = _time.perf_counter() - tic
        tic = _time.perf_counter()
        trace = float(sum(float((phi[lo : lo + 65536].double() ** 2).sum()) for lo in range(0, big_n, 65536)))
        lam = _resolve_lambda(l2, l2_auto_scale, trace, n, k)
        l2_eff = lam / n
        _, lam_loo = loo_sum_form(n, lr, l2_eff, loo_lambda)  # type: ignore[arg-type]
        pres = loo_primal(
            phi, r0, k=k, lam=lam, lam_loo=lam_loo, eta=eta, eta_loo=eta_loo, t=t,
            time=time,  # type: ignore[arg-type]
            phi_eval=features_eval if "predictions" in measures else None,
            keep_dv="weights_full" in measures, progress=stage_progress(n), should_stop=should_stop,
        )  # fmt: skip
        timings["loo_s"] = _time.perf_counter() - tic
        sq_weights = pres.sq_weight_change
        sq_pred = pres.sq_prediction_change
        train_logits = torch.empty((n, k), dtype=torch.float64)
        for lo in range(0, big_n, 65536):
            train_logits.view(-1)[lo : lo + 65536] = (
                phi[lo : lo + 65536].double() @ pres.v.to(phi.device)
            ).cpu()
        train_logits += f0_train
        info.update(
            jitter=pres.jitter, jitter_eps=pres.jitter_eps, eig_min=pres.eig_min, eig_max=pres.eig_max
        )
        if "weights_full" in measures:
            assert pres.dv is not None
            resid = (train_logits - one_hot(y_cpu, k)).reshape(n, k)
            grads = torch.einsum("ikd,ik->id", phi.reshape(n, k, d).double(), resid)
            gram = torch.zeros((d, d), dtype=torch.float64)
            for lo in range(0, big_n, 65536):
                blk = phi[lo : lo + 65536].double()
                gram += blk.T @ blk
            hess = gram + (lam + pres.jitter) * torch.eye(d, dtype=torch.float64)
            full_scores = weights_full_scores(hess, grads, pres.dv)
        info["d"] = d
        info["projection_dim"] = projection_dim
        info["projection"] = projection
        del phi

    info.update(l2=l2_eff, lam=lam, lam_loo=lam_loo, l2_auto=l2 is None, l2_auto_scale=l2_auto_scale)
    info["cond_A"] = info["eig_max"] / info["eig_min"] if info["eig_min"] > 0 else math.inf
    train_accuracy = _accuracy(train_logits, y_cpu)
    test_accuracy = math.nan

    if x_eval is not None and n_eval_units:
        tic = _time.perf_counter()
        f0_eval = _logits64(model, x_eval)
        report = stage_progress(n + (n if t is not None else 1))
        if method == "exact":
            # Δf_i(X') = −Θ(X', X)δ_i and f_t(X') = f₀(X') − Θ(X', X)u, one held-out chunk
            # of the cross kernel at a time (no J, no weight-space vectors).
            coef = torch.cat([res.delta, res.u.reshape(-1, 1)], dim=1)  # (nk, n+1)
            sq_f = torch.zeros(n, dtype=torch.float64)
            eval_logits = f0_eval.clone()
            for start, block in ntk_cross_chunks(
                model, x_eval, x_train, kernel="full", batch_size=batch_size,
                method=info["kernel_method"], should_stop=should_stop,
            ):  # fmt: skip
                b = block.shape[0] // k
                out = block.cpu() @ coef  # (bk, n+1)
                sq_f += (out[:, :n] ** 2).sum(0)
                eval_logits[start : start + b] -= out[:, n].reshape(b, k)
                report(min(start + b, m), m)
            if "predictions" in measures:
                sq_pred = sq_f
        else:
            assert features_eval is not None
            eval_logits = f0_eval + (features_eval.double().cpu() @ pres.v).reshape(m, k)
            report(m, m)
        test_accuracy = _accuracy(eval_logits, y_eval)
        timings["eval_s"] = _time.perf_counter() - tic

    scale = 1.0 / (2.0 * sigma**2)
    info["timings"] = timings
    return SampleInformation(
        si_weights=(sq_weights * scale).numpy() if "weights" in measures else None,
        si_predictions=(sq_pred * scale).numpy() if sq_pred is not None else None,
        si_weights_full=full_scores.numpy() if full_scores is not None else None,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        info=info,
    )


def _resolve_lambda(l2: float | None, scale: float, trace: float, n: int, k: int) -> float:
    """Sum-form λ: n·l2, or scale · tr(Θ)/(nk) when l2 is None (automatic)."""
    if l2 is not None:
        return n * float(l2)
    if not trace > 0:
        raise NumericalError("the NTK has zero trace: the model's outputs do not depend on its weights")
    return scale * trace / (n * k)
