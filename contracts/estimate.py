"""Resource estimates for a job request, computed without torch (the gateway uses them to
refuse a job before it runs, and ``POST /v1/jobs:estimate`` shows them).

The estimates are upper-bound-minded approximations of the dominant allocations of each
kind (parameters and optimizer state, per-sample Jacobians, kernel matrices), plus a fixed
allowance for the torch runtime; see docs/api.md. They are in bytes.

One estimator per job kind, in the registry :data:`ESTIMATORS` keyed by the kinds'
``KIND`` constants. Each reads the kind's *validated* params model (defaults come from the
contract, never re-spelled here) and returns a :class:`KindCost`; :func:`estimate` adds what
every kind shares (the dataset, the runtime). The finite-t leave-one-out cost model is
``infoscore.costs`` itself (torch-free), so the estimator and the library cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from infoscore.costs import IN_BLOCK_WEIGHT as IN_BLOCK_WEIGHT  # re-exported
from infoscore.costs import RECURRENCE_BLOCK as RECURRENCE_BLOCK
from infoscore.costs import finite_t_cost as finite_t_cost
from infoscore.costs import projected_finite_t_cost as projected_finite_t_cost
from infoscore.costs import recurrence_block as recurrence_block

from . import distill, fcmi, label_issues, limit, sample_information, training_dynamics
from .distill import DistillationParams, SupervisionComplexityParams
from .fcmi import FcmiParams
from .jobs import params_model
from .label_issues import LabelIssuesParams
from .limit import LimitParams
from .sample_information import MAX_DELTA_F_BYTES as MAX_DELTA_F_BYTES
from .sample_information import SampleInformationParams
from .training_dynamics import TrainingDynamicsParams

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
    stored_bytes: int | None = None
    """uploads: bytes of the stored arrays (features, labels, fixed-width ids), from the record"""


# Measured rates behind the time range (one torch thread, CPU seconds, so as on a quiet
# machine). Where each came from: ``PYTHONPATH=. python benchmarks/estimate_rates.py`` on the
# project's 2-core x86_64 box, torch 2.13.0+cpu, 2026-11-30, machine shared (load ~12):
# CPU seconds are used, wall was about 3.4x them. Output lines:
#   mlp [256]: p = 19210, 20 epochs, 440 steps: cpu 0.35 s   -> 1.48e9 sample-epoch-params/s
#   mlp [1024]: p = 76810, 6 epochs, 132 steps: cpu 0.55 s   -> 1.13e9
#   per-sample Jacobians, mlp [256], n = 500, k = 10: cpu 0.62 s -> 1.55e8 sample-class-params/s
#   float64 GEMM 2000: cpu 0.281 s -> 5.7e10 flop/s; float64 Cholesky 2000: cpu 0.079 s -> 3.4e10
RATES: dict[str, float] = {
    "train_sample_epoch_params_per_s": 1.2e9,  # the lower of the two MLPs, rounded down
    "train_step_seconds": 2e-4,  # per optimizer step, whatever the size (Python + launch)
    "jacobian_sample_class_params_per_s": 1.5e8,
    "gemm_flop_per_s": 5.0e10,
    "cholesky_flop_per_s": 3.0e10,
    "job_overhead_seconds": 2.0,  # claim, dataset load, artifacts
    "unit_overhead_seconds": 0.05,  # per fan-out unit (f-CMI)
}
# The range shown: the point estimate times these. Low: a quiet machine a little faster
# than ours; high: a worker sharing its cores (we saw wall = 3.4 x CPU under load).
TIME_RANGE_FACTORS = (0.5, 4.0)


@dataclass
class Estimate:
    parameters: int
    memory_bytes: int
    shape: Shape
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None
    """point estimate of the job's run time on one CPU worker thread (see RATES)"""
    # Seconds of named compute stages that can outgrow a worker's time limit (the gateway
    # refuses a job whose total is above INFOSCORE_JOB_TIME_LIMIT), e.g. finite-t LOO.
    compute_seconds: dict[str, float] = field(default_factory=dict)
    # Kind-specific refusals: {"type", "field", "detail", "limit"}; the gateway answers 422.
    problems: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        seconds: dict[str, Any] | None = None
        if self.seconds is not None:
            lo, hi = TIME_RANGE_FACTORS
            seconds = {
                "low": round(self.seconds * lo, 1),
                "high": round(self.seconds * hi, 1),
                "basis": "measured CPU rates, one torch thread (contracts/estimate.py RATES); "
                "a GPU worker is usually faster, a busy machine slower",
            }
        return {
            "parameters": self.parameters,
            "memory_bytes": self.memory_bytes,
            "memory_gib": round(self.memory_bytes / 1024**3, 3),
            "seconds": seconds,
            "n_train": self.shape.n_train,
            "n_test": self.shape.n_test,
            "n_classes": self.shape.n_classes,
            "input_shape": self.shape.input_shape,
            "notes": self.notes,
            "compute_seconds": {k: round(v, 3) for k, v in self.compute_seconds.items()},
            "problems": self.problems,
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


def _structured_widths(model: dict[str, Any], shape: Shape) -> tuple[int, int] | None:
    """(sum of the layers' input widths, sum of their output widths) of a model whose NTK
    infoscore forms layer by layer at estimate-friendly cost (linear, MLP); None for the CNN,
    estimated by its per-sample Jacobian instead."""
    d, k = shape.features, shape.n_classes
    arch = model.get("arch", "mlp")
    if arch == "linear":
        return d, k
    if arch == "mlp":
        hidden = [int(h) for h in model.get("hidden", [256])]
        return d + sum(hidden), sum(hidden) + k
    return None


# --- sample-information: finite-t LOO time and the delta_f artifact ----------------------
# Cost units of infoscore.costs.finite_t_cost (flop-like) per second. CPU: n = 1000, k = 2,
# t = 2000 (cost 1.4e11) took 5.7 s of CPU on one core of this 2-core machine (2.4e10/s) and
# 17 s of wall time while it was shared: 5e9/s is that shared rate, rounded down. GPU
# (request device "cuda"): float64 eigh and GEMMs on an H200-class device, assumed 40x the
# CPU rate (not measured here: no GPU was lent).
FINITE_T_RATE = {"cpu": 5e9, "cuda": 2e11}


def _sample_information_extras(params: SampleInformationParams, job: Job, est: Estimate) -> None:
    shape = job.shape
    n, k = shape.n_train, shape.n_classes
    t = params.t
    rate = FINITE_T_RATE["cuda" if job.request.get("device") == "cuda" else "cpu"]
    if t is not None:
        if params.method == "exact":
            routes = ["eigh"] if params.time != "discrete" else ["recurrence", "eigh"]
            cost = min(finite_t_cost(n, k, int(t), r) for r in routes)
        else:
            d = params.projection_dim
            cost = min(
                projected_finite_t_cost(n, k, d, int(t), params.time),
                10.0 * n * float(d) ** 3,
            )
        est.compute_seconds["finite_t_loo"] = cost / rate
        est.notes.append(f"finite t = {t}: leave-one-out cost about {cost:.3g} units at {rate:.3g}/s")
    if params.delta_f:
        m = min(shape.n_test, params.eval_size)
        size = 4 * n * m * k
        est.memory_bytes += 2 * size  # the array and its npz copy
        if size > MAX_DELTA_F_BYTES:
            est.problems.append(
                {
                    "type": "delta-f-too-large",
                    "field": "params.delta_f",
                    "limit": MAX_DELTA_F_BYTES,
                    "detail": f"delta_f would be an (n, m, k) = ({n}, {m}, {k}) float32 array of "
                    f"{size / 1024**3:.2f} GiB, over the limit of {MAX_DELTA_F_BYTES / 1024**3:.2f} GiB; "
                    "use a smaller params.eval_size (m) or fewer samples.",
                }
            )


def _training_bytes(p: int, shape: Shape, copies: int = 1) -> int:
    # weights, gradients, two Adam moments per model; the data set as float32.
    return copies * 4 * p * F32 + (shape.n_train + shape.n_test) * shape.features * F32


@dataclass
class DatasetMemory:
    """What loading a job's dataset costs a worker process, in bytes."""

    load_peak: int
    """transient peak while the dataset is built or read (before the job allocates)"""
    resident: int
    """held for the whole job: the worker's dataset cache plus the job's copy"""


def dataset_memory(ref: Any, shape: Shape) -> DatasetMemory:
    """Bytes the worker allocates for the dataset (workers/datasets.py, infoscore/data.py).

    ref: the request's ``dataset`` (an upload id or a built-in spec). One loaded copy C is
    float32 features, int64 labels (and clean labels), a bool noise mask and the ids; the
    worker caches one and hands the job another, so 2C stay resident. ``gaussians`` draws in
    float64: each split is ``means[y] + normal(...)``, two float64 arrays at once (numpy adds
    into the temporary), and both float64 splits are alive while their float32 copies are
    made; with A, B the float64 sizes of the train and test features the build peaks at
    max(2A, A + 2B, 1.5 (A + B)).
    An upload is read whole (its stored size S, ids included) and then copied to float32
    by ``from_arrays``: 2S at the peak. Measured against these in tests/test_upload_memory.py.
    """
    rows = shape.n_train + shape.n_test
    labels = rows * 8 + shape.n_train * 8 + shape.n_train  # y, y_test; clean labels; noise mask
    if isinstance(ref, dict) and ref.get("builtin") == "gaussians":
        a = shape.n_train * shape.features * F64
        b = shape.n_test * shape.features * F64
        copy = (a + b) // 2 + labels
        build = max(2 * a, a + 2 * b, a + b + (a + b) // 2) + labels
        return DatasetMemory(load_peak=build, resident=2 * copy)
    if isinstance(ref, dict):  # digits: built in float64 from scikit-learn's arrays
        copy = rows * shape.features * F32 + labels
        return DatasetMemory(load_peak=4 * copy, resident=2 * copy)
    stored = shape.stored_bytes
    if stored is None:  # a record from before stored sizes were kept: no ids counted
        stored = rows * shape.features * F32 + rows * 8
    return DatasetMemory(load_peak=2 * stored, resident=2 * stored)


def _train_seconds(epochs: int, n: int, p: int, batch_size: int, networks: float = 1.0) -> float:
    """Mini-batch training with a per-epoch evaluation pass (a forward, about 1/3 of a step)."""
    r = RATES
    work = networks * epochs * n * p * (1 + 1 / 3)
    steps = networks * epochs * -(-n // max(batch_size, 1))
    return work / r["train_sample_epoch_params_per_s"] + steps * r["train_step_seconds"]


def _kernel_seconds(rows: int, p: int, side: int, k: int = 1) -> float:
    """Jacobians of ``rows`` samples (k logits each), a side x side Gram and its Cholesky."""
    r = RATES
    return (
        rows * k * p / r["jacobian_sample_class_params_per_s"]
        + 2.0 * side * side * p / r["gemm_flop_per_s"]
        + side**3 / 3 / r["cholesky_flop_per_s"]
    )


@dataclass
class DatasetFacts:
    """What the checks need to know about a dataset besides its shape."""

    builtin: bool
    has_truth: bool = False


# --- one estimator per kind ------------------------------------------------------------


@dataclass
class Job:
    """What a kind's estimator reads besides its params: the request as JSON, the dataset's
    shape and the parameter count of the request's model."""

    request: dict[str, Any]
    shape: Shape
    parameters: int

    @property
    def n(self) -> int:
        return self.shape.n_train

    @property
    def k(self) -> int:
        return self.shape.n_classes


@dataclass
class KindCost:
    """A kind's dominant costs. ``memory``: bytes of the job's arrays, counting one float32
    copy of the dataset (:func:`estimate` replaces it by the dataset's real cost);
    ``seconds``: the stages' times, added in this order to ``RATES["job_overhead_seconds"]``."""

    memory: int
    seconds: list[float]
    notes: list[str] = field(default_factory=list)


Check = dict[str, str]  # {"field", "detail"}: a refusal of dataset_checks
P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class KindEstimator(Generic[P]):
    """How to estimate one kind: its params model, its costs, and optionally what it adds
    once the totals are known (``extras``) and the checks it needs against the dataset."""

    params: type[P]
    cost: Callable[[P, Job], KindCost]
    extras: Callable[[P, Job, Estimate], None] | None = None
    checks: Callable[[P, Job, DatasetFacts, Callable[[str], str]], list[Check]] | None = None


def _training_dynamics(params: TrainingDynamicsParams, job: Job) -> KindCost:
    n, p, r = job.n, job.parameters, RATES
    return KindCost(
        memory=_training_bytes(p, job.shape) + min(n * p * F32, 256 * 1024**2),  # per-sample grads, batched
        seconds=[
            _train_seconds(params.epochs, n, p, params.batch_size)
            + 3 * n * p / r["train_sample_epoch_params_per_s"]
        ],
    )


def _sample_information(params: SampleInformationParams, job: Job) -> KindCost:
    shape, n, k, p, r = job.shape, job.n, job.k, job.parameters, RATES
    nk = n * k
    mem = _training_bytes(p, shape)
    seconds: list[float] = []
    notes: list[str] = []
    m_test = min(shape.n_test or 0, params.eval_size)  # held-out inputs of F-SI
    widths = _structured_widths(job.request.get("model") or {}, shape)
    if params.method == "exact" and widths is not None:
        # The structured kernel (linear, MLP): per-layer Grams of activations (n x n) and of
        # backpropagated signals (nk x nk), no per-sample Jacobian. At t = inf the LOO keeps
        # Theta and one work matrix in place (about 2.25 N^2) and costs about 2.6 Choleskys
        # (factor, triangular inverse, block products): digits, MLP [512], N = 13,470, took
        # 3.1x one Cholesky wall with the kernel and evaluation (docs/benchmarks/sample-information.md).
        inputs, outputs = widths
        mem += (9 * nk * nk // 4 + 2 * nk * n + 128 * k * nk) * F64
        if params.t is not None:
            mem += 4 * nk * nk * F64  # eigendecompositions of the leave-one-out systems
        if {"weights_full", "weights_full_linearized"} & set(params.measures):
            mem += nk * p * F64  # J, for the full-covariance scores only
        notes.append(f"exact: n*k = {nk}; the kernel is (n*k)^2 float64, formed layer by layer")
        grams = 2.0 * (n + m_test) * n * inputs + 2.0 * (n + m_test) * k * nk * outputs
        seconds.append(grams / r["gemm_flop_per_s"] + 2.6 * nk**3 / 3 / r["cholesky_flop_per_s"])
        if params.t is not None:
            seconds.append(9 * nk**3 / r["cholesky_flop_per_s"])  # eigendecomposition ~ 9 (nk)^3
    elif params.method == "exact":  # the J J^T kernel (cnn)
        m = min(shape.n_test or n, params.eval_size)
        mem += nk * p * F32  # the Jacobian
        mem += 4 * nk * nk * F64  # NTK, its factor and two work matrices
        mem += m * k * p * F32 + m * k * nk * F64  # held-out Jacobian and cross-kernel
        if params.t is not None:
            mem += 2 * nk * nk * F64  # eigendecompositions of the leave-one-out systems
        notes.append(f"exact: n*k = {nk}; the kernel is (n*k)^2 float64")
        seconds.append(
            _kernel_seconds(n + m_test, p, nk, k) + 2.0 * m_test * k * nk * p / r["gemm_flop_per_s"]
        )
        if params.t is not None:
            seconds.append(9 * nk**3 / r["cholesky_flop_per_s"])  # eigendecomposition ~ 9 (nk)^3
    elif widths is not None:
        # Kronecker-factored projection (linear, MLP): per layer the samples' signals and
        # inputs (n (k out + in) float32) instead of the n k x d features; the algebra
        # densifies 65,536 rows at a time (float32 and float64 copies, two in flight).
        # n = 50,000 / 200,000, MLP 32-128-10, d = 2048: 4.2 / 5.2 GiB estimated, 2.86 / 4.70
        # GiB measured (docs/benchmarks/sample-information.md).
        d = params.projection_dim
        m = min(shape.n_test or n, params.eval_size)
        inputs, outputs = widths
        rows = min(nk, 65536)
        mem += n * (k * outputs + inputs) * F32 + 2 * rows * d * (F32 + F64)
        mem += m * k * d * F64 + 4 * d * d * F64 + 256 * 1024**2
        notes.append(f"projected: Kronecker factors of n samples, d = {d}")
        seconds.append((n + m_test) * k * p / r["jacobian_sample_class_params_per_s"])
        seconds.append(
            2.0 * (n + m_test) * k * p * d / r["gemm_flop_per_s"] + 2 * nk * d * d / r["gemm_flop_per_s"]
        )
    else:
        d = params.projection_dim
        m = min(shape.n_test or n, params.eval_size)
        mem += (n + m) * k * d * F64 + 4 * d * d * F64 + 256 * 1024**2
        notes.append(f"projected: features (n+m)*k*d with d = {d}")
        seconds.append((n + m_test) * k * p / r["jacobian_sample_class_params_per_s"])
        seconds.append(
            2.0 * (n + m_test) * k * p * d / r["gemm_flop_per_s"] + 2 * nk * d * d / r["gemm_flop_per_s"]
        )
    if {"weights_full", "weights_full_linearized"} & set(params.measures):
        mem += 3 * p * p * F64
    gt = params.ground_truth
    if gt is not None and params.t is not None:
        seconds.append((min(gt.subset, n) + 1) * params.t * n * p * 3 / r["train_sample_epoch_params_per_s"])
    return KindCost(memory=mem, seconds=seconds, notes=notes)


def _sample_information_checks(
    params: SampleInformationParams, job: Job, facts: DatasetFacts, given: Callable[[str], str]
) -> list[Check]:
    if job.shape.n_test == 0 and "predictions" in params.measures:
        return [
            {
                "field": "params.measures",
                "detail": "The 'measures' parameter of sample-information may include 'predictions' only "
                f"when the dataset has a test split; this one has none. Got {params.measures}"
                f'{given("measures")}; use ["weights"] or upload test rows.',
            }
        ]
    return []


def _fcmi(params: FcmiParams, job: Job) -> KindCost:
    p, r = job.parameters, RATES
    seconds: list[float] = []
    for size in params.n:
        units = params.k1 * params.k2
        if params.learner == "1nn":
            per_unit = (
                r["unit_overhead_seconds"] + 4 * size * size * job.shape.features / r["gemm_flop_per_s"]
            )
        else:
            per_unit = r["unit_overhead_seconds"] + _train_seconds(params.epochs, size, p, params.batch_size)
        seconds.append(units * per_unit)
    return KindCost(
        memory=_training_bytes(p, job.shape),
        seconds=seconds,
        notes=["per unit (one training on 2*max(n) samples); units run one per worker process"],
    )


def _fcmi_checks(
    params: FcmiParams, job: Job, facts: DatasetFacts, given: Callable[[str], str]
) -> list[Check]:
    n = job.n
    if 2 * max(params.n) > n:
        return [
            {
                "field": "params.n",
                "detail": f"The 'n' parameter of fcmi-bound must have 2 * max(n) <= {n}, the training "
                f"rows of this dataset: each supersample draws 2n of them. Got "
                f"{params.n}{given('n')}; use sizes up to {n // 2}.",
            }
        ]
    return []


def _limit(params: LimitParams, job: Job) -> KindCost:
    networks = 2.0 + (1.0 if params.baseline else 0.0)  # classifier, q, baseline
    return KindCost(
        memory=_training_bytes(job.parameters, job.shape, copies=3),  # classifier, q-network, best checkpoint
        seconds=[_train_seconds(params.epochs, job.n, job.parameters, params.batch_size, networks)],
    )


def _limit_checks(
    params: LimitParams, job: Job, facts: DatasetFacts, given: Callable[[str], str]
) -> list[Check]:
    if params.clean_validation and not (facts.builtin or facts.has_truth):
        return [
            {
                "field": "params.clean_validation",
                "detail": "The 'clean_validation' parameter of limit needs the clean labels, which this "
                "upload does not have: set it to false, or upload the true labels with truth_column.",
            }
        ]
    return []


def _label_issues(params: LabelIssuesParams, job: Job) -> KindCost:
    # LIMIT holds a classifier and a q-network; pred_probs and the decisions are (n, k) float64.
    copies = 2 if params.method in ("limit", "limit-cv", "ensemble") else 1
    notes = [] if params.method == "limit" else [f"{params.folds} cross-fitted trainings, one at a time"]
    return KindCost(
        memory=_training_bytes(job.parameters, job.shape, copies=copies) + 4 * job.n * job.k * F64,
        seconds=[],  # no time model yet: the job overhead only
        notes=notes,
    )


def _teacher_cost(
    teacher: BaseModel, teacher_epochs: int, batch_size: int, job: Job, checkpoints: int
) -> KindCost:
    """The teacher both distillation kinds train first, and its kept checkpoints."""
    teacher_p = parameter_count(teacher.model_dump(), job.shape)
    return KindCost(
        memory=_training_bytes(job.parameters, job.shape)
        + _training_bytes(teacher_p, job.shape)
        + checkpoints * teacher_p * F32,
        seconds=[_train_seconds(teacher_epochs, job.n, teacher_p, batch_size)],
    )


def _supervision_complexity(params: SupervisionComplexityParams, job: Job) -> KindCost:
    n, k, p = job.n, job.k, job.parameters
    cost = _teacher_cost(
        params.teacher, params.teacher_epochs, params.batch_size, job, len(params.checkpoints) + 1
    )
    m = min(n, params.subsample)
    if params.kernel == "full":
        cost.memory += m * k * p * F32 + 3 * (m * k) ** 2 * F64
    else:
        cost.memory += m * k * p * F32 + 3 * m * m * F64
    side = m * k if params.kernel == "full" else m
    ckpts = params.student_checkpoints
    cost.seconds.append(_train_seconds(max(ckpts), n, p, params.batch_size))
    cost.seconds.append(len(ckpts) * _kernel_seconds(m, p, side, k))
    return cost


def _distillation(params: DistillationParams, job: Job) -> KindCost:
    n, k, p = job.n, job.k, job.parameters
    cost = _teacher_cost(params.teacher, params.teacher_epochs, params.batch_size, job, 1)
    m = min(n, params.subsample)
    # The curves' kernel is counted m x m even with kernel 'full' (an (mk)^2 kernel): the numbers
    # of the if/elif version, kept equal on purpose; likely an underestimate for 'full'.
    cost.memory += m * k * p * F32 + 3 * m * m * F64
    side = m * k if params.kernel == "full" else m
    runs = params.seeds * len(params.mode)
    cost.seconds.append(runs * _train_seconds(params.epochs, n, p, params.batch_size))
    curves = params.curve_epochs
    cost.seconds.append(runs * (5 if curves is None else len(curves)) * _kernel_seconds(m, p, side, k))
    return cost


ESTIMATORS: dict[str, KindEstimator[Any]] = {
    training_dynamics.KIND: KindEstimator(TrainingDynamicsParams, _training_dynamics),
    sample_information.KIND: KindEstimator(
        SampleInformationParams,
        _sample_information,
        extras=_sample_information_extras,
        checks=_sample_information_checks,
    ),
    fcmi.KIND: KindEstimator(FcmiParams, _fcmi, checks=_fcmi_checks),
    limit.KIND: KindEstimator(LimitParams, _limit, checks=_limit_checks),
    distill.COMPLEXITY_KIND: KindEstimator(SupervisionComplexityParams, _supervision_complexity),
    distill.DISTILLATION_KIND: KindEstimator(DistillationParams, _distillation),
    label_issues.KIND: KindEstimator(LabelIssuesParams, _label_issues),
}


def _prepare(request: dict[str, Any], shape: Shape) -> tuple[KindEstimator[Any], Any, Job]:
    """The kind's estimator, its validated params (defaults filled in by the contract) and
    the job. ``request`` may leave params out (they take their defaults)."""
    kind = request["kind"]
    estimator = ESTIMATORS[kind]
    assert estimator.params is params_model(kind), f"{kind}: estimator and contract disagree"
    params = estimator.params.model_validate(request.get("params") or {})
    return estimator, params, Job(request, shape, parameter_count(request["model"], shape))


def _total_seconds(cost: KindCost) -> float:
    total = float(RATES["job_overhead_seconds"])
    for stage in cost.seconds:  # in order: the sum is the same float as the stages' order gives
        total += stage
    return total


def estimate(request: dict[str, Any], shape: Shape) -> Estimate:
    """request: a validated job request as JSON (``model_dump(mode='json')``)."""
    estimator, params, job = _prepare(request, shape)
    cost = estimator.cost(params, job)
    notes = list(cost.notes)
    # The job's arrays above count one float32 copy of the data; the dataset's real cost
    # (cache + copy, and the peak while it is built) replaces it.
    data = dataset_memory(request.get("dataset"), shape)
    job_part = cost.memory - (shape.n_train + shape.n_test) * shape.features * F32
    mem = max(data.load_peak, data.resident + job_part)
    if data.resident > 1024**3:
        notes.append(
            f"dataset: {data.resident / 1024**3:.2f} GiB resident (worker cache + the job's copy), "
            f"{data.load_peak / 1024**3:.2f} GiB while it is loaded"
        )
    est = Estimate(
        parameters=job.parameters,
        memory_bytes=int(mem + RUNTIME_BYTES),
        shape=shape,
        notes=notes,
        seconds=_total_seconds(cost),
    )
    if estimator.extras is not None:
        estimator.extras(params, job, est)
    return est


def estimate_seconds(request: dict[str, Any], shape: Shape) -> float:
    """Point estimate of a job's run time in seconds from :data:`RATES` (order of magnitude:
    the dominant trainings and kernel algebra of each kind; see docs/api.md)."""
    estimator, params, job = _prepare(request, shape)
    return _total_seconds(estimator.cost(params, job))


def dataset_checks(
    request: dict[str, Any], shape: Shape, facts: DatasetFacts, params_set: frozenset[str] = frozenset()
) -> list[dict[str, str]]:
    """Checks that need only the request and the dataset's record, made at submit and by
    ``POST /v1/jobs:estimate``, so that a job that would fail minutes later is refused at
    once. Returns problems as ``{"field", "detail"}``; empty when the request fits.

    request: a validated job request as JSON. params_set: the ``params`` fields the user
    gave (a default that does not fit is named as a default).
    """
    estimator, params, job = _prepare(request, shape)

    def given(name: str) -> str:
        return "" if name in params_set else " (the default)"

    problems: list[dict[str, str]] = []
    if estimator.checks is not None:
        problems += estimator.checks(params, job, facts, given)
    models = [("model", request["model"])]
    teacher = getattr(params, "teacher", None)  # the distillation kinds' second model
    if isinstance(teacher, BaseModel):
        models.append(("params.teacher", teacher.model_dump()))
    for where, model in models:
        if model.get("arch") != "cnn":
            continue
        given_shape = model.get("input_shape")
        if given_shape:
            if math.prod(given_shape) != shape.features:
                problems.append(
                    {
                        "field": f"{where}.input_shape",
                        "detail": f"The cnn's 'input_shape' {given_shape} holds {math.prod(given_shape)} "
                        f"values, but each sample has {shape.features} features.",
                    }
                )
        elif len(shape.input_shape) == 1 and math.isqrt(shape.features) ** 2 != shape.features:
            problems.append(
                {
                    "field": f"{where}.arch",
                    "detail": f"A cnn needs image-shaped inputs (C, H, W); this dataset has flat "
                    f"features ({shape.features}, not a square). Use an 'mlp' or 'linear' model, or "
                    "give the cnn an 'input_shape' whose product is the feature count.",
                }
            )
    return problems
