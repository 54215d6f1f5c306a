"""Sample information through the structured kernel and the Kronecker projection: the same
numbers as the J Jᵀ reference (exact) and as exact SI when the projection keeps every
coordinate (projected, d ≥ p); fallbacks and parameter errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from infoscore import data, models
from infoscore.errors import InvalidInputError
from infoscore.sample_info import sample_information

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(spec: dict[str, Any], shape: tuple[int, ...]) -> tuple[torch.nn.Module, dict[str, Any]]:
    ds = data.make_gaussians(n=20, dim=int(np.prod(shape)), classes=3, n_test=6, label_noise=0.2, seed=4)
    model = models.build_model(spec, shape, 3, seed=1).double()
    if spec.get("batchnorm"):
        model.train()
        with torch.no_grad():
            model(torch.tensor(ds.x_train, dtype=torch.float64) * 2 + 0.5)
    return model, {
        "x_train": torch.tensor(ds.x_train, dtype=torch.float64),
        "y_train": torch.tensor(ds.y_train),
        "x_eval": torch.tensor(ds.x_test, dtype=torch.float64),
        "y_eval": torch.tensor(ds.y_test),
        "k": 3,
        "l2": 1e-3,
    }


CASES = [
    ({"arch": "mlp", "hidden": [7], "batchnorm": True}, (6,)),
    ({"arch": "cnn", "channels": [2, 3], "hidden": 5}, (1, 4, 4)),
]


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_exact_structured_equals_jacobian_reference(spec: dict[str, Any], shape: tuple[int, ...]) -> None:
    model, kw = _problem(spec, shape)
    ref = sample_information(model, kernel_method="jacobian", **kw)
    got = sample_information(model, **kw)
    assert got.info["kernel_method"] == "structured" and ref.info["kernel_method"] == "jacobian"
    for a, b in ((got.si_weights, ref.si_weights), (got.si_predictions, ref.si_predictions)):
        assert a is not None and b is not None
        np.testing.assert_allclose(a, b, rtol=1e-8)
    assert got.test_accuracy == ref.test_accuracy and got.train_accuracy == ref.train_accuracy


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_kronecker_projection_with_room_for_every_coordinate_is_exact(
    spec: dict[str, Any], shape: tuple[int, ...]
) -> None:
    model, kw = _problem(spec, shape)
    exact = sample_information(model, **kw)
    proj = sample_information(model, method="projected", projection_dim=10**6, **kw)
    assert proj.info["projection_structure"] == "kronecker" and proj.info["d"] == exact.info["p"]
    for a, b in ((proj.si_weights, exact.si_weights), (proj.si_predictions, exact.si_predictions)):
        assert a is not None and b is not None
        np.testing.assert_allclose(a, b, rtol=2e-5)  # features are stored in float32


class _Gain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.g


def test_unknown_modules_fall_back_to_jacobians_and_the_dense_projection() -> None:
    _, kw = _problem({"arch": "linear"}, (6,))
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), _Gain()).double()
    exact = sample_information(model, **kw)
    proj = sample_information(model, method="projected", projection_dim=8, **kw)
    assert exact.info["kernel_method"] == "jacobian"
    assert proj.info["projection_structure"] == "dense" and proj.info["d"] == 8


def test_bad_kernel_method_and_projection_structure() -> None:
    model, kw = _problem({"arch": "linear"}, (6,))
    with pytest.raises(InvalidInputError, match="'kernel_method'"):
        sample_information(model, kernel_method="fast", **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="'projection_structure'"):
        sample_information(model, method="projected", projection_structure="sparse", **kw)  # type: ignore[arg-type]


def test_one_automatic_ridge_rule_for_exact_and_projected() -> None:
    """With l2 = null both methods pick λ = scale·tr(Θ)/(nk) with the same scale: a projection
    that keeps every coordinate then reproduces exact SI, ridge included."""
    from infoscore.sample_info import DEFAULT_L2_AUTO_SCALE

    assert DEFAULT_L2_AUTO_SCALE["exact"] == DEFAULT_L2_AUTO_SCALE["projected"]
    model, kw = _problem({"arch": "mlp", "hidden": [5]}, (6,))
    kw.pop("l2")
    exact = sample_information(model, **kw)
    proj = sample_information(model, method="projected", projection_dim=10**6, **kw)
    assert exact.info["l2_auto_scale"] == proj.info["l2_auto_scale"]
    assert proj.info["lam"] == pytest.approx(exact.info["lam"], rel=1e-6)
    assert proj.si_weights is not None and exact.si_weights is not None
    np.testing.assert_allclose(proj.si_weights, exact.si_weights, rtol=2e-5)
