"""Runner of the ``training-dynamics`` job kind: an adapter of :func:`infoscore.training_dynamics`.

params -> :class:`infoscore.TrainingDynamicsConfig` -> the library call on the job's
device -> ``JobOutput``. The science (training, scores, ``auroc_noisy``) lives in
``infoscore.training_dynamics_protocol`` and ``infoscore.scores``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from contracts.training_dynamics import KIND, TABLE_COLUMNS

from .base import LibraryRunner


class TrainingDynamicsRunner(LibraryRunner):
    """The job's table is ``TABLE_COLUMNS``; its summary is
    :meth:`infoscore.scores.TrainingDynamicsResult.summary` (docs/jobs/training-dynamics.md)."""

    kind = KIND
    call = "training_dynamics"
    config_class = "TrainingDynamicsConfig"

    def table(self, result: Any) -> pd.DataFrame:
        table: pd.DataFrame = result.table()
        assert tuple(table.columns) == TABLE_COLUMNS
        return table
