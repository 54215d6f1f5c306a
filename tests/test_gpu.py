"""GPU checks of the worker path (run only where CUDA exists: `pytest -m gpu`).

Every job kind runs through its runner twice on the same request, once on CUDA and once
on the CPU, and the numbers must agree. Trainings in float32 on two devices do not
round alike, so trained quantities are compared with tolerances that allow a few
flipped predictions (accuracies, bounds) and per-sample scores by rank (Spearman);
the float64 kernel algebra of sample information, on the same Jacobians up to float32
rounding, is compared more tightly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.runner_helpers import make_context
from workers.execution import choose_device
from workers.runners import get_runner
from workers.runners.base import JobOutput

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

NOISY_DIGITS = {"builtin": "digits", "label_noise": 0.2}
GAUSSIANS = {"builtin": "gaussians", "n": 400, "dim": 8, "classes": 3, "n_test": 200, "seed": 0}

REQUESTS: dict[str, dict[str, Any]] = {
    "training-dynamics": {
        "kind": "training-dynamics",
        "dataset": NOISY_DIGITS,
        "model": {"arch": "mlp"},
        "params": {"epochs": 10},
    },
    "sample-information": {
        "kind": "sample-information",
        "dataset": {**GAUSSIANS, "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": [64]},
    },
    "sample-information-projected": {
        "kind": "sample-information",
        "dataset": {**GAUSSIANS, "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": [64]},
        "params": {"method": "projected", "projection_dim": 256},
    },
    "fcmi-bound": {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [64]},
        "params": {"n": [50, 100], "k1": 2, "k2": 8, "epochs": 20, "eval_epochs": [5]},
    },
    "fcmi-bound-cnn": {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "digits", "classes": [4, 9]},
        "model": {"arch": "cnn", "channels": [8, 16], "hidden": 32},
        "params": {"n": [40], "k1": 1, "k2": 6, "epochs": 10},
    },
    "limit": {
        "kind": "limit",
        "dataset": {"builtin": "digits", "label_noise": 0.5},
        "model": {"arch": "mlp", "hidden": [64]},
        "seed": 1,
        "params": {"epochs": 10},
    },
    "label-issues": {
        "kind": "label-issues",
        "dataset": {"builtin": "digits", "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": [64]},
        "params": {"method": "ensemble", "epochs": 20, "folds": 3},
    },
    "supervision-complexity": {
        "kind": "supervision-complexity",
        "dataset": GAUSSIANS,
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {
            "teacher": {"arch": "mlp", "hidden": [64]},
            "teacher_epochs": 5,
            "checkpoints": [0, 2],
            "subsample": 100,
            "student_checkpoints": [0, 2],
        },
    },
    "distillation": {
        "kind": "distillation",
        "dataset": GAUSSIANS,
        "model": {"arch": "mlp", "hidden": [16]},
        "seed": 5,
        "params": {
            "teacher": {"arch": "mlp", "hidden": [64]},
            "teacher_epochs": 5,
            "epochs": 5,
            "seeds": 2,
            "subsample": 60,
        },
    },
}


def _run(request: dict[str, Any], device: str, workdir: Path) -> JobOutput:
    ctx = make_context({**request, "device": device}, workdir)
    ctx.device = choose_device(device, "auto")
    runner = get_runner(request["kind"])
    if hasattr(runner, "plan") and request["kind"] == "fcmi-bound":
        return runner.reduce(ctx, {u.name: runner.run_unit(ctx, u) for u in runner.plan(ctx)})
    return runner.run(ctx)


def _scalars(value: Any, path: str = "") -> dict[str, float]:
    """Every finite float in a summary, by path (settings and timings left out)."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for key, sub in value.items():
            if key not in ("settings", "seconds", "timings", "reduce_seconds", "device"):
                out.update(_scalars(sub, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out.update(_scalars(sub, f"{path}[{i}]"))
    elif isinstance(value, float) and np.isfinite(value):
        out[path] = value
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


@needs_cuda
def test_auto_picks_cuda_and_cpu_stays_cpu() -> None:
    assert choose_device("auto", "auto").type == "cuda"
    assert choose_device("auto", "cpu").type == "cpu"
    assert choose_device("cpu", "auto").type == "cpu"


@needs_cuda
@pytest.mark.parametrize("name", list(REQUESTS))
def test_job_kind_on_cuda_matches_cpu(name: str, tmp_path: Path) -> None:
    request = REQUESTS[name]
    cpu = _run(request, "cpu", tmp_path / "cpu")
    cuda = _run(request, "cuda", tmp_path / "cuda")

    exact_algebra = request["kind"] == "sample-information"
    cpu_values, cuda_values = _scalars(cpu.summary), _scalars(cuda.summary)
    assert cpu_values.keys() == cuda_values.keys()
    for key, value in cpu_values.items():
        if any(word in key for word in ("accuracy", "acc", "gap", "bound", "auroc")):
            # A few of hundreds of predictions may flip between devices after training.
            assert cuda_values[key] == pytest.approx(value, abs=0.05), key
        elif exact_algebra and key.endswith(("lam", "lam_loo")):
            assert cuda_values[key] == pytest.approx(value, rel=1e-3), key

    assert (cpu.scores is None) == (cuda.scores is None)
    if cpu.scores is not None and cuda.scores is not None:
        assert list(cpu.scores.columns) == list(cuda.scores.columns)
        for col in cpu.scores.columns:
            a = cpu.scores[col].to_numpy()
            b = cuda.scores[col].to_numpy()
            if a.dtype.kind != "f" or not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0:
                continue
            floor = 0.99 if exact_algebra else 0.9
            assert _spearman(a, b) >= floor, col
            if exact_algebra:
                np.testing.assert_allclose(b, a, rtol=2e-2, atol=1e-6 * float(np.abs(a).max()), err_msg=col)


@needs_cuda
def test_fcmi_batched_on_cuda_equals_one_at_a_time_on_cuda() -> None:
    """The ensemble's equality with separate trainings holds on the GPU too."""
    from sklearn.datasets import load_digits

    from infoscore import fcmi

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    n, k2 = 60, 5
    pairs = fcmi.make_supersample(len(y), n, 1)
    selectors = np.stack([fcmi.draw_selector(n, j) for j in range(k2)])
    seeds = [fcmi.unit_seeds(0, 1, j, deterministic=False) for j in range(k2)]
    spec = {"arch": "mlp", "hidden": [32]}
    recipe: dict[str, Any] = {"epochs": 8, "batch_size": 16, "lr": 1e-2}
    device = torch.device("cuda")
    batch = fcmi.train_units(
        x, y, pairs, selectors, n_classes=10, seeds=seeds, model_spec=spec, device=device, **recipe
    )
    singles = [
        fcmi.train_unit(
            x, y, pairs, selectors[j], n_classes=10, model_spec=spec, seed=seeds[j], device=device, **recipe
        )
        for j in range(k2)
    ]
    agree = (batch.predictions[0] == np.stack([u.predictions for u in singles])).mean()
    assert agree >= 0.99


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
            method=method,  # type: ignore[arg-type]
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


@needs_cuda
def test_worker_child_warms_cuda_before_its_first_job() -> None:
    """The CUDA context and the cuBLAS / cuSOLVER handles exist once the child started."""
    from workers.celery_app import _warm_cuda

    _warm_cuda(torch)
    assert torch.cuda.is_initialized()
