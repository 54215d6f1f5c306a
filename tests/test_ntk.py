"""The batched Jacobian/NTK path against a slow autograd loop (float64)."""

from __future__ import annotations

import pytest
import torch

from infoscore import data, models, ntk


@pytest.fixture(scope="module")
def small() -> tuple[torch.nn.Module, torch.Tensor]:
    ds = data.load_digits()
    model = models.build_model({"arch": "mlp", "hidden": [16], "batchnorm": True}, (64,), 10, seed=1).double()
    return model, torch.tensor(ds.x_train[:9], dtype=torch.float64)


def _slow_jacobian(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        per_class = []
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], list(model.parameters()), retain_graph=True)
            per_class.append(torch.cat([g.reshape(-1) for g in grads]))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_jacobians_match_autograd_loop(small: tuple[torch.nn.Module, torch.Tensor], batch_size: int) -> None:
    model, x = small
    fast = ntk.per_sample_jacobians(model, x, batch_size=batch_size)
    torch.testing.assert_close(fast, _slow_jacobian(model, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["full", "averaged", "trace"])
def test_ntk_gram_matches_explicit_contraction(
    small: tuple[torch.nn.Module, torch.Tensor], kernel: str
) -> None:
    model, x = small
    jac = _slow_jacobian(model, x)
    k = jac.shape[1]
    full = jac.reshape(-1, jac.shape[2]) @ jac.reshape(-1, jac.shape[2]).T
    expected = {
        "full": full,
        "trace": full.reshape(9, k, 9, k).diagonal(dim1=1, dim2=3).sum(-1),
        "averaged": full.reshape(9, k, 9, k).diagonal(dim1=1, dim2=3).sum(-1) / k,
    }[kernel]
    got = ntk.ntk_gram(model, x, kernel=kernel, batch_size=4)  # type: ignore[arg-type]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_cross_kernel_shape_and_symmetry(small: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = small
    cross = ntk.ntk_gram(model, x, x[:3], kernel="full")
    assert cross.shape == (90, 30)
    whole = ntk.ntk_gram(model, x)
    torch.testing.assert_close(cross, whole[:, :30])
    torch.testing.assert_close(whole, whole.T)


def test_flat_parameters_round_trip(small: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, _ = small
    flat = ntk.flat_parameters(model)
    assert flat.shape == (ntk.parameter_count(model),)
    ntk.set_flat_parameters(model, flat * 2)
    torch.testing.assert_close(ntk.flat_parameters(model), flat * 2)
    ntk.set_flat_parameters(model, flat)
