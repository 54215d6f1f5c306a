"""Params of the ``sample-information`` job kind (SI and F-SI, docs/science.md §2).

Conventions: ``lr`` and ``l2`` belong to the *mean* loss (1/n)Σ½‖f−y‖² + ½·l2·‖w−w₀‖²;
the closed forms use η = lr/n and λ = n·l2. Defaults and why: docs/jobs/sample-information.md.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from infoscore.sample_information_config import (  # the strategy values, spelled once (torch-free)
    TRAIN_FIELDS,
    GroundTruthReference,
    LinearizeAtName,
    LooLambda,
    Measure,
    Method,
    ProjectionKind,
    TimeMode,
)

from .common import Optimizer, Strict

Kind = Literal["sample-information"]  # the kind's one spelling; contracts.jobs builds on it
KIND: str = get_args(Kind)[0]

JOB_ID_PATTERN = r"^job_[0-9a-f]{24}$"
CHECKPOINT_ARTIFACT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,115}\.safetensors$"
# delta_f (n, m, k) float32 is built in worker memory and written as one npz artifact.
MAX_DELTA_F_BYTES = 1 << 30


class CheckpointRef(Strict):
    """Weights to linearize at: a safetensors artifact of an earlier job of the same tenant
    (e.g. ``limit``'s ``model.safetensors``, ``distillation``'s ``student.safetensors``),
    made for the same model spec and dataset shape. Read with safetensors only (no pickle)."""

    job: str = Field(pattern=JOB_ID_PATTERN, description="id of a succeeded job of this tenant")
    artifact: str = Field(
        default="model.safetensors",
        pattern=CHECKPOINT_ARTIFACT_PATTERN,
        description="its .safetensors artifact",
    )


class GroundTruth(Strict):
    """Check the estimates on a seeded subset by actually retraining without each sample."""

    subset: int = Field(default=50, ge=1, le=100_000, description="samples retrained without")
    reference: GroundTruthReference = Field(
        default="network",
        description="network: the real network, full-batch GD on the same MSE loss (needs finite t); "
        "linearized: the linearized model refit in weight space",
    )


class SampleInformationParams(Strict):
    t: int | None = Field(
        default=None, ge=1, le=10**9, description="GD steps; null = infinity (default: the ridge solution)"
    )
    lr: float = Field(default=1e-3, gt=0.0, le=1e3, description="step of the mean loss (eta = lr/n)")
    l2: float | None = Field(
        default=None,
        ge=0.0,
        le=1e6,
        description="lambda' of the mean loss (lambda = n*l2); null = automatic, "
        "lambda = l2_auto_scale * tr(NTK)/(nk)",
    )
    l2_auto_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="used when l2 is null; null = 1.0 (exact and projected)",
    )
    sigma: float = Field(default=1.0, gt=0.0, le=1e6, description="smoothing std: scores are /(2 sigma^2)")
    measures: list[Measure] = Field(default=["weights", "predictions"], min_length=1)
    method: Method = "exact"
    projection_dim: int = Field(default=2048, ge=1, le=65_536)
    projection: ProjectionKind = "rademacher"
    time: TimeMode = "discrete"
    loo_lambda: LooLambda = Field(default="same", description="LOO ridge: same lambda, or (n-1)*l2")
    eval_size: int = Field(default=1000, ge=1, le=100_000, description="m: held-out inputs for F-SI (cap)")
    ground_truth: GroundTruth | None = None
    weights_full_jitter: float = Field(
        default=1e-6,
        gt=0.0,
        le=1.0,
        description="weights_full: Sigma + eps*tr(Sigma)/p*I, eps relative to Sigma's mean eigenvalue",
    )
    delta_f: bool = Field(
        default=False,
        description="also write delta_f.npz: f_w(x') - f_{w_-i}(x') as float32 (n, m, k); "
        f"refused at submit above {MAX_DELTA_F_BYTES // 2**20} MiB",
    )
    linearize_at: LinearizeAtName | CheckpointRef = Field(
        default="init",
        description="init: the seeded initialisation; trained: after train_epochs of the training recipe; "
        "or {job, artifact}: a safetensors checkpoint of the same model spec",
    )
    train_epochs: int = Field(default=30, ge=1, le=2000, description="linearize_at 'trained': epochs")
    train_lr: float = Field(
        default=1e-3, gt=0.0, le=10.0, description="linearize_at 'trained': learning rate"
    )
    train_batch_size: int = Field(default=64, ge=1, le=65_536, description="linearize_at 'trained': batch")
    train_optimizer: Optimizer = Field(default="adam", description="linearize_at 'trained': adam or sgd")

    @model_validator(mode="after")
    def _network_ground_truth_needs_finite_t(self) -> SampleInformationParams:
        if self.ground_truth is not None and self.ground_truth.reference == "network" and self.t is None:
            raise ValueError(
                "ground_truth with reference 'network' retrains the real network for t steps: set a finite 't'"
            )
        return self

    @model_validator(mode="after")
    def _training_fields_need_trained(self) -> SampleInformationParams:
        # Only values that differ from the defaults: a dumped request (defaults included) must re-parse.
        fields = type(self).model_fields
        given = sorted(f for f in TRAIN_FIELDS if getattr(self, f) != fields[f].default)
        if given and self.linearize_at != "trained":
            raise ValueError(f"{', '.join(given)} only apply with linearize_at 'trained'")
        return self
