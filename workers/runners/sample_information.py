"""Runner of the ``sample-information`` job: an adapter of :func:`infoscore.sample_information`.

params -> :class:`infoscore.SampleInformationConfig` -> the library call on the job's
device -> ``JobOutput``. The one thing only a worker can do is resolve ``linearize_at``'s
``{job, artifact}`` reference to a file of the artifact store. The protocol (training at
``linearize_at``, held-out subset, ground truth, summary) lives in
``infoscore.sample_information_protocol``; docs/jobs/sample-information.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import infoscore
from contracts.sample_information import KIND, CheckpointRef, LinearizeAtName
from infoscore.errors import invalid
from store.artifacts import ArtifactStore

from .base import JobContext, LibraryRunner


def linearization_point(
    ctx: JobContext, value: LinearizeAtName | CheckpointRef
) -> LinearizeAtName | infoscore.LinearizationCheckpoint:
    """``"init"`` / ``"trained"`` as they are; a checkpoint reference -> its artifact's path."""
    if isinstance(value, str):
        return value
    if ctx.data_dir is None:
        raise invalid("linearize_at", KIND, "a worker with an artifact store", None)
    path = ArtifactStore(ctx.data_dir).artifact_path(value.job, value.artifact)
    if not path.is_file():
        raise invalid(
            "linearize_at", KIND, "an existing artifact of a finished job", f"{value.job}/{value.artifact}"
        )
    return infoscore.LinearizationCheckpoint(path, job=value.job, artifact=value.artifact)


class SampleInformationRunner(LibraryRunner):
    kind = KIND
    call = "sample_information"
    config_class = "SampleInformationConfig"

    def config(self, ctx: JobContext) -> infoscore.SampleInformationConfig:
        params = ctx.params
        gt = params.ground_truth
        return infoscore.SampleInformationConfig(
            **params.model_dump(exclude={"measures", "ground_truth", "linearize_at"}),
            measures=tuple(params.measures),
            ground_truth=None if gt is None else infoscore.GroundTruthConfig(**gt.model_dump()),
            linearize_at=linearization_point(ctx, params.linearize_at),
            seed=ctx.seed,
        )

    def files(self, ctx: JobContext, result: Any) -> dict[str, bytes | Path]:
        return {**result.figures(), **result.write_files(ctx.workdir)}
