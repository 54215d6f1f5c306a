"""Task and queue names: the only thing the gateway and the workers share about Celery."""

RUN_JOB = "workers.run_job"
RUN_UNIT = "workers.run_unit"
REDUCE_JOB = "workers.reduce_job"
REAP = "workers.reap"

QUEUE_JOBS = "infoscore.jobs"
QUEUE_UNITS = "infoscore.units"
