"""The reaper: no job stays ``running`` after its worker died, none stays ``queued`` after
its message was lost.

Runs as a thread in every worker's parent process (several reapers are safe: each
recovery is a conditional UPDATE, and a duplicate message finds its job claimed).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from contracts import tasks as names
from store.db import JobStore
from store.settings import WorkerSettings

log = logging.getLogger("infoscore.reaper")


def reap_once(store: JobStore, settings: WorkerSettings, send_task: Any) -> dict[str, int]:
    """One sweep. Returns counts of what it did (for logs and tests)."""
    counts = {"jobs_requeued": 0, "units_requeued": 0, "reduces_restarted": 0, "queued_resent": 0}
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
            send_task(names.RUN_JOB, args=[job["id"]], queue=names.QUEUE_JOBS)
            counts["jobs_requeued"] += 1
    for unit in store.stale_units(settings.stale_after, settings.requeue_pending_after):
        store.reset_unit(unit["job_id"], unit["name"])
        log.warning("unit %s of job %s lost; re-sending", unit["name"], unit["job_id"])
        send_task(names.RUN_UNIT, args=[unit["job_id"], unit["name"]], queue=names.QUEUE_JOBS)
        counts["units_requeued"] += 1
    for job_id in store.stale_queued(settings.requeue_pending_after):
        store.touch(job_id)
        send_task(names.RUN_JOB, args=[job_id], queue=names.QUEUE_JOBS)
        counts["queued_resent"] += 1
    return counts


def run_reaper(app: Any, stop: threading.Event) -> None:
    settings = WorkerSettings()
    store = JobStore(settings.resolved_database_url())
    while not stop.wait(settings.reaper_interval):
        try:
            counts = reap_once(store, settings, app.send_task)
            if any(counts.values()):
                log.info("reaper: %s", counts)
        except Exception:
            log.warning("reaper sweep failed", exc_info=True)
