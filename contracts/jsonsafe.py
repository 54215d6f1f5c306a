"""The one JSON cleaner: what a job's summary goes through before it is written.

JSON has no NaN or infinity (``json.dumps`` writes them as bare ``NaN``, which browsers,
PostgreSQL's JSON and strict parsers reject), and numpy scalars and arrays are not JSON
types at all. :func:`json_safe` turns both into plain Python, recursively. It is standard
library only (numpy values are recognised by their module, so contracts never imports
numpy); workers import it as ``workers.runners.base.json_safe``.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any


def _is_numpy(value: object) -> bool:
    return type(value).__module__.split(".", 1)[0] == "numpy"


def json_safe(value: Any) -> Any:
    """NaN and ±inf -> None; numpy scalars and arrays -> Python numbers and lists; tuples ->
    lists; paths -> str; recursively through dicts, lists and tuples. Other values are
    returned as they are (``json.dumps`` still refuses what it cannot write)."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):  # numpy.float64 is a float too: return a plain float
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(k.item() if _is_numpy(k) else k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if _is_numpy(value) and callable(getattr(value, "tolist", None)):
        # ndarray.tolist() and generic.tolist() give Python scalars (nested lists for arrays)
        return json_safe(value.tolist())
    return value
