"""Params of the ``fcmi-bound`` job kind (SCIENCE.md section 3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Optimizer, Strict

KIND = "fcmi-bound"


class FcmiParams(Strict):
    n: list[int] = Field(default=[50, 100, 200, 400], min_length=1, max_length=32)
    k1: int = Field(default=3, ge=1, le=100)
    k2: int = Field(default=30, ge=2, le=1000)
    epochs: int = Field(default=100, ge=1, le=2000)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Optimizer = "adam"
    deterministic: bool = False
    mi_estimator: Literal["plugin", "miller_madow"] = "plugin"
    experimental: bool = False
