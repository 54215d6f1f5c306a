"""End to end over HTTP through ``infoscore up`` (bundled valkey broker, worker, API,
SQLite): upload, submit, poll, fetch; Ctrl-C stops everything; a restart on the same data
dir shows the same jobs and artifacts; a job interrupted by a stop finishes after restart."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration


class Up:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.banner = ""

    def start(self) -> Up:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFOSCORE_")}
        env.update(
            {
                "INFOSCORE_HEARTBEAT_INTERVAL": "0.5",
                "INFOSCORE_STALE_AFTER": "4",
                "INFOSCORE_REAPER_INTERVAL": "1",
                "INFOSCORE_TORCH_THREADS": "1",
                "INFOSCORE_WORKER_STOP_GRACE": "1",
            }
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher.cli",
                "up",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--log-dir",
                str(self.data_dir / "logs"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        seen: list[str] = []
        while not seen or ("infoscore is up at" not in seen[-1] and seen[-1]):
            seen.append(self.proc.stdout.readline())
        assert "infoscore is up at" in seen[-1], "".join(seen)
        self.banner = seen[-1]
        return self

    def stop(self) -> str:
        """Ctrl-C: returns what the supervisor printed while stopping."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out
        return out


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    service = Up(tmp_path / "data", free_port()).start()
    yield service
    if service.proc is not None and service.proc.poll() is None:
        service.stop()


def _wait(client: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_until(done, timeout, interval=0.5, what=f"job {job_id}")
    return result


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_up_upload_run_stop_restart(up: Up) -> None:
    client = httpx.Client(base_url=up.url, timeout=30)
    assert client.get("/readyz").json()["status"] == "ready"
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        x=rng.normal(size=(80, 6)),
        y=np.arange(80) % 2,
        x_test=rng.normal(size=(20, 6)),
        y_test=np.arange(20) % 2,
    )
    ds = client.post("/v1/datasets", files={"file": ("mine.npz", buf.getvalue())})
    assert ds.status_code == 201, ds.text
    bad = client.post("/v1/datasets", files={"file": ("bad.npz", b"PK\x03\x04oops")})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")

    body = {
        "kind": "training-dynamics",
        "dataset": ds.json()["id"],
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {"epochs": 3, "el2n_epoch": 1, "batch_size": 16},
    }
    job = client.post("/v1/jobs", json=body).json()
    done = _wait(client, job["id"])
    assert done["state"] == "succeeded", done["error"]
    csv = client.get(f"/v1/jobs/{job['id']}/artifacts/scores.csv").text.splitlines()
    assert len(csv) == 81
    assert csv[0] == "index,label,loss,margin,el2n,grand,forgetting_events,never_learned"  # no label_noisy
    artifacts = {n: client.get(f"/v1/jobs/{job['id']}/artifacts/{n}").content for n in done["artifacts"]}

    assert up.proc is not None
    children = _children_of(up.proc.pid)
    assert len(children) == 3  # broker, worker, api
    out = up.stop()
    assert "stopped" in out
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)

    up.start()
    client = httpx.Client(base_url=up.url, timeout=30)
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again == done
    for name, content in artifacts.items():
        assert client.get(f"/v1/jobs/{job['id']}/artifacts/{name}").content == content
    assert client.get(f"/v1/datasets/{ds.json()['id']}").json()["n_train"] == 80


def test_job_interrupted_by_stop_finishes_after_restart(up: Up) -> None:
    client = httpx.Client(base_url=up.url, timeout=30)
    body = {
        "kind": "training-dynamics",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [64]},
        "params": {"epochs": 120, "el2n_epoch": 1, "batch_size": 32},
    }
    job = client.post("/v1/jobs", json=body).json()
    wait_until(
        lambda: client.get(f"/v1/jobs/{job['id']}").json()["progress"]["done"] >= 1, 120, what="progress"
    )
    up.stop()
    time.sleep(0.5)
    up.start()
    client = httpx.Client(base_url=up.url, timeout=30)
    done = _wait(client, job["id"], timeout=400)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] >= 2
