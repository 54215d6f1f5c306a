"""Runner of the ``fcmi-bound`` job kind: an adapter of ``infoscore.fcmi`` (a fan-out kind).

The service fans the job out through ``plan`` / ``run_unit`` / ``reduce``, which call the
library's pure ``fcmi.plan`` / ``fcmi.run_unit`` / ``fcmi.reduce``; ``run`` is the
in-process ``infoscore.fcmi_bound`` (the same three). See ``docs/jobs/fcmi-bound.md``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from contracts.fcmi import KIND
from infoscore import fcmi
from infoscore.fcmi_config import FcmiConfig

from .base import JobContext, JobOutput, Runner, Unit, json_safe


def _config(ctx: JobContext) -> FcmiConfig:
    return FcmiConfig(**ctx.params.model_dump(), seed=ctx.seed)


def _output(result: fcmi.FcmiResult) -> JobOutput:
    return JobOutput(
        summary=json_safe(result.summary()),
        scores=result.table(),
        files={**result.data_files(), **result.figures()},
    )


class FcmiRunner(Runner):
    """plan -> len(n) * k1 units of k2 trainings; run_unit -> predictions; reduce -> bound vs gap."""

    kind = KIND

    def unit_scope(self, job_fingerprint: str) -> str:
        # Unit.params hold everything a unit's result depends on (the library's FcmiUnit
        # plus the dataset reference): units are shared by every fcmi-bound job with the
        # same (dataset, n, supersample, k2, recipe, eval_epochs), whatever its other n
        # values, k1 or estimator. Bump the version when the unit's algorithm or layout
        # changes, to retire old cache entries
        # (v2: one unit = the k2 selector draws of one supersample, trained batched).
        return "fcmi-bound/unit-v2"

    def plan(self, ctx: JobContext) -> list[Unit]:
        """The library's units, each with the job's dataset reference added to its params
        (so the content key tells datasets apart; ``run_unit`` ignores it)."""
        ref = ctx.request.dataset
        dataset = ref if isinstance(ref, str) else ref.model_dump(mode="json")
        units = fcmi.plan(ctx.dataset, ctx.model_spec, _config(ctx))
        return [Unit(name=u.name, params={"dataset": dataset, **u.params()}) for u in units]

    def run_unit(self, ctx: JobContext, unit: Unit) -> dict[str, np.ndarray]:
        """Reads ``unit.params`` only (and the dataset): no plan."""
        return fcmi.run_unit(
            ctx.dataset,
            fcmi.FcmiUnit.from_params(unit.name, unit.params),
            device=ctx.device,
            should_stop=ctx.should_stop,
        )

    def reduce(self, ctx: JobContext, results: Mapping[str, Mapping[str, np.ndarray]]) -> JobOutput:
        return _output(fcmi.reduce(ctx.dataset, ctx.model_spec, _config(ctx), results))

    def run(self, ctx: JobContext) -> JobOutput:
        """In-process: every unit in turn (progress counts units), then reduce."""
        result = fcmi.fcmi_bound(
            ctx.dataset,
            ctx.model_spec,
            _config(ctx),
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        return _output(result)
