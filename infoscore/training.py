"""A plain, seeded classifier training loop shared by the job kinds.

Cross-entropy, Adam or SGD, mini-batches in an order drawn from ``seed`` (so two runs
with the same seed see the same batches), optional per-epoch callback. Tensors live on
one device; data sets here are small enough to sit there whole.

Device residency: the data stay on the model's device; each epoch's order is drawn on
the host from the seeded CPU generator (so the batches are the same on every device) and
copied to the device once per epoch; the loss and accuracy sums stay on the device and
reach the host once, when training ends.

:class:`Ensemble` trains M same-architecture models side by side as one batched model
(``torch.func.stack_module_state`` + ``vmap``): each model has its own initial weights,
its own training rows and its own data-order seed, and its numbers equal M separate
:func:`train_classifier` runs within float tolerance (the optimizer is element-wise, the
summed loss keeps the models' gradients apart).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import invalid
from .progress import ProgressFn, StopFn, check_stop
from .threads import training_thread_count, using_threads

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


FUSED_OPTIMIZER = True
# Ensemble.train gathers a whole epoch's per-model inputs at once up to this size.
EPOCH_GATHER_BYTES = 64 * 2**20


def make_optimizer(
    name: str,
    params: object,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """``fused`` picks torch's one-kernel update (the same arithmetic per element, fewer
    launches); None keeps torch's default."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)  # type: ignore[arg-type]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)  # type: ignore[arg-type]
    raise invalid("optimizer", "make_optimizer", f"one of {list(OPTIMIZERS)}", name)


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[torch.Tensor]:
    """One epoch's mini-batches of indices, in an order drawn from ``generator`` on the host
    (the same on every device) and copied to ``device`` in one transfer."""
    perm = torch.randperm(n, generator=generator)
    if perm.device != device:
        perm = perm.to(device, non_blocking=True)
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
    # Per-epoch sums stay on the device: one host transfer at the end, not two per batch.
    epoch_loss: list[torch.Tensor] = []
    epoch_correct: list[torch.Tensor] = []
    threads = training_thread_count([model], x, batch_size)
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(1, epochs + 1):
        check_stop(should_stop)
        model.train()
        total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        with using_threads(threads):
            for idx in epoch_batches(n, batch_size, gen, x.device):
                logits = model(x[idx])
                if loss_fn is None:
                    loss = nn.functional.cross_entropy(logits, y[idx])
                else:
                    loss = loss_fn(logits, y[idx], idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += loss.detach().double() * idx.numel()
                correct += (logits.detach().argmax(1) == y[idx]).sum()
        epoch_loss.append(total_loss)
        epoch_correct.append(correct)
        if on_epoch is not None:
            on_epoch(epoch, model)
        if progress is not None:
            progress(epoch, epochs)
    if epoch_loss:
        result.train_loss = (torch.stack(epoch_loss) / max(n, 1)).tolist()
        result.train_accuracy = (torch.stack(epoch_correct).double() / max(n, 1)).tolist()
    model.eval()
    return result


# ---------------------------------------------------------------- batched ensembles

# Layers whose training step is not a pure function of (weights, batch): batch statistics
# with running buffers, or random masks. Models with them train one at a time.
_NOT_BATCHABLE = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


# Element-wise layers that act the same on (M, b, h) as on (b, h).
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Identity)


def _dense_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of a flat ``nn.Sequential`` of Flatten / Linear / element-wise layers, or
    None. Such models run as batched matrix products (``baddbmm``), cheaper than ``vmap``."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model.named_children())
    for _, layer in layers:
        if isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1:
            continue
        if not isinstance(layer, (nn.Linear, *_ELEMENTWISE)):
            return None
    return layers


def ensemble_supported(model: nn.Module) -> bool:
    """Whether ``model`` can train inside an :class:`Ensemble` (no batch norm, no dropout)."""
    return not any(isinstance(m, _NOT_BATCHABLE) for m in model.modules())


