"""Sample information on CUDA against the CPU run of the same call (``pytest -m gpu``; skipped
without a CUDA device, never in CI). Covers the exact path at t = infinity and at finite t
(the recurrence route), weights_full (network gradients), delta_f and the ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infoscore import data, models
from infoscore import ground_truth as gt
from infoscore.sample_info import sample_information

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _run(device: str, **kwargs: object) -> object:
    ds = data.make_gaussians(n=120, dim=10, classes=3, n_test=40, label_noise=0.1, seed=0)
    model = models.build_model({"arch": "mlp", "hidden": [32]}, (10,), 3, seed=0).double().to(device)
    x = torch.tensor(ds.x_train, dtype=torch.float64, device=device)
    y = torch.tensor(ds.y_train, device=device)
    xe = torch.tensor(ds.x_test, dtype=torch.float64, device=device)
    ye = torch.tensor(ds.y_test, device=device)
    return sample_information(model, x, y, k=3, x_eval=xe, y_eval=ye, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("t", [None, 300])
def test_sample_information_on_cuda_equals_cpu(t: int | None) -> None:
    kw = {
        "t": t,
        "lr": 0.05,
        "l2": 1e-3,
        "measures": ["weights", "predictions", "weights_full"],
        "delta_f": True,
    }
    cpu, gpu = _run("cpu", **kw), _run("cuda", **kw)
    for name in ("si_weights", "si_predictions", "si_weights_full", "delta_f"):
        a, b = getattr(cpu, name), getattr(gpu, name)
        assert isinstance(b, np.ndarray)
        np.testing.assert_allclose(
            b, a, rtol=1e-6 if name != "delta_f" else 1e-4, atol=1e-9 * float(np.abs(a).max())
        )
    assert gpu.test_accuracy == pytest.approx(cpu.test_accuracy)  # type: ignore[attr-defined]


def test_ground_truth_on_cuda_equals_cpu() -> None:
    out = {}
    for device in ("cpu", "cuda"):
        ds = data.make_gaussians(n=30, dim=5, classes=2, n_test=10, seed=1)
        model = models.build_model({"arch": "mlp", "hidden": [8]}, (5,), 2, seed=0).to(device)
        x = torch.tensor(ds.x_train, device=device)
        y = torch.tensor(ds.y_train, device=device)
        out[device] = gt.network_loo(model, x, y, k=2, indices=np.array([0, 5, 9]), t=20, lr=0.5, l2=1e-3)
    np.testing.assert_allclose(out["cuda"].sq_weights, out["cpu"].sq_weights, rtol=1e-6)
