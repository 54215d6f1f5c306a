"""Params of the ``supervision-complexity`` and ``distillation`` job kinds (SCIENCE.md 5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import ModelSpec, Strict

COMPLEXITY_KIND = "supervision-complexity"
DISTILLATION_KIND = "distillation"


class SupervisionComplexityParams(Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(default=50, ge=1, le=5000)
    checkpoints: list[int] = Field(default=[1, 5, 10, 25], max_length=64)
    temperatures: list[float] = Field(default=[1.0, 4.0], min_length=1, max_length=16)
    subsample: int = Field(default=1000, ge=2, le=20_000)
    kernel: Literal["averaged", "full"] = "averaged"
    student_checkpoints: list[int] = Field(default=[0], min_length=1, max_length=64)


class DistillationParams(Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(default=50, ge=1, le=5000)
    mode: list[Literal["none", "offline", "online"]] = Field(
        default=["none", "offline", "online"], min_length=1
    )
    temperature: float = Field(default=4.0, gt=0.0, le=1e3)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="weight of the distillation loss")
    epochs: int = Field(default=50, ge=1, le=5000)
    seeds: int = Field(default=3, ge=1, le=20)
