"""Faults injected into real processes. In every case a job ends ``succeeded`` with the
same result as an undisturbed run, or ``failed`` with a reason; never lost, never stuck;
data already stored stays readable. (A worker SIGKILLed mid-job: test_integration.py.)"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from .conftest import ROOT, Environment, WorkerProcess, free_port, start_redis, torch_threads, wait_until

pytestmark = pytest.mark.integration

JOB = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "mlp", "hidden": [32]},
    "params": {"epochs": 30, "el2n_epoch": 2, "batch_size": 32},
}


class ApiProcess:
    """``infoscore api`` as a real process on a free port."""

    def __init__(self, environment: Environment, log: Path) -> None:
        self.environment = environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiProcess:
        env = self.environment.env()
        env["INFOSCORE_PORT"] = str(self.port)
        self._fh = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "api"],
            env=env,
            cwd=ROOT,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, what="api")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def _wait(client: httpx.Client, job_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        except httpx.HTTPError:
            return None
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_until(done, timeout, interval=0.5, what=f"job {job_id}")
    return result


def _progress(client: httpx.Client, job_id: str) -> int:
    return int(client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"])


def _table(client: httpx.Client, job_id: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(client.get(f"/v1/jobs/{job_id}/artifacts/scores.parquet").content))


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The undisturbed result of JOB, computed in-process through the same runner."""
    from tests.runner_helpers import make_context
    from workers.execution import per_sample_table
    from workers.runners import get_runner

    with torch_threads(1):  # as the workers run: the same float32 sums
        ctx = make_context(JOB, tmp_path_factory.mktemp("ref"))
        out = get_runner("training-dynamics").run(ctx)
    assert out.scores is not None
    return per_sample_table(ctx.dataset, out.scores, builtin=True)


def test_api_restart_mid_job(environment: Environment, tmp_path: Path, reference: pd.DataFrame) -> None:
    api = ApiProcess(environment, tmp_path / "api.log").start()
    worker = WorkerProcess(environment, tmp_path / "worker.log").start()
    try:
        client = api.client()
        job = client.post("/v1/jobs", json=JOB).json()
        wait_until(lambda: _progress(client, job["id"]) >= 2, 120, what="progress")
        api.kill()
        api = ApiProcess(environment, tmp_path / "api2.log").start()
        client = api.client()
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("running", "succeeded")
        done = _wait(client, job["id"])
        assert done["state"] == "succeeded" and done["attempts"] == 1
        pd.testing.assert_frame_equal(_table(client, job["id"]), reference, check_dtype=False)
    finally:
        worker.stop()
        api.kill()


def test_broker_restart_mid_job_keeps_queued_work(tmp_path: Path, reference: pd.DataFrame) -> None:
    """Redis with append-only persistence is SIGKILLed while one job runs and another waits
    in its queue; restarted on the same port and directory, both jobs finish."""
    broker = start_redis(tmp_path / "redis", appendonly=True)
    environment = Environment(data_dir=tmp_path / "data", broker_url=broker.url)
    api = ApiProcess(environment, tmp_path / "api.log").start()
    worker = WorkerProcess(environment, tmp_path / "worker.log").start()
    try:
        client = api.client()
        first = client.post("/v1/jobs", json=JOB).json()
        second = client.post("/v1/jobs", json={**JOB, "name": "queued behind"}).json()
        wait_until(lambda: _progress(client, first["id"]) >= 2, 120, what="progress")
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(timeout=10)
        time.sleep(1)
        assert client.get("/readyz").status_code == 503
        broker = start_redis(tmp_path / "redis", port=broker.port, appendonly=True)
        for job in (first, second):
            done = _wait(client, job["id"])
            assert done["state"] == "succeeded", done["error"]
            pd.testing.assert_frame_equal(_table(client, job["id"]), reference, check_dtype=False)
        assert client.get("/readyz").status_code == 200
    finally:
        worker.stop()
        api.kill()
        broker.proc.terminate()
        broker.proc.wait(timeout=10)


def test_broker_restart_without_persistence_resends_queued_jobs(tmp_path: Path) -> None:
    """A broker restarted empty (no append-only file, or one that never reached the disk)
    has lost the queued job's message: the reaper sees the broker's new run_id and re-sends
    it from the database at once, instead of after requeue_pending_after (an hour)."""
    broker = start_redis(tmp_path / "redis", appendonly=False)
    environment = Environment(data_dir=tmp_path / "data", broker_url=broker.url)
    api = ApiProcess(environment, tmp_path / "api.log").start()
    worker = WorkerProcess(environment, tmp_path / "worker.log").start()
    params: dict[str, Any] = {**JOB["params"], "epochs": 200}  # type: ignore[dict-item]
    long_job = {**JOB, "params": params}
    try:
        client = api.client()
        first = client.post("/v1/jobs", json=long_job).json()
        second = client.post("/v1/jobs", json={**JOB, "name": "queued behind"}).json()
        wait_until(lambda: _progress(client, first["id"]) >= 2, 120, what="progress")
        assert client.get(f"/v1/jobs/{second['id']}").json()["state"] == "queued"
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(timeout=10)
        shutil.rmtree(tmp_path / "redis")
        broker = start_redis(tmp_path / "redis", port=broker.port, appendonly=False)
        for job in (first, second):
            done = _wait(client, job["id"], timeout=120)
            assert done["state"] == "succeeded", done["error"]
        assert "the broker restarted" in (tmp_path / "worker.log").read_text()
    finally:
        worker.stop()
        api.kill()
        broker.proc.terminate()
        broker.proc.wait(timeout=10)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path, leave_bytes: int) -> Path:
    filler = directory / "filler.bin"
    free = shutil.disk_usage(directory).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 16)
        remaining = max(0, free - leave_bytes)
        while remaining > 0:
            n = min(len(chunk), remaining)
            try:
                fh.write(chunk[:n])
                fh.flush()
            except OSError:
                break
            remaining -= n
    return filler


