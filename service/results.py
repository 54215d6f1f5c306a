"""A succeeded job's per-sample table, as the API's result pages and the UI's job page
show it: one loader, one sort rule, one set of media types for the artifacts."""

from __future__ import annotations

import logging
from typing import Any

from .errors import ProblemError
from .gateway import Gateway
from .suggest import closest_name

log = logging.getLogger("infoscore.api")

MEDIA_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".png": "image/png",
    ".npy": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".safetensors": "application/octet-stream",
}


def load_table(gw: Gateway, job_id: str) -> Any:
    """The per-sample table from scores.parquet, or from scores.csv if the Parquet file is
    damaged; None when the job has no table. Both unreadable: 500 problem."""
    import pandas as pd

    parquet = gw.artifacts.artifact_path(job_id, "scores.parquet")
    csv = gw.artifacts.artifact_path(job_id, "scores.csv")
    if not parquet.exists() and not csv.exists():
        return None
    errors = []
    for path, reader in ((parquet, pd.read_parquet), (csv, pd.read_csv)):
        if not path.exists():
            continue
        try:
            return reader(path)
        except Exception as exc:
            errors.append(f"{path.name}: {type(exc).__name__}")
            log.error("job %s: %s is unreadable: %s", job_id, path.name, exc)
    raise ProblemError(
        500,
        f"The stored per-sample table of job {job_id} is damaged ({'; '.join(errors)}); its other "
        "artifacts are unaffected.",
        type_="corrupt-artifact",
    )


def check_sort(sort: str | None, table: Any, kind: str) -> None:
    """One sort rule for every kind: a column of this job's table, or a 422 naming them
    (a kind without a per-sample table has none to sort by)."""
    columns = [] if table is None else [str(c) for c in table.columns]
    if sort is None or sort in columns:
        return
    hint = (
        f"; a {kind} job has no per-sample table, so no sort applies"
        if table is None
        else closest_name(sort, columns)
    )
    raise ProblemError(
        422,
        f"The 'sort' parameter must be one of {columns}. Got {sort!r}{hint}.",
        type_="bad-sort",
        field="sort",
    )


def sort_table(table: Any, sort: str | None, order: str) -> Any:
    """``table`` ordered by the column ``sort`` (a stable sort; unchanged when None)."""
    if sort is None:
        return table
    keys = [sort]
    if sort == "forgetting_events" and "never_learned" in table.columns:
        keys = ["never_learned", sort]  # the documented ranking: never-learned rows first
    return table.sort_values(keys, ascending=(order == "asc"), kind="stable")


def add_label_names(gw: Gateway, table: Any, job: dict[str, Any], tenant: str) -> None:
    """Uploads with text labels (or remap_labels): the original names beside the codes,
    as a ``label_name`` column after ``label`` (in place)."""
    class_names = _class_names(gw, job, tenant)
    if class_names is None or "label" not in table.columns or "label_name" in table.columns:
        return
    codes = table["label"].to_numpy()
    names_arr = [class_names[int(c)] if 0 <= int(c) < len(class_names) else None for c in codes]
    table.insert(int(table.columns.get_loc("label")) + 1, "label_name", names_arr)


def _class_names(gw: Gateway, job: dict[str, Any], tenant: str) -> list[str] | None:
    ref = (job.get("request") or {}).get("dataset")
    if not isinstance(ref, str):
        return None
    record = gw.store.get_dataset(ref, tenant)
    names = None if record is None else record.get("class_names")
    return names if isinstance(names, list) else None
