"""Records the API answers with, and the problem+json error shape."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


# The job state vocabulary, defined here only: store/ and workers/ (and the gateway) use these
# instead of spelling states out. JobState members are str, so a plain "failed" from a row
# is `in` these sets, and they bind as strings in SQL.
TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
ACTIVE_STATES = frozenset({JobState.queued, JobState.running})


class Progress(BaseModel):
    done: int = 0
    total: int = 0


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class JobRecord(BaseModel):
    """A job as the API serves it. The one conversion is ``JobRecord.model_validate(job)``
    of the store's job dict (``store.db.JobStore.get_job`` and friends), whose keys are
    these fields plus store-only ones (tenant, fingerprint, worker, heartbeat_at, ...) that
    are ignored here."""

    model_config = ConfigDict(extra="ignore")

    id: str
    kind: str
    state: JobState
    progress: Progress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    summary: dict[str, Any] | None = None
    error: Problem | None = None
    request: dict[str, Any]
    attempts: int = 0
    artifacts: list[str] = Field(default_factory=list)
    name: str | None = None


class DatasetRecord(BaseModel):
    id: str
    n_train: int
    n_test: int
    input_shape: list[int]
    n_classes: int
    sha256: str
    format: str
    filename: str | None = None
    size_bytes: int
    created_at: datetime
    # Descriptive fields (kept in the dataset row's JSON meta); None on records made before
    # they existed.
    feature_names: list[str] | None = Field(default=None, description="table columns used as features")
    class_names: list[str] | None = Field(
        default=None, description="original label of class 0..k-1 (text labels, remap_labels)"
    )
    class_counts: list[int] | None = Field(default=None, description="training rows per class")
    has_ids: bool | None = None
    has_truth: bool | None = Field(default=None, description="true labels were given (truth_column)")
    n_mislabeled: int | None = Field(default=None, description="training rows whose label != truth")
    warnings: list[str] = Field(default_factory=list)
    standardization: dict[str, Any] | None = Field(
        default=None, description="z-score statistics of the training split (standardize=true)"
    )
    options: dict[str, Any] | None = Field(default=None, description="the upload options used")
    lineage: dict[str, Any] | None = None  # derived datasets: source dataset, job, apply, counts


class DatasetList(BaseModel):
    items: list[DatasetRecord]
    next_cursor: str | None = None


class JobList(BaseModel):
    items: list[JobRecord]
    next_cursor: str | None = None


class ResultPage(BaseModel):
    job_id: str
    summary: dict[str, Any] | None
    columns: list[str]
    rows: list[dict[str, Any]]
    total_rows: int
    next_cursor: str | None = None
