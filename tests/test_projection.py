"""Seeded per-tensor random projections of Jacobian chunks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from infoscore import models
from infoscore.errors import InvalidInputError
from infoscore.ntk import per_sample_jacobians
from infoscore.projection import (
    ROW_BLOCK,
    KroneckerProjector,
    ProjectionKind,
    Projector,
    allocate_dims,
    kronecker_features,
    projected_features,
    projector_for,
    trace_shares,
)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projection_is_seeded_and_chunking_free(kind: ProjectionKind) -> None:
    model = models.build_model({"arch": "mlp", "hidden": [6]}, (5,), 3, seed=0).double()
    x = torch.randn(11, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    proj = projector_for(model, 16, kind=kind, seed=7, dtype=torch.float64)
    a = projected_features(model, x, proj, batch_size=2)
    b = projected_features(
        model, x, projector_for(model, 16, kind=kind, seed=7, dtype=torch.float64), batch_size=100
    )
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    jac = per_sample_jacobians(model, x)
    torch.testing.assert_close(a, jac @ proj.dense(), rtol=1e-12, atol=1e-12)
    other = projected_features(model, x, projector_for(model, 16, kind=kind, seed=8, dtype=torch.float64))
    assert not torch.allclose(a, other)


def test_rademacher_entries_and_isotropy() -> None:
    proj = Projector([ROW_BLOCK + 5, 300], 1000, kind="rademacher", seed=0, dtype=torch.float64)
    r = proj.dense()
    assert r.shape == (ROW_BLOCK + 305, 1000)
    torch.testing.assert_close(r.abs(), torch.full_like(r, 1000**-0.5))
    gram = r[:200] @ r[:200].T  # E[R Rᵀ] = I: off-diagonal ~ 1/sqrt(d)
    torch.testing.assert_close(gram.diagonal(), torch.ones(200, dtype=torch.float64))
    assert float((gram - torch.eye(200, dtype=torch.float64)).abs().max()) < 0.25


def test_uncached_blocks_are_regenerated_identically() -> None:
    cached = Projector([50, 20], 8, seed=3, dtype=torch.float64)
    uncached = Projector([50, 20], 8, seed=3, dtype=torch.float64, cache_bytes=0)
    assert cached.cached and not uncached.cached
    torch.testing.assert_close(cached.dense(), uncached.dense())


def test_bad_projection_params() -> None:
    with pytest.raises(InvalidInputError, match="'projection_dim'"):
        Projector([3], 0)
    with pytest.raises(InvalidInputError, match="'projection'"):
        Projector([3], 4, kind="sparse")  # type: ignore[arg-type]


# --- Kronecker-factored projection -------------------------------------------------------

KRON_ARCHS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "linear": ({"arch": "linear"}, (12,)),
    "mlp_bn": ({"arch": "mlp", "hidden": [16, 8], "batchnorm": True}, (12,)),
    "cnn": ({"arch": "cnn", "channels": [3, 4], "hidden": 8}, (1, 6, 6)),
}


@pytest.mark.parametrize("arch", sorted(KRON_ARCHS))
@pytest.mark.parametrize("d", [40, 10**6])
def test_kronecker_features_equal_jacobian_times_their_projection(arch: str, d: int) -> None:
    """Φ from per-layer factors equals J R for the dense R the factors define (d ≥ p: R = I)."""
    spec, shape = KRON_ARCHS[arch]
    model = models.build_model(spec, shape, 5, seed=1).double()
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    proj = KroneckerProjector(model, d, seed=3, dtype=torch.float64)
    phi = kronecker_features(model, x, proj, batch_size=3)
    jac = per_sample_jacobians(model, x).reshape(35, -1)
    r = proj.dense()
    assert r.shape == (jac.shape[1], proj.d) and proj.d <= d
    ref = jac @ r
    assert float((phi.dense() - ref).abs().max() / ref.abs().max()) < 1e-10
    torch.testing.assert_close(phi[3:17], ref[3:17], rtol=1e-10, atol=1e-12)  # unaligned rows
    if d >= jac.shape[1]:
        torch.testing.assert_close(phi.dense() @ phi.dense().T, jac @ jac.T, rtol=1e-10, atol=1e-12)


def test_kronecker_projection_is_seeded_and_chunking_free() -> None:
    model = models.build_model({"arch": "mlp", "hidden": [6]}, (5,), 3, seed=0).double()
    x = torch.randn(11, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def feats(seed: int, batch_size: int) -> torch.Tensor:
        proj = KroneckerProjector(model, 16, seed=seed, dtype=torch.float64)
        return kronecker_features(model, x, proj, batch_size=batch_size).dense()

    torch.testing.assert_close(feats(7, 2), feats(7, 100), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(feats(7, 2), feats(8, 2))


def test_kronecker_preserves_inner_products_like_a_dense_projection() -> None:
    """Johnson–Lindenstrauss: E[Φ Φᵀ] = Θ (the mean over 40 seeds is within its sampling
    error), and the error of one draw is within a small constant (measured ~2x, allowed 3x)
    of a dense Rademacher projection of the per-sample gradients with the same d."""
    model = models.build_model({"arch": "mlp", "hidden": [24]}, (10,), 4, seed=0).double()
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    jac = per_sample_jacobians(model, x).reshape(24, -1)  # p = 364
    theta = jac @ jac.T
    norm = float(torch.linalg.norm(theta))
    d, seeds = 64, 40
    mean = torch.zeros_like(theta)
    err_kron, err_dense = [], []
    for seed in range(seeds):
        kp = KroneckerProjector(model, d, seed=seed, dtype=torch.float64)
        phi = kronecker_features(model, x, kp).dense()
        mean += phi @ phi.T / seeds
        err_kron.append(float(torch.linalg.norm(phi @ phi.T - theta)) / norm)
        phi_d = jac @ Projector([jac.shape[1]], kp.d, seed=seed, dtype=torch.float64).dense()
        err_dense.append(float(torch.linalg.norm(phi_d @ phi_d.T - theta)) / norm)
    assert float(torch.linalg.norm(mean - theta)) / norm < 2.5 * np.mean(err_kron) / seeds**0.5
    assert np.mean(err_kron) < 3.0 * np.mean(err_dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projectors_honour_device_and_dtype(dtype: torch.dtype) -> None:
    """Both projectors place R where and how they are told (the meta device stands in for a
    GPU: no data, but a wrong placement raises or shows)."""
    model = models.build_model({"arch": "mlp", "hidden": [6]}, (5,), 3, seed=0)
    for device in (torch.device("cpu"), torch.device("meta")):
        kp = KroneckerProjector(model, 8, seed=1, dtype=dtype, device=device)
        assert kp.d <= 8
        for g in kp.groups:
            for r in (g.r_out, g.r_in):
                if r is not None:
                    assert r.device.type == device.type and r.dtype == dtype
        dense = projector_for(model, 8, seed=1, dtype=dtype, device=device)
        r = dense.block(0, 0)
        assert r.device.type == device.type and r.dtype == dtype
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    phi = kronecker_features(model, x, KroneckerProjector(model, 8, dtype=dtype, device="cpu"))
    assert phi.dtype == dtype and phi.device.type == "cpu" and phi.shape == (12, phi.d)
    same_r = KroneckerProjector(model, 8, seed=1, dtype=torch.float64)
    other = KroneckerProjector(model, 8, seed=1, dtype=torch.float64, device="meta")
    assert [g.d for g in same_r.groups] == [g.d for g in other.groups]  # layout is device-free


def test_allocation_keeps_small_groups_exact_and_respects_the_budget() -> None:
    assert allocate_dims([4224, 1290], 2048) == [1569, 479]
    assert allocate_dims([5000, 30], 2048) == [2018, 30]  # 30 <= 2048/4: the head stays exact
    assert allocate_dims([10, 20], 100) == [10, 20]  # everything fits: R = I
    assert sum(allocate_dims([700, 300, 5], 64)) == 64
    # by trace share: a head holding 80% of tr Θ gets all its coordinates, the rest the remainder
    assert allocate_dims([4224, 1290], 2048, [0.2, 0.8]) == [758, 1290]


def test_trace_shares_match_the_layer_kernels() -> None:
    model = models.build_model({"arch": "mlp", "hidden": [7]}, (5,), 3, seed=0).double()
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jac = per_sample_jacobians(model, x)  # (9, 3, p); layers: 5*7+7 = 42, then 7*3+3 = 24
    first = float((jac[:, :, :42] ** 2).sum())
    total = float((jac**2).sum())
    shares = trace_shares(model, x)
    assert shares == pytest.approx([first / total, 1 - first / total], rel=1e-10)
