"""Liveness, readiness (database and broker) and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from .. import metrics
from ..errors import problem_response
from ..gateway import Gateway, GatewayDep, authenticate_or_throttle, client_address
from ..net import ping_redis

router = APIRouter(tags=["health"])

READY_CACHE_SECONDS = 1.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(gw: GatewayDep) -> JSONResponse:
    checks = readiness(gw)
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    bad = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return problem_response(503, f"Not ready: {bad}.", type_="not-ready", checks=checks)


@router.get("/metrics", include_in_schema=False)
def prometheus(
    gw: GatewayDep, request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    if not gw.settings.metrics_public:
        authenticate_or_throttle(gw, authorization, client_address(request))
    return metrics.render()


def readiness(gw: Gateway) -> dict[str, str]:
    """Database and broker checks, at most one at a time: with the broker down a check
    takes up to its timeout, and pollers must not each hold a thread for it (they get the
    last answer while one check runs). A good answer is reused for a second; a bad one
    only while the next check is running, so recovery shows at once."""
    checked_at, checks = gw.ready
    healthy = bool(checks) and all(v == "ok" for v in checks.values())
    if healthy and time.monotonic() - checked_at < READY_CACHE_SECONDS:
        return checks
    if not gw.ready_lock.acquire(blocking=not checks):
        return checks
    try:
        checks = {}
        try:
            gw.store.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            _ping_broker(gw)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
        gw.ready = (time.monotonic(), checks)
        return checks
    finally:
        gw.ready_lock.release()


def _ping_broker(gw: Gateway, timeout: float = 2.0) -> None:
    """A Redis PING (after AUTH when the URL has a password) on a fresh socket: cheap,
    bounded by ``timeout``, and independent of the Celery client's connection state."""
    url = urlsplit(gw.settings.broker_url)
    if url.scheme != "redis":  # rediss (TLS) or another broker: ask through Celery
        with gw.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return
    password = None
    if url.password:
        user = f"{unquote(url.username)} " if url.username else ""
        password = f"{user}{unquote(url.password)}"
    ping_redis(url.hostname or "127.0.0.1", url.port or 6379, password, timeout=timeout)
