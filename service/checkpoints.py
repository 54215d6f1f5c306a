"""Submit-time checks of a checkpoint that a job names (sample-information ``linearize_at``).

A checkpoint is a ``.safetensors`` artifact of an earlier, succeeded job of the same tenant
(``{"job": "job_...", "artifact": "model.safetensors"}``). The gateway checks, without torch:
the job exists for this tenant (another tenant's job reads as unknown), it succeeded, the
artifact is one of its artifacts, the source job used the same model spec, and the file's
safetensors header (read as JSON, never unpickled) holds as many parameters as this job's
model. The worker then checks every tensor name and shape against the built model.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from contracts.common import ModelSpec
from contracts.estimate import Estimate
from contracts.records import JobState

from .errors import ProblemError

MAX_HEADER_BYTES = 16 * 1024 * 1024
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_FIELD = "params.linearize_at"


def safetensors_parameter_count(path: Path) -> int:
    """Elements of the non-buffer tensors listed in a safetensors header. Raises ValueError
    when the file is not a well-formed safetensors file."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"header of {size} bytes (limit {MAX_HEADER_BYTES})")
        header = json.loads(fh.read(size).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ValueError(f"entry {name!r} has no shape")
        if not name.endswith(_BUFFER_SUFFIXES):
            total += math.prod(int(s) for s in entry["shape"])
    return total


def _refuse(detail: str, type_: str = "bad-checkpoint") -> ProblemError:
    return ProblemError(422, detail, type_=type_, field=_FIELD)


def check_checkpoint_ref(gw: Any, job: Any, tenant: str, est: Estimate) -> None:
    """Raise a 422 ProblemError when ``job`` names a checkpoint it may not or cannot use."""
    ref = getattr(getattr(job, "params", None), "linearize_at", None)
    if ref is None or isinstance(ref, str):
        return
    source = gw.store.get_job(ref.job, tenant)
    if source is None:
        raise _refuse(
            f"The 'linearize_at' checkpoint names job {ref.job!r}, which does not exist for this tenant.",
            "unknown-checkpoint",
        )
    if source["state"] != JobState.succeeded:
        raise _refuse(f"The 'linearize_at' checkpoint's job {ref.job!r} is {source['state']}, not succeeded.")
    if ref.artifact not in (source.get("artifacts") or []):
        raise _refuse(
            f"Job {ref.job!r} has no artifact {ref.artifact!r}; its artifacts are {source.get('artifacts')}."
        )
    want = job.model.model_dump(mode="json")
    have = (source.get("request") or {}).get("model")
    with contextlib.suppress(ValidationError):  # normalise (defaults filled in) before comparing
        have = TypeAdapter(ModelSpec).validate_python(have).model_dump(mode="json")
    if have != want:
        raise _refuse(
            f"The 'linearize_at' checkpoint was made for model {have}, not this job's model {want}; "
            "use the same model spec."
        )
    path = gw.artifacts.artifact_path(ref.job, ref.artifact)
    try:
        count = safetensors_parameter_count(Path(path))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise _refuse(
            f"The 'linearize_at' checkpoint {ref.job}/{ref.artifact} is not a readable safetensors file: {err}."
        ) from err
    if count != est.parameters:
        raise _refuse(
            f"The 'linearize_at' checkpoint {ref.job}/{ref.artifact} holds {count} parameters, this job's model "
            f"{est.parameters}: the dataset's input shape or class count differs."
        )
