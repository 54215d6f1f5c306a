"""Hardening against real processes: quotas, retries after a broker outage, a supervisor
that heals, a broker that wants a password, no stale temp files."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import free_port, wait_until

TD = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "linear"},
    "params": {"epochs": 2, "el2n_epoch": 1},
}


def test_idempotent_retry_after_broker_outage_requeues_the_job(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = api.app.state.gateway
    real_send = gateway.send
    sent: list[str] = []

    def broken(job_id: str, device: str | None = None) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(gateway, "send", broken)
    headers = {"Idempotency-Key": "retry-after-outage"}
    first = api.post("/v1/jobs", json=TD, headers=headers)
    assert first.status_code == 503, first.text
    assert "same Idempotency-Key" in first.json()["detail"]
    [failed] = api.get("/v1/jobs").json()["items"]
    assert failed["state"] == "failed"

    def working(job_id: str, device: str | None = None) -> None:
        sent.append(job_id)
        real_send(job_id, device)

    monkeypatch.setattr(gateway, "send", working)
    retry = api.post("/v1/jobs", json=TD, headers=headers)
    assert retry.status_code == 202, retry.text
    assert retry.json()["id"] == failed["id"] and retry.json()["state"] == "queued"
    assert sent == [failed["id"]]
    # A second retry finds it queued: nothing is sent twice.
    again = api.post("/v1/jobs", json=TD, headers=headers)
    assert again.status_code == 202 and again.json()["state"] == "queued" and sent == [failed["id"]]


@pytest.mark.integration
def test_up_heals_a_killed_api_and_cleans_stale_temp_files(tmp_path: Path) -> None:
    from .test_e2e import Up, _children_of

    data_dir = tmp_path / "data"
    (data_dir / "tmp").mkdir(parents=True)
    stale = data_dir / "tmp" / "upload-left-by-a-killed-api"
    stale.write_bytes(b"x" * 1000)
    (data_dir / "jobs" / "job_x").mkdir(parents=True)
    half_written = data_dir / "jobs" / "job_x" / ".scores.csv.abc.tmp"
    half_written.write_bytes(b"partial")
    up = Up(data_dir, free_port()).start()
    try:
        assert not stale.exists() and not half_written.exists()
        assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
        client = httpx.Client(base_url=up.url, timeout=30)
        job = client.post("/v1/jobs", json=TD).json()
        buf = io.BytesIO()
        np.savez(buf, x=np.zeros((6, 2)), y=np.array([0, 1] * 3))
        assert client.post("/v1/datasets", files={"file": ("m.npz", buf.getvalue())}).status_code == 201
        private = [*data_dir.glob("datasets/*.npz"), *data_dir.glob("*.db")]
        assert len(private) == 2 and all(p.stat().st_mode & 0o077 == 0 for p in private), private

        # The broker wants the generated password: a local process without it gets nothing.
        conf = (data_dir / "broker" / "valkey.conf").read_text()
        assert (
            conf.startswith("requirepass ")
            and oct((data_dir / "broker" / "valkey.conf").stat().st_mode)[-3:] == "600"
        )
        port = int(up.banner.split("broker on 127.0.0.1:")[1].split(";")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"LLEN jobs\r\n")
            assert s.recv(128).startswith(b"-NOAUTH")

        assert up.proc is not None
        api_pid = _api_pid(up)
        assert api_pid is not None
        os.kill(api_pid, signal.SIGKILL)
        wait_until(lambda: _api_pid(up) not in (None, api_pid), 30, what="a new API process")
        wait_until(lambda: _get_ok(up.url + "/healthz"), 60, what="the restarted API")
        assert up.proc.poll() is None  # the supervisor kept the broker and worker running
        assert len(_children_of(up.proc.pid)) == 3
        done = wait_until(
            lambda: (
                (j := httpx.get(f"{up.url}/v1/jobs/{job['id']}").json())["state"] in ("succeeded", "failed")
                and j
            ),
            240,
            what="job",
        )
        assert done["state"] == "succeeded", done["error"]
    finally:
        out = up.stop()
    assert "the api exited (-9); restarting" in out


def _api_pid(up: Any) -> int | None:
    from .test_e2e import _children_of

    for pid in _children_of(up.proc.pid):
        with contextlib.suppress(OSError):
            if b"launcher.cli\0api" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_artifact_names_and_symlinks(api: Any, environment: Any) -> None:
    from store.artifacts import valid_artifact_name

    assert valid_artifact_name("scores.csv")
    assert not valid_artifact_name("scores.csv\n") and not valid_artifact_name("../x")
    job = api.post("/v1/jobs", json=TD).json()
    folder = environment.data_dir / "jobs" / job["id"]
    folder.mkdir(parents=True)
    (folder / "plot.png").write_bytes(b"png")
    (folder / "secret.txt").symlink_to("/etc/passwd")
    listed = api.get(f"/v1/jobs/{job['id']}/artifacts").json()
    assert [a["name"] for a in listed["artifacts"]] == ["plot.png"]
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/secret.txt").status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/plot.png").content == b"png"


def _app(monkeypatch: pytest.MonkeyPatch, environment: Any, **settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    for key, value in environment.env().items():
        if key.startswith("INFOSCORE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("INFOSCORE_ALLOWED_HOSTS", raising=False)
    return TestClient(create_app(ServiceSettings(**settings)), base_url="http://127.0.0.1")


def test_loopback_guard_and_host_header(monkeypatch: pytest.MonkeyPatch, environment: Any) -> None:
    with pytest.raises(ValueError, match="INFOSCORE_AUTH=required"):
        _app(monkeypatch, environment, host="0.0.0.0")
    with _app(monkeypatch, environment) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/jobs", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/v1/jobs", headers={"Host": "evil.example"}).status_code == 400


def test_keys_checked_before_the_body_and_invalid_keys_throttled(
    monkeypatch: pytest.MonkeyPatch, environment: Any
) -> None:
    with _app(
        monkeypatch, environment, auth="required", auth_failure_rate=0.01, auth_failure_burst=3
    ) as client:
        store = client.app.state.gateway.store
        _, key = store.create_key("t1")
        consumed = 0

        def body() -> Any:
            nonlocal consumed
            for _ in range(50):
                consumed += 1
                yield b"x" * 65536

        r = client.post("/v1/datasets", content=body(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 401 and consumed <= 1
        assert not any((environment.data_dir / "tmp").glob("upload-*"))
        codes = [
            client.get("/v1/jobs", headers={"Authorization": f"Bearer isk_{i}.{'x' * 5000}"}).status_code
            for i in range(6)
        ]
        assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429, 429]
        keys = client.app.state.gateway.keys
        assert len(keys._invalid) == 0  # over-long tokens are refused without a lookup or a cache entry
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_oversized_chunked_json_is_413_and_metrics_methods_bounded(api: Any) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b" " * 4096

    r = api.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
    ok = api.post("/v1/jobs", json=TD)
    assert ok.status_code == 202, ok.text  # the buffered body is replayed to the route
    for i in range(20):
        api.request(f"BOGUS{i}", "/v1/jobs")
    text = api.get("/metrics").text
    assert "BOGUS" not in text and 'method="other"' in text


def test_a_trickling_body_is_cut_off_with_408() -> None:
    import asyncio

    from service.errors import BodyLimitMiddleware

    reached: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append((await receive())["body"])

    sent: list[dict[str, Any]] = []

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.05)
            return {"type": "http.request", "body": b"{", "more_body": True}

        async def send(message: Any) -> None:
            sent.append(message)

        middleware = BodyLimitMiddleware(
            app, upload_limit=10**6, json_limit=10**6, min_rate=100, min_rate_grace=0.3
        )
        scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": []}
        await asyncio.wait_for(middleware(scope, receive, send), timeout=10)

    asyncio.run(run())
    assert sent[0]["status"] == 408 and not reached
    assert b"slower than 100 bytes/s" in sent[1]["body"]


def test_idempotency_key_with_another_device_is_a_conflict(api: Any) -> None:
    headers = {"Idempotency-Key": "device-check"}
    first = api.post("/v1/jobs", json={**TD, "device": "cpu"}, headers=headers)
    assert first.status_code == 202, first.text
    assert (
        api.post("/v1/jobs", json={**TD, "device": "cpu"}, headers=headers).json()["id"] == first.json()["id"]
    )
    other = api.post("/v1/jobs", json={**TD, "device": "cuda"}, headers=headers)
    assert other.status_code == 409 and other.json()["type"].endswith("idempotency-conflict")


def _npz_bytes(seed: int, n: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, 3)), y=np.arange(n) % 2)
    return buf.getvalue()


def test_delete_datasets_and_purge_jobs(monkeypatch: pytest.MonkeyPatch, environment: Any) -> None:
    with _app(monkeypatch, environment, auth="required") as client:
        store = client.app.state.gateway.store
        a = {"Authorization": f"Bearer {store.create_key('a')[1]}"}
        b = {"Authorization": f"Bearer {store.create_key('b')[1]}"}
        body = _npz_bytes(0)
        ds = client.post("/v1/datasets", files={"file": ("d.npz", body)}, headers=a).json()
        same = client.post("/v1/datasets", files={"file": ("d.npz", body)}, headers=b).json()
        assert same["id"] == ds["id"]  # same content, one shared file, one row per tenant
        path = environment.data_dir / "datasets" / f"{ds['id']}.npz"
        job = client.post("/v1/jobs", json={**TD, "dataset": ds["id"]}, headers=a).json()
        assert (
            client.delete(f"/v1/datasets/{ds['id']}", headers=a).status_code == 409
        )  # a queued job reads it
        assert client.delete(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
        (environment.data_dir / "jobs" / job["id"]).mkdir(parents=True)
        (environment.data_dir / "jobs" / job["id"] / "scores.csv").write_text("index\n")
        assert client.delete(f"/v1/jobs/{job['id']}?purge=true", headers=a).status_code == 204
        assert client.get(f"/v1/jobs/{job['id']}", headers=a).status_code == 404
        assert not (environment.data_dir / "jobs" / job["id"]).exists()
        assert client.delete(f"/v1/datasets/{ds['id']}", headers=a).status_code == 204
        assert client.get(f"/v1/datasets/{ds['id']}", headers=a).status_code == 404
        assert path.exists()  # tenant b still holds it
        assert client.get(f"/v1/datasets/{ds['id']}", headers=b).status_code == 200
        assert client.delete(f"/v1/datasets/{ds['id']}", headers=b).status_code == 204
        assert not path.exists()


def test_purge_of_a_running_job_cancels_first(api: Any) -> None:
    job = api.post("/v1/jobs", json=TD).json()
    store = api.app.state.gateway.store
    assert store.claim_job(job["id"], "w1", stale_after=60)
    r = api.delete(f"/v1/jobs/{job['id']}?purge=true")
    assert r.status_code == 409 and "cancellation was requested" in r.json()["detail"]
    assert store.get_job(job["id"])["cancel_requested"] is True
    store.finish(job["id"], "cancelled")
    assert api.delete(f"/v1/jobs/{job['id']}?purge=true").status_code == 204


def test_storage_quota_per_tenant(monkeypatch: pytest.MonkeyPatch, environment: Any) -> None:
    first, second = _npz_bytes(1, 40), _npz_bytes(2, 40)
    with _app(monkeypatch, environment, max_stored_bytes=len(first) + len(second) // 2) as client:
        assert client.post("/v1/datasets", files={"file": ("a.npz", first)}).status_code == 201
        over = client.post("/v1/datasets", files={"file": ("b.npz", second)})
        assert over.status_code == 413 and "INFOSCORE_MAX_STORED_BYTES" in over.json()["detail"]
        assert not any((environment.data_dir / "tmp").glob("upload-*"))


def test_retention_deletes_old_jobs_and_datasets(api: Any, environment: Any) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from store.db import DatasetRow, JobRow, utcnow
    from workers.reaper import apply_retention
    from workers.settings import WorkerSettings

    store = api.app.state.gateway.store
    ds = api.post("/v1/datasets", files={"file": ("d.npz", _npz_bytes(3))}).json()
    old, recent = (api.post("/v1/jobs", json=TD).json() for _ in range(2))
    for job in (old, recent):
        store.request_cancel(job["id"])
        (environment.data_dir / "jobs" / job["id"]).mkdir(parents=True)
    with store.session() as s:
        s.execute(
            update(JobRow).where(JobRow.id == old["id"]).values(finished_at=utcnow() - timedelta(days=8))
        )
        s.execute(
            update(DatasetRow)
            .where(DatasetRow.id == ds["id"])
            .values(created_at=utcnow() - timedelta(days=40))
        )
    settings = WorkerSettings(data_dir=environment.data_dir, job_retention_days=7, dataset_retention_days=30)
    assert apply_retention(store, settings) == {"jobs_expired": 1, "datasets_expired": 1}
    assert api.get(f"/v1/jobs/{old['id']}").status_code == 404
    assert not (environment.data_dir / "jobs" / old["id"]).exists()
    assert api.get(f"/v1/jobs/{recent['id']}").status_code == 200
    assert api.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert apply_retention(store, WorkerSettings(data_dir=environment.data_dir)) == {
        "jobs_expired": 0,
        "datasets_expired": 0,
    }


def test_readyz_checks_the_broker_one_at_a_time(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    import service.routes.health as app_module

    inside = 0
    most = 0
    calls = 0
    lock = threading.Lock()

    def slow_down_broker(gw: Any, timeout: float = 2.0) -> None:
        nonlocal inside, most, calls
        with lock:
            inside += 1
            calls += 1
            most = max(most, inside)
        time.sleep(0.5)
        with lock:
            inside -= 1
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(app_module, "_ping_broker", slow_down_broker)
    assert api.get("/readyz").status_code == 503  # the first check waits for its answer
    codes: list[int] = []
    calls = 0
    threads = [
        threading.Thread(target=lambda: codes.append(api.get("/readyz").status_code)) for _ in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One check at a time; pollers that arrive meanwhile get its last answer, not a queue.
    assert codes == [503] * 12 and most == 1 and calls < 12
    monkeypatch.setattr(app_module, "_ping_broker", lambda gw, timeout=2.0: None)
    assert api.get("/readyz").status_code == 200  # recovery shows at once


def test_half_sent_headers_are_cut_off(tmp_path: Path) -> None:
    """A real API process closes a connection whose request headers stay incomplete past
    INFOSCORE_HEADER_TIMEOUT, and still serves complete requests (also kept alive)."""
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFOSCORE_")}
    env.update(
        INFOSCORE_PORT=str(port),
        INFOSCORE_DATA_DIR=str(tmp_path / "data"),
        INFOSCORE_BROKER_URL="redis://127.0.0.1:1/0",
        INFOSCORE_HEADER_TIMEOUT="1.5",
    )
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "api"], cwd=ROOT, env=env)
    try:
        wait_until(lambda: _get_ok(f"http://127.0.0.1:{port}/healthz"), 60, what="api")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: incomplete
            started = time.monotonic()
            assert s.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < 15
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert [client.get("/healthz").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
