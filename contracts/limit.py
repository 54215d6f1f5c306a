"""Params of the ``limit`` job kind (SCIENCE.md section 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Strict

KIND = "limit"


class LimitParams(Strict):
    beta: float = Field(default=1.0, ge=0.0, le=1e6)
    q_dist: Literal["laplace", "gaussian"] = "laplace"
    epochs: int = Field(default=200, ge=1, le=5000)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(default=256, ge=1, le=65_536)
    validation_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    clean_validation: bool = False
    baseline: bool = True
    noise_level: float | None = Field(default=None, ge=0.0, le=1.0)
    sample_from_q: bool = False
    warm_up: int = Field(default=0, ge=0)
