"""Params of the ``supervision-complexity`` and ``distillation`` job kinds (docs/science.md §5).

In both job kinds the request's ``model`` is the student and ``params.teacher`` the
teacher. Cross-field checks (checkpoints within ``teacher_epochs``, curve epochs within
``epochs``) are made by the library, which raises ``InvalidInputError`` naming the
parameter; the contract checks them first, so that the request is refused at submit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from .common import ModelSpec, Optimizer, Strict

# The two kinds' one spelling each; contracts.jobs builds on them.
ComplexityKind = Literal["supervision-complexity"]
DistillationKind = Literal["distillation"]
COMPLEXITY_KIND: str = get_args(ComplexityKind)[0]
DISTILLATION_KIND: str = get_args(DistillationKind)[0]

# Mirrors infoscore.distill.ComplexityKernel and DistillMode (a unit test checks it).
ComplexityKernelName = Literal["averaged", "full"]
DistillModeName = Literal["none", "offline", "online"]

Epoch = Annotated[int, Field(ge=0, le=5000)]
Temperature = Annotated[float, Field(gt=0.0, le=1e3)]


CHECKPOINTS_DEFAULT = (1, 5, 10, 25)


class SupervisionComplexityParams(Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(default=50, ge=1, le=5000)
    checkpoints: list[Epoch] = Field(
        default=list(CHECKPOINTS_DEFAULT),
        max_length=64,
        description="teacher epochs whose soft labels are targets; default [1, 5, 10, 25] "
        "cut to those <= teacher_epochs",
    )

    @model_validator(mode="before")
    @classmethod
    def _checkpoints_default_follows_teacher_epochs(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and "checkpoints" not in data
            and isinstance(data.get("teacher_epochs"), int)
        ):
            epochs = data["teacher_epochs"]
            data = {**data, "checkpoints": [c for c in CHECKPOINTS_DEFAULT if c <= epochs] or [epochs]}
        return data

    @model_validator(mode="after")
    def _checkpoints_within_teacher_training(self) -> SupervisionComplexityParams:
        bad = [c for c in self.checkpoints if c > self.teacher_epochs]
        if bad:
            raise ValueError(
                f"checkpoints must be teacher epochs in 0..teacher_epochs ({self.teacher_epochs}). "
                f"Got {bad} beyond it; raise teacher_epochs or drop them."
            )
        return self

    temperatures: list[Temperature] = Field(default=[1.0, 4.0], min_length=1, max_length=16)
    subsample: int = Field(
        default=1000, ge=2, le=20_000, description="m: seeded training subsample (clamped to n)"
    )
    kernel: ComplexityKernelName = "averaged"
    student_checkpoints: list[Epoch] = Field(
        default=[0],
        min_length=1,
        max_length=64,
        description="student epochs (trained on labels with cross-entropy) at which K is formed",
    )
    jitter: float = Field(default=1e-6, gt=0.0, le=1e-2, description="relative: jitter·(tr K / m)·I")
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    optimizer: Optimizer = "adam"


class DistillationParams(Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(default=50, ge=1, le=5000)
    mode: list[DistillModeName] = Field(default=["none", "offline", "online"], min_length=1, max_length=3)
    temperature: float = Field(default=4.0, gt=0.0, le=1e3)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="weight of the distillation loss")
    epochs: int = Field(default=50, ge=1, le=5000)
    seeds: int = Field(default=3, ge=1, le=20)
    curve_epochs: list[Epoch] | None = Field(
        default=None,
        max_length=64,
        description="student epochs of the complexity curves (None: 0, E/4, E/2, 3E/4, E; [] = none)",
    )
    subsample: int = Field(default=500, ge=2, le=20_000, description="m for the complexity curves")
    kernel: ComplexityKernelName = "averaged"
    jitter: float = Field(default=1e-6, gt=0.0, le=1e-2)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    optimizer: Optimizer = "adam"

    @model_validator(mode="after")
    def _curve_epochs_within_training(self) -> DistillationParams:
        bad = [e for e in self.curve_epochs or [] if e > self.epochs]
        if bad:
            raise ValueError(
                f"curve_epochs must be student epochs in 0..epochs ({self.epochs}). Got {bad} beyond it."
            )
        return self
