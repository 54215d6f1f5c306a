"""The ``limit`` job kind: params -> ``infoscore.LimitConfig`` -> ``infoscore.limit`` ->
the summary, the scores table, the best-validation model and ``curves.png``.

The protocol (split, LIMIT and baseline runs, checkpoint choice, Fano's bound, the curves)
is the library's; see docs/jobs/limit.md for the contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from contracts.limit import KIND, SCORE_COLUMNS

from .base import JobContext, LibraryRunner


class LimitRunner(LibraryRunner):
    kind = KIND
    call = "limit"
    config_class = "LimitConfig"

    def table(self, result: Any) -> pd.DataFrame:
        table: pd.DataFrame = result.table()[list(SCORE_COLUMNS)]
        return table

    def files(self, ctx: JobContext, result: Any) -> dict[str, bytes | Path]:
        files: dict[str, bytes | Path] = {"model.safetensors": ctx.workdir / "model.safetensors"}
        result.save_model(ctx.workdir / "model.safetensors")
        for name, png in result.figures().items():
            path = ctx.workdir / name
            path.write_bytes(png)
            files[name] = path
        return files
