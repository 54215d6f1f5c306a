"""Settings from the environment (``INFOSCORE_*``), with safe defaults for the embedded mode.

The shared part: the locations and timings that the gateway, the workers and the key
commands read under the same names, so they agree by construction. Each process role
extends it beside its code: ``service.settings.ServiceSettings`` (the API) and
``workers.settings.WorkerSettings`` (the workers).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFOSCORE_", extra="ignore")

    data_dir: Path = Field(default=Path("infoscore-data"), description="artifacts, datasets, SQLite")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    broker_url: str = "redis://127.0.0.1:6379/0"
    job_time_limit: int = Field(default=6 * 3600, ge=10, description="seconds a job may run")
    heartbeat_interval: float = Field(default=5.0, gt=0)
    stale_after: float = Field(default=60.0, gt=0, description="heartbeat age that marks a worker lost")
    requeue_pending_after: float = Field(
        default=3600.0, gt=0, description="re-send a queued job or unit whose message was lost"
    )
    max_attempts: int = Field(default=3, ge=1, description="deliveries before a job is failed")
    job_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="delete finished jobs (row and artifacts) this many days after they end",
    )
    dataset_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="delete datasets this many days after upload (not while a job uses one)",
    )

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> CommonSettings:
        # A live worker must never look dead: leave room for two missed beats.
        if self.stale_after < 3 * self.heartbeat_interval:
            raise ValueError(
                f"INFOSCORE_STALE_AFTER ({self.stale_after}) must be at least 3 x "
                f"INFOSCORE_HEARTBEAT_INTERVAL ({self.heartbeat_interval})"
            )
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'infoscore.db').resolve()}"


@cache
def get_common_settings() -> CommonSettings:
    """The shared settings, read from the environment once per process."""
    return CommonSettings()
