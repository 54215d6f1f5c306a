"""The API's settings: the shared ones (``store.settings.CommonSettings``) plus the HTTP
server, authentication and the limits the gateway enforces (``INFOSCORE_*``)."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import Field

from store.settings import CommonSettings


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


@cache
def get_service_settings() -> ServiceSettings:
    """The API's settings, read from the environment once per process."""
    return ServiceSettings()
