"""Params of the ``training-dynamics`` job kind (baseline per-sample scores)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .common import Optimizer, Strict

KIND = "training-dynamics"
SCORE_COLUMNS = ("loss", "margin", "el2n", "grand", "forgetting_events")


class TrainingDynamicsParams(Strict):
    epochs: int = Field(default=30, ge=1, le=2000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    optimizer: Optimizer = "adam"
    weight_decay: float = Field(default=0.0, ge=0.0, le=10.0)
    el2n_epoch: int = Field(
        default=3, ge=0, le=2000, description="epoch (0 = at init) at which el2n and grand are taken"
    )

    @model_validator(mode="after")
    def _el2n_within_training(self) -> TrainingDynamicsParams:
        if self.el2n_epoch > self.epochs:
            raise ValueError(
                f"el2n_epoch must be at most epochs ({self.epochs}). Got {self.el2n_epoch} instead."
            )
        return self

