"""Every job kind is device-resident, checked on the CPU with a CUDA-strict stand-in device.

`tests/virtual_device.py` follows each tensor's virtual device and records what CUDA
would refuse: an operation on host and device tensors, ``.numpy()`` of a device tensor, a
host generator drawing a device tensor. Each request below runs through its runner on the
stand-in device (``cpu:0``) and must record none, and give the same numbers as the plain
CPU run (the stand-in only watches). The GPU itself is exercised by `tests/test_gpu.py`
(``-m gpu``, never in CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contracts.jobs import JOB_KINDS
from tests.runner_helpers import make_context
from tests.test_gpu import REQUESTS as GPU_REQUESTS
from tests.virtual_device import VirtualDevice, report
from workers.runners import get_runner
from workers.runners.base import JobOutput
from workers.runners.fcmi import FcmiRunner

GAUSSIANS = {"builtin": "gaussians", "n": 300, "dim": 8, "classes": 3, "n_test": 100, "seed": 0}
DIGITS_49 = {"builtin": "digits", "classes": [4, 9], "label_noise": 0.1}

# The GPU test's requests, plus the paths they leave out: every sample-information option
# that moves tensors (finite t and its two projected routes, full covariance, delta_f,
# trained linearization, ground truth, the CNN kernel, the dense projection), LIMIT's
# other q law, and every label-issues method.
REQUESTS: dict[str, dict[str, Any]] = {
    **GPU_REQUESTS,
    "sample-information-finite-t-all-measures": {
        "kind": "sample-information",
        "dataset": {**GAUSSIANS, "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {
            "t": 40,
            "measures": ["weights", "predictions", "weights_full", "weights_full_linearized"],
            "delta_f": True,
            "loo_lambda": "rescaled",
            "linearize_at": "trained",
            "train_epochs": 2,
            "eval_size": 50,
            "ground_truth": {"subset": 3, "reference": "network"},
        },
    },
    "sample-information-cnn": {
        "kind": "sample-information",
        "dataset": DIGITS_49,
        "model": {"arch": "cnn", "channels": [4, 8], "hidden": 16},
        "params": {"eval_size": 40, "time": "continuous", "t": 30},
    },
    "sample-information-projected-finite-t": {
        "kind": "sample-information",
        "dataset": {**GAUSSIANS, "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {
            "method": "projected",
            "projection_dim": 64,
            "t": 40,
            "measures": ["weights", "predictions", "weights_full", "weights_full_linearized"],
            "delta_f": True,
            "eval_size": 50,
        },
    },
    "sample-information-projected-dense": {
        "kind": "sample-information",
        "dataset": DIGITS_49,
        "model": {"arch": "cnn", "channels": [4, 8], "hidden": 16},
        "params": {"method": "projected", "projection_dim": 64, "projection": "gaussian", "eval_size": 40},
    },
    "limit-gaussian-q": {
        "kind": "limit",
        "dataset": {"builtin": "digits", "label_noise": 0.4},
        "model": {"arch": "mlp", "hidden": [32]},
        "params": {"epochs": 4, "q_dist": "gaussian", "sample_from_q": True, "warm_up": 1, "patience": 2},
    },
    **{
        f"label-issues-{method}": {
            "kind": "label-issues",
            "dataset": {"builtin": "digits", "label_noise": 0.2},
            "model": {"arch": "mlp", "hidden": [32]},
            "params": {"method": method, "epochs": 3, "folds": 2},
        }
        for method in ("limit", "cross-entropy-cv", "limit-cv", "ensemble")
    },
}


# Where results leave the device: the functions that turn a job's outputs into host
# arrays (scores, predictions, probabilities for confident learning, saved weights). Any
# other device-to-host copy may move at most SCALAR_COPY elements per call site (progress,
# per-epoch losses, a convergence check); a bulk copy elsewhere fails the test.
RESULT_SITES = {
    "infoscore/sample_info.py": {"sample_information", "host"},
    "infoscore/scores.py": {"training_dynamics", "to_numpy"},
    "infoscore/fcmi.py": {"train_units"},
    "infoscore/limit.py": {"score_samples", "table"},
    "infoscore/label_issues.py": {"_softmax64"},
    "infoscore/distill.py": {"_target"},
    "infoscore/models.py": {"save_safetensors", "<dictcomp>"},
    "infoscore/distill_protocol.py": {"_safetensors_bytes", "<dictcomp>"},
}
SCALAR_COPY = 64


def _bulk_copies_outside_results(mode: VirtualDevice) -> dict[str, int]:
    out = {}
    for where, count in mode.copied.items():
        inner = where.split(" <- ")[0]  # "file:line function"
        path, function = inner.split(":")[0], inner.split(" ")[-1]
        if count > SCALAR_COPY and function not in RESULT_SITES.get(path, set()):
            out[where] = count
    return out


def _run(request: dict[str, Any], device: torch.device, workdir: Path) -> JobOutput:
    ctx = make_context({**request, "device": "cpu"}, workdir)
    ctx.device = device
    runner = get_runner(request["kind"])
    if isinstance(runner, FcmiRunner):
        return runner.reduce(ctx, {u.name: runner.run_unit(ctx, u) for u in runner.plan(ctx)})
    return runner.run(ctx)


def _numbers(value: Any, path: str = "") -> dict[str, Any]:
    """The summary's leaves by path, timings left out."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            name = str(key)
            if not (name.endswith("_s") or any(w in name for w in ("seconds", "timings", "device", "peak"))):
                out.update(_numbers(sub, f"{path}.{key}"))
        return out
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in _numbers(sub, f"{path}[{i}]").items()}
    return {path: value}


