"""The t = ∞ leave-one-out fast path (recursive triangular inverse, triangle-skipping block
products, Lanczos condition estimate) against slow exact references: the dense inverse,
the dense products, ``eigvalsh`` and brute-force refits. Block sizes are shrunk so that every
branch (recursion, ragged last blocks, blocks that cut a sample) runs on small problems."""

from __future__ import annotations

import pytest
import torch

from infoscore import sample_info as si
from infoscore.linearized import ridge_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-10


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _kernel(n: int, k: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Θ = J Jᵀ (rank min(nk, p): a kernel with an exactly singular part when p < nk), r₀, J."""
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(n * k, p, generator=gen, dtype=torch.float64) / p**0.5
    r0 = torch.randn(n * k, generator=gen, dtype=torch.float64)
    return jac @ jac.T, r0, jac


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(si, "TRI_INVERSE_BASE", 5)
    monkeypatch.setattr(si, "TRI_INVERSE_PANEL", 4)
    monkeypatch.setattr(si, "LOO_ROW_BLOCK", 7)
    monkeypatch.setattr(si, "LOO_SAMPLE_BLOCK", 3)


@pytest.mark.parametrize("size", [1, 5, 6, 37, 64])
@pytest.mark.parametrize(("base", "panel"), [(1, 1), (5, 4), (16, 1024)])
@pytest.mark.parametrize("column_major", [False, True])
def test_triangular_inverse_equals_dense_inverse(
    size: int, base: int, panel: int, column_major: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(si, "TRI_INVERSE_PANEL", panel)
    gen = torch.Generator().manual_seed(size + base)
    g = torch.randn(size, size + 3, generator=gen, dtype=torch.float64)
    lower = torch.linalg.cholesky(g @ g.T + 0.1 * torch.eye(size, dtype=torch.float64))
    expected = torch.linalg.inv(lower)
    # The factor of loo_infinite is column-major (a transposed view): both layouts work in place.
    work = torch.empty(size, size, dtype=torch.float64)
    work = work.mT if column_major else work
    work.copy_(lower)
    assert work.stride() == ((1, size) if column_major else (size, 1))
    out = si._tri_inverse_(work, base)
    assert out.data_ptr() == work.data_ptr()  # in place
    assert _rel(work, expected) < RTOL
    assert float(work.triu(1).abs().max()) == 0.0 if size > 1 else True
    torch.testing.assert_close(work @ lower, torch.eye(size, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("rows", [1, 7, 1024])
def test_triangular_products_equal_dense(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(45, 45, generator=gen, dtype=torch.float64).tril()
    v = torch.randn(45, generator=gen, dtype=torch.float64)
    y = torch.randn(45, 4, generator=gen, dtype=torch.float64)
    assert _rel(si._tri_matvec(w, v, rows), w @ v) < RTOL
    assert _rel(si._tri_matvec(w, y, rows), w @ y) < RTOL
    assert _rel(si._tri_rmatvec(w, v, rows), w.T @ v) < RTOL
    assert _rel(si._tri_rmatvec(w, y, rows), w.T @ y) < RTOL


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("blocks", [(1, 1), (3, 7), (256, 1024)])
@pytest.mark.parametrize("column_major", [False, True])
def test_inverse_blocks_and_products_equal_dense_inverse(
    k: int, blocks: tuple[int, int], column_major: bool
) -> None:
    samples, rows = blocks
    n = 13
    theta, _, _ = _kernel(n, k, 20, seed=k)
    a = theta + 0.3 * torch.eye(n * k, dtype=torch.float64)
    dense_p = torch.linalg.inv(a)  # the slow exact reference
    w = torch.empty(n * k, n * k, dtype=torch.float64)
    w = w.mT if column_major else w
    w.copy_(torch.linalg.cholesky(a))
    si._tri_inverse_(w, 4)
    p_ii = si._inverse_diag_blocks(w, k, samples)
    ref_blocks = torch.stack([dense_p[i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(n)])
    assert _rel(p_ii, ref_blocks) < RTOL
    c = torch.randn(n, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    big_c = torch.zeros(n * k, n, dtype=torch.float64)
    for i in range(n):
        big_c[i * k : (i + 1) * k, i] = c[i]
    assert _rel(si._inverse_times_block_diag(w, c, rows), dense_p @ big_c) < RTOL


def _dense_loo(
    theta: torch.Tensor, r0: torch.Tensor, k: int, lam: float, lam_loo: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The t = ∞ identities of :func:`infoscore.sample_info.loo_infinite` with the dense inverse:
    δ_i = e + P'_{:,i}P'_ii⁻¹a'_i and ‖Δw_i‖² = δ_iᵀΘδ_i."""
    n_total = theta.shape[0]
    n = n_total // k
    eye = torch.eye(n_total, dtype=torch.float64)
    u = torch.linalg.solve(theta + lam * eye, r0)
    p = torch.linalg.inv(theta + lam_loo * eye)
    a = p @ r0
    delta = torch.empty(n_total, n, dtype=torch.float64)
    for i in range(n):
        blk = slice(i * k, (i + 1) * k)
        delta[:, i] = (u - a) + p[:, blk] @ torch.linalg.solve(p[blk, blk], a[blk])
    return delta, ((theta @ delta) * delta).sum(0)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize(("n", "k", "p"), [(17, 1, 9), (17, 3, 30), (9, 10, 200)])
@pytest.mark.parametrize("rescaled", [False, True])
def test_loo_infinite_small_blocks_equals_dense_reference(n: int, k: int, p: int, rescaled: bool) -> None:
    theta, r0, _ = _kernel(n, k, p, seed=n + k + p)
    lam = 0.2
    lam_loo = lam * (n - 1) / n if rescaled else lam
    res = si.loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam_loo)
    assert res.jitter == 0.0
    delta, sq = _dense_loo(theta, r0, k, lam, lam_loo)
    assert _rel(res.delta, delta) < RTOL
    assert _rel(res.sq_weight_change, sq) < RTOL
    assert _rel(res.u, torch.linalg.solve(theta + lam * torch.eye(n * k, dtype=torch.float64), r0)) < RTOL


