"""Job requests: one model per kind, a discriminated union on ``kind``."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, ClassVar, get_args

from pydantic import BaseModel, Field, TypeAdapter

from . import distill, fcmi, label_issues, limit, sample_information, training_dynamics
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
    # Kinds that fan out into independent units (see workers.execution) set this.
    fanout: ClassVar[bool] = False


class TrainingDynamicsJob(_JobBase):
    kind: training_dynamics.Kind
    params: TrainingDynamicsParams = Field(default_factory=TrainingDynamicsParams)


class SampleInformationJob(_JobBase):
    kind: sample_information.Kind
    params: SampleInformationParams = Field(default_factory=SampleInformationParams)


class FcmiBoundJob(_JobBase):
    kind: fcmi.Kind
    fanout: ClassVar[bool] = True
    params: FcmiParams = Field(default_factory=FcmiParams)


class LimitJob(_JobBase):
    kind: limit.Kind
    params: LimitParams = Field(default_factory=LimitParams)


class SupervisionComplexityJob(_JobBase):
    """``model`` is the student."""

    kind: distill.ComplexityKind
    params: SupervisionComplexityParams


class DistillationJob(_JobBase):
    """``model`` is the student."""

    kind: distill.DistillationKind
    params: DistillationParams


class LabelIssuesJob(_JobBase):
    """``model`` is the architecture of every model trained."""

    kind: label_issues.Kind
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
# Everything below is derived from the union, so a kind is added by adding its class to it.
JOB_MODELS: dict[str, type[_JobBase]] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls for cls in get_args(get_args(JobRequest)[0])
}
JOB_KINDS: tuple[str, ...] = tuple(JOB_MODELS)
FANOUT_KINDS: frozenset[str] = frozenset(kind for kind, cls in JOB_MODELS.items() if cls.fanout)


def params_model(kind: str) -> type[BaseModel]:
    """The params model of ``kind`` (KeyError for an unknown kind)."""
    annotation = JOB_MODELS[kind].model_fields["params"].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


def request_fingerprint(request: dict[str, object]) -> str:
    """Content hash of what determines a job's results (not its name or device): the
    Idempotency-Key check and the fan-out unit cache keys both use it."""
    core = {k: v for k, v in request.items() if k not in ("name", "device")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def parse_job_request(data: object) -> JobRequest:
    """Validate a JSON-like object as a job request (raises pydantic.ValidationError)."""
    return JOB_REQUEST_ADAPTER.validate_python(data)
