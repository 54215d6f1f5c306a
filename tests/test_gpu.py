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
