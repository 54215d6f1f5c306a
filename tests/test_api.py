"""The HTTP API against a real redis (no worker needed): validation, problem+json for
every client error, nothing half-stored, listing, cancellation of queued jobs, paging."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PROBLEM = "application/problem+json"
TD = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "mlp"},
    "params": {"epochs": 2, "el2n_epoch": 1},
}


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _assert_problem(r: Any, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body


def _stored_datasets(data_dir: Path) -> list[str]:
    d = data_dir / "datasets"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_service_import_does_not_load_torch() -> None:
    code = "import sys, service.app, launcher.cli, launcher.client, contracts.jobs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_health_ready_metrics_openapi(api: Any) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]
    api.get("/healthz")
    assert "infoscore_http_requests_total" in api.get("/metrics").text


def test_upload_npz_then_get(api: Any, environment: Any) -> None:
    rng = np.random.default_rng(0)
    body = _npz(
        x=rng.normal(size=(30, 4)),
        y=np.arange(30) % 3,
        x_test=rng.normal(size=(6, 4)),
        y_test=np.arange(6) % 3,
    )
    r = api.post("/v1/datasets", files={"file": ("d.npz", body)})
    assert r.status_code == 201, r.text
    rec = r.json()
    assert (rec["n_train"], rec["n_test"], rec["n_classes"], rec["input_shape"]) == (30, 6, 3, [4])
    assert rec["id"].startswith("ds_") and len(rec["sha256"]) == 64
    assert r.headers["location"] == f"/v1/datasets/{rec['id']}"
    assert api.get(f"/v1/datasets/{rec['id']}").json()["id"] == rec["id"]
    again = api.post("/v1/datasets", files={"file": ("copy.npz", body)})
    assert again.status_code == 200 and again.json()["id"] == rec["id"]
    _assert_problem(api.get("/v1/datasets/ds_" + "0" * 32), 404, "No dataset")


def test_upload_csv_with_split(api: Any) -> None:
    csv = "f1,f2,label,split\n0.1,1.0,0,train\n0.2,0.5,1,train\n0.3,0.1,1,test\n0.9,0.2,0,train\n"
    r = api.post("/v1/datasets", files={"file": ("t.csv", csv.encode())})
    assert r.status_code == 201, r.text
    assert (r.json()["n_train"], r.json()["n_test"], r.json()["format"]) == (3, 1, "csv")


@pytest.mark.parametrize(
    ("name", "payload", "needle"),
    [
        ("bad.npz", b"PK\x03\x04garbage-not-a-zip", ""),
        ("obj.npz", _npz(x=np.array([{"a": 1}] * 3, dtype=object), y=np.array([0, 1, 0])), "pickle"),
        ("nan.npz", _npz(x=np.array([[0.0], [np.nan], [1.0]]), y=np.array([0, 1, 0])), "x"),
        ("neg.npz", _npz(x=np.zeros((3, 2)), y=np.array([0, -1, 1])), "y"),
        ("len.npz", _npz(x=np.zeros((3, 2)), y=np.array([0, 1])), "y"),
        ("nolabel.csv", b"a,b\n1,2\n3,4\n", "label"),
        ("empty.npz", b"", "empty"),
    ],
)
def test_bad_uploads_are_422_and_nothing_is_stored(
    api: Any, environment: Any, name: str, payload: bytes, needle: str
) -> None:
    before = _stored_datasets(environment.data_dir)
    r = api.post("/v1/datasets", files={"file": (name, payload)})
    _assert_problem(r, 422, needle)
    assert _stored_datasets(environment.data_dir) == before
    assert not list((environment.data_dir / "tmp").glob("upload-*"))


class _TouchOnUnpickle:
    """Unpickling this creates a file: the proof that a payload was (not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.path,))


def test_pickle_payload_is_never_loaded(api: Any, environment: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(marker)))  # the payload works when unpickled...
    assert marker.exists()
    marker.unlink()
    raw = pickle.dumps(_TouchOnUnpickle(marker))  # ...as a bare pickle stream
    in_npz = _npz(x=np.array([_TouchOnUnpickle(marker)] * 3, dtype=object), y=np.array([0, 1, 0]))
    for name, payload in (("evil.pkl", raw), ("evil.npz", in_npz)):
        r = api.post("/v1/datasets", files={"file": (name, payload)})
        _assert_problem(r, 422)
        assert not marker.exists(), f"{name} was unpickled"


