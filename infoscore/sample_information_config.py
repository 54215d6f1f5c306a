"""Settings of :func:`infoscore.sample_information` (the ``sample-information`` job).

Torch-free: importing a config (or the strategy Literals) does not load torch. Field
names are exactly the job's params (``contracts.sample_information``,
docs/jobs/sample-information.md) plus ``seed`` and two library-only strategies; the
defaults are the contract's, each with its reason in the class docstring. Every field is
checked when the config is built: a bad value raises
:class:`~infoscore.errors.InvalidInputError` naming the field, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from .config_checks import is_int, is_real
from .errors import invalid
from .training_dynamics_config import Optimizer

# Strategy values, spelled once: the job's contract (contracts.sample_information) imports
# them from here; the tensor-level core's tuples (sample_info.MEASURES,
# linearized.TIME_MODES, ...) are kept in step by tests/test_library_api_td_si.py. Here so
# that the config imports without torch.
Measure = Literal["weights", "predictions", "weights_full", "weights_full_linearized"]
Method = Literal["exact", "projected"]
ProjectionKind = Literal["rademacher", "gaussian"]
TimeMode = Literal["discrete", "continuous"]
LooLambda = Literal["same", "rescaled"]
GroundTruthReference = Literal["network", "linearized"]
KernelMethod = Literal["auto", "structured", "jacobian"]
ProjectionStructure = Literal["kronecker", "dense"]
LinearizeAtName = Literal["init", "trained"]
TRAIN_FIELDS = ("train_epochs", "train_lr", "train_batch_size", "train_optimizer")
CALLER = "SampleInformationConfig"


def _check_choice(name: str, value: object, choices: Any, caller: str = CALLER) -> None:
    options = list(get_args(choices))
    if value not in options:
        raise invalid(name, caller, f"one of {options}", value)


@dataclass(frozen=True)
class GroundTruthConfig:
    """Check the estimates on a seeded subset by actually retraining without each sample.

    ``subset = 50`` samples: the cost is (subset + 1)·t full-batch steps, so a subset
    rather than all n; 50 points give a Pearson/Spearman correlation worth reading.
    ``reference``: ``network`` (default: what the estimate is about, the real network
    retrained by full-batch GD on the same MSE loss for t steps; needs a finite t) or
    ``linearized`` (the linearized model refit in weight space: checks the closed forms
    themselves, correlations ≈ 1). docs/jobs/sample-information.md, "Ground truth".
    """

    subset: int = 50
    reference: GroundTruthReference = "network"

    def __post_init__(self) -> None:
        if not is_int(self.subset) or self.subset < 1:
            raise invalid("subset", "GroundTruthConfig", "an integer >= 1", self.subset)
        _check_choice("reference", self.reference, GroundTruthReference, "GroundTruthConfig")


@dataclass(frozen=True)
class LinearizationCheckpoint:
    """``linearize_at`` a safetensors checkpoint of the same model spec and dataset shape
    (read with safetensors only, never unpickled). ``job`` and ``artifact`` name it in the
    summary when it is an artifact of an earlier job; otherwise the summary gives ``path``."""

    path: str | Path
    job: str | None = None
    artifact: str | None = None

    def describe(self) -> dict[str, str]:
        """What the summary's ``linearize_at`` records."""
        if self.job is not None:
            return {"job": self.job, "artifact": str(self.artifact)}
        return {"path": str(self.path)}


