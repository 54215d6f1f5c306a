"""Friendlier validation messages: the closest known name for a typo, and the fields a
request model knows at a given location (pydantic and the standard library only)."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel


def closest_name(name: str, known: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Annotated, unions, lists, Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple):
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]
    return []


def _tag_values(model: type[BaseModel]) -> set[str]:
    """Literal values of the model's fields: the discriminator tags pydantic puts in a loc."""
    tags: set[str] = set()
    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is typing.Literal:
            args = typing.get_args(f.annotation)
            if len(args) == 1:
                tags.add(str(args[0]))
    return tags


def known_fields(roots: Sequence[type[BaseModel]], loc: Sequence[Any]) -> list[str] | None:
    """The field names valid where ``loc`` (without 'body' and without the unknown name
    itself) points, following field names and discriminator tags; None if lost."""
    candidates = list(roots)
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in candidates if str(part) in _tag_values(m)]
        if tagged and not any(part in m.model_fields for m in candidates):
            candidates = tagged
            continue
        nxt: list[type[BaseModel]] = []
        for m in candidates:
            f = m.model_fields.get(str(part))
            if f is not None:
                nxt.extend(models_in(f.annotation))
        if not nxt:
            return None
        candidates = nxt
    names: list[str] = []
    for m in candidates:
        names.extend(n for n in m.model_fields if n not in names)
    return names
