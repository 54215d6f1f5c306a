"""Params of the ``sample-information`` job kind (SI and F-SI, SCIENCE.md section 2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Strict

KIND = "sample-information"


class GroundTruth(Strict):
    subset: int = Field(default=50, ge=1, le=100_000, description="samples retrained without")


class SampleInformationParams(Strict):
    t: int | None = Field(default=None, ge=1, le=10**9, description="GD steps; null = infinity")
    lr: float = Field(default=1e-3, gt=0.0, le=1e3, description="step of the mean loss")
    l2: float = Field(default=0.0, ge=0.0, le=1e6, description="lambda' of the mean loss")
    sigma: float = Field(default=1.0, gt=0.0, le=1e6)
    measures: list[Literal["weights", "predictions", "weights_full"]] = Field(
        default=["weights", "predictions"], min_length=1
    )
    method: Literal["exact", "projected"] = "exact"
    projection_dim: int = Field(default=2048, ge=1, le=65_536)
    projection: Literal["rademacher", "gaussian"] = "rademacher"
    time: Literal["discrete", "continuous"] = "discrete"
    ground_truth: GroundTruth | None = None
