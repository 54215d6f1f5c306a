"""Params of the ``training-dynamics`` job kind (baseline per-sample scores).

One training run with cross-entropy; per training sample: final ``loss`` and ``margin``,
``el2n`` and ``grand`` at epoch ``el2n_epoch``, and ``forgetting_events`` over all epochs
(definitions in ``infoscore.scores`` and ``docs/jobs/training-dynamics.md``).

Defaults were measured on ``{"builtin": "digits", "label_noise": 0.2}`` with the default
MLP (64-256-10) on one CPU thread: about 1 s of training, and el2n flags the flipped
labels with AUROC about 0.99 (0.993 to 0.996 over seeds 0-4). el2n_epoch = 5 rather than
3: GraNd's AUROC rises from about 0.98 to 0.99 at no cost. 30 epochs stop before the MLP
memorizes the flipped labels (train accuracy about 0.8 on the noisy labels).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from .common import Optimizer, Strict

Kind = Literal["training-dynamics"]  # the kind's one spelling; contracts.jobs builds on it
KIND: str = get_args(Kind)[0]
SCORE_COLUMNS = ("loss", "margin", "el2n", "grand", "forgetting_events")
# The per-sample table: the scores, then never_learned (never predicted correctly at the end
# of an epoch). Ranking rule for forgetting: never-learned rows first, then by
# forgetting_events, as the summary's auroc_noisy.forgetting_events ranks them.
TABLE_COLUMNS = (*SCORE_COLUMNS, "never_learned")
EL2N_EPOCH_DEFAULT = 5


class TrainingDynamicsParams(Strict):
    epochs: int = Field(default=30, ge=1, le=2000, description="training epochs (full passes)")
    batch_size: int = Field(default=64, ge=1, le=65_536, description="mini-batch size")
    lr: float = Field(default=1e-3, gt=0.0, le=10.0, description="learning rate")
    optimizer: Optimizer = Field(default="adam", description="adam, or sgd with momentum 0.9")
    weight_decay: float = Field(default=0.0, ge=0.0, le=10.0, description="L2 penalty of the optimizer")
    el2n_epoch: int = Field(
        default=EL2N_EPOCH_DEFAULT,
        ge=0,
        le=2000,
        description=f"epoch (0 = at init) at which el2n and grand are taken; default "
        f"min({EL2N_EPOCH_DEFAULT}, epochs)",
    )

    @model_validator(mode="before")
    @classmethod
    def _el2n_default_follows_epochs(cls, data: Any) -> Any:
        # A default never contradicts a value the user set: el2n_epoch follows epochs.
        if isinstance(data, dict) and "el2n_epoch" not in data and isinstance(data.get("epochs"), int):
            data = {**data, "el2n_epoch": max(0, min(EL2N_EPOCH_DEFAULT, data["epochs"]))}
        return data

    @model_validator(mode="after")
    def _el2n_within_training(self) -> TrainingDynamicsParams:
        if self.el2n_epoch > self.epochs:
            raise ValueError(
                f"el2n_epoch must be at most epochs ({self.epochs}). Got {self.el2n_epoch} instead."
            )
        return self
