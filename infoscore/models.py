"""Architecture registry: ``linear``, ``mlp`` and ``cnn``, built from a plain spec dict.

Specs (the wire format mirrors them in ``contracts``):

- ``{"arch": "linear", "init": "default" | "zeros"}``: one affine layer on the flattened
  input (bias included). ``zeros`` starts at w = 0, so a linearized model equals the model.
- ``{"arch": "mlp", "hidden": [256], "activation": "relu", "batchnorm": false,
  "dropout": 0.0}``: fully connected, on the flattened input.
- ``{"arch": "cnn", "channels": [16, 32], "hidden": 64, "input_shape": null}``: two 3x3
  conv layers (padding 1, ReLU), a 2x2 max-pool, one hidden dense layer. Inputs are
  reshaped to ``input_shape`` (C, H, W), e.g. digits' (1, 8, 8).

Initialisation is seeded: the weights depend only on ``(spec, input_shape, n_classes,
seed)``; the global torch RNG state is saved and restored around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import invalid

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}
MAX_PARAMETERS = 50_000_000


class Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    return int(math.prod(input_shape))


def _linear(spec: Mapping[str, Any], input_shape: tuple[int, ...], k: int) -> nn.Module:
    init = spec.get("init", "default")
    if init not in ("default", "zeros"):
        raise invalid("init", "build_model", "'default' or 'zeros'", init)
    layer = nn.Linear(_flat_dim(input_shape), k)
    if init == "zeros":
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(nn.Flatten(), layer)


def _mlp(spec: Mapping[str, Any], input_shape: tuple[int, ...], k: int) -> nn.Module:
    hidden = list(spec.get("hidden", [256]))
    if not hidden or any((not isinstance(h, int)) or h < 1 for h in hidden):
        raise invalid("hidden", "build_model", "a non-empty list of positive integers", hidden)
    act_name = spec.get("activation", "relu")
    if act_name not in ACTIVATIONS:
        raise invalid("activation", "build_model", f"one of {sorted(ACTIVATIONS)}", act_name)
    dropout = float(spec.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise invalid("dropout", "build_model", "a float in [0, 1)", dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    width = _flat_dim(input_shape)
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if spec.get("batchnorm", False):
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[act_name]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers)


def _cnn(spec: Mapping[str, Any], input_shape: tuple[int, ...], k: int) -> nn.Module:
    shape = spec.get("input_shape") or input_shape
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise invalid(
                "input_shape",
                "build_model",
                "(C, H, W) for a cnn, or a flat input whose length is a perfect square",
                shape,
            )
        shape = (1, side, side)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or _flat_dim(shape) != _flat_dim(input_shape):
        raise invalid("input_shape", "build_model", f"(C, H, W) with C*H*W = {_flat_dim(input_shape)}", shape)
    channels = list(spec.get("channels", [16, 32]))
    if len(channels) != 2 or any((not isinstance(c, int)) or c < 1 for c in channels):
        raise invalid("channels", "build_model", "two positive integers", channels)
    hidden = int(spec.get("hidden", 64))
    c, h, w = shape
    act_name = spec.get("activation", "relu")
    if act_name not in ACTIVATIONS:
        raise invalid("activation", "build_model", f"one of {sorted(ACTIVATIONS)}", act_name)
    act = ACTIVATIONS[act_name]
    return nn.Sequential(
        Reshape(shape),
        nn.Conv2d(c, channels[0], 3, padding=1),
        act(),
        nn.Conv2d(channels[0], channels[1], 3, padding=1),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels[1] * (h // 2) * (w // 2), hidden),
        act(),
        nn.Linear(hidden, k),
    )


ARCHITECTURES: dict[str, Callable[[Mapping[str, Any], tuple[int, ...], int], nn.Module]] = {
    "linear": _linear,
    "mlp": _mlp,
    "cnn": _cnn,
}


def build_model(
    spec: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int, *, seed: int = 0
) -> nn.Module:
    """Build a float32 model from ``spec`` with seeded initialisation.

    input_shape: the per-sample shape (e.g. (64,) or (1, 8, 8)); n_classes: k outputs.
    """
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise invalid("arch", "build_model", f"one of {sorted(ARCHITECTURES)}", arch)
    if n_classes < 1:
        raise invalid("n_classes", "build_model", "a positive integer", n_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[arch](spec, tuple(input_shape), n_classes)
    n_params = count_parameters(model)
    if n_params > MAX_PARAMETERS:
        raise invalid(
            "model", "build_model", f"at most {MAX_PARAMETERS} parameters", f"{n_params} parameters"
        )
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_safetensors(model: nn.Module, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write the model's state dict (contiguous CPU tensors) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata=metadata)


def load_safetensors(model: nn.Module, path: str) -> nn.Module:
    """Load weights written by :func:`save_safetensors` (no pickle involved)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path))
    return model
