"""Task and queue names: the only thing the gateway and the workers share about Celery."""

RUN_JOB = "workers.run_job"
RUN_UNIT = "workers.run_unit"
REDUCE_JOB = "workers.reduce_job"
REAP = "workers.reap"

QUEUE_JOBS = "infoscore.jobs"
QUEUE_UNITS = "infoscore.units"

# Jobs (and their units) that ask for device "cuda" have their own queue, which only workers
# with a GPU consume: a CPU worker never takes one (it could only fail it).
QUEUE_JOBS_CUDA = "infoscore.jobs.cuda"

# Each worker announces the queues it consumes in the broker under this prefix (a JSON value
# that expires after WORKER_KEY_TTL seconds unless refreshed), so the gateway can tell
# whether any worker would take a "cuda" job.
WORKER_KEY_PREFIX = "infoscore:worker:"
WORKER_KEY_TTL = 30


def job_queue(device: str | None) -> str:
    """The queue of a job (and of its units) that asks for ``device``."""
    return QUEUE_JOBS_CUDA if str(device or "").startswith("cuda") else QUEUE_JOBS
