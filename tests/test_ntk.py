"""The batched Jacobian/NTK path against a slow autograd loop (float64)."""

from __future__ import annotations

from typing import Any

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


ARCHS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "linear": ({"arch": "linear"}, (12,)),
    "mlp_bn": ({"arch": "mlp", "hidden": [16, 8], "batchnorm": True}, (12,)),
    "mlp_tanh": ({"arch": "mlp", "hidden": [16], "activation": "tanh"}, (12,)),
    "cnn": ({"arch": "cnn", "channels": [3, 4], "hidden": 8}, (1, 6, 6)),
}


def _arch(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    spec, shape = ARCHS[name]
    model = models.build_model(spec, shape, 5, seed=1).double()
    gen = torch.Generator().manual_seed(2)
    if spec.get("batchnorm"):  # non-trivial running statistics, then eval mode
        model.train()
        with torch.no_grad():
            model(torch.randn(64, *shape, generator=gen, dtype=torch.float64) * 2 + 1)
    x1 = torch.randn(7, *shape, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, *shape, generator=gen, dtype=torch.float64)
    return model, x1, x2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("kernel", ["full", "averaged", "trace"])
def test_structured_kernel_equals_jacobian_kernel(arch: str, kernel: str) -> None:
    model, x1, x2 = _arch(arch)
    assert ntk.structured_supported(model)
    for batch_size in (3, 100):
        ref = ntk.ntk_gram(model, x1, x2, kernel=kernel, method="jacobian")  # type: ignore[arg-type]
        got = ntk.ntk_gram(model, x1, x2, kernel=kernel, method="structured", batch_size=batch_size)  # type: ignore[arg-type]
        assert got.shape == ref.shape and got.dtype == torch.float64
        assert _rel(got, ref) < 1e-10
        sym_ref = ntk.ntk_gram(model, x1, kernel=kernel, method="jacobian")  # type: ignore[arg-type]
        sym = ntk.ntk_gram(model, x1, kernel=kernel, batch_size=batch_size)  # type: ignore[arg-type]
        assert _rel(sym, sym_ref) < 1e-10


def test_structured_is_the_default_and_batchnorm_uses_running_stats() -> None:
    model, x1, _ = _arch("mlp_bn")
    model.train()  # ntk_gram evaluates in eval mode whatever the module's mode
    got = ntk.ntk_gram(model, x1)
    assert model.training
    ref = ntk.gram_from_jacobians(_slow_jacobian(model, x1))
    assert _rel(got, ref) < 1e-10
    assert ntk.resolve_kernel_method(model, "auto") == "structured"


class _Scale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def test_unknown_module_falls_back_to_jacobians() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), _Scale()).double()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert not ntk.structured_supported(model)
    assert ntk.resolve_kernel_method(model, "auto") == "jacobian"
    with pytest.raises(ntk.UnsupportedModelError):
        ntk.ntk_gram(model, x, method="structured")
    torch.testing.assert_close(ntk.ntk_gram(model, x), ntk.gram_from_jacobians(_slow_jacobian(model, x)))


def test_reused_module_falls_back() -> None:
    lin = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), lin).double()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ntk.UnsupportedModelError):
        ntk.layer_factors(model, x)
