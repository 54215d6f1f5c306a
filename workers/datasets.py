"""Resolve a job's dataset reference to an ``infoscore.data.Dataset``."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from infoscore import data as isdata
from infoscore.data import Dataset
from store.artifacts import dataset_path

_CACHE_SIZE = 4
_cache: OrderedDict[str, Dataset] = OrderedDict()


def load_dataset(ref: Any, data_dir: Path) -> Dataset:
    """ref: a dataset id string or a contracts builtin model (BuiltinDigits/BuiltinGaussians).

    Datasets are immutable (uploads are content-addressed, built-ins are seeded), so each
    worker process keeps the last few in memory: fan-out units of one job would otherwise
    rebuild the same dataset hundreds of times (digits: about 0.2 s each). Callers get
    copies of the arrays, so nothing they do reaches the cache.
    """
    key = ref if isinstance(ref, str) else json.dumps(ref.model_dump(), sort_keys=True)
    key = f"{Path(data_dir).resolve()}|{key}"
    cached = _cache.get(key)
    if cached is None:
        cached = _load(ref, data_dir)
        _cache[key] = cached
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return _copy(cached)


def _copy(ds: Dataset) -> Dataset:
    fields = {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            fields[name] = value.copy()
    fields["info"] = copy.deepcopy(ds.info)
    return Dataset(**fields)


def _load(ref: Any, data_dir: Path) -> Dataset:
    if isinstance(ref, str):
        return isdata.load_npz(str(dataset_path(data_dir, ref)))
    spec = ref.model_dump()
    builtin = spec.pop("builtin")
    if builtin == "digits":
        return isdata.load_digits(**spec)
    if builtin == "gaussians":
        return isdata.make_gaussians(**spec)
    raise ValueError(f"unknown builtin dataset {builtin!r}")
