"""The gateway's process-wide state and the FastAPI dependencies that hand it to routes.

Routes never close over ``create_app``'s locals: they declare ``gw: GatewayDep`` and
``tenant: TenantDep`` (typed aliases, overridable in tests) and FastAPI resolves them from
``request.app.state.gateway``."""

from __future__ import annotations

import json
import threading
import time
from typing import Annotated

from fastapi import Depends, Header, Request

from contracts import tasks as names
from store.artifacts import ArtifactStore
from store.db import JobStore

from .auth import Caller, KeyResolver, RateLimiter, authenticate
from .errors import ProblemError
from .settings import ServiceSettings

# How long the gateway trusts its last count of GPU workers.
GPU_WORKERS_CACHE_S = 5.0

# One retry policy for connecting to the broker and for sending a task on it.
BROKER_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}


class Gateway:
    """Process-wide state of the API: settings, store, artifacts, key resolver, limiters
    and the broker client (tasks are sent by name: the gateway never imports workers)."""

    def __init__(self, settings: ServiceSettings) -> None:
        from celery import Celery

        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.resolved_database_url())
        self.artifacts = ArtifactStore(settings.data_dir)
        self.keys = KeyResolver(self.store)
        self.rate_limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.auth_failures = RateLimiter(settings.auth_failure_rate, settings.auth_failure_burst)
        # The last readiness answer (see service.routes.health.readiness).
        self.ready_lock = threading.Lock()
        self.ready: tuple[float, dict[str, str]] = (0.0, {})
        self.celery = Celery("infoscore-gateway", broker=settings.broker_url)
        self.celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            broker_transport_options=dict(BROKER_RETRY),
        )

        self._gpu_lock = threading.Lock()
        self._gpu_seen: tuple[float, int | None] = (-1e9, None)

    def send(self, job_id: str, device: str | None = None) -> None:
        self.celery.send_task(
            names.RUN_JOB,
            args=[job_id],
            queue=names.job_queue(device),
            retry=True,
            retry_policy=dict(BROKER_RETRY),
        )

    def gpu_workers(self, max_age: float = GPU_WORKERS_CACHE_S) -> int | None:
        """How many workers announce the CUDA queue (contracts.tasks.WORKER_KEY_PREFIX), read
        from the broker at most every ``max_age`` seconds. None when that cannot be told: a
        broker other than Redis, or one that does not answer (then sending fails anyway)."""
        with self._gpu_lock:
            seen_at, count = self._gpu_seen
            if time.monotonic() - seen_at < max_age:
                return count
            count = _count_gpu_workers(self.settings.broker_url)
            self._gpu_seen = (time.monotonic(), count)
            return count


def _count_gpu_workers(broker_url: str) -> int | None:
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    try:
        client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
        keys = list(client.scan_iter(match=names.WORKER_KEY_PREFIX + "*", count=200))
        values = client.mget(keys) if keys else []
    except Exception:
        return None
    count = 0
    for raw in values:
        try:
            queues = json.loads(raw or b"{}").get("queues", [])
        except (ValueError, AttributeError):
            continue
        count += names.QUEUE_JOBS_CUDA in queues
    return count


def authenticate_or_throttle(gw: Gateway, authorization: str | None, client: str) -> Caller:
    """Authenticate; a client that keeps sending invalid keys is slowed to
    INFOSCORE_AUTH_FAILURE_RATE per second (429) instead of costing a lookup each."""
    try:
        return authenticate(authorization, auth=gw.settings.auth, resolver=gw.keys)
    except ProblemError as exc:
        if exc.type_ == "invalid-api-key":
            gw.auth_failures.check(
                client, what="per client address for invalid API keys", setting="INFOSCORE_AUTH_FAILURE_RATE"
            )
        raise


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


# Dependencies are async (they run on the event loop): a sync dependency costs a
# thread-pool hop per request, and these only read memory (the key lookup is cached).
async def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def get_caller(
    gw: Annotated[Gateway, Depends(get_gateway)],
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Caller:
    caller = authenticate_or_throttle(gw, authorization, client_address(request))
    if caller.key_id is not None:
        gw.rate_limiter.check(caller.key_id)
    return caller


async def get_tenant(caller: Annotated[Caller, Depends(get_caller)]) -> str:
    return caller.tenant


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
TenantDep = Annotated[str, Depends(get_tenant)]
