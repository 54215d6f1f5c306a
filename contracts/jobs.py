"""Job requests: one model per kind, a discriminated union on ``kind``."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from .common import DatasetRef, Device, ModelSpec, Strict
from .distill import DistillationParams, SupervisionComplexityParams
from .fcmi import FcmiParams
from .label_issues import LabelIssuesParams
from .limit import LimitParams
from .sample_information import SampleInformationParams
from .training_dynamics import TrainingDynamicsParams


class _JobBase(Strict):
    dataset: DatasetRef
    model: ModelSpec
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="init and data-order seed")
    device: Device = Field(default="auto", description="auto = cuda when the worker has one")
    name: str | None = Field(default=None, max_length=200)


class TrainingDynamicsJob(_JobBase):
    kind: Literal["training-dynamics"]
    params: TrainingDynamicsParams = Field(default_factory=TrainingDynamicsParams)


class SampleInformationJob(_JobBase):
    kind: Literal["sample-information"]
    params: SampleInformationParams = Field(default_factory=SampleInformationParams)


class FcmiBoundJob(_JobBase):
    kind: Literal["fcmi-bound"]
    params: FcmiParams = Field(default_factory=FcmiParams)


class LimitJob(_JobBase):
    kind: Literal["limit"]
    params: LimitParams = Field(default_factory=LimitParams)


class SupervisionComplexityJob(_JobBase):
    """``model`` is the student."""

    kind: Literal["supervision-complexity"]
    params: SupervisionComplexityParams


class DistillationJob(_JobBase):
    """``model`` is the student."""

    kind: Literal["distillation"]
    params: DistillationParams


class LabelIssuesJob(_JobBase):
    """``model`` is the architecture of every model trained."""

    kind: Literal["label-issues"]
    params: LabelIssuesParams = Field(default_factory=LabelIssuesParams)


JobRequest = Annotated[
    TrainingDynamicsJob
    | SampleInformationJob
    | FcmiBoundJob
    | LimitJob
    | SupervisionComplexityJob
    | DistillationJob
    | LabelIssuesJob,
    Field(discriminator="kind"),
]
JOB_REQUEST_ADAPTER: TypeAdapter[JobRequest] = TypeAdapter(JobRequest)
JOB_KINDS: tuple[str, ...] = (
    "training-dynamics",
    "sample-information",
    "fcmi-bound",
    "limit",
    "supervision-complexity",
    "distillation",
    "label-issues",
)
# Kinds that fan out into independent units (see workers.fanout).
FANOUT_KINDS: frozenset[str] = frozenset({"fcmi-bound"})


def request_fingerprint(request: dict[str, object]) -> str:
    """Content hash of what determines a job's results (not its name or device): the
    Idempotency-Key check and the fan-out unit cache keys both use it."""
    core = {k: v for k, v in request.items() if k not in ("name", "device")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def parse_job_request(data: object) -> JobRequest:
    """Validate a JSON-like object as a job request (raises pydantic.ValidationError)."""
    return JOB_REQUEST_ADAPTER.validate_python(data)
