"""The SQL job store on SQLite and on a real PostgreSQL server (INFOSCORE_TEST_POSTGRES_URL,
started by .ci/run). Ownership races are settled by conditional updates: tested here."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from store.db import JobStore


def _postgres_url() -> str | None:
    return os.environ.get("INFOSCORE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        s = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    else:
        url = _postgres_url()
        if not url:
            pytest.skip("INFOSCORE_TEST_POSTGRES_URL not set (.ci/run starts a PostgreSQL server)")
        s = JobStore(url)
    yield s
    s.dispose()


def _job(store: JobStore, tenant: str = "default", **kw: object) -> dict:
    return store.create_job(
        kind="training-dynamics",
        request={"kind": "training-dynamics", "x": uuid.uuid4().hex},
        fingerprint=uuid.uuid4().hex,
        tenant=tenant,
        **kw,  # type: ignore[arg-type]
    )


def test_create_get_and_tenant_isolation(store: JobStore) -> None:
    job = _job(store, tenant="t-" + uuid.uuid4().hex[:6])
    assert job["state"] == "queued" and job["attempts"] == 0
    assert store.get_job(job["id"], job["tenant"])["id"] == job["id"]  # type: ignore[index]
    assert store.get_job(job["id"], "someone-else") is None
    assert store.get_job("job_" + "0" * 24) is None


def test_claim_is_exclusive_and_heartbeat_protects_a_running_job(store: JobStore) -> None:
    job = _job(store)
    assert store.claim_job(job["id"], "w1", stale_after=60)
    assert not store.claim_job(job["id"], "w2", stale_after=60)
    assert store.get_job(job["id"])["attempts"] == 1  # type: ignore[index]
    # A heartbeat older than stale_after lets another worker take over.
    time.sleep(1.1)
    assert store.claim_job(job["id"], "w2", stale_after=1)
    row = store.get_job(job["id"])
    assert row is not None and row["worker"] == "w2" and row["attempts"] == 2


def test_concurrent_claims_have_one_winner(store: JobStore) -> None:
    job = _job(store)
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(store.claim_job(job["id"], f"w{i}", stale_after=60)))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == 1


def test_finish_only_once_and_keeps_summary(store: JobStore) -> None:
    job = _job(store)
    store.claim_job(job["id"], "w", stale_after=60)
    store.set_progress(job["id"], 3, 10)
    assert store.finish(job["id"], "succeeded", summary={"a": 1}, artifacts=["summary.json"])
    assert not store.finish(job["id"], "failed", error={"detail": "late"})
    row = store.get_job(job["id"])
    assert row is not None
    assert row["state"] == "succeeded" and row["summary"] == {"a": 1} and row["error"] is None
    assert row["progress"] == {"done": 10, "total": 10}


def test_cancel_queued_is_immediate_and_running_is_flagged(store: JobStore) -> None:
    queued = _job(store)
    assert store.request_cancel(queued["id"]) == "cancelled"
    assert not store.claim_job(queued["id"], "w", stale_after=60)
    running = _job(store)
    store.claim_job(running["id"], "w", stale_after=60)
    assert store.request_cancel(running["id"]) == "running"
    assert store.heartbeat(running["id"], "w") is True


def test_reaper_release_needs_a_stale_heartbeat(store: JobStore) -> None:
    job = _job(store)
    store.claim_job(job["id"], "w", stale_after=60)
    assert not store.release_stale(job["id"], stale_after=60)
    time.sleep(1.1)
    assert [j["id"] for j in store.stale_running(1) if j["id"] == job["id"]] == [job["id"]]
    assert store.release_stale(job["id"], stale_after=1)
    assert store.get_job(job["id"])["state"] == "queued"  # type: ignore[index]


def test_units_progress_and_single_reducer(store: JobStore) -> None:
    job = _job(store)
    store.claim_job(job["id"], "w", stale_after=60)
    store.add_units(job["id"], [("u0", "a" * 32, True), ("u1", "b" * 32, False), ("u2", "c" * 32, False)])
    store.add_units(job["id"], [("u0", "a" * 32, False)])  # re-plan keeps existing rows
    assert [u["state"] for u in store.units(job["id"])] == ["done", "pending", "pending"]
    assert store.claim_unit(job["id"], "u1", stale_after=60)
    assert not store.claim_unit(job["id"], "u1", stale_after=60)
    assert store.finish_unit(job["id"], "u1") == (2, 3)
    assert store.finish_unit(job["id"], "u2") == (3, 3)
    assert store.get_job(job["id"])["progress"] == {"done": 3, "total": 3}  # type: ignore[index]
    assert store.claim_reduce(job["id"])
    assert not store.claim_reduce(job["id"])
    store.release_reduce(job["id"])
    assert store.claim_reduce(job["id"])


def test_list_filters_and_pagination(store: JobStore) -> None:
    tenant = "list-" + uuid.uuid4().hex[:6]
    ids = [_job(store, tenant=tenant)["id"] for _ in range(5)]
    store.request_cancel(ids[0])
    page1 = store.list_jobs(tenant=tenant, limit=3)
    assert len(page1) == 3
    last = page1[-1]
    page2 = store.list_jobs(
        tenant=tenant, limit=3, before=(last["created_at"].replace(tzinfo=None), last["id"])
    )
    assert {j["id"] for j in page1} | {j["id"] for j in page2} == set(ids)
    assert [j["id"] for j in store.list_jobs(tenant=tenant, state="cancelled")] == [ids[0]]
    assert store.count_active(tenant) == 4


def test_idempotency_key_lookup(store: JobStore) -> None:
    key = uuid.uuid4().hex
    job = _job(store, idempotency_key=key)
    found = store.find_by_idempotency_key(key)
    assert found is not None and found["id"] == job["id"]
    assert store.find_by_idempotency_key(key, tenant="other") is None


def test_datasets_dedupe_by_content_id(store: JobStore) -> None:
    rec: dict[str, Any] = {
        "id": "ds_" + uuid.uuid4().hex,
        "sha256": "f" * 64,
        "format": "npz",
        "filename": "a.npz",
        "n_train": 10,
        "n_test": 2,
        "n_classes": 3,
        "input_shape": [4],
        "size_bytes": 123,
    }
    first = store.add_dataset(rec)
    second = store.add_dataset({**rec, "filename": "b.npz"})
    assert first["filename"] == second["filename"] == "a.npz"
    assert store.get_dataset(rec["id"])["input_shape"] == [4]  # type: ignore[index]


def test_dataset_meta_fields_round_trip(store: JobStore) -> None:
    rec: dict[str, Any] = {
        "id": "ds_" + uuid.uuid4().hex,
        "sha256": "e" * 64,
        "format": "csv",
        "filename": "m.csv",
        "n_train": 5,
        "n_test": 0,
        "n_classes": 2,
        "input_shape": [3],
        "size_bytes": 99,
        "class_names": ["cat", "dog"],
        "lineage": {"source_dataset": "ds_x", "job": "job_y"},
    }
    store.add_dataset(rec)
    got = store.get_dataset(rec["id"])
    assert got is not None
    assert got["class_names"] == ["cat", "dog"] and got["lineage"] == {
        "source_dataset": "ds_x",
        "job": "job_y",
    }
    assert got["n_classes"] == 2
    assert store.get_dataset(rec["id"], tenant="other") is None


def test_a_worker_that_lost_its_job_is_told_to_stop_and_cannot_finish_it(store: JobStore) -> None:
    job = _job(store)
    assert store.claim_job(job["id"], "w1", stale_after=60)
    assert store.heartbeat(job["id"], "w1") is False
    time.sleep(1.1)
    assert store.release_stale(job["id"], stale_after=1)
    assert store.claim_job(job["id"], "w2", stale_after=60)
    assert store.heartbeat(job["id"], "w1") is True  # not w1's any more: stop
    assert not store.finish(job["id"], "succeeded", summary={"by": "w1"}, worker="w1")
    assert store.finish(job["id"], "succeeded", summary={"by": "w2"}, worker="w2")
    assert store.get_job(job["id"])["summary"] == {"by": "w2"}  # type: ignore[index]


def test_settings_refuse_a_stale_limit_below_three_heartbeats() -> None:
    from pydantic import ValidationError

    from workers.settings import WorkerSettings

    with pytest.raises(ValidationError, match="STALE_AFTER"):
        WorkerSettings(heartbeat_interval=5, stale_after=4)
    assert WorkerSettings(heartbeat_interval=1, stale_after=3).stale_after == 3


def test_api_keys_hashed_resolved_and_revoked(store: JobStore) -> None:
    tenant = "acme-" + uuid.uuid4().hex[:6]
    key_id, key = store.create_key(tenant)
    assert key.startswith("isk_") and key_id not in ("", key)
    assert store.resolve_key(key) == (key_id, tenant)
    assert store.resolve_key(key + "x") is None
    assert store.resolve_key("isk_nothing.here") is None
    assert store.resolve_key("Bearer") is None
    listed = [k for k in store.list_keys() if k["id"] == key_id]
    assert listed and "secret" not in str(listed) and key.split(".")[1] not in str(store.list_keys())
    assert store.revoke_key(key_id)
    assert not store.revoke_key(key_id)
    assert store.resolve_key(key) is None


def test_migrations_upgrade_an_older_database(tmp_path: Path) -> None:
    """A database at revision 0001 (before API keys) opens with this version unchanged."""
    from alembic import command
    from sqlalchemy import text

    from store.db import alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, kind, state, request, fingerprint, progress_done, progress_total,"
                " created_at, attempts, cancel_requested, reducing, summary)"
                " VALUES ('job_aaaaaaaaaaaaaaaaaaaaaaaa', 'default', 'limit', 'succeeded', '{}', 'f', 1, 1,"
                " '2026-01-01 00:00:00', 1, 0, 0, '{\"test_accuracy\": 0.9}')"
            )
        )
    engine.dispose()
    store = JobStore(url)
    job = store.get_job("job_aaaaaaaaaaaaaaaaaaaaaaaa")
    assert job is not None and job["summary"] == {"test_accuracy": 0.9} and job["state"] == "succeeded"
    key_id, key = store.create_key("t")
    assert store.resolve_key(key) == (key_id, "t")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    store.dispose()


def test_idempotency_key_is_unique_per_tenant_under_concurrency(store: JobStore) -> None:
    key = uuid.uuid4().hex
    results: list[dict[str, Any]] = []

    def submit() -> None:
        results.append(
            store.create_job(
                kind="limit", request={"k": key}, fingerprint="same", tenant="idem", idempotency_key=key
            )
        )

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r["id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    other = store.create_job(kind="limit", request={}, fingerprint="f", tenant="idem-2", idempotency_key=key)
    assert other["created"] and other["id"] != results[0]["id"]


def test_active_job_limit_holds_under_concurrent_submissions(store: JobStore) -> None:
    """Count and insert in one transaction: 60 racing submissions against a limit of 5
    leave exactly 5 active jobs (count-then-insert let 17 through)."""
    from store.db import ActiveJobLimit

    tenant = "quota-" + uuid.uuid4().hex[:8]
    created: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()

    def submit() -> None:
        try:
            row = _job(store, tenant=tenant, max_active=5)
        except ActiveJobLimit as exc:
            with lock:
                refused.append(exc.active)
        else:
            with lock:
                created.append(row["id"])

    threads = [threading.Thread(target=submit) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(created) == 5 and len(refused) == 55
    assert store.count_active(tenant) == 5
    assert all(active >= 5 for active in refused)
