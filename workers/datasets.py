"""Resolve a job's dataset reference to an ``infoscore.data.Dataset``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infoscore import data as isdata
from infoscore.data import Dataset


def dataset_path(data_dir: Path, dataset_id: str) -> Path:
    """Where the gateway stores an uploaded dataset in canonical npz form."""
    return Path(data_dir) / "datasets" / f"{dataset_id}.npz"


def load_dataset(ref: Any, data_dir: Path) -> Dataset:
    """ref: a dataset id string or a contracts builtin model (BuiltinDigits/BuiltinGaussians)."""
    if isinstance(ref, str):
        return isdata.load_npz(str(dataset_path(data_dir, ref)))
    spec = ref.model_dump()
    builtin = spec.pop("builtin")
    if builtin == "digits":
        return isdata.load_digits(**spec)
    if builtin == "gaussians":
        return isdata.make_gaussians(**spec)
    raise ValueError(f"unknown builtin dataset {builtin!r}")
