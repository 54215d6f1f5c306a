"""The reaper: no job stays ``running`` after its worker died, none stays ``queued`` after
its message was lost.

Messages are lost in two ways: a publish that never reached the broker (re-sent after
``requeue_pending_after``), and a broker that restarted without them (killed before its
append-only file reached the disk, or run without persistence; a message a worker had
taken but not acknowledged also stays parked until the visibility timeout). The second is
noticed at once: the reaper watches the broker's ``run_id``, and when it changes, every
queued job and pending unit is re-sent from the database, the source of truth. A duplicate
message is harmless: it finds its job claimed or finished.

Runs as a thread in every worker's parent process (several reapers are safe: each
recovery is a conditional UPDATE, and a duplicate message finds its job claimed).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from contracts import tasks as names
from store.artifacts import ArtifactStore
from store.db import JobStore
from workers.settings import WorkerSettings, get_worker_settings

log = logging.getLogger("infoscore.reaper")


class BrokerWatch:
    """Tells when the broker restarted since the last look (its ``run_id`` changed)."""

    def __init__(self, broker_url: str) -> None:
        self._client: Any = None
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            self._client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        self._run_id: str | None = None

    def restarted(self) -> bool:
        if self._client is None:
            return False
        try:
            run_id = str(self._client.info("server").get("run_id"))
        except Exception:  # down right now: decide on the next look
            return False
        previous, self._run_id = self._run_id, run_id
        return previous is not None and previous != run_id


def reap_once(
    store: JobStore, settings: WorkerSettings, send_task: Any, *, broker_restarted: bool = False
) -> dict[str, int]:
    """One sweep. Returns counts of what it did (for logs and tests). With
    ``broker_restarted``, queued jobs and pending units are re-sent now, whatever their age."""
    counts = {"jobs_requeued": 0, "units_requeued": 0, "reduces_restarted": 0, "queued_resent": 0}
    pending_after = 0.0 if broker_restarted else settings.requeue_pending_after
    for job in store.stale_running(settings.stale_after):
        units = store.units(job["id"])
        if units:
            if all(u["state"] == "done" for u in units):
                # The reducer died (or never started): release its claim and run it again.
                store.release_reduce(job["id"])
                store.touch(job["id"])
                send_task(names.REDUCE_JOB, args=[job["id"]], queue=names.QUEUE_JOBS)
                counts["reduces_restarted"] += 1
            continue
        if store.release_stale(job["id"], settings.stale_after):
            log.warning("job %s lost its worker (attempt %d); re-queueing", job["id"], job["attempts"])
            send_task(names.RUN_JOB, args=[job["id"]], queue=_queue(store, job))
            counts["jobs_requeued"] += 1
    for unit in store.stale_units(settings.stale_after, pending_after):
        store.reset_unit(unit["job_id"], unit["name"])
        log.warning("unit %s of job %s lost; re-sending", unit["name"], unit["job_id"])
        send_task(names.RUN_UNIT, args=[unit["job_id"], unit["name"]], queue=_queue(store, unit["job_id"]))
        counts["units_requeued"] += 1
    for job_id in store.stale_queued(pending_after):
        store.touch(job_id)
        send_task(names.RUN_JOB, args=[job_id], queue=_queue(store, job_id))
        counts["queued_resent"] += 1
    counts.update(apply_retention(store, settings))
    return counts


def _queue(store: JobStore, job: dict[str, Any] | str) -> str:
    """The queue of a job, from its request's device (see contracts.tasks.job_queue)."""
    row = store.get_job(job) if isinstance(job, str) else job
    request = (row or {}).get("request") or {}
    return names.job_queue(request.get("device"))


def apply_retention(store: JobStore, settings: WorkerSettings) -> dict[str, int]:
    """Delete finished jobs and datasets past their retention (settings; off by default).
    Several reapers may race here: deleting a row that is gone is a no-op."""
    counts = {"jobs_expired": 0, "datasets_expired": 0}
    artifacts = ArtifactStore(settings.data_dir)
    if settings.job_retention_days is not None:
        for job_id in store.expired_jobs(timedelta(days=settings.job_retention_days)):
            if store.delete_job(job_id):
                artifacts.remove_job(job_id)
                counts["jobs_expired"] += 1
    if settings.dataset_retention_days is not None:
        for dataset_id, tenant in store.expired_datasets(timedelta(days=settings.dataset_retention_days)):
            if store.dataset_in_use(dataset_id, tenant):
                continue
            if store.delete_dataset(dataset_id, tenant) == 0:
                artifacts.remove_dataset(dataset_id)
            counts["datasets_expired"] += 1
    return counts


def run_reaper(app: Any, stop: threading.Event) -> None:
    settings = get_worker_settings()
    store = JobStore(settings.resolved_database_url())
    broker = BrokerWatch(settings.broker_url)
    broker.restarted()  # the first look only learns the run_id
    while not stop.wait(settings.reaper_interval):
        try:
            restarted = broker.restarted()
            if restarted:
                log.warning("the broker restarted: re-sending queued jobs and pending units")
            counts = reap_once(store, settings, app.send_task, broker_restarted=restarted)
            if any(counts.values()):
                log.info("reaper: %s", counts)
        except Exception:
            log.warning("reaper sweep failed", exc_info=True)
