"""Runner of the ``training-dynamics`` job kind: an adapter of :func:`infoscore.training_dynamics`.

params -> :class:`infoscore.TrainingDynamicsConfig` -> the library call on the job's
device -> ``JobOutput``. The science (training, scores, ``auroc_noisy``) lives in
``infoscore.training_dynamics_protocol`` and ``infoscore.scores``.
"""

from __future__ import annotations

import infoscore
from contracts.training_dynamics import KIND, TABLE_COLUMNS

from .base import JobContext, JobOutput, Runner, json_safe


class TrainingDynamicsRunner(Runner):
    """The job's table is ``TABLE_COLUMNS``; its summary is
    :meth:`infoscore.scores.TrainingDynamicsResult.summary` (docs/jobs/training-dynamics.md)."""

    kind = KIND

    def run(self, ctx: JobContext) -> JobOutput:
        config = infoscore.TrainingDynamicsConfig(**ctx.params.model_dump(), seed=ctx.seed)
        result = infoscore.training_dynamics(
            ctx.dataset,
            ctx.model_spec,
            config,
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        table = result.table()
        assert tuple(table.columns) == TABLE_COLUMNS
        return JobOutput(summary=json_safe(result.summary()), scores=table, files=dict(result.figures()))
