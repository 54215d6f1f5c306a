"""Runners of the ``supervision-complexity`` and ``distillation`` job kinds: adapters of
:func:`infoscore.supervision_complexity` and :func:`infoscore.distillation`
(docs/jobs/supervision-complexity.md, docs/jobs/distillation.md): the summary,
``student.safetensors`` and ``complexity.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts.distill import COMPLEXITY_KIND, DISTILLATION_KIND

from .base import JobContext, LibraryRunner


class _StudentRunner(LibraryRunner):
    def files(self, ctx: JobContext, result: Any) -> dict[str, bytes | Path]:
        return {"student.safetensors": result.student_safetensors(), **result.figures()}


class SupervisionComplexityRunner(_StudentRunner):
    """Complexity of labels, random labels and teacher soft labels w.r.t. the student's NTK."""

    kind = COMPLEXITY_KIND
    call = "supervision_complexity"
    config_class = "SupervisionComplexityConfig"


class DistillationRunner(_StudentRunner):
    """Students trained with none / offline / online supervision over several seeds."""

    kind = DISTILLATION_KIND
    call = "distillation"
    config_class = "DistillationConfig"
