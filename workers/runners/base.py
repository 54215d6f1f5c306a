"""The runner interface: how a job kind turns a validated request into results.

A runner is thin: it loads nothing itself (the task hands it a ``JobContext`` with the
dataset already loaded and validated), calls ``infoscore`` functions, and returns a
``JobOutput``. The task layer (``workers.tasks``) writes artifacts atomically, records
state, progress and heartbeats.

Two shapes:

* single-task kinds implement ``run(ctx) -> JobOutput``;
* fan-out kinds (``contracts.jobs.FANOUT_KINDS``) implement ``plan(ctx) -> list[Unit]``,
  ``run_unit(ctx, unit) -> dict[str, np.ndarray]`` and
  ``reduce(ctx, results) -> JobOutput``. Each unit is independent and idempotent; its
  result is cached under a content key, so a re-submitted identical job reuses it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contracts.jsonsafe import json_safe

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from contracts.jobs import JobRequest
    from infoscore.data import Dataset


@dataclass
class JobContext:
    """Everything a runner may use. ``request`` is the validated contracts model (one
    member of the ``contracts.jobs.JobRequest`` union; a runner narrows ``params`` to its
    own kind's model)."""

    job_id: str
    request: JobRequest
    dataset: Dataset
    device: torch.device
    progress: Callable[[int, int], None]
    should_stop: Callable[[], bool]
    workdir: Path  # scratch space for files the runner returns in JobOutput.files
    data_dir: Path | None = None  # the artifact store's root (read-only use: earlier jobs' artifacts)

    @property
    def params(self) -> Any:
        return self.request.params

    @property
    def model_spec(self) -> dict[str, Any]:
        return dict(self.request.model.model_dump())

    @property
    def seed(self) -> int:
        return int(self.request.seed)


@dataclass
class JobOutput:
    """What a job produced.

    summary: JSON-able dict (becomes ``summary.json`` and the job's ``summary``).
    scores: per-sample table, one row per training sample in upload order, with the
        job's score columns; the task layer adds ``index``, ``id``, ``label`` and
        ``label_noisy`` in front and writes ``scores.csv`` and ``scores.parquet``.
    files: extra artifacts, name -> bytes or a path to a file in ``ctx.workdir``.
    """

    summary: dict[str, Any]
    scores: pd.DataFrame | None = None
    files: dict[str, bytes | Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One independent piece of a fan-out job. ``params`` must be JSON-able and hold
    everything ``run_unit`` needs besides the job's dataset: the worker stores them beside
    the unit's cache key at fan-out and runs the unit from them, without a new plan."""

    name: str
    params: dict[str, Any]

    def key(self, job_fingerprint: str) -> str:
        """Content key: same job inputs + same unit params -> same cached result."""
        blob = json.dumps({"job": job_fingerprint, "unit": self.params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Runner:
    """Base class; subclasses set ``kind`` (the ``KIND`` of their contracts module; the
    registry in ``workers.runners`` is keyed by the same constants, and
    tests/test_vocabulary.py checks that the two agree) and implement ``run`` or the
    fan-out trio."""

    kind: ClassVar[str] = ""

    def run(self, ctx: JobContext) -> JobOutput:
        raise NotImplementedError

    def unit_scope(self, job_fingerprint: str) -> str:
        """What unit content keys are scoped by. Default: the whole request, so only an
        identical job reuses units. A runner whose ``Unit.params`` hold everything that
        determines a unit's result may return a constant, so jobs that differ elsewhere
        (another ``n`` list, more draws) share their common units."""
        return job_fingerprint

    def plan(self, ctx: JobContext) -> list[Unit]:
        raise NotImplementedError

    def run_unit(self, ctx: JobContext, unit: Unit) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reduce(self, ctx: JobContext, results: Mapping[str, Mapping[str, np.ndarray]]) -> JobOutput:
        """results maps unit name -> what run_unit returned (for every planned unit)."""
        raise NotImplementedError


class LibraryRunner(Runner):
    """A single-task kind as an adapter of one library call: params -> config -> the call on
    the job's device -> ``JobOutput``. Subclasses name the call and its config class in
    ``infoscore`` (``call``, ``config_class``); they override ``config`` when params need a
    mapping, ``table`` and ``files`` when the job writes more than the result's table and
    figures. ``infoscore`` is read at run time, in the worker child: importing a runner
    loads no torch."""

    call: ClassVar[str] = ""
    config_class: ClassVar[str] = ""

    def config(self, ctx: JobContext) -> Any:
        import infoscore

        return getattr(infoscore, self.config_class)(**ctx.params.model_dump(), seed=ctx.seed)

    def run(self, ctx: JobContext) -> JobOutput:
        import infoscore

        result = getattr(infoscore, self.call)(
            ctx.dataset,
            ctx.model_spec,
            self.config(ctx),
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        return JobOutput(
            summary=json_safe(result.summary()), scores=self.table(result), files=self.files(ctx, result)
        )

    def table(self, result: Any) -> pd.DataFrame | None:
        table: pd.DataFrame | None = result.table()
        return table

    def files(self, ctx: JobContext, result: Any) -> dict[str, bytes | Path]:
        return dict(result.figures())


__all__ = ["JobContext", "JobOutput", "LibraryRunner", "Runner", "Unit", "json_safe"]