def test_oversize_upload_is_413(api: Any, environment: Any) -> None:
    big = b"0" * 2_100_000
    r = api.post("/v1/datasets", files={"file": ("big.csv", big)})
    _assert_problem(r, 413, "limit")
    assert _stored_datasets(environment.data_dir) == []


def test_oversize_json_is_413(api: Any) -> None:
    r = api.post("/v1/jobs", json={**TD, "name": "x" * 70_000})
    _assert_problem(r, 413, "limit")


def test_unknown_kind_and_bad_params_are_422(api: Any) -> None:
    body = _assert_problem(api.post("/v1/jobs", json={**TD, "kind": "nope"}), 422)
    assert body["errors"]
    body = _assert_problem(api.post("/v1/jobs", json={**TD, "params": {"epochs": 0}}), 422, "epochs")
    _assert_problem(
        api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422
    )
    _assert_problem(api.post("/v1/jobs", json={**TD, "dataset": "ds_" + "1" * 32}), 422, "does not exist")
    assert api.get("/v1/jobs").json()["items"] == []


def test_submit_list_cancel_queued(api: Any) -> None:
    r = api.post("/v1/jobs", json=TD)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["kind"] == "training-dynamics"
    assert job["request"]["params"]["epochs"] == 2
    other = api.post("/v1/jobs", json={**TD, "kind": "limit", "params": {}}).json()
    assert [j["id"] for j in api.get("/v1/jobs", params={"kind": "limit"}).json()["items"]] == [other["id"]]
    page = api.get("/v1/jobs", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = api.get("/v1/jobs", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert {page["items"][0]["id"], rest["items"][0]["id"]} == {job["id"], other["id"]}
    _assert_problem(api.get("/v1/jobs", params={"cursor": "!!!"}), 400, "cursor")
    _assert_problem(api.get("/v1/jobs", params={"kind": "bogus"}), 422, "kind")

    cancelled = api.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    _assert_problem(api.delete(f"/v1/jobs/{job['id']}"), 409, "already ended")
    assert [j["id"] for j in api.get("/v1/jobs", params={"state": "cancelled"}).json()["items"]] == [
        job["id"]
    ]
    _assert_problem(api.get(f"/v1/jobs/{other['id']}/result"), 409, "queued")
    _assert_problem(api.get("/v1/jobs/job_" + "0" * 24), 404, "No job")


def test_idempotency_key(api: Any) -> None:
    first = api.post("/v1/jobs", json=TD, headers={"Idempotency-Key": "abc"})
    second = api.post("/v1/jobs", json=TD, headers={"Idempotency-Key": "abc"})
    assert first.json()["id"] == second.json()["id"]
    changed = {**TD, "params": {"epochs": 3, "el2n_epoch": 1}}
    _assert_problem(
        api.post("/v1/jobs", json=changed, headers={"Idempotency-Key": "abc"}), 409, "Idempotency"
    )


def test_artifact_names_are_checked(api: Any) -> None:
    job = api.post("/v1/jobs", json=TD).json()
    _assert_problem(api.get(f"/v1/jobs/{job['id']}/artifacts/.infoscore.db"), 400, "not valid")
    _assert_problem(api.get(f"/v1/jobs/{job['id']}/artifacts/a..b"), 400, "not valid")
    for path in ("..%2F..%2Finfoscore.db", "../../infoscore.db", "%2e%2e%2finfoscore.db"):
        r = api.get(f"/v1/jobs/{job['id']}/artifacts/{path}")
        assert r.status_code in (400, 404) and r.headers["content-type"].startswith(PROBLEM)
    _assert_problem(api.get(f"/v1/jobs/{job['id']}/artifacts/scores.csv"), 404, "no artifact")
    assert api.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"] == []


def test_unknown_route_and_method_are_problems(api: Any) -> None:
    _assert_problem(api.get("/v2/nothing"), 404)
    _assert_problem(api.put("/v1/jobs"), 405)


def test_estimate_dry_run_and_memory_refusal(api: Any) -> None:
    sample_info = {
        "kind": "sample-information",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [256]},
    }
    est = api.post("/v1/jobs:estimate", json=sample_info)
    assert est.status_code == 200, est.text
    body = est.json()
    assert body["parameters"] == 64 * 256 + 256 + 256 * 10 + 10
    assert body["n_train"] == 1347 and body["n_test"] == 450 and body["n_classes"] == 10
    assert body["fits"] is True and 0 < body["memory_bytes"] < body["limits"]["memory_bytes"]
    assert api.get("/v1/jobs").json()["items"] == []  # a dry run records nothing

    huge = {**sample_info, "dataset": {"builtin": "gaussians", "n": 60_000, "dim": 20, "classes": 10}}
    r = api.post("/v1/jobs:estimate", json=huge)
    assert r.status_code == 200 and r.json()["fits"] is False
    refused = _assert_problem(api.post("/v1/jobs", json=huge), 422, "GiB", "INFOSCORE_MAX_JOB_MEMORY_BYTES")
    assert refused["estimate"]["memory_bytes"] > refused["limit"]
    assert api.get("/v1/jobs").json()["items"] == []
    projected = {**huge, "params": {"method": "projected", "projection_dim": 512}}
    assert api.post("/v1/jobs:estimate", json=projected).json()["fits"] is True

    wide = {**TD, "model": {"arch": "mlp", "hidden": [16_384, 16_384]}}
    _assert_problem(api.post("/v1/jobs", json=wide), 422, "parameters", "INFOSCORE_MAX_PARAMETERS")


# ---------------------------------------------------------------------------------------
# Uploads and requests that catch a user's mistakes before the job runs (issue 13)


def _csv_bytes(df: Any) -> bytes:
    return df.to_csv(index=False).encode()


def _flat_upload(api: Any, n: int = 40, d: int = 30, test: bool = True, truth: bool = True) -> dict[str, Any]:
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"f{j}" for j in range(d)])
    df["label"] = ["cat", "dog"] * (n // 2)
    if truth:
        df["truth"] = df["label"]
        df.loc[0, "truth"] = "dog"
    if test:
        df["split"] = ["train"] * (n - 10) + ["test"] * 10
    form = {"truth_column": "truth"} if truth else {}
    r = api.post("/v1/datasets", files={"file": ("t.csv", _csv_bytes(df))}, data=form)
    assert r.status_code == 201, r.text
    record: dict[str, Any] = r.json()
    return record


def test_upload_options_and_the_record_fields(api: Any) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(0, 0.01, 12), "b": rng.normal(0, 100, 12)})
    df = df.reset_index()  # the classic mistake: an 'index' column
    df["y"] = ["no", "yes", "maybe"] * 4
    df["sample"] = [f"s{i}" for i in range(12)]
    body = _csv_bytes(df)
    _assert_problem(
        api.post("/v1/datasets", files={"file": ("t.csv", body)}, data={"label_column": "y"}),
        422,
        "'index'",
        "exclude_columns=index",
    )
    r = api.post(
        "/v1/datasets",
        files={"file": ("t.csv", body)},
        data={"label_column": "y", "id_column": "sample", "exclude_columns": "index"},
    )
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["feature_names"] == ["a", "b"] and rec["input_shape"] == [2]
    assert rec["class_names"] == ["maybe", "no", "yes"] and rec["class_counts"] == [4, 4, 4]
    assert rec["has_ids"] is True and rec["has_truth"] is False
    assert len(rec["warnings"]) == 1 and "standardize=true" in rec["warnings"][0]
    assert rec["options"]["exclude_columns"] == ["index"] and rec["standardization"] is None
    # the same file read another way is another dataset
    r2 = api.post(
        "/v1/datasets",
        files={"file": ("t.csv", body)},
        data={"label_column": "y", "id_column": "sample", "exclude_columns": "index", "standardize": "true"},
    )
    assert r2.status_code == 201 and r2.json()["id"] != rec["id"]
    assert r2.json()["warnings"] == [] and len(r2.json()["standardization"]["mean"]) == 2
    assert api.get(f"/v1/datasets/{rec['id']}").json()["class_names"] == ["maybe", "no", "yes"]


