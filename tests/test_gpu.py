"""GPU checks of the worker path (run only where CUDA exists: `pytest -m gpu`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.runner_helpers import make_context
from workers.execution import choose_device
from workers.runners import get_runner

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
def test_auto_picks_cuda_and_cpu_stays_cpu() -> None:
    assert choose_device("auto", "auto").type == "cuda"
    assert choose_device("auto", "cpu").type == "cpu"
    assert choose_device("cpu", "auto").type == "cpu"


@needs_cuda
def test_training_dynamics_runs_on_cuda(tmp_path: Path) -> None:
    request = {
        "kind": "training-dynamics",
        "dataset": {"builtin": "digits", "label_noise": 0.2},
        "model": {"arch": "mlp"},
        "device": "cuda",
    }
    ctx = make_context(request, tmp_path)
    ctx.device = choose_device("cuda", "auto")
    out = get_runner("training-dynamics").run(ctx)
    assert out.scores is not None and len(out.scores) == ctx.dataset.n_train
    assert out.summary["auroc_noisy"]["el2n"] >= 0.9


@needs_cuda
@pytest.mark.parametrize("method", ["exact", "projected"])
def test_sample_information_structured_kernel_and_kronecker_projection_on_cuda(method: str) -> None:
    """The structured kernel and the Kronecker projection run on CUDA (every tensor on the
    device, R drawn from the same seeded generator) and match the CPU run."""
    import numpy as np

    from infoscore import data, models
    from infoscore.sample_info import sample_information

    ds = data.make_gaussians(n=400, dim=16, classes=4, n_test=50, label_noise=0.1, seed=0)
    results = []
    for device in ("cpu", "cuda"):
        model = models.build_model({"arch": "mlp", "hidden": [32]}, (16,), 4, seed=0).double().to(device)
        res = sample_information(
            model,
            torch.tensor(ds.x_train, dtype=torch.float64, device=device),
            torch.tensor(ds.y_train, device=device),
            k=4,
            x_eval=torch.tensor(ds.x_test, dtype=torch.float64, device=device),
            y_eval=torch.tensor(ds.y_test, device=device),
            method=method,
            projection_dim=256,
            seed=3,
        )
        assert res.si_weights is not None and res.si_predictions is not None
        results.append(res)
    cpu, gpu = results
    assert cpu.si_weights is not None and gpu.si_weights is not None
    np.testing.assert_allclose(gpu.si_weights, cpu.si_weights, rtol=1e-4)
    assert cpu.si_predictions is not None and gpu.si_predictions is not None
    np.testing.assert_allclose(gpu.si_predictions, cpu.si_predictions, rtol=1e-4)
