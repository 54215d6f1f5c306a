"""What the pages show, computed from a job row and its per-sample table (no I/O here)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

SCALARS = (str, int, float, bool, type(None))
MAX_TABLE_ROWS = 200

# Per kind, the column (and order) the top-rows table sorts by first.
DEFAULT_SORT = {
    "training-dynamics": ("el2n", "desc"),
    "sample-information": ("si_weights", "desc"),
    "limit": ("label_noise_score", "desc"),
    "label-issues": ("issue_rank", "asc"),  # 1 = most likely wrong
}
FLAG_COLUMNS = ("suspected_mislabeled", "is_label_issue", "label_issue")
FLAG_SCORES = ("label_noise_score", "label_issue_score", "issue_score", "self_confidence_issue")
SUGGESTED_COLUMNS = ("suggested_label", "predicted_label")
GALLERY_SIZE = 12


def fmt_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        text = json.dumps(_rounded(value))
        return text if len(text) <= 160 else text[:157] + "…"
    return str(value)


def _rounded(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def age(created: datetime | None, now: datetime | None = None) -> str:
    if created is None:
        return "—"
    now = now or datetime.now(UTC)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    s = max(0, int((now - created).total_seconds()))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def _flatten(prefix: str, value: dict[str, Any], out: list[tuple[str, str]]) -> None:
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and len(out) < 400:
            _flatten(key, v, out)
        else:
            out.append((key, fmt_value(v)))


def _records_table(title: str, rows: list[dict[str, Any]], first: str | None = None) -> dict[str, Any]:
    columns: list[str] = [first] if first else []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(str(k))
    body = [[fmt_value(r.get(c)) for c in columns] for r in rows[:MAX_TABLE_ROWS]]
    return {"title": title, "type": "table", "columns": columns, "rows": body, "total": len(rows)}


def summary_sections(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A summary as readable tables: headline scalars, then one table per nested value.

    dict of equal-length lists (curves) -> a table with one row per position; dict of
    dicts (e.g. per mode) -> one row per key; list of dicts (e.g. per n) -> one row each;
    other dicts -> key/value rows with dotted keys.
    """
    if not summary:
        return []
    headline: list[tuple[str, str]] = []
    sections: list[dict[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, SCALARS):
            headline.append((key, fmt_value(value)))
        elif isinstance(value, list):
            if value and all(isinstance(v, dict) for v in value):
                sections.append(_records_table(key, value))
            else:
                headline.append((key, fmt_value(value)))
        elif isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            if value and len(lists) == len(value) and len({len(v) for v in lists}) == 1:
                n = len(lists[0])
                rows = [{k: v[i] for k, v in value.items()} for i in range(n)]
                sections.append(_records_table(key, rows))
            elif value and all(isinstance(v, dict) for v in value.values()):
                rows = [{key: k, **v} for k, v in value.items()]
                sections.append(_records_table(key, rows, first=key))
            else:
                pairs: list[tuple[str, str]] = []
                _flatten("", value, pairs)
                sections.append({"title": key, "type": "kv", "rows": pairs})
    if headline:
        sections.insert(0, {"title": "headline numbers", "type": "kv", "rows": headline})
    return sections


def default_sort(kind: str, columns: list[str]) -> tuple[str | None, str]:
    col, order = DEFAULT_SORT.get(kind, (None, "desc"))
    if col in columns:
        return col, order
    if "si_predictions" in columns:
        return "si_predictions", "desc"
    return None, "desc"


def galleries(table: Any) -> list[dict[str, Any]]:
    """Sets of top samples to draw as images: (title, rows, score column, suggested column)."""
    cols = [str(c) for c in table.columns]
    suggested = next((c for c in SUGGESTED_COLUMNS if c in cols), None)
    out: list[dict[str, Any]] = []

    def add(title: str, rows: Any, score: str | None) -> None:
        items = []
        for r in rows.head(GALLERY_SIZE).to_dict(orient="records"):
            items.append(
                {
                    "index": int(r["index"]),
                    "label": r.get("label", r.get("given_label")),
                    "suggested": r.get(suggested) if suggested else None,
                    "score": fmt_value(r.get(score)) if score else None,
                    "score_name": score,
                    "flipped": bool(r.get("label_noisy", False)),
                }
            )
        if items:
            out.append({"title": title, "items": items})

    for col, title in (
        ("si_weights", "Most informative samples (SI)"),
        ("si_predictions", "Most informative samples (F-SI)"),
    ):
        if col in cols:
            add(title, table.sort_values(col, ascending=False, kind="stable"), col)
            break
    flag = next((c for c in FLAG_COLUMNS if c in cols), None)
    if flag is not None:
        flagged = table[table[flag].astype(bool)]
        score = next((c for c in FLAG_SCORES if c in cols), None)
        if "issue_rank" in cols:  # label-issues: rank 1 = most likely wrong
            flagged = flagged.sort_values("issue_rank", kind="stable")
            score = "label_quality" if "label_quality" in cols else score
        elif score is not None:
            flagged = flagged.sort_values(score, ascending=False, kind="stable")
        add(f"Suspected mislabeled ({len(flagged)} flagged)", flagged, score)
    if "forgetting_events" in cols:
        add(
            "Most forgotten samples",
            table.sort_values("forgetting_events", ascending=False, kind="stable"),
            "forgetting_events",
        )
    if not out:
        numeric = [c for c in cols if c not in ("index", "label") and table[c].dtype.kind == "f"]
        if numeric:
            add(
                f"Top samples by {numeric[0]}",
                table.sort_values(numeric[0], ascending=False, kind="stable"),
                numeric[0],
            )
    return out
