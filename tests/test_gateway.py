"""The gateway's shape (issue 16): routes outside ``create_app``, one submit function,
one record conversion, every error built by ``problem()``, states from contracts."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from contracts.jobs import parse_job_request
from contracts.problems import problem
from contracts.records import JobRecord, JobState
from service.errors import ProblemError
from service.gateway import Gateway
from service.jobs import BROKER_UNAVAILABLE, submit_job
from service.settings import ServiceSettings

SERVICE = Path(__file__).resolve().parents[1] / "service"
TD = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "linear"},
    "params": {"epochs": 2, "el2n_epoch": 1},
}


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(SERVICE.rglob("*.py"))]


def _calls_to(attribute: str) -> set[str]:
    """Files under service/ that call ``<something>.<attribute>(...)``."""
    return {
        str(path.relative_to(SERVICE))
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
    }


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    gw = Gateway(ServiceSettings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:9/0"))
    yield gw
    gw.store.dispose()


def test_submit_job_records_sends_and_replays_without_http(gateway: Gateway) -> None:
    sent: list[str] = []
    gateway.send = lambda job_id, device=None: sent.append(job_id)  # type: ignore[method-assign,assignment,misc]
    job = parse_job_request(TD)
    first = submit_job(gateway, job, "alpha", "key-1")
    assert first.created and sent == [first.job["id"]] and first.job["state"] == JobState.queued
    again = submit_job(gateway, job, "alpha", "key-1")
    assert not again.created and again.job["id"] == first.job["id"] and len(sent) == 1
    other = submit_job(gateway, job, "beta", "key-1")  # keys are per tenant
    assert other.created and other.job["id"] != first.job["id"]
    with pytest.raises(ProblemError) as conflict:
        submit_job(gateway, parse_job_request({**TD, "params": {"epochs": 3}}), "alpha", "key-1")
    assert conflict.value.status == 409 and conflict.value.type_ == "idempotency-conflict"


def test_submit_job_records_a_broker_failure_and_requeues_on_retry(gateway: Gateway) -> None:
    def broken(job_id: str, device: str | None = None) -> None:
        raise ConnectionError("broker down")

    gateway.send = broken  # type: ignore[method-assign,assignment]
    job = parse_job_request(TD)
    with pytest.raises(ProblemError) as down:
        submit_job(gateway, job, "alpha", "outage")
    assert down.value.status == 503 and down.value.headers == {"Retry-After": "5"}
    [failed] = gateway.store.list_jobs(tenant="alpha")
    assert failed["state"] == "failed"
    assert failed["error"] == problem(
        503, "The job could not be queued: broker unreachable (ConnectionError).", type_=BROKER_UNAVAILABLE
    )
    assert failed["error"]["type"] == "https://infoscore.dev/problems/broker-unavailable"
    sent: list[str] = []
    gateway.send = lambda job_id, device=None: sent.append(job_id)  # type: ignore[method-assign,assignment,misc]
    retry = submit_job(gateway, job, "alpha", "outage")
    assert retry.job["id"] == failed["id"] and retry.job["state"] == "queued" and sent == [failed["id"]]


def test_submit_job_refuses_over_the_active_job_quota(tmp_path: Path) -> None:
    gw = Gateway(
        ServiceSettings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:9/0", max_active_jobs=1)
    )
    gw.send = lambda job_id, device=None: None  # type: ignore[method-assign,assignment,misc]
    try:
        submit_job(gw, parse_job_request(TD), "alpha")
        with pytest.raises(ProblemError) as quota:
            submit_job(gw, parse_job_request(TD), "alpha")
        assert quota.value.status == 429 and quota.value.type_ == "too-many-active-jobs"
        assert len(gw.store.list_jobs(tenant="alpha")) == 1
    finally:
        gw.store.dispose()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return value


def test_job_record_is_the_store_dict_validated(gateway: Gateway) -> None:
    store = gateway.store
    job = store.create_job(
        kind="limit", request={"kind": "limit"}, fingerprint="f", name="n", idempotency_key="k"
    )
    store.claim_job(job["id"], "w", stale_after=60)
    store.set_progress(job["id"], 2, 5)
    error = problem(422, "bad", type_="invalid-input")
    store.finish(job["id"], "failed", error=error, summary={"a": 1.5}, artifacts=["x.png"])
    for d in (
        job,
        store.get_job(job["id"]),
        store.find_by_idempotency_key("k"),
        *store.list_jobs(),
    ):
        assert d is not None
        assert set(JobRecord.model_fields) <= set(d), set(JobRecord.model_fields) - set(d)
        record = JobRecord.model_validate(d)
        for name in JobRecord.model_fields:
            assert _plain(getattr(record, name)) == d[name], name
    final = JobRecord.model_validate(store.get_job(job["id"]))
    assert final.state == JobState.failed and final.progress.total == 5 and final.error is not None
    assert final.model_dump(mode="json")["error"] == {**error, "instance": None, "errors": None}


def test_only_submit_job_records_and_sends_jobs() -> None:
    assert _calls_to("create_job") == {"jobs.py"}
    assert _calls_to("send") == {"jobs.py"}
    assert _calls_to("send_task") == {"gateway.py"}


def test_create_app_defines_no_routes() -> None:
    """Routes live in service/routes/ as module-level functions, not closures of create_app."""
    tree = ast.parse((SERVICE / "app.py").read_text())
    [create_app] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_app"]
    nested = [
        n.name
        for n in ast.walk(create_app)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n is not create_app and n.decorator_list
    ]
    assert nested == []


def test_errors_are_built_by_problem_and_states_come_from_contracts() -> None:
    states = {s.value for s in JobState}
    hand_built: list[str] = []
    spelled_states: list[str] = []
    for path, tree in _modules():
        if path.name in ("cli.py", "client.py"):  # the launcher's, moving out of service/ (issue 16)
            continue
        where = str(path.relative_to(SERVICE))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"title", "status", "detail"} <= keys:
                    hand_built.append(f"{where}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "HTTPException",
            ):
                hand_built.append(f"{where}:{node.lineno}")
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                named = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in states]
                if len(named) >= 2:
                    spelled_states.append(f"{where}:{node.lineno}")
    assert hand_built == [] and spelled_states == []


def test_one_sort_rule_for_the_api_and_the_ui() -> None:
    import pandas as pd

    from service.results import check_sort, sort_table

    table = pd.DataFrame(
        {"index": range(6), "forgetting_events": [3, 0, 1, 0, 2, 5], "never_learned": [0, 1, 0, 1, 0, 0]}
    )
    ranked = sort_table(table, "forgetting_events", "desc")
    assert ranked["index"].tolist() == [1, 3, 5, 0, 4, 2]  # never-learned first, then most forgotten
    assert sort_table(table, None, "asc") is table
    with pytest.raises(ProblemError) as typo:
        check_sort("forgeting_events", table, "training-dynamics")
    assert (
        typo.value.status == 422
        and typo.value.type_ == "bad-sort"
        and "forgetting_events" in typo.value.detail
    )
    with pytest.raises(ProblemError) as no_table:
        check_sort("x", None, "limit")
    assert "a limit job has no per-sample table" in no_table.value.detail
    ui = (SERVICE / "ui" / "routes.py").read_text()
    assert "sort_table(" in ui and "sort_values(" not in ui


def test_time_cursors_round_trip_and_refuse_foreign_ones() -> None:
    from datetime import datetime

    from service.paging import encode_cursor, time_cursor, time_page

    rows = [{"id": f"j{i}", "created_at": datetime(2026, 1, 1, 0, 0, i)} for i in range(5, 0, -1)]
    page, cursor = time_page(rows, 3)
    assert [r["id"] for r in page] == ["j5", "j4", "j3"] and cursor is not None
    assert time_cursor(cursor) == (datetime(2026, 1, 1, 0, 0, 3), "j3")
    assert time_page(rows, 5) == (rows, None) and time_cursor(None) is None
    for bad in ("not-a-cursor!", encode_cursor({"offset": 3})):
        with pytest.raises(ProblemError) as refused:
            time_cursor(bad)
        assert refused.value.status == 400 and refused.value.type_ == "bad-cursor"


def test_a_foreign_host_header_is_refused_with_problem_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    monkeypatch.delenv("INFOSCORE_ALLOWED_HOSTS", raising=False)
    settings = ServiceSettings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:9/0", auth="off")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        refused = client.get("/healthz", headers={"Host": "evil.example"})
        assert refused.status_code == 400
        assert refused.headers["content-type"] == "application/problem+json"
        body = refused.json()
        assert (
            body["type"].endswith("/invalid-host") and body["status"] == 400 and "localhost" in body["detail"]
        )
        assert body["instance"] == "/healthz"
