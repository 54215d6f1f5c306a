"""Seeded per-tensor random projections of Jacobian chunks."""

from __future__ import annotations

import pytest
import torch

from infoscore import models
from infoscore.errors import InvalidInputError
from infoscore.ntk import per_sample_jacobians
from infoscore.projection import ROW_BLOCK, ProjectionKind, Projector, projected_features, projector_for


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
