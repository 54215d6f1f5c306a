"""Thin Celery tasks: a job id in, one call into ``workers.execution`` out."""

from __future__ import annotations

from functools import cache

from contracts import tasks as names

from .celery_app import app
from .execution import Executor
from .settings import get_worker_settings


@cache
def _executor() -> Executor:
    # Built lazily in the child process, after fork: its own DB connections.
    return Executor(get_worker_settings(), app.send_task)


@app.task(name=names.RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return _executor().run_job(job_id)


@app.task(name=names.RUN_UNIT, acks_late=True, reject_on_worker_lost=True)
def run_unit(job_id: str, unit_name: str) -> str:
    return _executor().run_unit(job_id, unit_name)


@app.task(name=names.REDUCE_JOB, acks_late=True, reject_on_worker_lost=True)
def reduce_job(job_id: str) -> str:
    return _executor().reduce_job(job_id)