def test_list_datasets_is_paged_newest_first(api: Any) -> None:
    ids = []
    for i in range(3):
        r = api.post("/v1/datasets", files={"file": ("d.npz", _npz(x=np.eye(4) * (i + 1), y=[0, 1, 0, 1]))})
        ids.append(r.json()["id"])
    first = api.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2] and first["next_cursor"]
    second = api.get("/v1/datasets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in second["items"]] == [ids[0]] and second["next_cursor"] is None
    _assert_problem(api.get("/v1/datasets", params={"cursor": "zz"}), 400, "cursor")


def test_dataset_checks_at_submit_and_in_the_estimate(api: Any) -> None:
    ds = _flat_upload(api)  # 30 training rows, 30 flat features, a test split, true labels
    assert ds["has_truth"] is True and ds["n_mislabeled"] == 1
    cases = [
        ("fcmi-bound", {"arch": "mlp"}, {"n": [10, 20]}, "params.n", "2 * max(n) <= 30"),
        ("fcmi-bound", {"arch": "mlp"}, {}, "params.n", "(the default)"),
        ("training-dynamics", {"arch": "cnn"}, {"epochs": 1}, "model.arch", "image-shaped"),
        (
            "supervision-complexity",
            {"arch": "mlp"},
            {"teacher": {"arch": "cnn", "input_shape": [1, 5, 5]}, "teacher_epochs": 2},
            "params.teacher.input_shape",
            "25 values",
        ),
    ]
    for kind, model, params, field, needle in cases:
        request = {"kind": kind, "dataset": ds["id"], "model": model, "params": params}
        body = _assert_problem(api.post("/v1/jobs", json=request), 422, needle)
        assert body["field"] == field
        est = api.post("/v1/jobs:estimate", json=request).json()
        assert est["fits"] is False and est["problems"][0]["field"] == field
    assert api.get("/v1/jobs").json()["items"] == []  # nothing was queued
    # clean_validation needs clean labels: fine with a truth column, refused without one
    ok = {
        "kind": "limit",
        "dataset": ds["id"],
        "model": {"arch": "mlp"},
        "params": {"clean_validation": True},
    }
    assert api.post("/v1/jobs:estimate", json=ok).json()["problems"] == []
    plain = _flat_upload(api, test=False, truth=False)
    bad = {**ok, "dataset": plain["id"]}
    _assert_problem(api.post("/v1/jobs", json=bad), 422, "clean_validation", "truth_column")
    si = {"kind": "sample-information", "dataset": plain["id"], "model": {"arch": "linear"}}
    _assert_problem(api.post("/v1/jobs", json=si), 422, "'predictions'", "(the default)")
    fits = api.post("/v1/jobs:estimate", json={**si, "params": {"measures": ["weights"]}}).json()
    assert fits["fits"] is True and fits["problems"] == []


def test_defaults_follow_the_parameters_they_depend_on(api: Any) -> None:
    r = api.post("/v1/jobs", json={**TD, "params": {"epochs": 2}})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["params"]["el2n_epoch"] == 2
    sc: dict[str, Any] = {
        "kind": "supervision-complexity",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp"},
        "params": {"teacher": {"arch": "mlp"}, "teacher_epochs": 7},
    }
    assert api.post("/v1/jobs:estimate", json=sc).status_code == 200
    too_far = {**sc, "params": {**sc["params"], "checkpoints": [1, 9]}}
    _assert_problem(api.post("/v1/jobs", json=too_far), 422, "teacher_epochs (7)", "[9]")


def test_unknown_fields_suggest_the_closest_name(api: Any) -> None:
    body = _assert_problem(
        api.post("/v1/jobs", json={**TD, "params": {"epoch": 3}}), 422, "did you mean 'epochs'"
    )
    assert body["errors"][0]["loc"] == "training-dynamics.params.epoch"
    typo = {**TD, "model": {"arch": "mlp", "hiden": [8]}}
    _assert_problem(api.post("/v1/jobs", json=typo), 422, "did you mean 'hidden'")


def test_a_malformed_dataset_reference_gets_one_clear_error(api: Any) -> None:
    for ref, needle in [("my-data.csv", "'ds_' and 16-64 hex digits"), ({"builtin": "mnist"}, "'mnist'")]:
        body = _assert_problem(api.post("/v1/jobs", json={**TD, "dataset": ref}), 422, needle)
        assert len(body["errors"]) == 1, body["errors"]
    body = _assert_problem(
        api.post("/v1/jobs", json={**TD, "dataset": {"builtin": "digits", "label_noise": 3}}),
        422,
        "label_noise",
    )
    assert len(body["errors"]) == 1 and "valid string" not in body["detail"]


def test_sort_keys_are_checked_for_every_kind(api: Any) -> None:
    store = api.app.state.gateway.store
    fc = {"kind": "fcmi-bound", "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}}
    job = store.create_job(kind="fcmi-bound", request=fc, fingerprint="x")
    store.finish(job["id"], "succeeded", summary={"bound": 0.1})
    body = _assert_problem(
        api.get(f"/v1/jobs/{job['id']}/result", params={"sort": "bogus"}), 422, "no per-sample"
    )
    assert body["field"] == "sort"
    assert api.get(f"/v1/jobs/{job['id']}/result").json()["summary"] == {"bound": 0.1}


def test_docs_and_redoc_load_nothing_from_the_network(api: Any) -> None:
    import re

    for page in ("/docs", "/redoc"):
        r = api.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\\s*['"]([^'"]+)['"]""", r.text)
        assets = [a or b for a, b in urls]
        assert assets, r.text
        for url in assets:
            assert not url.startswith(("http:", "https:", "//")), (page, url)
            if url != "/openapi.json":
                assert api.get(url).status_code == 200, url
        assert "cdn." not in r.text and "fonts.googleapis" not in r.text


def test_estimate_gives_a_time_range_from_the_measured_rates(api: Any) -> None:
    from contracts.estimate import RATES, TIME_RANGE_FACTORS

    short = api.post("/v1/jobs:estimate", json={**TD, "params": {"epochs": 10}}).json()["seconds"]
    long = api.post("/v1/jobs:estimate", json={**TD, "params": {"epochs": 1000}}).json()["seconds"]
    assert 0 < short["low"] < short["high"] and long["low"] > 10 * short["low"]
    assert short["high"] / short["low"] == pytest.approx(
        TIME_RANGE_FACTORS[1] / TIME_RANGE_FACTORS[0], rel=0.05
    )
    # 1000 epochs of the 64-256-10 MLP on 1347 digits: about 1000 * 1347 * 19210 * 4/3 / rate s
    work = 1000 * 1347 * 19210 * 4 / 3 / RATES["train_sample_epoch_params_per_s"]
    assert long["low"] <= work <= long["high"]


def test_datasets_are_listed_per_tenant(api: Any) -> None:
    store = api.app.state.gateway.store
    base = {"sha256": "0" * 64, "format": "npz", "n_train": 4, "n_test": 0, "n_classes": 2}
    store.add_dataset({**base, "id": "ds_" + "a" * 32, "input_shape": [2], "size_bytes": 1}, "tenant-a")
    store.add_dataset({**base, "id": "ds_" + "b" * 32, "input_shape": [2], "size_bytes": 1}, "tenant-b")
    assert [d["id"] for d in store.list_datasets(tenant="tenant-a")] == ["ds_" + "a" * 32]
    assert [d["id"] for d in store.list_datasets(tenant="tenant-b")] == ["ds_" + "b" * 32]
    assert api.get("/v1/datasets").json()["items"] == []  # the default tenant sees neither


def test_results_show_class_names_beside_the_codes(api: Any) -> None:
    import pandas as pd

    df = pd.DataFrame(
        {"a": [0.1, 0.5, 0.2, 0.9], "b": [1.0, 0.0, 0.5, 0.3], "label": ["cat", "dog", "dog", "cat"]}
    )
    ds = api.post("/v1/datasets", files={"file": ("t.csv", _csv_bytes(df))}).json()
    gw = api.app.state.gateway
    request = {"kind": "training-dynamics", "dataset": ds["id"], "model": {"arch": "linear"}}
    job = gw.store.create_job(kind="training-dynamics", request=request, fingerprint="g")
    path = gw.artifacts.artifact_path(job["id"], "scores.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"index": range(4), "label": [0, 1, 1, 0], "loss": [0.1, 0.9, 0.2, 0.3]}).to_parquet(path)
    gw.store.finish(job["id"], "succeeded", summary={})
    page = api.get(f"/v1/jobs/{job['id']}/result", params={"sort": "loss"}).json()
    assert page["columns"] == ["index", "label", "label_name", "loss"]
    assert [(r["label"], r["label_name"]) for r in page["rows"]] == [
        (1, "dog"),
        (0, "cat"),
        (1, "dog"),
        (0, "cat"),
    ]
