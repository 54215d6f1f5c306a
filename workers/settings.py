"""The workers' settings: the shared ones (``store.settings.CommonSettings``) plus
concurrency, device, reaper and thread settings (``INFOSCORE_*``)."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import Field

from store.settings import CommonSettings


class WorkerSettings(CommonSettings):
    worker_concurrency: int = Field(default=1, ge=1)
    worker_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="cap for jobs that ask 'auto'; 'cpu' keeps a GPU box on CPU"
    )
    reaper_interval: float = Field(default=10.0, gt=0)
    torch_threads: int | None = Field(default=None, ge=1)


@cache
def get_worker_settings() -> WorkerSettings:
    """The workers' settings, read from the environment once per process (the prefork
    children inherit the parent's copy)."""
    return WorkerSettings()
