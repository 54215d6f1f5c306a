"""Cursors for the paged lists (jobs, datasets, result rows), shared by the API and the UI.

A cursor is opaque to clients: URL-safe base64 of a small JSON object. Lists ordered by
time carry ``{"t": created_at, "id": id}`` of the last row shown; result pages carry
``{"sort", "order", "offset"}``."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from .errors import ProblemError


def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError
        return value
    except Exception as exc:
        raise ProblemError(
            400,
            f"The 'cursor' parameter is not a cursor this API issued. Got {cursor!r}.",
            type_="bad-cursor",
        ) from exc


def time_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """``(created_at, id)`` of the last row of the previous page, None for the first page."""
    if not cursor:
        return None
    c = decode_cursor(cursor)
    try:
        return datetime.fromisoformat(c["t"]).replace(tzinfo=None), str(c["id"])
    except Exception as exc:
        raise ProblemError(400, "The 'cursor' parameter is malformed.", type_="bad-cursor") from exc


def time_page(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """``rows`` fetched with ``limit + 1`` -> the page and the cursor of the next one (None
    on the last page)."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor({"t": last["created_at"].isoformat(), "id": last["id"]})
