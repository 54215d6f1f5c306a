"""Training loops run their mini-batch steps on one CPU thread for small models and keep the
job's thread budget for large ones and for everything between the steps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from infoscore import models
from infoscore.threads import (
    PARALLEL_STEP_WORK,
    forward_macs,
    step_threads,
    training_thread_count,
    using_threads,
)
from infoscore.training import Ensemble, train_classifier


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_forward_macs_counts_dense_and_convolution_layers() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    assert forward_macs(mlp, torch.zeros(1, 6)) == 6 * 5 + 5 * 3
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    # each of the 4·8·8 outputs of the convolution costs 1·3·3 multiply-adds
    assert forward_macs(conv, torch.zeros(1, 1, 8, 8)) == 4 * 8 * 8 * 9 + 4 * 8 * 8 * 2
    assert conv.training  # the count leaves the mode alone


def test_step_threads_rule(two_threads: None) -> None:
    assert step_threads(1000, 64) == 1
    assert step_threads(int(PARALLEL_STEP_WORK) // 64, 64, budget=8) == 8
    assert step_threads(int(PARALLEL_STEP_WORK) // 64 - 1, 64, budget=8) == 1
    assert step_threads(10**9, 1) == 2  # the current budget when none is given


def test_thread_count_by_model_size_and_device(two_threads: None) -> None:
    small = models.build_model({"arch": "mlp", "hidden": [64]}, (64,), 10, seed=0)
    large = models.build_model({"arch": "mlp", "hidden": [2048, 2048]}, (64,), 10, seed=0)
    x = torch.zeros(4, 64)
    assert training_thread_count([small], x, 64) == 1
    assert training_thread_count([large], x, 256) == 2
    # an ensemble's members add up; a meta sample counts by shape only
    assert (
        training_thread_count([small.to("meta")], x.to("meta"), 64, copies=500, device=torch.device("cpu"))
        == 2
    )
    # off the CPU the host threads only launch kernels: left as they are
    assert training_thread_count([small.to("meta")], x.to("meta"), 64) == 2


def test_using_threads_restores(two_threads: None) -> None:
    with using_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), using_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_train_classifier_steps_on_one_thread_and_hooks_on_the_budget(two_threads: None) -> None:
    model = models.build_model({"arch": "mlp", "hidden": [16]}, (8,), 3, seed=0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    in_steps: set[int] = set()
    in_hooks: set[int] = set()

    def loss_fn(logits: torch.Tensor, yb: torch.Tensor, _idx: torch.Tensor) -> torch.Tensor:
        in_steps.add(torch.get_num_threads())
        return nn.functional.cross_entropy(logits, yb)

    train_classifier(
        model, x, y, epochs=2, batch_size=16, loss_fn=loss_fn,
        on_epoch=lambda _e, _m: in_hooks.add(torch.get_num_threads()),
    )  # fmt: skip
    assert in_steps == {1} and in_hooks == {2}
    assert torch.get_num_threads() == 2


def test_ensemble_steps_on_one_thread(two_threads: None) -> None:
    members = [models.build_model({"arch": "mlp", "hidden": [16]}, (8,), 3, seed=s) for s in range(3)]
    ens = Ensemble(members, torch.device("cpu"))
    x, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
    rows = torch.stack([torch.randperm(40)[:20] for _ in range(3)])
    seen: list[int] = []
    original = ens.logits

    def logits(xb: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return original(xb)

    ens.logits = logits  # type: ignore[method-assign,assignment]
    ens.train(x, y, rows, seeds=[0, 1, 2], epochs=1, batch_size=10)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
