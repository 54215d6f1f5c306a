"""The ``label-issues`` job kind: params -> ``infoscore.LabelIssuesConfig`` ->
``infoscore.label_issues`` -> the summary, the scores table, ``decisions.csv`` and (for a
built-in source) ``source.npz``, the arrays a derived dataset is cut from
(docs/jobs/label-issues.md).
"""

from __future__ import annotations

from pathlib import Path

import infoscore
from contracts.label_issues import DECISIONS_ARTIFACT, KIND, SOURCE_ARTIFACT
from infoscore.label_issues import source_npz

from .base import JobContext, JobOutput, Runner, json_safe


class LabelIssuesRunner(Runner):
    kind = KIND

    def run(self, ctx: JobContext) -> JobOutput:
        config = infoscore.LabelIssuesConfig(**ctx.params.model_dump(), seed=ctx.seed)
        result = infoscore.label_issues(
            ctx.dataset,
            ctx.model_spec,
            config,
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        files: dict[str, bytes | Path] = {DECISIONS_ARTIFACT: result.decisions_csv(), **result.figures()}
        if not isinstance(ctx.request.dataset, str):  # an upload is already stored as such
            files[SOURCE_ARTIFACT] = source_npz(ctx.dataset)
        return JobOutput(summary=json_safe(result.summary()), scores=result.table(), files=files)
