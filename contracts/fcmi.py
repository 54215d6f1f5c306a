"""Params of the ``fcmi-bound`` job kind (docs/science.md §3).

The ``len(n) * k1 * k2`` trainings fan out as ``len(n) * k1`` units, one per (n,
supersample seed), each training its k2 selector draws as one batched ensemble; see
``docs/jobs/fcmi-bound.md``.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator, model_validator

from .common import Optimizer, Strict

Kind = Literal["fcmi-bound"]  # the kind's one spelling; contracts.jobs builds on it
KIND: str = get_args(Kind)[0]

# The values mirror infoscore.fcmi.MiEstimator and infoscore.fcmi.Learner.
MiEstimatorName = Literal["plugin", "miller_madow"]
LearnerName = Literal["model", "1nn"]
MAX_UNITS = 100_000


class FcmiParams(Strict):
    n: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default=[50, 100, 200, 400],
        min_length=1,
        max_length=32,
        description="training-set sizes (pairs); 2 * max(n) must not exceed the training pool",
    )
    k1: int = Field(default=3, ge=1, le=100, description="supersamples per n")
    k2: int = Field(default=30, ge=2, le=1000, description="selector draws per supersample")
    epochs: int = Field(default=100, ge=1, le=2000, description="the evaluated epoch (the last)")
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Optimizer = "adam"
    deterministic: bool = Field(
        default=False,
        description="init and data-order seed fixed at 42 for every unit (else derived per unit)",
    )
    mi_estimator: MiEstimatorName = Field(
        default="plugin", description="plugin (comparable with published numbers) or miller_madow"
    )
    learner: LearnerName = Field(
        default="model",
        description="model = train the job's model; 1nn = 1-nearest-neighbour memorizing control",
    )
    experimental: bool = Field(
        default=False, description="also report the unverified binary-KL form of the bound"
    )
    eval_epochs: list[Annotated[int, Field(ge=0, le=2000)]] = Field(
        default=[],
        max_length=64,
        description="also estimate bound, gap and MI after these epochs of the same trainings "
        "(0 = at initialization; each <= epochs); the last epoch is always evaluated",
    )

    @field_validator("n")
    @classmethod
    def _distinct_n(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"The 'n' values must be distinct. Got {value!r} instead.")
        return value

    @field_validator("eval_epochs")
    @classmethod
    def _distinct_epochs(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"The 'eval_epochs' values must be distinct. Got {value!r} instead.")
        return sorted(value)

    @model_validator(mode="after")
    def _epochs_within_training(self) -> FcmiParams:
        late = [e for e in self.eval_epochs if e > self.epochs]
        if late:
            raise ValueError(
                f"The 'eval_epochs' values must be at most epochs = {self.epochs}. Got {late!r} instead."
            )
        if self.eval_epochs and self.learner != "model":
            raise ValueError(
                f"The 'eval_epochs' parameter needs learner = 'model' (the {self.learner!r} learner "
                "does not train in epochs). Got "
                f"{self.eval_epochs!r} instead."
            )
        return self

    @model_validator(mode="after")
    def _bounded_work(self) -> FcmiParams:
        units = len(self.n) * self.k1 * self.k2
        if units > MAX_UNITS:
            raise ValueError(f"len(n) * k1 * k2 must be at most {MAX_UNITS} trainings. Got {units} instead.")
        return self
