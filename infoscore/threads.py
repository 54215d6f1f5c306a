"""How many CPU threads a training loop uses: one for small models, the job's budget otherwise.

torch splits an operation over its intra-op threads when it is large enough, and the
threads meet at a barrier after it. For the small models most jobs train (a digits MLP: a
few thousand to a few hundred thousand multiply-adds per sample), a step is hundreds of
tiny operations and the barriers cost more than the second core gives: measured on a quiet
2-core machine, two threads made a step 1.2–4x slower than one; with other processes busy
beside the job, a step waits at each barrier for a preempted sibling. From about
``PARALLEL_STEP_WORK`` multiply-adds per step a second thread pays (0.6x the time at
10⁹). Kernel algebra (Cholesky, eigh, large products) keeps the budget: it runs outside
these loops. docs/benchmarks/devices.md, "Embedded thread policy", has the measurements.

Only the CPU is concerned: on a GPU the host threads only launch kernels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# Multiply-adds per training step (forward, batch included) from which a training loop
# keeps every thread of the job's budget.
PARALLEL_STEP_WORK = 4e7


def forward_macs(model: nn.Module, sample: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``sample`` (one input, batch dimension 1) in the
    model's dense and convolution layers (the rest is element-wise)."""
    macs = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += module.weight.numel()
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            macs += module.weight.numel() * output[0, 0].numel()

    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    hooks = [m.register_forward_hook(count) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return macs


def step_threads(macs_per_sample: int, batch_size: int, budget: int | None = None) -> int:
    """1 below ``PARALLEL_STEP_WORK`` multiply-adds per step, else ``budget`` (torch's
    current thread count when None)."""
    budget = torch.get_num_threads() if budget is None else budget
    return budget if macs_per_sample * batch_size >= PARALLEL_STEP_WORK else 1


def training_thread_count(
    models: Sequence[nn.Module],
    sample: torch.Tensor,
    batch_size: int,
    *,
    copies: int = 1,
    device: torch.device | None = None,
) -> int:
    """Threads for the mini-batch steps of ``models`` (trained side by side; ``copies`` of
    each batched into the same operations, e.g. an ensemble's members) on ``device``
    (default: ``sample``'s; ``sample`` may be on the meta device, only its shape counts).
    Off the CPU: torch's current count, unchanged."""
    budget = torch.get_num_threads()
    if (device or sample.device).type != "cpu" or budget == 1:
        return budget
    # Separate networks (LIMIT's two) run one after the other, each with its own operation
    # sizes; an ensemble's members run inside the same batched operations.
    macs = copies * max(forward_macs(m, sample[:1]) for m in models)
    return step_threads(macs, batch_size, budget)


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside, restored after. Wrap the
    batch loop only: per-epoch hooks (evaluation, kernels) keep the job's budget."""
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