def test_every_job_kind_has_a_device_request() -> None:
    assert {r["kind"] for r in REQUESTS.values()} == set(JOB_KINDS)
    assert {r["kind"] for r in GPU_REQUESTS.values()} == set(JOB_KINDS)


@pytest.mark.parametrize("name", list(REQUESTS))
def test_job_runs_device_resident(name: str, tmp_path: Path) -> None:
    request = REQUESTS[name]
    with VirtualDevice() as mode:
        on_device = _run(request, VirtualDevice.DEVICE, tmp_path / "device")
    assert not mode.violations, f"{name}: what CUDA would refuse\n{report(mode)}"
    assert not _bulk_copies_outside_results(mode), f"{name}: copied to the host mid-job\n{report(mode)}"

    torch.manual_seed(0)
    plain = _run(request, torch.device("cpu"), tmp_path / "cpu")
    assert _numbers(on_device.summary) == _numbers(plain.summary)
    assert (on_device.scores is None) == (plain.scores is None)
    if on_device.scores is not None and plain.scores is not None:
        assert list(on_device.scores.columns) == list(plain.scores.columns)
        for col in plain.scores.columns:
            np.testing.assert_array_equal(on_device.scores[col].to_numpy(), plain.scores[col].to_numpy(), col)


# ---------------------------------------------------------------- the stand-in itself


def test_stand_in_flags_what_cuda_refuses_and_nothing_else() -> None:
    dev = VirtualDevice.DEVICE
    with VirtualDevice() as mode:
        x = torch.randn(4, 3, device=dev)
        lin = torch.nn.Linear(3, 2).to(dev)
        lin(x).sum().backward()
        torch.optim.Adam(lin.parameters(), lr=0.1).step()
        idx = torch.tensor([0, 2])
        picked = x[idx] + torch.ones(2, 3).to(x.device) * torch.tensor(2.0)
        gen = torch.Generator(device=x.device).manual_seed(0)
        noise = torch.randn(3, generator=gen, device=dev)
        host = picked.detach().cpu().numpy()
        assert float(noise.sum()) == pytest.approx(float(noise.sum()))
        assert x.device == dev and lin.weight.device == dev and noise.device == dev
        assert torch.ones(1).device == torch.device("cpu") and picked.cpu().device == torch.device("cpu")
    assert mode.violations == [], report(mode)
    assert host.shape == (2, 3) and lin.weight.grad is not None
    assert x.device == torch.device("cpu")  # outside the mode: the real device
    assert sum(mode.syncs.values()) == 4  # cpu() twice, float() twice

    with VirtualDevice() as mode:
        x = torch.randn(4, 3, device=dev)
        _ = x @ torch.randn(3, 2)  # host weights
        _ = x.numpy()  # NumPy of a device tensor
        _ = torch.randn(3, generator=torch.Generator().manual_seed(0), device=dev)  # host generator
        _ = torch.from_numpy(np.ones((2, 3), dtype=np.float32)) + x[:2]
        _ = torch.zeros(5)[torch.tensor([1, 2], device=dev)]  # device index into a host tensor
    kinds = [v.split(" at ")[0] for v in mode.violations]
    assert len(kinds) == 5, report(mode)
    assert "matmul mixes" in kinds[0] and "numpy()" in kinds[1] and "host generator" in kinds[2]
    assert "add mixes" in kinds[3] and "device index" in kinds[4]