@pytest.mark.usefixtures("small_blocks")
def test_loo_infinite_small_blocks_equals_refits() -> None:
    n, k, p, lam = 12, 3, 25, 0.4
    theta, r0, jac = _kernel(n, k, p, seed=4)
    res = si.loo_infinite(theta, r0, k=k, lam=lam)
    full = ridge_weights(jac, r0, lam=lam)
    dw = []
    for i in range(n):
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        dw.append(full - ridge_weights(jac[keep], r0[keep], lam=lam))
    ref = torch.stack(dw)
    assert _rel(-(jac.T @ res.delta).T, ref) < 1e-9
    assert _rel(res.sq_weight_change, (ref**2).sum(1)) < 1e-9


def test_lanczos_is_exact_on_the_whole_space_and_inside_the_spectrum() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64)).Q
    eigs = torch.logspace(-3, 3, 40, dtype=torch.float64)
    a = (q * eigs) @ q.T
    lo, hi = si._lanczos_extremes(lambda v: a @ v, eigs, 40)
    assert abs(lo - 1e-3) < 1e-10 * 1e3 and abs(hi - 1e3) < 1e-10 * 1e3
    lo, hi = si._lanczos_extremes(lambda v: a @ v, eigs, 6)
    assert lo >= 1e-3 and hi <= 1e3 * (1 + 1e-12)
    assert hi > 0.5 * 1e3  # a few steps find the top of a geometric spectrum


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rescaled", [False, True])
def test_condition_estimate_against_eigvalsh(rescaled: bool) -> None:
    n, k, p, lam = 30, 3, 40, 0.05
    theta, r0, _ = _kernel(n, k, p, seed=9)
    lam_loo = lam * (n - 1) / n if rescaled else lam
    res = si.loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam_loo)
    eigs = torch.linalg.eigvalsh(theta) + lam
    s_min, s_max = float(eigs[0]), float(eigs[-1])
    # Ritz values lie inside the spectrum; 12 steps reach both ends closely on a kernel.
    assert s_max * (1 - 1e-2) <= res.eig_max <= s_max * (1 + 1e-10)
    assert s_min * (1 - 1e-10) <= res.eig_min <= s_min * (1 + 1e-2)


def test_factor_is_written_in_place_without_a_second_buffer() -> None:
    theta, _, _ = _kernel(20, 3, 30, seed=2)
    factor, eps, jitter = si._factor_in_place(theta, 0.1)
    assert eps == jitter == 0.0 and factor.stride() == (1, 60)  # column-major: LAPACK's own layout
    expected = torch.linalg.cholesky(theta + 0.1 * torch.eye(60, dtype=torch.float64))
    assert _rel(factor, expected) < RTOL
    again, _, _ = si._factor_in_place(theta, 0.2, out=factor)
    assert again.data_ptr() == factor.data_ptr()
    b = torch.randn(60, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert (
        _rel(
            si._factor_solve(again, b),
            torch.linalg.solve(theta + 0.2 * torch.eye(60, dtype=torch.float64), b),
        )
        < RTOL
    )


def test_round_off_lambda_loo_is_the_same_ridge_and_one_factorization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # sample_information passes λ_loo = n·(λ/n) for loo_lambda 'same': 1 ulp away from λ here.
    n, k, lam = 11, 3, 26.47548362349502
    lam_loo = n * (lam / n)
    assert lam_loo != lam
    theta, r0, _ = _kernel(n, k, 20, seed=5)
    calls: list[float] = []
    factor = si._factor_in_place

    def counted(
        theta_: torch.Tensor, lam_: float, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float, float]:
        calls.append(lam_)
        return factor(theta_, lam_, out)

    monkeypatch.setattr(si, "_factor_in_place", counted)
    res = si.loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam_loo)
    assert calls == [lam]
    ref = si.loo_infinite(theta, r0, k=k, lam=lam)
    assert torch.equal(res.sq_weight_change, ref.sq_weight_change) and torch.equal(res.delta, ref.delta)
    delta, sq = _dense_loo(theta, r0, k, lam, lam_loo)  # the exact answer at λ_loo itself
    assert _rel(res.delta, delta) < RTOL and _rel(res.sq_weight_change, sq) < RTOL
    calls.clear()
    si.loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam * (n - 1) / n)  # 'rescaled': its own factor
    assert calls == [lam, lam * (n - 1) / n]
