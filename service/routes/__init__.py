"""The gateway's routes, one APIRouter per area; ``create_app`` includes them in order.

Routes are thin: they take the shared state through dependencies (``GatewayDep``,
``TenantDep`` in :mod:`service.gateway`), call one function of :mod:`service.jobs` or
:mod:`service.datasets`, and shape the answer. Errors are raised as
:class:`service.errors.ProblemError` and leave as problem+json."""

from __future__ import annotations

from fastapi import APIRouter

from ..ui import router as ui_router  # browser pages (/ui): docs/ui.md
from . import datasets, health, jobs

ROUTERS: tuple[APIRouter, ...] = (health.router, ui_router, datasets.router, jobs.router)
