"""Integration: the API, a real redis-server and real worker processes (no eager mode).

Covers the life of a job, cooperative cancellation, a worker SIGKILLed mid-job (the job
finishes after a worker restarts, with the same result as an undisturbed run), a job
whose runner fails (failed with a problem+json reason), and a fan-out job whose finished
units are reused by an identical resubmission.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from .conftest import Environment, WorkerProcess, torch_threads, wait_for_state, wait_until

pytestmark = pytest.mark.integration

SMALL_TD = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "mlp", "hidden": [32]},
    "params": {"epochs": 4, "el2n_epoch": 1, "batch_size": 128},
}


def _scores(api: Any, job_id: str) -> pd.DataFrame:
    r = api.get(f"/v1/jobs/{job_id}/artifacts/scores.parquet")
    assert r.status_code == 200
    return pd.read_parquet(io.BytesIO(r.content))


def test_job_life_result_and_artifacts(api: Any, worker: WorkerProcess) -> None:
    job = api.post("/v1/jobs", json=SMALL_TD).json()
    done = wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=180)
    assert done["state"] == "succeeded", done["error"]
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1
    assert done["progress"]["done"] == done["progress"]["total"] > 0
    summary = done["summary"]
    assert {"train_accuracy", "test_accuracy", "epochs", "seconds"} <= set(summary)
    assert set(done["artifacts"]) >= {"scores.csv", "scores.parquet", "summary.json"}
    table = _scores(api, job["id"])
    assert len(table) == summary["dataset"]["n_train"] == 1347
    assert list(table.columns[:3]) == ["index", "label", "label_noisy"]
    assert {"loss", "margin", "el2n", "grand", "forgetting_events"} <= set(table.columns)
    csv = api.get(f"/v1/jobs/{job['id']}/artifacts/scores.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("index,label,label_noisy,")

    page = api.get(f"/v1/jobs/{job['id']}/result", params={"sort": "el2n", "limit": 5}).json()
    values = [row["el2n"] for row in page["rows"]]
    assert values == sorted(values, reverse=True) and page["total_rows"] == 1347
    second = api.get(
        f"/v1/jobs/{job['id']}/result", params={"sort": "el2n", "limit": 5, "cursor": page["next_cursor"]}
    ).json()
    assert second["rows"][0]["el2n"] <= values[-1]
    assert {r["index"] for r in second["rows"]}.isdisjoint({r["index"] for r in page["rows"]})
    bad = api.get(f"/v1/jobs/{job['id']}/result", params={"sort": "nope"})
    assert bad.status_code == 422 and "sort" in bad.json()["detail"]


def test_worker_parent_never_loads_torch(api: Any, worker: WorkerProcess) -> None:
    """No CUDA at import time in the worker parent: it does not even load torch; the
    prefork child that ran a job does (and picks its device there)."""
    job = api.post("/v1/jobs", json=SMALL_TD).json()
    assert wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=180)["state"] == "succeeded"
    assert worker.proc is not None
    import subprocess

    parent_maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()
    assert "libtorch" not in parent_maps
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(worker.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in children)


def test_cancel_a_running_job(api: Any, worker: WorkerProcess) -> None:
    body = {**SMALL_TD, "params": {"epochs": 400, "el2n_epoch": 1, "batch_size": 32}}
    job = api.post("/v1/jobs", json=body).json()
    wait_until(lambda: api.get(f"/v1/jobs/{job['id']}").json()["progress"]["done"] >= 1, 120, what="progress")
    r = api.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 202
    ended = wait_for_state(api, job["id"], ("cancelled", "succeeded", "failed"), timeout=60)
    assert ended["state"] == "cancelled"
    assert ended["progress"]["done"] < 400


def test_failed_job_has_a_problem_reason(api: Any, worker: WorkerProcess) -> None:
    # A step so large that discrete GD diverges: only the kernel's spectrum, computed by
    # the worker, shows it (a cnn on flat features, the earlier example, is refused at submit).
    body = {
        "kind": "sample-information",
        "dataset": {"builtin": "gaussians", "n": 50, "dim": 20},
        "model": {"arch": "linear"},
        "params": {"t": 10, "lr": 1000.0},
    }
    job = api.post("/v1/jobs", json=body).json()
    ended = wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=120)
    assert ended["state"] == "failed"
    err = ended["error"]
    assert err["status"] == 422 and "'lr'" in err["detail"] and err["instance"] == f"/v1/jobs/{job['id']}"


def test_worker_killed_mid_job_is_recovered_with_the_same_result(
    api: Any, environment: Environment, tmp_path: Path
) -> None:
    body = {**SMALL_TD, "params": {"epochs": 150, "el2n_epoch": 2, "batch_size": 16}}
    first = WorkerProcess(environment, tmp_path / "w1.log").start()
    reference = api.post("/v1/jobs", json=body).json()
    assert wait_for_state(api, reference["id"], ("succeeded", "failed"), 300)["state"] == "succeeded"

    job = api.post("/v1/jobs", json=body).json()
    wait_until(lambda: api.get(f"/v1/jobs/{job['id']}").json()["progress"]["done"] >= 3, 120, what="progress")
    first.kill()
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
    time.sleep(1)
    second = WorkerProcess(environment, tmp_path / "w2.log").start()
    try:
        ended = wait_for_state(api, job["id"], ("succeeded", "failed"), 300)
    finally:
        second.stop()
    assert ended["state"] == "succeeded", ended["error"]
    assert ended["attempts"] == 2
    pd.testing.assert_frame_equal(_scores(api, job["id"]), _scores(api, reference["id"]))
    assert ended["summary"]["train_accuracy"] == pytest.approx(
        api.get(f"/v1/jobs/{reference['id']}").json()["summary"]["train_accuracy"]
    )


FCMI = {
    "kind": "fcmi-bound",
    "dataset": {"builtin": "gaussians", "n": 120, "dim": 5, "classes": 2, "label_noise": 0.1},
    "model": {"arch": "linear"},
    "params": {"n": [10, 20], "k1": 1, "k2": 3, "epochs": 5, "batch_size": 16},
}


def test_fanout_job_and_unit_reuse(api: Any, worker: WorkerProcess) -> None:
    job = api.post("/v1/jobs", json=FCMI).json()
    done = wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"] == {"done": 2, "total": 2}  # one unit per (n, supersample)
    results = done["summary"]["results"]
    assert [r["n"] for r in results] == [10, 20]
    assert all(r["units"] == 3 for r in results)
    assert {"mi.csv", "bound.png", "summary.json"} <= set(done["artifacts"])
    mi = pd.read_csv(io.StringIO(api.get(f"/v1/jobs/{job['id']}/artifacts/mi.csv").text))
    assert list(mi.columns[:4]) == ["n", "supersample", "pair", "mi"] and len(mi) == 30

    log_before = worker.log().count("running job")
    again = api.post("/v1/jobs", json={**FCMI, "name": "resubmitted"}).json()
    redone = wait_for_state(api, again["id"], ("succeeded", "failed"), timeout=120)
    assert redone["state"] == "succeeded"
    assert redone["summary"]["results"] == results
    # Every unit came from the content-keyed cache: no unit task ran for the second job.
    assert worker.log().count("running job") == log_before + 1
    assert "workers.run_unit" not in worker.log().split(again["id"])[-1]


def test_fanout_units_are_shared_across_different_jobs(api: Any, worker: WorkerProcess) -> None:
    """A job with a larger n list (and another estimator) retrains only the new units."""
    first = api.post("/v1/jobs", json=FCMI).json()
    assert wait_for_state(api, first["id"], ("succeeded", "failed"), timeout=300)["state"] == "succeeded"
    bigger = {**FCMI, "params": {**FCMI["params"], "n": [10, 20, 30], "mi_estimator": "miller_madow"}}  # type: ignore[dict-item]
    job = api.post("/v1/jobs", json=bigger).json()
    done = wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done["error"]
    assert [r["n"] for r in done["summary"]["results"]] == [10, 20, 30]
    assert f"job {job['id']} fans out: 3 units, 2 cached" in worker.log()  # only n = 30 was trained
    assert done["progress"] == {"done": 3, "total": 3}


def test_fanout_units_are_not_shared_across_tenants(api: Any, worker: WorkerProcess) -> None:
    """The unit cache is per tenant: another tenant's identical job trains its own units
    (it must not learn that someone ran the same request)."""
    from contracts.jobs import request_fingerprint

    first = api.post("/v1/jobs", json=FCMI).json()
    assert wait_for_state(api, first["id"], ("succeeded", "failed"), timeout=300)["state"] == "succeeded"
    gateway = api.app.state.gateway
    request = {**first["request"]}
    row = gateway.store.create_job(
        kind="fcmi-bound", request=request, fingerprint=request_fingerprint(request), tenant="someone-else"
    )
    gateway.send(row["id"])
    wait_until(
        lambda: (gateway.store.get_job(row["id"]) or {}).get("state") in ("succeeded", "failed"),
        300,
        what="the other tenant's job",
    )
    other = gateway.store.get_job(row["id"])
    assert other is not None and other["state"] == "succeeded", other
    assert other["summary"]["results"] == gateway.store.get_job(first["id"])["summary"]["results"]
    assert f"job {row['id']} fans out: 2 units, 0 cached" in worker.log()


def test_killing_one_of_two_workers_during_a_fanout_job(
    api: Any, environment: Environment, tmp_path: Path
) -> None:
    """One worker process is SIGKILLed mid-job; the other finishes the job (the reaper
    re-sends the lost unit) with the same numbers as an undisturbed serial run."""
    from tests.runner_helpers import make_context
    from workers.runners import get_runner

    request = {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "digits", "classes": [4, 9]},
        "model": {"arch": "mlp", "hidden": [32]},
        "params": {"n": [20, 40], "k1": 3, "k2": 12, "epochs": 200, "batch_size": 8},
    }
    with torch_threads(1):  # as the workers run: the same float32 sums
        ctx = make_context(request, tmp_path / "ref")
        runner = get_runner("fcmi-bound")
        reference = runner.reduce(ctx, {u.name: runner.run_unit(ctx, u) for u in runner.plan(ctx)})

    doomed = WorkerProcess(environment, tmp_path / "doomed.log").start()
    survivor = WorkerProcess(environment, tmp_path / "survivor.log").start()
    try:
        job = api.post("/v1/jobs", json=request).json()

        def doomed_mid_unit() -> bool:
            # A unit claimed here (the store says it runs on this worker) and not finished.
            # Batched units take a fraction of a second, so waiting for a second one could
            # see the survivor finish them all; killing before the claim would test another
            # path (a message lost before any worker ran it, re-sent after
            # INFOSCORE_REQUEUE_PENDING_AFTER).
            lines = doomed.log().splitlines()
            claimed = sum(line.endswith(" claimed") and ": unit " in line for line in lines)
            finished = sum("workers.run_unit[" in line and "] succeeded in " in line for line in lines)
            return claimed > finished

        wait_until(doomed_mid_unit, 180, interval=0.02, what="a unit running on the doomed worker")
        doomed.kill()
        done = wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=300)
    finally:
        survivor.stop()
        doomed.stop()  # when the wait above failed: never leave a worker eating later tests' jobs
    assert "lost; re-sending" in survivor.log()  # the reaper recovered the killed worker's unit
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"] == {"done": 6, "total": 6}
    assert done["summary"]["results"] == json.loads(json.dumps(reference.summary["results"]))
