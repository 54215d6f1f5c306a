"""``POST /v1/datasets:derive``: a new dataset from a succeeded ``label-issues`` job's
decisions (docs/jobs/label-issues.md). numpy and pandas only: no torch, no infoscore.

The derived dataset is a normal stored dataset: the source's arrays with rows dropped or
relabelled, the test split kept, ids kept (a source without ids gets its row indices as
ids, so every derived row names the row it came from), and a ``lineage`` in its record.
A built-in source is read from the job's ``source.npz`` (the worker materializes it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from contracts.label_issues import DECISIONS_ARTIFACT, KIND, SOURCE_ARTIFACT, DeriveRequest
from contracts.records import JobState

from .datasets import check_storage_quota
from .errors import ProblemError
from .gateway import Gateway

DERIVED_FORMAT = "derived"


def _refuse(detail: str, **extra: Any) -> ProblemError:
    return ProblemError(409, detail, type_="not-derivable", field="job", **extra)


def _source_arrays(
    gw: Gateway, job: dict[str, Any], tenant: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays of the source dataset, its record or {} for a built-in)."""
    ref = job["request"]["dataset"]
    if isinstance(ref, str):
        record = gw.store.get_dataset(ref, tenant)
        path = gw.artifacts.dataset_path(ref)
        if record is None or not path.exists():
            raise _refuse(f"The source dataset {ref!r} of job {job['id']} no longer exists.")
    else:
        record = {}
        path = gw.artifacts.artifact_path(job["id"], SOURCE_ARTIFACT)
        if not path.exists():
            raise _refuse(f"Job {job['id']} has no {SOURCE_ARTIFACT} artifact to derive a dataset from.")
    with np.load(path, allow_pickle=False) as z:
        return {key: z[key] for key in z.files}, record


