"""Runners of the ``supervision-complexity`` and ``distillation`` job kinds: adapters of
:func:`infoscore.supervision_complexity` and :func:`infoscore.distillation`
(docs/jobs/supervision-complexity.md, docs/jobs/distillation.md).

params -> config (the contract's names, plus the job seed) -> library call -> JobOutput:
the summary, ``student.safetensors`` and ``complexity.png``.
"""

from __future__ import annotations

from pathlib import Path

import infoscore
from contracts.distill import COMPLEXITY_KIND, DISTILLATION_KIND

from .base import JobContext, JobOutput, Runner, json_safe


def _output(result: infoscore.SupervisionComplexityResult | infoscore.DistillationResult) -> JobOutput:
    files: dict[str, bytes | Path] = {"student.safetensors": result.student_safetensors(), **result.figures()}
    return JobOutput(summary=json_safe(result.summary()), scores=result.table(), files=files)


class SupervisionComplexityRunner(Runner):
    """Complexity of labels, random labels and teacher soft labels w.r.t. the student's NTK."""

    kind = COMPLEXITY_KIND

    def run(self, ctx: JobContext) -> JobOutput:
        config = infoscore.SupervisionComplexityConfig(**ctx.params.model_dump(), seed=ctx.seed)
        result = infoscore.supervision_complexity(
            ctx.dataset,
            ctx.model_spec,
            config,
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        return _output(result)


class DistillationRunner(Runner):
    """Students trained with none / offline / online supervision over several seeds."""

    kind = DISTILLATION_KIND

    def run(self, ctx: JobContext) -> JobOutput:
        config = infoscore.DistillationConfig(**ctx.params.model_dump(), seed=ctx.seed)
        result = infoscore.distillation(
            ctx.dataset,
            ctx.model_spec,
            config,
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        return _output(result)
