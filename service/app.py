"""The FastAPI gateway: validate, record, enqueue by task name, serve. It never computes
(no torch, no infoscore import): workers do the science.

``create_app`` only assembles: the shared state (:class:`service.gateway.Gateway`), the
middleware, the problem+json handlers and the routers of :mod:`service.routes`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from . import metrics
from .errors import BodyLimitMiddleware, ProblemError, TrustedHosts, error_response, install_handlers
from .gateway import Gateway, authenticate_or_throttle
from .net import is_loopback
from .routes import ROUTERS
from .routes.docs import install_docs
from .settings import ServiceSettings, get_service_settings

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.gateway.store.dispose()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or get_service_settings()
    if settings.auth != "required" and not is_loopback(settings.host):
        # The same guard as the CLI's, for an app built directly (e.g. by another server).
        raise ValueError(
            f"refusing to serve {settings.host} without API keys: set INFOSCORE_AUTH=required or bind 127.0.0.1"
        )
    app = FastAPI(
        title="infoscore",
        version="0.1.0",
        description=(
            "How much each training sample matters and how well a model will generalize: "
            "smooth sample information, f-CMI bounds, LIMIT and supervision complexity as jobs."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by install_docs from files in the package: no CDN, works offline
        redoc_url=None,
    )
    install_docs(app)
    gateway = app.state.gateway = Gateway(settings)
    install_handlers(app)

    async def auth_gate(scope: Any) -> JSONResponse | None:
        """The API key of a request with a body, checked before the body is read."""
        raw = dict(scope.get("headers", [])).get(b"authorization")
        client = scope.get("client") or ("?", 0)
        try:
            await run_in_threadpool(
                authenticate_or_throttle, gateway, None if raw is None else raw.decode("latin-1"), client[0]
            )
        except ProblemError as exc:
            return error_response(exc, scope["path"])
        return None

    app.add_middleware(
        BodyLimitMiddleware,
        upload_limit=settings.max_upload_bytes,
        json_limit=settings.max_request_bytes,
        auth_gate=auth_gate if settings.auth == "required" else None,
    )
    hosts = settings.allowed_hosts
    if hosts is None:
        hosts = ["*"] if settings.auth == "required" else LOOPBACK_HOSTS
    if hosts != ["*"]:
        # Without keys the API trusts whoever reaches it on loopback; refusing foreign Host
        # headers keeps a web page's DNS-rebinding trick from reaching it through a browser.
        app.add_middleware(TrustedHosts, allowed_hosts=hosts)
    app.add_middleware(metrics.MetricsMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app