def test_a_bulk_copy_to_the_host_mid_job_is_caught() -> None:
    """What the dense projection did before it kept Φ on the device."""
    from infoscore import models
    from infoscore.projection import projected_features, projector_for

    dev = VirtualDevice.DEVICE
    with VirtualDevice() as mode:
        net = models.build_model({"arch": "mlp", "hidden": [8]}, (4,), 3, seed=0).to(dev)
        x = torch.randn(20, 4, device=dev)
        phi = projected_features(net, x, projector_for(net, 16, device=dev))
        assert phi.device == dev
        assert not _bulk_copies_outside_results(mode), report(mode)
        _ = phi.cpu()  # a copy no result needs
    assert list(_bulk_copies_outside_results(mode).values()) == [20 * 3 * 16], report(mode)


def test_stand_in_catches_the_projected_path_bug_of_the_h200_trial() -> None:
    """The crash after the H200 trial's: the primal LOO came back on the host and met
    device features (the same CUDA error, one step further than the trial's)."""
    from infoscore.sample_info import loo_primal

    dev = VirtualDevice.DEVICE
    with VirtualDevice() as mode:
        phi = torch.randn(30, 5, dtype=torch.float64, device=dev)
        r0 = torch.randn(30, dtype=torch.float64, device=dev)
        res = loo_primal(phi, r0, k=3, lam=1.0)
        _ = phi @ res.v  # fine now: the result stays on the device
        _ = phi @ res.v.cpu()  # what the old code did
    assert len(mode.violations) == 1 and "matmul mixes" in mode.violations[0], report(mode)


@pytest.mark.parametrize("structure", ["dense", "kronecker"])
def test_library_projected_sample_information_device_resident(structure: str) -> None:
    """The dense per-sample projection is a library option (``projection_structure``) the
    job requests above do not reach; both projections through the library call."""
    import infoscore
    from infoscore.data import make_gaussians

    ds = make_gaussians(n=200, dim=6, classes=3, n_test=40, label_noise=0.2, seed=1)
    config = infoscore.SampleInformationConfig(
        method="projected", projection_structure=structure, projection_dim=32, t=30,  # type: ignore[arg-type]
        measures=("weights", "predictions", "weights_full"), seed=2,
    )  # fmt: skip
    model = {"arch": "mlp", "hidden": [8]}
    with VirtualDevice() as mode:
        on_device = infoscore.sample_information(ds, model, config, device=VirtualDevice.DEVICE)
    assert not mode.violations, report(mode)
    assert not _bulk_copies_outside_results(mode), report(mode)
    plain = infoscore.sample_information(ds, model, config, device="cpu")
    for col in plain.table().columns:
        np.testing.assert_array_equal(on_device.table()[col].to_numpy(), plain.table()[col].to_numpy(), col)


def test_limit_moves_order_and_noise_to_the_device_once_per_epoch() -> None:
    """LIMIT drew each batch's indices and q-noise on the host and moved them one batch at a
    time: on CUDA, a synchronising copy per step."""
    import infoscore
    from infoscore.data import load_digits

    ds = load_digits(label_noise=0.4, seed=0)
    config = infoscore.LimitConfig(epochs=3, batch_size=64, sample_from_q=True, baseline=False, seed=1)
    with VirtualDevice() as mode:
        infoscore.limit(ds, {"arch": "mlp", "hidden": [16]}, config, device=VirtualDevice.DEVICE)
    assert not mode.violations, report(mode)
    assert mode.uploads and max(mode.uploads.values()) <= config.epochs, report(mode)  # 17 batches an epoch