def test_full_artifact_disk(tmp_path: Path, environment: Environment) -> None:
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        environment = Environment(
            data_dir=disk,
            broker_url=environment.broker_url,
            extra={"INFOSCORE_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"},
        )
        api = ApiProcess(environment, tmp_path / "api.log").start()
        worker = WorkerProcess(environment, tmp_path / "worker.log").start()
        try:
            client = api.client()
            small = {**JOB, "params": {"epochs": 2, "el2n_epoch": 1}}
            before = client.post("/v1/jobs", json=small).json()
            assert _wait(client, before["id"])["state"] == "succeeded"
            stored = client.get(f"/v1/jobs/{before['id']}/artifacts/scores.csv").content

            filler = _fill(disk, leave_bytes=4096)
            job = client.post("/v1/jobs", json=small).json()
            failed = _wait(client, job["id"])
            assert failed["state"] == "failed"
            assert "No space left" in failed["error"]["detail"] or "storage" in failed["error"]["type"]
            rng = np.random.default_rng(0)
            buf = io.BytesIO()
            np.savez(buf, x=rng.normal(size=(3000, 20)), y=np.arange(3000) % 2)
            up = client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())})
            assert up.status_code == 507, up.text
            assert up.headers["content-type"].startswith("application/problem+json")
            assert not list((disk / "tmp").glob("upload-*"))
            assert not [p for p in disk.rglob("*.tmp")]  # no half-written artifacts left behind

            # What was stored before stays readable; freeing space makes the service whole again.
            assert client.get(f"/v1/jobs/{before['id']}/artifacts/scores.csv").content == stored
            filler.unlink()
            retry = client.post("/v1/jobs", json=small).json()
            assert _wait(client, retry["id"])["state"] == "succeeded"
            assert client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).status_code == 201
        finally:
            worker.stop()
            api.kill()


def test_corrupt_artifacts(api: Any, worker: WorkerProcess, environment: Environment) -> None:
    small = {**JOB, "params": {"epochs": 2, "el2n_epoch": 1}}
    job = api.post("/v1/jobs", json=small).json()
    done = wait_until(
        lambda: (j := api.get(f"/v1/jobs/{job['id']}").json())["state"] == "succeeded" and j, 120, what="job"
    )
    job_dir = environment.data_dir / "jobs" / job["id"]
    summary = api.get(f"/v1/jobs/{job['id']}/artifacts/summary.json").content
    good = api.get(f"/v1/jobs/{job['id']}/result", params={"limit": 5}).json()

    (job_dir / "scores.parquet").write_bytes(b"PAR1 this is not parquet any more")
    fallback = api.get(f"/v1/jobs/{job['id']}/result", params={"limit": 5}).json()
    assert fallback["total_rows"] == good["total_rows"] == 1347
    assert fallback["columns"] == good["columns"]
    pd.testing.assert_frame_equal(pd.DataFrame(fallback["rows"]), pd.DataFrame(good["rows"]), rtol=1e-6)

    (job_dir / "scores.csv").write_bytes(b"\x00\xff garbage")
    r = api.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem+json")
    assert "damaged" in r.json()["detail"]
    # The record and the other artifacts are untouched.
    assert api.get(f"/v1/jobs/{job['id']}").json() == done
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/summary.json").content == summary

    # A damaged uploaded dataset fails the job with a reason instead of hanging it.
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(1).normal(size=(40, 3)), y=np.arange(40) % 2)
    ds = api.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).json()
    path = environment.data_dir / "datasets" / f"{ds['id']}.npz"
    path.write_bytes(path.read_bytes()[:100])
    bad = api.post("/v1/jobs", json={**small, "dataset": ds["id"], "model": {"arch": "linear"}}).json()
    ended = wait_until(
        lambda: (j := api.get(f"/v1/jobs/{bad['id']}").json())["state"] in ("failed", "succeeded") and j,
        120,
        what="job",
    )
    assert ended["state"] == "failed" and ended["error"]["detail"]


def test_corrupt_unit_cache_is_recomputed(api: Any, worker: WorkerProcess, environment: Environment) -> None:
    fcmi = {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "gaussians", "n": 80, "dim": 5, "classes": 2},
        "model": {"arch": "linear"},
        "params": {"n": [10], "k1": 3, "k2": 3, "epochs": 3, "batch_size": 16},
    }
    first = api.post("/v1/jobs", json=fcmi).json()
    done = wait_until(
        lambda: (j := api.get(f"/v1/jobs/{first['id']}").json())["state"] in ("succeeded", "failed") and j,
        180,
        what="fcmi job",
    )
    assert done["state"] == "succeeded", done["error"]
    units = sorted((environment.data_dir / "cache" / "units").glob("*.npz"))
    assert len(units) == 3  # one per (n, supersample)
    units[0].write_bytes(b"not a zip")
    again = api.post("/v1/jobs", json={**fcmi, "name": "again"}).json()
    redone = wait_until(
        lambda: (j := api.get(f"/v1/jobs/{again['id']}").json())["state"] in ("succeeded", "failed") and j,
        180,
        what="fcmi job",
    )
    assert redone["state"] == "succeeded", redone["error"]
    assert redone["summary"]["results"] == done["summary"]["results"]
    assert os.path.getsize(units[0]) > 100
