"""A plain, seeded classifier training loop shared by the job kinds.

Cross-entropy, Adam or SGD, mini-batches in an order drawn from ``seed`` (so two runs
with the same seed see the same batches), optional per-epoch callback. Tensors live on
one device; data sets here are small enough to sit there whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import invalid
from .progress import ProgressFn, StopFn, check_stop

OPTIMIZERS = ("adam", "sgd")


def resolve_device(requested: str | None = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu. Call it in the process that computes."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda") and not str(requested).startswith("cuda:"):
        raise invalid("device", "resolve_device", "'auto', 'cpu' or 'cuda[:i]'", requested)
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        raise invalid("device", "resolve_device", "'cpu' or 'auto' (no CUDA device here)", requested)
    return torch.device(requested)


def as_tensor(x: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)


def make_optimizer(
    name: str, params: object, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)  # type: ignore[arg-type]
    raise invalid("optimizer", "make_optimizer", f"one of {list(OPTIMIZERS)}", name)


def batch_order(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's mini-batches of indices, in an order drawn from ``generator``."""
    perm = torch.randperm(n, generator=generator)
    return list(perm.split(batch_size))


@dataclass
class TrainResult:
    train_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits (n, k) in eval mode; restores the model's mode afterwards."""
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    if not out:
        return torch.zeros((0, 0), device=x.device)
    return torch.cat(out)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if y.numel() == 0:
        return float("nan")
    return float((predict_logits(model, x).argmax(1) == y).float().mean())


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train ``model`` in place with mini-batch cross-entropy.

    x (n, ...) and y (n,) on the model's device. ``loss_fn(logits, y_batch, idx_batch)``
    replaces cross-entropy when given (e.g. distillation). ``on_epoch(e, model)`` runs
    after epoch e (1-based) and once before training with e = 0.
    """
    if epochs < 0:
        raise invalid("epochs", "train_classifier", "a non-negative integer", epochs)
    if batch_size < 1:
        raise invalid("batch_size", "train_classifier", "a positive integer", batch_size)
    if not lr > 0:
        raise invalid("lr", "train_classifier", "a float in (0, inf)", lr)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    result = TrainResult()
    n = x.shape[0]
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(1, epochs + 1):
        check_stop(should_stop)
        model.train()
        total_loss = 0.0
        correct = 0
        for idx in batch_order(n, batch_size, gen):
            idx = idx.to(x.device)
            logits = model(x[idx])
            if loss_fn is None:
                loss = nn.functional.cross_entropy(logits, y[idx])
            else:
                loss = loss_fn(logits, y[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * idx.numel()
            correct += int((logits.detach().argmax(1) == y[idx]).sum())
        result.train_loss.append(total_loss / max(n, 1))
        result.train_accuracy.append(correct / max(n, 1))
        if on_epoch is not None:
            on_epoch(epoch, model)
        if progress is not None:
            progress(epoch, epochs)
    model.eval()
    return result
