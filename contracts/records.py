"""Records the API answers with, and the problem+json error shape."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


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
    lineage: dict[str, Any] | None = None  # derived datasets: source dataset, job, apply, counts


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