@dataclass(frozen=True)
class SampleInformationConfig:
    """Settings of :func:`sample_information`; the fields and defaults are the job's params
    (``contracts.sample_information``), plus ``seed`` and two library-only strategies.
    Conventions: ``lr`` and ``l2`` belong to the *mean* loss, η = lr/n and λ = n·l2.

    Defaults and why (docs/jobs/sample-information.md, "Params, defaults and why"):

    * ``t = None`` (t = ∞): the ridge solution; the only exact LOO whose cost does not scale
      with n eigendecompositions (one Cholesky), and it needs no ``lr``.
    * ``lr = 1e-3``: only used at finite t (the default t = ∞ does not depend on it); a
      step with η·s_max(A) ≥ 2 diverges and is refused naming ``lr``.
    * ``l2 = None`` (automatic): λ = ``l2_auto_scale``·tr(Θ)/(nk), scale-free; the official
      λ' = 0 makes t = ∞ undefined or extremely ill-conditioned. ``l2_auto_scale = None``
      means 1.0 for both methods: at that λ projected scores track exact ones (Spearman
      0.966 at n = 1000, d = 2048; docs/benchmarks/sample-information.md).
    * ``sigma = 1.0``: a global scale of the scores (ranks do not change).
    * ``measures = ("weights", "predictions")``: SI and F-SI, both cheap given the LOO; the
      full-covariance ones need a p x p (or d x d) eigendecomposition.
    * ``method = "exact"``: exact for the linearized model, refused beyond nk = 20000;
      ``projected`` (d = ``projection_dim = 2048``) for larger sets.
    * ``projection = "rademacher"``: ±1/√d, cheapest to draw; ``gaussian`` is N(0, 1/d).
    * ``time = "discrete"``: GD as trained; ``continuous`` is gradient flow.
    * ``loo_lambda = "same"``: the LOO runs keep λ (the official convention); ``rescaled``
      uses (n−1)·l2, what re-running the mean loss on n−1 samples literally does.
    * ``eval_size = 1000``: m held-out inputs for F-SI, a seeded subset of the test split.
    * ``ground_truth = None``: retraining is costly (subset + 1 trainings); opt in.
    * ``weights_full_jitter = 1e-6``: relative ε of Σ + ε·(tr Σ/p)·I, as the other jitters
      (the official absolute 1e-10 moved the median score 12x on a toy problem).
    * ``delta_f = False``: the (n, m, k) float32 array can be large.
    * ``linearize_at = "init"``: the paper's setting (the seeded initialisation);
      ``"trained"`` first runs ``train_epochs = 30`` epochs of the training recipe
      (``train_lr = 1e-3``, ``train_batch_size = 64``, ``train_optimizer = "adam"``, as the
      training-dynamics job); a :class:`LinearizationCheckpoint` loads weights.
    * ``seed = 0``: model initialisation, held-out subset, projection, ground-truth subset
      and the training recipe's batch order.
    * Library only (not on the wire): ``kernel_method = "auto"`` (the structured NTK from
      per-layer factors where the model allows it, the J Jᵀ reference otherwise) and
      ``projection_structure = "kronecker"`` (per-layer factored projection; ``dense``
      projects per-sample Jacobian chunks).

    Invalid values raise :class:`infoscore.InvalidInputError` naming the field.
    """

    t: int | None = None
    lr: float = 1e-3
    l2: float | None = None
    l2_auto_scale: float | None = None
    sigma: float = 1.0
    measures: tuple[Measure, ...] = ("weights", "predictions")
    method: Method = "exact"
    projection_dim: int = 2048
    projection: ProjectionKind = "rademacher"
    time: TimeMode = "discrete"
    loo_lambda: LooLambda = "same"
    eval_size: int = 1000
    ground_truth: GroundTruthConfig | None = None
    weights_full_jitter: float = 1e-6
    delta_f: bool = False
    linearize_at: LinearizeAtName | LinearizationCheckpoint = "init"
    train_epochs: int = 30
    train_lr: float = 1e-3
    train_batch_size: int = 64
    train_optimizer: Optimizer = "adam"
    seed: int = 0
    kernel_method: KernelMethod = "auto"
    projection_structure: ProjectionStructure = "kronecker"

    def __post_init__(self) -> None:
        if self.t is not None and (not is_int(self.t) or self.t < 1):
            raise invalid("t", CALLER, "a positive integer or None (infinity)", self.t)
        for name in ("lr", "sigma", "weights_full_jitter", "train_lr"):
            value = getattr(self, name)
            if not (is_real(value) and value > 0):
                raise invalid(name, CALLER, "a float in (0, inf)", value)
        if self.l2 is not None and not (is_real(self.l2) and self.l2 >= 0):
            raise invalid("l2", CALLER, "a float in [0, inf) or None (automatic)", self.l2)
        if self.l2_auto_scale is not None and not (is_real(self.l2_auto_scale) and self.l2_auto_scale > 0):
            raise invalid("l2_auto_scale", CALLER, "a float in (0, inf) or None (1.0)", self.l2_auto_scale)
        measures = self.measures
        if isinstance(measures, str) or not isinstance(measures, list | tuple) or not measures:
            raise invalid(
                "measures", CALLER, f"a non-empty sequence drawn from {list(get_args(Measure))}", measures
            )
        for measure in measures:
            _check_choice("measures", measure, Measure)
        object.__setattr__(self, "measures", tuple(measures))  # a list is accepted, a tuple kept
        for name in ("projection_dim", "eval_size", "train_epochs", "train_batch_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise invalid(name, CALLER, "an integer >= 1", value)
        _check_choice("method", self.method, Method)
        _check_choice("projection", self.projection, ProjectionKind)
        _check_choice("time", self.time, TimeMode)
        _check_choice("loo_lambda", self.loo_lambda, LooLambda)
        _check_choice("train_optimizer", self.train_optimizer, Optimizer)
        _check_choice("kernel_method", self.kernel_method, KernelMethod)
        _check_choice("projection_structure", self.projection_structure, ProjectionStructure)
        if self.ground_truth is not None and not isinstance(self.ground_truth, GroundTruthConfig):
            raise invalid("ground_truth", CALLER, "a GroundTruthConfig or None", self.ground_truth)
        if not isinstance(self.delta_f, bool):
            raise invalid("delta_f", CALLER, "a bool", self.delta_f)
        if not (
            isinstance(self.linearize_at, LinearizationCheckpoint)
            or self.linearize_at in get_args(LinearizeAtName)
        ):
            raise invalid(
                "linearize_at", CALLER, "'init', 'trained' or a LinearizationCheckpoint", self.linearize_at
            )
        if not is_int(self.seed):
            raise invalid("seed", CALLER, "an integer", self.seed)
        if self.ground_truth is not None and self.ground_truth.reference == "network" and self.t is None:
            raise invalid(
                "t", CALLER,
                "a finite number of GD steps when ground_truth.reference is 'network' (it retrains the "
                "real network for t steps)", None,
            )  # fmt: skip
        defaults = {f.name: f.default for f in fields(self)}
        given = [name for name in TRAIN_FIELDS if getattr(self, name) != defaults[name]]
        if given and self.linearize_at != "trained":
            raise invalid(
                given[0],
                CALLER,
                "left at its default unless linearize_at is 'trained'",
                getattr(self, given[0]),
            )
