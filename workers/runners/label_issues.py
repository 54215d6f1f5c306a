"""The ``label-issues`` job kind: params -> ``infoscore.LabelIssuesConfig`` ->
``infoscore.label_issues`` -> the summary, the scores table, ``decisions.csv`` and (for a
built-in source) ``source.npz``, the arrays a derived dataset is cut from
(docs/jobs/label-issues.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts.label_issues import DECISIONS_ARTIFACT, KIND, SOURCE_ARTIFACT

from .base import JobContext, LibraryRunner


class LabelIssuesRunner(LibraryRunner):
    kind = KIND
    call = "label_issues"
    config_class = "LabelIssuesConfig"

    def files(self, ctx: JobContext, result: Any) -> dict[str, bytes | Path]:
        from infoscore.label_issues import source_npz

        files: dict[str, bytes | Path] = {DECISIONS_ARTIFACT: result.decisions_csv(), **result.figures()}
        if not isinstance(ctx.request.dataset, str):  # an upload is already stored as such
            files[SOURCE_ARTIFACT] = source_npz(ctx.dataset)
        return files
