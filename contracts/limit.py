"""Params of the ``limit`` job kind (docs/science.md §4; docs/jobs/limit.md)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from .common import Strict

Kind = Literal["limit"]  # the kind's one spelling; contracts.jobs builds on it
KIND: str = get_args(Kind)[0]
# Per-sample columns of the job's scores table, in order (docs/jobs/limit.md).
SCORE_COLUMNS = (
    "label_noise_score",
    "predicted_label",
    "suspected_mislabeled",
    "predicted_gradient_sq_norm",
    "classifier_label_noise_score",
    "in_validation",
)
QDist = Literal["laplace", "gaussian"]  # mirrors infoscore.limit.QLaw


class LimitParams(Strict):
    beta: float = Field(
        default=30.0,
        ge=0.0,
        le=1e6,
        description="weight of mean ||g_hat||^2 in the q loss (default 30: docs/jobs/limit.md, Choosing beta)",
    )
    q_dist: QDist = Field(
        default="laplace", description="distance between predicted and true logit gradients: L1 or squared L2"
    )
    epochs: int = Field(default=300, ge=1, le=5000)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0, description="Adam learning rate (both networks)")
    batch_size: int = Field(default=256, ge=1, le=65_536)
    validation_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="share of the training rows held out to pick the checkpoint"
    )
    clean_validation: bool = Field(
        default=False, description="validate on the clean labels (built-in noisy datasets only)"
    )
    baseline: bool = Field(default=True, description="also train plain cross-entropy on the same recipe")
    noise_level: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="known uniform label-noise rate p, for Fano's bound (built-ins record their own)",
    )
    sample_from_q: bool = Field(
        default=False, description="update the classifier with a sample around g_hat instead of g_hat"
    )
    warm_up: int = Field(default=0, ge=0, le=5000, description="epochs training q alone, classifier frozen")
    lamb: float = Field(
        default=1.0,
        gt=0.0,
        le=1e6,
        description="precision of the sample_from_q noise: Gaussian sigma = sqrt(1/(2 lamb)), Laplace scale 1/lamb",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        le=5000,
        description="stop after this many epochs without a better validation accuracy (null = run all epochs)",
    )

    @model_validator(mode="after")
    def _warm_up_leaves_training(self) -> LimitParams:
        if self.warm_up >= self.epochs:
            raise ValueError(f"warm_up must be less than epochs ({self.epochs}). Got {self.warm_up} instead.")
        if self.lamb != 1.0 and not self.sample_from_q:
            raise ValueError(
                f"lamb scales the sample_from_q noise: set sample_from_q to true or leave lamb at 1. "
                f"Got lamb = {self.lamb} with sample_from_q = false instead."
            )
        return self
