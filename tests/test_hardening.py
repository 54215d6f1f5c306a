"""Hardening of the gateway against real redis and SQLite: retries after a broker outage."""

from __future__ import annotations

from typing import Any

import pytest

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

    def broken(job_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(gateway, "send", broken)
    headers = {"Idempotency-Key": "retry-after-outage"}
    first = api.post("/v1/jobs", json=TD, headers=headers)
    assert first.status_code == 503, first.text
    assert "same Idempotency-Key" in first.json()["detail"]
    [failed] = api.get("/v1/jobs").json()["items"]
    assert failed["state"] == "failed"

    def working(job_id: str) -> None:
        sent.append(job_id)
        real_send(job_id)

    monkeypatch.setattr(gateway, "send", working)
    retry = api.post("/v1/jobs", json=TD, headers=headers)
    assert retry.status_code == 202, retry.text
    assert retry.json()["id"] == failed["id"] and retry.json()["state"] == "queued"
    assert sent == [failed["id"]]
    # A second retry finds it queued: nothing is sent twice.
    again = api.post("/v1/jobs", json=TD, headers=headers)
    assert again.status_code == 202 and again.json()["state"] == "queued" and sent == [failed["id"]]
