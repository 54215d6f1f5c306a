"""What every job kind's config shares (torch-free): the default model and the value checks.

The configs (``infoscore.<kind>_config``) validate their fields with these, so a bad value
raises :class:`infoscore.InvalidInputError` naming the field before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import invalid

# The model of a library call that names none: the service's default MLP (one hidden layer
# of 256, infoscore.models), spelled out in full so that ``settings["model"]`` reads as a
# job's does.
DEFAULT_MODEL: dict[str, Any] = {
    "arch": "mlp",
    "hidden": [256],
    "activation": "relu",
    "batchnorm": False,
    "dropout": 0.0,
}


def model_spec(model: Mapping[str, Any] | None, caller: str) -> dict[str, Any]:
    """The spec dict of :func:`infoscore.models.build_model`; None = :data:`DEFAULT_MODEL`."""
    if model is None:
        return {k: list(v) if isinstance(v, list) else v for k, v in DEFAULT_MODEL.items()}
    if not isinstance(model, Mapping):
        raise invalid("model", caller, "a model spec mapping such as {'arch': 'mlp'} or None", model)
    return dict(model)


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite int or float (not a bool); any int is finite, even one too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)
