"""Params of the ``sample-information`` job kind (SI and F-SI, SCIENCE.md section 2).

Conventions: ``lr`` and ``l2`` belong to the *mean* loss (1/n)Σ½‖f−y‖² + ½·l2·‖w−w₀‖²;
the closed forms use η = lr/n and λ = n·l2. Defaults and why: docs/jobs/sample-information.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .common import Strict

KIND = "sample-information"

Measure = Literal["weights", "predictions", "weights_full"]
Method = Literal["exact", "projected"]
ProjectionKind = Literal["rademacher", "gaussian"]
TimeMode = Literal["discrete", "continuous"]
LooLambda = Literal["same", "rescaled"]
GroundTruthReference = Literal["network", "linearized"]


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

    @model_validator(mode="after")
    def _network_ground_truth_needs_finite_t(self) -> SampleInformationParams:
        if self.ground_truth is not None and self.ground_truth.reference == "network" and self.t is None:
            raise ValueError(
                "ground_truth with reference 'network' retrains the real network for t steps: set a finite 't'"
            )
        return self
