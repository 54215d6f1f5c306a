"""Params of the ``supervision-complexity`` and ``distillation`` job kinds (SCIENCE.md 5).

In both job kinds the request's ``model`` is the student and ``params.teacher`` the
teacher. Cross-field checks (checkpoints within ``teacher_epochs``, curve epochs within
``epochs``) are made by the library, which raises ``InvalidInputError`` naming the
parameter; here only per-field bounds.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .common import ModelSpec, Optimizer, Strict

COMPLEXITY_KIND = "supervision-complexity"
DISTILLATION_KIND = "distillation"

# Mirrors infoscore.distill.ComplexityKernel and DistillMode (a unit test checks it).
ComplexityKernelName = Literal["averaged", "full"]
DistillModeName = Literal["none", "offline", "online"]

Epoch = Annotated[int, Field(ge=0, le=5000)]
Temperature = Annotated[float, Field(gt=0.0, le=1e3)]


class SupervisionComplexityParams(Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(default=50, ge=1, le=5000)
    checkpoints: list[Epoch] = Field(
        default=[1, 5, 10, 25], max_length=64, description="teacher epochs whose soft labels are targets"
    )
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
