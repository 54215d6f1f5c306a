"""Tenants and keys: 401 without a valid key, 404 for another tenant's ids, 429 past the
rate and active-job limits, and the refusal to bind beyond loopback without keys."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from .conftest import ROOT, Environment

TD = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits"},
    "model": {"arch": "linear"},
    "params": {"epochs": 1, "el2n_epoch": 0},
}


@pytest.fixture
def secured(environment: Environment, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    for key, value in environment.env().items():
        if key.startswith("INFOSCORE_"):
            monkeypatch.setenv(key, value)
    settings = ServiceSettings(auth="required", rate_limit=2, rate_burst=8, max_active_jobs=3)
    app = create_app(settings)
    with TestClient(app) as client:
        yield client, app.state.gateway.store


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_and_tenant_isolation(secured: tuple[Any, Any]) -> None:
    client, store = secured
    _, key_a = store.create_key("alpha")
    key_b_id, key_b = store.create_key("beta")

    r = client.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/jobs", headers=_h("isk_bogus.key")).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/healthz").status_code == 200  # health stays open

    job = client.post("/v1/jobs", json=TD, headers=_h(key_a)).json()
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    ds = client.post("/v1/datasets", files={"file": ("a.npz", buf.getvalue())}, headers=_h(key_a)).json()

    assert client.get(f"/v1/jobs/{job['id']}", headers=_h(key_a)).status_code == 200
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/artifacts", f"/v1/datasets/{ds['id']}"):
        r = client.get(path, headers=_h(key_b))
        assert r.status_code == 404, path
    assert client.delete(f"/v1/jobs/{job['id']}", headers=_h(key_b)).status_code == 404
    assert client.get("/v1/jobs", headers=_h(key_b)).json()["items"] == []
    using_other = client.post("/v1/jobs", json={**TD, "dataset": ds["id"]}, headers=_h(key_b))
    assert using_other.status_code == 422 and "does not exist" in using_other.json()["detail"]

    store.revoke_key(key_b_id)
    time.sleep(5.2)  # the gateway caches key lookups for 5 s
    assert client.get("/v1/jobs", headers=_h(key_b)).status_code == 401


def test_rate_limit_and_active_job_limit(secured: tuple[Any, Any]) -> None:
    client, store = secured
    _, key = store.create_key("gamma")
    codes = [client.get("/v1/jobs", headers=_h(key)).status_code for _ in range(12)]
    assert codes[:8] == [200] * 8 and 429 in codes
    limited = [c for c in codes if c == 429]
    assert limited
    r = client.get("/v1/jobs", headers=_h(key))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "rate" in r.json()["detail"]

    _, key2 = store.create_key("delta")
    answers = []
    for _ in range(4):
        answers.append(client.post("/v1/jobs", json=TD, headers=_h(key2)))
        time.sleep(0.5)
    assert [a.status_code for a in answers[:3]] == [202, 202, 202]
    assert answers[3].status_code == 429 and "INFOSCORE_MAX_ACTIVE_JOBS" in answers[3].json()["detail"]


def test_refuses_to_bind_beyond_loopback_without_keys(environment: Environment) -> None:
    env = environment.env()
    env["INFOSCORE_HOST"] = "0.0.0.0"
    env["INFOSCORE_AUTH"] = "off"
    api = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "api"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert api.returncode == 2 and "INFOSCORE_AUTH=required" in api.stderr
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "up",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(environment.data_dir),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 2 and "refusing to bind" in up.stderr


def test_keys_cli(tmp_path: Any) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "launcher.cli", "keys", *args, "--data-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = cli("create", "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split("key id:")[1].split()[0]
    key = created.stdout.split("key:")[1].split()[0]
    listed = cli("list")
    assert key_id in listed.stdout and "tenant=acme" in listed.stdout and key not in listed.stdout
    assert cli("revoke", key_id).returncode == 0
    assert "revoked" in cli("list").stdout
    assert cli("revoke", key_id).returncode == 1
    assert cli("create", "--tenant", "../bad").returncode == 2
