"""The ``limit`` job kind: params -> ``infoscore.LimitConfig`` -> ``infoscore.limit`` ->
the summary, the scores table, the best-validation model and ``curves.png``.

The protocol (split, LIMIT and baseline runs, checkpoint choice, Fano's bound, the curves)
is the library's; see docs/jobs/limit.md for the contract.
"""

from __future__ import annotations

from pathlib import Path

import infoscore
from contracts.limit import KIND, SCORE_COLUMNS

from .base import JobContext, JobOutput, Runner, json_safe


class LimitRunner(Runner):
    kind = KIND

    def run(self, ctx: JobContext) -> JobOutput:
        config = infoscore.LimitConfig(**ctx.params.model_dump(), seed=ctx.seed)
        result = infoscore.limit(
            ctx.dataset,
            ctx.model_spec,
            config,
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        files: dict[str, bytes | Path] = {"model.safetensors": ctx.workdir / "model.safetensors"}
        result.save_model(ctx.workdir / "model.safetensors")
        for name, png in result.figures().items():
            path = ctx.workdir / name
            path.write_bytes(png)
            files[name] = path
        return JobOutput(
            summary=json_safe(result.summary()),
            scores=result.table()[list(SCORE_COLUMNS)],
            files=files,
        )
