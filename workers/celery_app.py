"""The Celery application. Importing it loads no torch and touches no CUDA: the worker
parent forks prefork children, and each child picks its device lazily when a job runs."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from contracts import tasks as names
from workers.settings import WorkerSettings, get_worker_settings

log = logging.getLogger("infoscore.worker")


def make_celery(settings: WorkerSettings | None = None) -> Celery:
    settings = settings or get_worker_settings()
    app = Celery("infoscore", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=names.QUEUE_JOBS,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Above the job time limit, so a running job is never redelivered while alive;
        # a job whose worker died is recovered sooner by the heartbeat reaper.
        broker_transport_options={
            "visibility_timeout": 2 * settings.job_time_limit + 60,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        task_soft_time_limit=settings.job_time_limit,
        task_time_limit=settings.job_time_limit + 60,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # `infoscore worker --concurrency N` sets it before the pool starts; the prefork
        # children inherit it and size their torch thread pools from it (_init_child).
        worker_concurrency=settings.worker_concurrency,
    )
    return app


app = make_celery()


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    # libgomp is not fork-safe once its pool ran: set threads in each child.
    import torch

    settings = get_worker_settings()
    concurrency = int(app.conf.worker_concurrency or settings.worker_concurrency)
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // concurrency)
    torch.set_num_threads(threads)
    # torch.optim imports torch._dynamo on first use (about 1 s of CPU): pay it when the
    # child starts, not inside the first job's time.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if settings.worker_device != "cpu":
        _warm_cuda(torch)


def _warm_cuda(torch: Any) -> None:
    """Create the CUDA context and the cuBLAS / cuSOLVER handles (seconds on a first call)
    when the child starts, not inside its first job. Never fatal: a job that asks for CUDA
    then fails with the real error."""
    try:
        if not torch.cuda.is_available():
            return
        a = torch.eye(8, dtype=torch.float64, device="cuda")
        torch.linalg.cholesky(a @ a.T + a)
        torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")
        torch.cuda.synchronize()
    except Exception as exc:  # pragma: no cover - needs a broken CUDA setup
        log.warning("CUDA warm-up failed (%s); jobs will initialise CUDA themselves", exc)


_reaper_stop = threading.Event()


@worker_ready.connect
def _start_reaper(sender: Any, **_: Any) -> None:
    from .reaper import run_reaper
    from .registry import run_announcer

    thread = threading.Thread(target=run_reaper, args=(app, _reaper_stop), name="reaper", daemon=True)
    thread.start()
    # Announce the queues this worker consumes (the gateway refuses "cuda" jobs when no
    # worker takes them): the consumer's own list, which follows -Q.
    settings = get_worker_settings()
    queues = sorted(q.name for q in sender.task_consumer.queues)
    announcer = threading.Thread(
        target=run_announcer,
        args=(settings.broker_url, str(sender.hostname), queues, settings.worker_device, _reaper_stop),
        name="announcer",
        daemon=True,
    )
    announcer.start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    _reaper_stop.set()
