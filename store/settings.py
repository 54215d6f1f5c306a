"""Settings from the environment (``INFOSCORE_*``), with safe defaults for the embedded mode.

One class per process role; both read the shared locations (data dir, database, broker)
under the same names, so the gateway and the workers agree by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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


class ServiceSettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    auth: Literal["off", "required"] = "off"
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_request_bytes: int = Field(default=1024 * 1024, ge=1, description="JSON bodies")
    rate_limit: float = Field(default=100.0, ge=0, description="requests/s per API key (0 = none)")
    rate_burst: int = Field(default=200, ge=1)
    max_active_jobs: int = Field(default=100, ge=1, description="queued + running jobs per tenant")
    max_parameters: int = Field(default=50_000_000, ge=1, description="model parameter limit")
    max_job_memory_bytes: int = Field(
        default=16 * 1024**3, ge=1, description="refuse jobs whose estimated peak memory is above this"
    )
    max_stored_bytes: int = Field(
        default=50 * 1024**3, ge=1, description="bytes of uploaded datasets a tenant may keep stored"
    )
    max_id_length: int = Field(
        default=256, ge=1, description="characters per upload id or text label (stored fixed-width)"
    )
    max_columns: int = Field(default=20_000, ge=2, description="columns of an uploaded CSV or Parquet file")
    max_dataset_bytes: int = Field(
        default=1024**3, ge=1, description="an upload's size as stored and held in memory, from its header"
    )
    max_expansion_ratio: float = Field(
        default=200.0, gt=1, description="stored / uploaded bytes (and npz member) ratio, above 64 MiB"
    )
    upload_parse_processes: int = Field(default=2, ge=1, description="uploads parsed at once")
    upload_parse_memory_bytes: int = Field(
        default=4 * 1024**3, ge=512 * 1024**2, description="address-space limit of each parse process"
    )
    auth_failure_rate: float = Field(
        default=1.0, ge=0, description="invalid API keys per second per client address (0 = no limit)"
    )
    auth_failure_burst: int = Field(default=20, ge=1)
    metrics_public: bool = Field(
        default=False, description="serve /metrics without an API key when keys are required"
    )
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host headers the API answers; default: loopback names without API keys, any with them",
    )


class WorkerSettings(CommonSettings):
    worker_concurrency: int = Field(default=1, ge=1)
    worker_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="cap for jobs that ask 'auto'; 'cpu' keeps a GPU box on CPU"
    )
    reaper_interval: float = Field(default=10.0, gt=0)
    torch_threads: int | None = Field(default=None, ge=1)
