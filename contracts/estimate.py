"""Resource estimates for a job request, computed without torch (the gateway uses them to
refuse a job before it runs, and ``POST /v1/jobs:estimate`` shows them).

The estimates are upper-bound-minded approximations of the dominant allocations of each
kind (parameters and optimizer state, per-sample Jacobians, kernel matrices), plus a fixed
allowance for the torch runtime; see docs/api.md. They are in bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RUNTIME_BYTES = 400 * 1024**2  # torch + python + data loading in a worker child
F32 = 4
F64 = 8
# Class sizes of scikit-learn's bundled digits (1797 images); a test checks them.
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


@dataclass
class Shape:
    n_train: int
    n_test: int
    features: int
    n_classes: int
    input_shape: list[int]


@dataclass
class Estimate:
    parameters: int
    memory_bytes: int
    shape: Shape
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "memory_bytes": self.memory_bytes,
            "memory_gib": round(self.memory_bytes / 1024**3, 3),
            "n_train": self.shape.n_train,
            "n_test": self.shape.n_test,
            "n_classes": self.shape.n_classes,
            "input_shape": self.shape.input_shape,
            "notes": self.notes,
        }


def builtin_shape(spec: dict[str, Any]) -> Shape:
    if spec["builtin"] == "digits":
        classes = spec.get("classes") or list(range(10))
        fraction = spec.get("test_fraction", 0.25)
        counts = [DIGITS_CLASS_COUNTS[c] for c in classes]
        n_test = sum(round(fraction * c) for c in counts)  # the stratified split of infoscore.data
        return Shape(sum(counts) - n_test, n_test, 64, len(classes), [1, 8, 8])
    n = int(spec.get("n", 1000))
    n_test = spec.get("n_test")
    dim = int(spec.get("dim", 20))
    return Shape(n, n if n_test is None else int(n_test), dim, int(spec.get("classes", 3)), [dim])


def parameter_count(model: dict[str, Any], shape: Shape) -> int:
    d, k = shape.features, shape.n_classes
    arch = model["arch"]
    if arch == "linear":
        return d * k + k
    if arch == "mlp":
        total, width = 0, d
        for h in model.get("hidden", [256]):
            total += width * h + h + (2 * h if model.get("batchnorm") else 0)
            width = h
        return total + width * k + k
    # cnn: two 3x3 convs, 2x2 pool, one dense layer (see infoscore.models)
    c1, c2 = model.get("channels", [16, 32])
    hidden = int(model.get("hidden", 64))
    in_shape = model.get("input_shape") or shape.input_shape
    if len(in_shape) == 1:
        side = math.isqrt(int(in_shape[0]))
        in_shape = [1, side, side]
    if len(in_shape) == 2:
        in_shape = [1, *in_shape]
    c, h, w = (int(s) for s in in_shape[-3:])
    conv = c * c1 * 9 + c1 + c1 * c2 * 9 + c2
    dense = c2 * (h // 2) * (w // 2) * hidden + hidden + hidden * k + k
    return conv + dense


def _training_bytes(p: int, shape: Shape, copies: int = 1) -> int:
    # weights, gradients, two Adam moments per model; the data set as float32.
    return copies * 4 * p * F32 + (shape.n_train + shape.n_test) * shape.features * F32


def estimate(request: dict[str, Any], shape: Shape) -> Estimate:
    """request: a validated job request as JSON (``model_dump(mode='json')``)."""
    kind = request["kind"]
    params = request.get("params") or {}
    p = parameter_count(request["model"], shape)
    n, k = shape.n_train, shape.n_classes
    notes: list[str] = []
    mem = _training_bytes(p, shape)
    if kind == "training-dynamics":
        mem += min(n * p * F32, 256 * 1024**2)  # per-sample gradients, in bounded batches
    elif kind == "sample-information":
        m = min(shape.n_test or n, int(params.get("eval_size", 1000)))
        if params.get("method", "exact") == "exact":
            nk = n * k
            mem += nk * p * F32  # the Jacobian
            mem += 4 * nk * nk * F64  # NTK, its factor and two work matrices
            mem += m * k * p * F32 + m * k * nk * F64  # held-out Jacobian and cross-kernel
            if params.get("t") is not None:
                mem += 2 * nk * nk * F64  # eigendecompositions of the leave-one-out systems
            notes.append(f"exact: n*k = {nk}; the kernel is (n*k)^2 float64")
        else:
            d = int(params.get("projection_dim", 2048))
            mem += (n + m) * k * d * F64 + 4 * d * d * F64 + 256 * 1024**2
            notes.append(f"projected: features (n+m)*k*d with d = {d}")
        if "weights_full" in params.get("measures", []):
            mem += 3 * p * p * F64
    elif kind == "fcmi-bound":
        notes.append("per unit (one training on 2*max(n) samples); units run one per worker process")
    elif kind == "limit":
        mem = _training_bytes(p, shape, copies=3)  # classifier, q-network, best checkpoint
    elif kind == "label-issues":
        method = params.get("method", "limit")
        # LIMIT holds a classifier and a q-network; pred_probs and the decisions are (n, k) float64.
        copies = 2 if method in ("limit", "limit-cv", "ensemble") else 1
        mem = _training_bytes(p, shape, copies=copies) + 4 * n * k * F64
        if method != "limit":
            notes.append(f"{params.get('folds', 5)} cross-fitted trainings, one at a time")
    elif kind in ("supervision-complexity", "distillation"):
        teacher_p = parameter_count(params["teacher"], shape)
        checkpoints = len(params.get("checkpoints", [])) + 1
        mem += _training_bytes(teacher_p, shape) + checkpoints * teacher_p * F32
        m = min(n, int(params.get("subsample", 1000)))
        if kind == "supervision-complexity" and params.get("kernel") == "full":
            mem += m * k * p * F32 + 3 * (m * k) ** 2 * F64
        else:
            mem += m * k * p * F32 + 3 * m * m * F64
    return Estimate(parameters=p, memory_bytes=int(mem + RUNTIME_BYTES), shape=shape, notes=notes)
