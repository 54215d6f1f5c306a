"""Which queues this worker consumes, and its announcement of them in the broker.

A worker consumes ``infoscore.jobs`` always and ``infoscore.jobs.cuda`` when it can run
CUDA jobs: ``INFOSCORE_WORKER_DEVICE=cuda``, or ``auto`` on a machine with an NVIDIA GPU.
The parent process never imports torch (CUDA must not be initialised before the prefork
children exist), so ``auto`` looks for the driver's device files or ``nvidia-smi``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from contracts.tasks import QUEUE_JOBS, QUEUE_JOBS_CUDA, WORKER_KEY_PREFIX, WORKER_KEY_TTL
from workers.settings import WorkerSettings

log = logging.getLogger("infoscore.worker")


def gpu_present(dev: Path = Path("/dev")) -> bool:
    """An NVIDIA GPU is visible to this process (device files or the driver's tool)."""
    return any(dev.glob("nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def worker_queues(settings: WorkerSettings, *, gpu: bool | None = None) -> list[str]:
    """The queues a worker with these settings consumes."""
    if settings.worker_device == "cuda":
        return [QUEUE_JOBS, QUEUE_JOBS_CUDA]
    if settings.worker_device == "auto" and (gpu_present() if gpu is None else gpu):
        return [QUEUE_JOBS, QUEUE_JOBS_CUDA]
    return [QUEUE_JOBS]


def announcement(name: str, queues: list[str], device: str) -> tuple[str, str]:
    """The broker key and JSON value that announce a worker."""
    return WORKER_KEY_PREFIX + name, json.dumps({"name": name, "queues": queues, "device": device})


def run_announcer(broker_url: str, name: str, queues: list[str], device: str, stop: threading.Event) -> None:
    """Announce the worker every WORKER_KEY_TTL / 3 s until ``stop``, then withdraw. Only a
    Redis broker is supported (others: nothing is announced, the gateway checks nothing)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return
    import redis

    client: Any = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    key, value = announcement(name, queues, device)
    while True:
        try:
            client.set(key, value, ex=WORKER_KEY_TTL)
        except Exception:  # the broker is down: the next round tries again
            log.debug("worker announcement failed", exc_info=True)
        if stop.wait(WORKER_KEY_TTL / 3):
            break
    with contextlib.suppress(Exception):  # withdrawn, or it expires by itself
        client.delete(key)