class Ensemble:
    """M models of one architecture trained side by side as one batched model.

    ``models``: M modules with the same structure (e.g. ``build_model`` with M seeds);
    their weights are copied into stacked (M, ...) tensors on ``device``. A forward pass is
    ``vmap`` of ``torch.func.functional_call`` over the model axis.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        from torch.func import stack_module_state

        if not models:
            raise invalid("models", "Ensemble", "at least one model", 0)
        for m in models:
            if not ensemble_supported(m):
                raise invalid("models", "Ensemble", "models without batch norm or dropout", type(m).__name__)
        self.size = len(models)
        self.device = device
        params, buffers = stack_module_state(list(models))  # type: ignore[arg-type]
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        # The skeleton only supplies the forward code; its own tensors are never used.
        self._skeleton = copy.deepcopy(models[0]).to("meta")
        self._skeleton.eval()
        self._dense = _dense_layers(self._skeleton)

    def _call(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        from torch.func import functional_call

        return functional_call(self._skeleton, (params, buffers), (x,))  # type: ignore[no-any-return]

    def logits(self, x: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        """x (M, b, ...) per model, or (b, ...) for every model with ``shared`` -> (M, b, k)."""
        if self._dense is not None:
            return self._dense_logits(x, shared=shared)
        from torch.func import vmap

        in_x = None if shared else 0
        return vmap(self._call, in_dims=(0, 0, in_x))(self.params, self.buffers, x)  # type: ignore[no-any-return]

    def _dense_logits(self, x: torch.Tensor, *, shared: bool) -> torch.Tensor:
        """The same forward pass as ``vmap`` of the model, as batched matrix products."""
        assert self._dense is not None
        h = x.reshape(x.shape[0], -1) if shared else x.reshape(x.shape[0], x.shape[1], -1)
        for name, layer in self._dense:
            if isinstance(layer, nn.Linear):
                weight = self.params[f"{name}.weight"].transpose(1, 2)  # (M, in, out)
                bias = self.params.get(f"{name}.bias")
                if h.dim() == 2:  # shared input: (b, in) @ (M, in, out) -> (M, b, out)
                    h = torch.matmul(h, weight)
                    h = h if bias is None else h + bias[:, None, :]
                elif bias is None:
                    h = torch.bmm(h, weight)
                else:
                    h = torch.baddbmm(bias[:, None, :], h, weight)
            elif not isinstance(layer, nn.Flatten):
                h = layer(h)
        if h.dim() == 2:  # a model without Linear layers on a shared input
            h = h.expand(self.size, *h.shape)
        return h

    @torch.no_grad()
    def predict_logits(
        self, x: torch.Tensor, *, shared: bool = False, batch_size: int = 1024
    ) -> torch.Tensor:
        """Logits without gradients, in chunks of ``batch_size`` inputs. -> (M, b, k)."""
        axis = 0 if shared else 1
        b = x.shape[axis]
        chunks = [
            self.logits(x.narrow(axis, i, min(batch_size, b - i)), shared=shared)
            for i in range(0, b, batch_size)
        ]
        return torch.cat(chunks, dim=1)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """The M models' weights as ordinary state dicts (detached, on the ensemble's device)."""
        merged = {**self.params, **self.buffers}
        return [{k: v[i].detach() for k, v in merged.items()} for i in range(self.size)]

    def train(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rows: torch.Tensor,
        *,
        seeds: Sequence[int],
        epochs: int,
        batch_size: int = 128,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        on_epoch: Callable[[int, Ensemble], None] | None = None,
        should_stop: StopFn | None = None,
    ) -> None:
        """Train all M models at once with mini-batch cross-entropy.

        x (N, ...) and y (N,) a pool shared by the models, rows (M, n) int64 indices into
        it, all on the ensemble's device: model i trains on x[rows[i]], y[rows[i]], with
        batches in the order :func:`train_classifier` draws from ``seeds[i]``. The pool is
        never copied per model: each epoch's (M, n, ...) inputs are gathered at once when
        they fit in ``EPOCH_GATHER_BYTES``, else each mini-batch's.
        ``on_epoch(e, ensemble)`` runs once before training (e = 0) and after each epoch.
        Equals M :func:`train_classifier` calls with the same seeds within float tolerance.
        """
        if epochs < 0:
            raise invalid("epochs", "Ensemble.train", "a non-negative integer", epochs)
        if batch_size < 1:
            raise invalid("batch_size", "Ensemble.train", "a positive integer", batch_size)
        if not lr > 0:
            raise invalid("lr", "Ensemble.train", "a float in (0, inf)", lr)
        if len(seeds) != self.size or rows.dim() != 2 or rows.shape[0] != self.size:
            raise invalid(
                "rows",
                "Ensemble.train",
                f"(M = {self.size}, n) indices and one seed per model",
                tuple(rows.shape),
            )
        opt = make_optimizer(
            optimizer,
            list(self.params.values()),
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            fused=FUSED_OPTIMIZER,
        )
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        n = rows.shape[1]
        models = torch.arange(self.size, device=self.device)[:, None]
        per_epoch = self.size * n * x[:1].numel() * x.element_size() <= EPOCH_GATHER_BYTES
        threads = training_thread_count(
            [self._skeleton], x[:1].to("meta"), batch_size, copies=self.size, device=self.device
        )
        if on_epoch is not None:
            on_epoch(0, self)
        for epoch in range(1, epochs + 1):
            check_stop(should_stop)
            # Each model's order from its own generator, exactly as train_classifier draws it.
            order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(
                self.device, non_blocking=True
            )
            picked = rows[models, order]  # (M, n) pool rows in this epoch's order
            # One gather per epoch when it fits; the mini-batches are then slices of it.
            x_epoch = x[picked] if per_epoch else None
            with using_threads(threads):
                for start in range(0, n, batch_size):
                    idx = picked[:, start : start + batch_size]
                    xb = x_epoch[:, start : start + batch_size] if x_epoch is not None else x[idx]
                    yb = y[idx]
                    logits = self.logits(xb)
                    per_model = nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="none"
                    ).view(self.size, -1)
                    # Sum of the models' mean losses: each model's gradient is its own loss's.
                    loss = per_model.mean(1).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            if on_epoch is not None:
                on_epoch(epoch, self)
