"""What a worker does with a job id: claim, load, call the runner, write, record.

Nothing scientific lives here. The Celery tasks in ``workers.tasks`` are one-line calls
into this module, so the same code is exercised by the integration tests through a real
worker process.

Idempotency: a job is claimed with one conditional UPDATE (queued, or running with a
stopped heartbeat); a duplicate delivery finds it claimed or finished and does nothing.
Artifacts are written under the job id with atomic renames, so a rerun overwrites whole
files only.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contracts import tasks as names
from contracts.jobs import FANOUT_KINDS, parse_job_request
from contracts.jsonsafe import json_safe
from contracts.problems import problem
from contracts.records import TERMINAL_STATES
from store.artifacts import ArtifactStore, atomic_copy, atomic_write_bytes
from store.db import JobStore
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from infoscore.data import Dataset
    from workers.runners.base import JobContext, JobOutput, Runner, Unit

log = logging.getLogger("infoscore.worker")

SendTask = Callable[..., Any]


def _unit_scope(runner: Runner, job: dict[str, Any]) -> str:
    """Unit cache keys are per tenant: a tenant never finds, and so never learns about,
    units another tenant's jobs computed."""
    return f"{job['tenant']}/{runner.unit_scope(job['fingerprint'])}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Background thread: refreshes the job's heartbeat and watches for a cancel request."""

    def __init__(self, beat: Callable[[], bool], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._beat():
                    self.cancelled.set()
            except Exception:  # a DB hiccup must not kill the job; the next beat retries
                log.warning("heartbeat failed", exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Throttled:
    """Progress callback that writes at most every ``interval`` seconds (and the last one)."""

    def __init__(self, write: Callable[[int, int], None], interval: float = 0.5) -> None:
        self._write = write
        self._interval = interval
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last >= self._interval:
            self._last = now
            try:
                self._write(done, total)
            except Exception:
                log.warning("progress write failed", exc_info=True)


def choose_device(requested: str, worker_default: str) -> torch.device:
    """Device chosen lazily in the child: never touch CUDA in the worker parent."""
    from infoscore.training import resolve_device

    if requested == "auto" and worker_default == "cpu":
        return resolve_device("cpu")
    return resolve_device(requested)


class Executor:
    def __init__(self, settings: WorkerSettings, send_task: SendTask) -> None:
        self.settings = settings
        self.store = JobStore(settings.resolved_database_url())
        self.artifacts = ArtifactStore(settings.data_dir)
        self.send_task = send_task
        self.name = worker_name()

    # ------------------------------------------------------------------ context
    def _context(self, job: dict[str, Any], workdir: Path, hb: Heartbeat | None) -> JobContext:
        from workers.datasets import load_dataset
        from workers.runners.base import JobContext

        req = parse_job_request(job["request"])
        dataset = load_dataset(req.dataset, self.settings.data_dir)
        device = choose_device(req.device, self.settings.worker_device)
        job_id = job["id"]
        return JobContext(
            job_id=job_id,
            request=req,
            dataset=dataset,
            device=device,
            progress=Throttled(lambda d, t: self.store.set_progress(job_id, d, t)),
            should_stop=(hb.cancelled.is_set if hb is not None else (lambda: False)),
            workdir=workdir,
            data_dir=self.settings.data_dir,
        )

    # ---------------------------------------------------------------- run_job
    def run_job(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        if job is None:
            log.warning("job %s not found; dropping the message", job_id)
            return "missing"
        if job["state"] in TERMINAL_STATES:
            return job["state"]
        if job["cancel_requested"]:
            self.store.finish(job_id, "cancelled")
            return "cancelled"
        if not self.store.claim_job(job_id, self.name, stale_after=self.settings.stale_after):
            return "not-claimed"
        job = self.store.get_job(job_id)
        assert job is not None
        if job["attempts"] > self.settings.max_attempts:
            self._fail(
                job_id,
                problem(
                    500,
                    f"The job's worker was lost {job['attempts'] - 1} times (killed, out of memory or "
                    f"crashed); giving up after max_attempts={self.settings.max_attempts}.",
                    type_="worker-lost",
                ),
            )
            return "failed"
        log.info("running job %s (%s), attempt %d", job_id, job["kind"], job["attempts"])
        with (
            Heartbeat(
                lambda: self.store.heartbeat(job_id, self.name), self.settings.heartbeat_interval
            ) as hb,
            tempfile.TemporaryDirectory(dir=self.artifacts.tmp_dir()) as tmp,
        ):
            return self._guarded(job_id, lambda: self._run_job_body(job, Path(tmp), hb), owner=self.name)

    def _run_job_body(self, job: dict[str, Any], workdir: Path, hb: Heartbeat) -> str:
        from workers.runners import get_runner

        ctx = self._context(job, workdir, hb)
        runner = get_runner(job["kind"])
        if job["kind"] in FANOUT_KINDS:
            return self._start_fanout(job, runner, ctx)
        started = time.perf_counter()
        output = runner.run(ctx)
        output.summary.setdefault("seconds", round(time.perf_counter() - started, 3))
        return self._complete(job, ctx, output, owner=self.name)

    def _guarded(self, job_id: str, body: Callable[[], str], owner: str | None = None) -> str:
        """Map every outcome of a job body to a terminal state with a problem+json.

        With ``owner``, terminal writes only land while that worker still owns the running
        job: a worker that lost its lease (the reaper gave the job to another) writes
        nothing and stops."""
        from billiard.exceptions import SoftTimeLimitExceeded  # type: ignore[import-untyped]

        from infoscore.errors import Cancelled, InvalidInputError, NumericalError

        try:
            return body()
        except Cancelled:
            if self.store.finish(job_id, "cancelled", worker=owner):
                return "cancelled"
            return "lost-lease"
        except InvalidInputError as exc:
            param = getattr(exc, "param", None)
            self._fail(job_id, problem(422, str(exc), type_="invalid-input", param=param), owner)
        except NumericalError as exc:
            self._fail(job_id, problem(422, str(exc), type_="numerical-error"), owner)
        except SoftTimeLimitExceeded:
            self._fail(
                job_id,
                problem(
                    500,
                    f"The job ran past the time limit of {self.settings.job_time_limit} s "
                    "(INFOSCORE_JOB_TIME_LIMIT).",
                    type_="time-limit",
                ),
                owner,
            )
        except MemoryError:
            self._fail(
                job_id, problem(500, "The job ran out of memory on the worker.", type_="out-of-memory"), owner
            )
        except OSError as exc:
            self._fail(
                job_id, problem(500, f"Storage error while running the job: {exc}", type_="storage"), owner
            )
        except Exception as exc:
            log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
            self._fail(
                job_id,
                problem(500, f"The job failed: {type(exc).__name__}: {exc}", type_="job-error"),
                owner,
            )
        return "failed"

    def _fail(self, job_id: str, error: dict[str, Any], owner: str | None = None) -> None:
        self.store.finish(job_id, "failed", error={**error, "instance": f"/v1/jobs/{job_id}"}, worker=owner)

    # ----------------------------------------------------------------- output
    def _complete(
        self, job: dict[str, Any], ctx: JobContext, output: JobOutput, owner: str | None = None
    ) -> str:
        job_id = job["id"]
        summary = dict(output.summary)
        ds = ctx.dataset
        summary.setdefault("dataset", {"n_train": ds.n_train, "n_test": ds.n_test, "n_classes": ds.n_classes})
        summary["device"] = str(ctx.device)
        written: list[str] = []
        if output.scores is not None:
            table = per_sample_table(
                ds, output.scores, builtin=not isinstance(job["request"]["dataset"], str)
            )
            buf = io.StringIO()
            table.to_csv(buf, index=False)
            self.artifacts.write(job_id, "scores.csv", buf.getvalue().encode())
            pq = io.BytesIO()
            table.to_parquet(pq, index=False)
            self.artifacts.write(job_id, "scores.parquet", pq.getvalue())
            written += ["scores.csv", "scores.parquet"]
            if not isinstance(job["request"]["dataset"], str):  # uploads: the gateway reads the file
                from .thumbnails import NAME, sample_images

                if (images := sample_images(ds)) is not None:
                    self.artifacts.write(job_id, NAME, images)
                    written.append(NAME)
        for name, content in output.files.items():
            if isinstance(content, bytes | bytearray):
                self.artifacts.write(job_id, name, bytes(content))
            else:
                atomic_copy(Path(content), self.artifacts.artifact_path(job_id, name))
            written.append(name)
        # json_safe: NaN/inf -> null and numpy -> Python, so the file is strict JSON.
        summary_bytes = json.dumps(json_safe(summary), indent=2, allow_nan=False).encode()
        self.artifacts.write(job_id, "summary.json", summary_bytes)
        written.append("summary.json")
        # Round-trip through JSON so the stored summary is exactly the artifact's.
        if not self.store.finish(
            job_id, "succeeded", summary=json.loads(summary_bytes), artifacts=sorted(written), worker=owner
        ):
            log.warning("job %s: result not recorded (cancelled, or no longer this worker's)", job_id)
            return "lost-lease"
        log.info("job %s succeeded", job_id)
        return "succeeded"

    # ---------------------------------------------------------------- fan-out
    def _start_fanout(self, job: dict[str, Any], runner: Runner, ctx: JobContext) -> str:
        job_id = job["id"]
        units = runner.plan(ctx)
        rows = []
        for unit in units:
            key = unit.key(_unit_scope(runner, job))
            cached = self._unit_cached(key)
            if not cached:
                # The unit's own params beside its cache entry: run_unit reads them instead
                # of planning the whole job again.
                atomic_write_bytes(
                    self._unit_params_path(key), json.dumps(unit.params, sort_keys=True).encode()
                )
            rows.append((unit.name, key, cached))
        self.store.add_units(job_id, rows)
        state_units = self.store.units(job_id)
        pending = [u["name"] for u in state_units if u["state"] != "done"]
        done = len(state_units) - len(pending)
        self.store.set_progress(job_id, done, len(state_units))
        log.info("job %s fans out: %d units, %d cached", job_id, len(state_units), done)
        if not pending:
            return self._maybe_reduce(job_id)
        self.store.mark_units_sent(job_id, pending)
        for name in pending:
            self.send_task(names.RUN_UNIT, args=[job_id, name], queue=names.job_queue(ctx.request.device))
        return "fanned-out"

    def _unit_params_path(self, key: str) -> Path:
        return self.artifacts.unit_path(key).with_suffix(".json")

    def _load_unit(self, job: dict[str, Any], name: str, runner: Runner) -> Unit:
        """The unit ``name`` of ``job``, from the params ``_start_fanout`` stored beside its
        cache key: a unit runs from its own params, never from a new plan of the job."""
        from workers.runners.base import Unit

        row = next((u for u in self.store.units(job["id"]) if u["name"] == name), None)
        if row is None:
            raise RuntimeError(f"unit {name!r} is not a unit of job {job['id']}")
        path = self._unit_params_path(row["key"])
        try:
            unit = Unit(name=name, params=json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"unit {name!r}: its stored parameters ({path.name}) are missing or unreadable "
                f"({type(exc).__name__}); submit the job again to re-plan it"
            ) from exc
        if unit.key(_unit_scope(runner, job)) != row["key"]:
            raise RuntimeError(
                f"unit {name!r}: its stored parameters ({path.name}) do not hash to its key; "
                "submit the job again to re-plan it"
            )
        return unit

    def _unit_cached(self, key: str) -> bool:
        path = self.artifacts.unit_path(key)
        if not path.exists():
            return False
        try:
            with np.load(path, allow_pickle=False) as z:
                z.files  # noqa: B018 - opening validates the zip directory
            return True
        except Exception:
            log.warning("unit cache %s unreadable; recomputing", path)
            return False

    def run_unit(self, job_id: str, name: str) -> str:
        job = self.store.get_job(job_id)
        if job is None or job["state"] != "running":
            return "skipped"
        if job["cancel_requested"]:
            self.store.finish(job_id, "cancelled")
            return "cancelled"
        if not self.store.claim_unit(job_id, name, stale_after=self.settings.stale_after):
            return "not-claimed"
        log.info("job %s: unit %s claimed", job_id, name)

        def beat() -> bool:
            self.store.unit_heartbeat(job_id, name)
            current = self.store.get_job(job_id)
            return bool(current and current["cancel_requested"])

        with (
            Heartbeat(beat, self.settings.heartbeat_interval) as hb,
            tempfile.TemporaryDirectory(dir=self.artifacts.tmp_dir()) as tmp,
        ):
            return self._guarded(job_id, lambda: self._run_unit_body(job, name, Path(tmp), hb))

    def _run_unit_body(self, job: dict[str, Any], name: str, workdir: Path, hb: Heartbeat) -> str:
        from workers.runners import get_runner

        job_id = job["id"]
        runner = get_runner(job["kind"])
        ctx = self._context(job, workdir, hb)
        unit = self._load_unit(job, name, runner)
        key = unit.key(_unit_scope(runner, job))
        if not self._unit_cached(key):
            ctx.progress = lambda d, t: None  # job progress counts units, not unit steps
            result = runner.run_unit(ctx, unit)
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in result.items()})  # type: ignore[arg-type]
            atomic_write_bytes(self.artifacts.unit_path(key), buf.getvalue())
        done, total = self.store.finish_unit(job_id, name)
        if done == total:
            return self._maybe_reduce(job_id, ctx=ctx, runner=runner)
        return "unit-done"

    def reduce_job(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        if job is None or job["state"] != "running":
            return "skipped"
        return self._maybe_reduce(job_id)

    def _maybe_reduce(self, job_id: str, ctx: JobContext | None = None, runner: Runner | None = None) -> str:
        if not self.store.claim_reduce(job_id):
            return "reduce-claimed-elsewhere"
        job = self.store.get_job(job_id)
        assert job is not None

        def body() -> str:
            from workers.runners import get_runner

            with tempfile.TemporaryDirectory(dir=self.artifacts.tmp_dir()) as tmp:
                local_ctx = ctx or self._context(job, Path(tmp), None)
                local_runner = runner or get_runner(job["kind"])
                results: dict[str, dict[str, np.ndarray]] = {}
                for unit in self.store.units(job_id):
                    with np.load(self.artifacts.unit_path(unit["key"]), allow_pickle=False) as z:
                        results[unit["name"]] = {k: z[k] for k in z.files}
                started = time.perf_counter()
                output = local_runner.reduce(local_ctx, results)
                output.summary.setdefault("reduce_seconds", round(time.perf_counter() - started, 3))
                return self._complete(job, local_ctx, output)

        try:
            with Heartbeat(lambda: self.store.heartbeat(job_id, self.name), self.settings.heartbeat_interval):
                return self._guarded(job_id, body)
        finally:
            self.store.release_reduce(job_id)


def per_sample_table(ds: Dataset, scores: pd.DataFrame, *, builtin: bool) -> pd.DataFrame:
    """Prefix the runner's score columns with index, id, label and label_noisy."""
    import pandas as pd

    if len(scores) != ds.n_train:
        raise RuntimeError(f"runner returned {len(scores)} score rows for {ds.n_train} training samples")
    front: dict[str, Any] = {"index": np.arange(ds.n_train)}
    if ds.ids is not None:
        front["id"] = ds.ids
    front["label"] = ds.y_train
    if builtin and ds.noisy_mask is not None:
        front["label_noisy"] = ds.noisy_mask.astype(bool)
    table = pd.DataFrame(front)
    scores = scores.reset_index(drop=True)
    for col in scores.columns:
        table[col] = scores[col].to_numpy()
    return table
