"""Build a real JobContext for calling a runner directly in unit tests (no Celery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contracts.jobs import parse_job_request
from workers.datasets import load_dataset
from workers.runners.base import JobContext


def make_context(request: dict[str, Any], workdir: Path, *, data_dir: Path | None = None) -> JobContext:
    """request: a JSON-like job request, validated exactly as the API does."""
    req = parse_job_request(request)
    progress_log: list[tuple[int, int]] = []
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(
        job_id="job_test",
        request=req,
        dataset=load_dataset(req.dataset, data_dir or workdir),
        device=torch.device("cpu"),
        progress=lambda done, total: progress_log.append((done, total)),
        should_stop=lambda: False,
        workdir=workdir,
        data_dir=data_dir or workdir,
    )
    ctx.progress_log = progress_log  # type: ignore[attr-defined]
    return ctx
