"""The gateway's process-wide state and the FastAPI dependencies that hand it to routes.

Routes never close over ``create_app``'s locals: they declare ``gw: GatewayDep`` and
``tenant: TenantDep`` (typed aliases, overridable in tests) and FastAPI resolves them from
``request.app.state.gateway``."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Header, Request

from contracts import tasks as names
from store.artifacts import ArtifactStore
from store.db import JobStore

from .auth import Caller, KeyResolver, RateLimiter, authenticate
from .errors import ProblemError
from .settings import ServiceSettings

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

    def send(self, job_id: str) -> None:
        self.celery.send_task(
            names.RUN_JOB, args=[job_id], queue=names.QUEUE_JOBS, retry=True, retry_policy=dict(BROKER_RETRY)
        )


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
