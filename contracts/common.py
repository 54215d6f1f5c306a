"""Shared wire types: dataset references and model specs (pydantic + stdlib only)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

DATASET_ID_PATTERN = r"^ds_[0-9a-f]{16,64}$"


class Strict(BaseModel):
    """Base of every wire model: unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


NoiseKind = Literal["uniform", "pair"]


class BuiltinDigits(Strict):
    """scikit-learn's 8x8 digits, features scaled to [0, 1] (pixel / 16)."""

    builtin: Literal["digits"]
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(
        default=None, min_length=2, max_length=10, description="keep these digits, relabelled 0..k-1"
    )
    label_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    noise: NoiseKind = "uniform"
    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class BuiltinGaussians(Strict):
    """Isotropic Gaussian blobs (see infoscore.data.make_gaussians)."""

    builtin: Literal["gaussians"]
    n: int = Field(default=1000, ge=2, le=200_000)
    dim: int = Field(default=20, ge=1, le=10_000)
    classes: int = Field(default=3, ge=2, le=1000)
    separation: float = Field(default=3.0, ge=0.0, le=1e3)
    n_test: int | None = Field(default=None, ge=0, le=200_000)
    label_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    noise: NoiseKind = "uniform"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


BuiltinDataset = Annotated[BuiltinDigits | BuiltinGaussians, Field(discriminator="builtin")]
DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN, description="id from POST /v1/datasets")]
BUILTIN_NAMES = ("digits", "gaussians")


def _one_dataset_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message for a malformed dataset reference instead of an error per union
    branch (a bad id would otherwise also be told it is not a built-in, and vice versa)."""
    if isinstance(value, str) and not re.fullmatch(DATASET_ID_PATTERN, value):
        raise PydanticCustomError(
            "dataset_ref",
            "The 'dataset' must be an id from POST /v1/datasets ('ds_' and 16-64 hex digits, as listed "
            f'by GET /v1/datasets) or a built-in such as {{"builtin": "digits"}}. Got {value[:100]!r}.',
        )
    if isinstance(value, dict) and value.get("builtin") not in BUILTIN_NAMES:
        raise PydanticCustomError(
            "dataset_ref",
            f"A built-in 'dataset' needs \"builtin\": one of {list(BUILTIN_NAMES)}. "
            f"Got {str(value.get('builtin'))[:100]!r}.",
        )
    if not isinstance(value, str | dict):
        raise PydanticCustomError(
            "dataset_ref",
            "The 'dataset' must be a dataset id string or a built-in object such as "
            f'{{"builtin": "digits"}}. Got a {type(value).__name__}.',
        )
    return handler(value)


DatasetRef = Annotated[DatasetId | BuiltinDataset, WrapValidator(_one_dataset_error)]

Activation = Literal["relu", "tanh", "gelu", "sigmoid"]


class LinearModel(Strict):
    arch: Literal["linear"]
    init: Literal["default", "zeros"] = "default"


class MLPModel(Strict):
    arch: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=16_384)]] = Field(default=[256], min_length=1, max_length=16)
    activation: Activation = "relu"
    batchnorm: bool = False
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class CNNModel(Strict):
    arch: Literal["cnn"]
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(default=[16, 32], min_length=2, max_length=2)
    hidden: int = Field(default=64, ge=1, le=16_384)
    activation: Activation = "relu"
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1, max_length=3)


ModelSpec = Annotated[LinearModel | MLPModel | CNNModel, Field(discriminator="arch")]
Optimizer = Literal["adam", "sgd"]
Device = Literal["auto", "cpu", "cuda"]