def _read_decisions(
    gw: Gateway, job_id: str, n: int, names: list[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(action (n,) str, new_label (n,) int64, -1 where none) from decisions.csv."""
    import pandas as pd

    path = gw.artifacts.artifact_path(job_id, DECISIONS_ARTIFACT)
    if not path.exists():
        raise _refuse(f"Job {job_id} has no {DECISIONS_ARTIFACT} artifact.")
    table = pd.read_csv(path, dtype={"new_label": str, "id": str}, keep_default_na=False)
    if len(table) != n or not np.array_equal(table["index"].to_numpy(), np.arange(n)):
        raise ProblemError(
            500,
            f"The {DECISIONS_ARTIFACT} of job {job_id} does not match its dataset.",
            type_="corrupt-artifact",
        )
    action = table["action"].astype(str).to_numpy()
    lookup = {name: i for i, name in enumerate(names)} if names is not None else None
    new_label = np.full(n, -1, dtype=np.int64)
    for i, value in enumerate(table["new_label"].astype(str)):
        if value == "":
            continue
        new_label[i] = lookup[value] if lookup is not None else int(value)
    return action, new_label


def _write_npz(arrays: dict[str, np.ndarray], final_dir: Path, tmp_dir: Path) -> tuple[str, int, Path]:
    """Write the canonical npz (fixed bytes for fixed arrays), return (sha256, size, temp path)."""
    from .uploads import ParsedDataset, write_canonical_npz

    ds = ParsedDataset(
        x=arrays["x"],
        y=arrays["y"],
        x_test=arrays.get("x_test"),
        y_test=arrays.get("y_test"),
        ids=arrays.get("ids"),
        n_classes=int(arrays["n_classes"]),
        input_shape=tuple(int(s) for s in arrays["input_shape"]),
        format=DERIVED_FORMAT,
    )
    fd, name = tempfile.mkstemp(prefix="derive-", suffix=".npz", dir=tmp_dir)
    os.close(fd)
    tmp = Path(name)
    write_canonical_npz(ds, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return digest, tmp.stat().st_size, tmp


def derive_dataset(gw: Gateway, request: DeriveRequest, tenant: str) -> tuple[dict[str, Any], bool]:
    """Store the derived dataset; returns (its record, created). Refuses (409) unless
    ``request.job`` is a succeeded label-issues job of ``tenant``: a job of another tenant
    gets the same answer as a missing one, so job ids do not leak across tenants."""
    job = gw.store.get_job(request.job, tenant)
    if job is None:
        raise _refuse(
            f"No succeeded {KIND} job {request.job!r} in this tenant; derive from one of your jobs."
        )
    if job["kind"] != KIND:
        raise _refuse(f"Job {request.job} is a {job['kind']} job; only {KIND} jobs can be derived from.")
    if job["state"] != JobState.succeeded:
        raise _refuse(
            f"Job {request.job} is {job['state']}; a dataset can be derived once it has succeeded.",
            state=job["state"],
        )
    arrays, source_record = _source_arrays(gw, job, tenant)
    y = np.asarray(arrays["y"], dtype=np.int64)
    n = int(y.shape[0])
    names = source_record.get("class_names")
    names = [str(v) for v in names] if isinstance(names, list) else None
    action, new_label = _read_decisions(gw, request.job, n, names)
    flagged = action != "keep"
    relabel = action == "relabel"
    keep = np.ones(n, dtype=bool)
    labels = y.copy()
    if request.apply == "drop":
        keep = ~flagged
    elif request.apply == "relabel":
        # Every flagged row takes its suggested label (a "drop" row's suggestion is in the
        # job's scores table, not in decisions.csv).
        suggested = _suggested_labels(gw, request.job, n, names)
        labels[flagged] = suggested[flagged]
    else:
        keep = action != "drop"
        labels[relabel] = new_label[relabel]
    if not keep.any():
        raise _refuse(f"Applying {request.apply!r} to job {request.job} would leave no training row.")
    ids = arrays.get("ids")
    ids = np.arange(n).astype(str) if ids is None else np.asarray(ids).astype(str)
    derived = dict(arrays)
    derived.update(x=arrays["x"][keep], y=labels[keep], ids=ids[keep])
    tmp_dir = gw.artifacts.tmp_dir()
    sha, size, tmp = _write_npz(derived, Path(tmp_dir), Path(tmp_dir))
    dataset_id = f"ds_{sha[:32]}"
    try:
        existing = gw.store.get_dataset(dataset_id, tenant)
        final = gw.artifacts.dataset_path(dataset_id)
        if existing is not None and final.exists():
            return existing, False
        check_storage_quota(gw, tenant, size)  # the same per-tenant quota as uploads
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)  # the file first, then the row (as uploads do)
    finally:
        tmp.unlink(missing_ok=True)
    ref = job["request"]["dataset"]
    record: dict[str, Any] = {
        "id": dataset_id,
        "sha256": sha,
        "format": DERIVED_FORMAT,
        "filename": None,
        "n_train": int(keep.sum()),
        "n_test": int(0 if arrays.get("y_test") is None else arrays["y_test"].shape[0]),
        "n_classes": int(arrays["n_classes"]),
        "input_shape": [int(s) for s in arrays["input_shape"]],
        "size_bytes": size,
        "lineage": {
            "source_dataset": ref,
            "job": request.job,
            "apply": request.apply,
            "n_source": n,
            "n_dropped": int((~keep).sum()),
            "n_relabelled": int(((labels != y) & keep).sum()),
        },
    }
    if names is not None:
        record["class_names"] = names
    return gw.store.add_dataset(record, tenant), True


def _suggested_labels(gw: Gateway, job_id: str, n: int, names: list[str] | None) -> np.ndarray:
    import pandas as pd

    path = gw.artifacts.artifact_path(job_id, "scores.parquet")
    table = pd.read_parquet(path, columns=["suggested_label"])
    values = table["suggested_label"].to_numpy()
    if len(values) != n:
        raise ProblemError(
            500, f"The scores table of job {job_id} does not match its dataset.", type_="corrupt-artifact"
        )
    if names is not None:
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[str(v)] for v in values], dtype=np.int64)
    return values.astype(np.int64)
