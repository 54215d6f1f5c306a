"""label-issues: confident learning against slow references, the library call, the runner,
and deriving a dataset through HTTP, the client and the CLI (tenants included)."""

from __future__ import annotations

import io
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import infoscore.label_issues as li
from contracts import label_issues as contract
from infoscore import Cancelled, InvalidInputError

from .conftest import WorkerProcess, wait_for_state
from .runner_helpers import make_context

# ------------------------------------------------------------------ slow references


def _reference_confident_joint(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Literal loops over the paper's definitions: thresholds, confident joint, calibrated joint."""
    n, k = p.shape
    t = np.array([np.mean([p[i, j] for i in range(n) if y[i] == j]) for j in range(k)])
    c = np.zeros((k, k), dtype=np.int64)
    for i in range(n):
        candidates = [j for j in range(k) if p[i, j] >= t[j]]
        if candidates:
            best = max(candidates, key=lambda j: (p[i, j], -j))
            c[y[i], best] += 1
    q = np.zeros((k, k))
    for i in range(k):
        given = np.sum(y == i)
        q[i] = c[i] / c[i].sum() * given if c[i].sum() else np.eye(k)[i] * given
    return t, c, q / q.sum()


def _reference_prune(p: np.ndarray, y: np.ndarray, joint: np.ndarray) -> np.ndarray:
    n, k = p.shape
    flags = np.zeros(n, dtype=bool)
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            rows = [r for r in range(n) if y[r] == i]
            rows.sort(key=lambda r: (-(p[r, j] - p[r, i]), r))
            for r in rows[: min(round(n * float(joint[i, j])), len(rows))]:
                flags[r] = True
    return flags


def _random_probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[y]
    flip = rng.random(n) < 0.25
    y[flip] = (y[flip] + rng.integers(1, k, size=flip.sum())) % k
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confident_learning_matches_the_literal_definitions(seed: int) -> None:
    p, y = _random_probs(120, 4, seed)
    cl = li.confident_learning(p, y)
    t, c, q = _reference_confident_joint(p, y)
    np.testing.assert_allclose(cl.thresholds, t, rtol=1e-12)
    np.testing.assert_array_equal(cl.confident_joint, c)
    np.testing.assert_allclose(cl.joint, q, rtol=1e-12, atol=1e-15)
    assert cl.joint.sum() == pytest.approx(1.0)
    # Calibration keeps the given-label marginal.
    np.testing.assert_allclose(cl.joint.sum(1), np.bincount(y, minlength=4) / 120, rtol=1e-12)
    np.testing.assert_allclose(cl.noise_matrix.sum(0), 1.0, rtol=1e-12)
    assert cl.estimated_noise_rate == pytest.approx(1 - np.trace(q))
    np.testing.assert_array_equal(li.prune_by_noise_rate(p, y, cl.joint), _reference_prune(p, y, cl.joint))


def test_confident_joint_on_a_hand_worked_example() -> None:
    # Rows 0-2 given 0, rows 3-5 given 1; row 2 is confidently class 1.
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1, 1, 1])
    cl = li.confident_learning(p, y)
    np.testing.assert_allclose(cl.thresholds, [(0.9 + 0.8 + 0.2) / 3, (0.9 + 0.7 + 0.6) / 3])
    # t = (0.633, 0.733): row 2 (0.8 >= 0.733) counts as true 1; rows 4, 5 reach no threshold.
    np.testing.assert_array_equal(cl.confident_joint, [[2, 1], [0, 1]])
    np.testing.assert_array_equal(cl.confident_label, [0, 0, 1, 1, -1, -1])
    np.testing.assert_allclose(cl.joint, [[2 / 6, 1 / 6], [0, 3 / 6]])
    np.testing.assert_allclose(cl.noise_matrix, [[1.0, 0.25], [0.0, 0.75]])
    assert cl.estimated_noise_rate == pytest.approx(1 / 6)
    _, cols = li.decide(p, y)
    np.testing.assert_array_equal(cols["is_label_issue"], [False, False, True, False, False, False])
    assert list(cols["action"]) == ["keep", "keep", "relabel", "keep", "keep", "keep"]
    np.testing.assert_array_equal(cols["new_label"], [-1, -1, 1, -1, -1, -1])
    np.testing.assert_allclose(cols["label_quality"], [0.9, 0.8, 0.2, 0.9, 0.7, 0.6])
    np.testing.assert_array_equal(cols["issue_rank"], [5, 4, 1, 6, 3, 2])


def test_policies_and_drop_versus_relabel() -> None:
    p, y = _random_probs(200, 3, 5)
    cl = li.confident_learning(p, y)
    off = (cl.confident_label >= 0) & (cl.confident_label != y)
    pbnr = li.prune_by_noise_rate(p, y, cl.joint)
    np.testing.assert_array_equal(li.flag_issues(p, y, cl, li.Threshold.CONFIDENT_JOINT), off)
    np.testing.assert_array_equal(li.flag_issues(p, y, cl, li.Threshold.BOTH), off & pbnr)
    np.testing.assert_array_equal(li.flag_issues(p, y, cl, li.Threshold.ARGMAX), p.argmax(1) != y)
    _, cols = li.decide(p, y, relabel_confidence=0.9)
    flagged = cols["is_label_issue"]
    relabel = cols["action"] == "relabel"
    assert np.all(relabel == (flagged & (p.max(1) >= 0.9) & (p.argmax(1) != y)))
    assert np.all((cols["action"] == "keep") == ~flagged)


def test_enums_mirror_the_contract_literals() -> None:
    assert set(typing.get_args(contract.Method)) == {m.value for m in li.Method}
    assert set(typing.get_args(contract.ThresholdPolicy)) == {t.value for t in li.Threshold}
    params = contract.LabelIssuesParams()
    defaults = li.LabelIssuesConfig()
    assert params.method == defaults.method and params.threshold == defaults.threshold
    assert params.folds == defaults.folds and params.beta == defaults.beta


@pytest.mark.parametrize(
    ("field", "value"),
    [("folds", 1), ("method", "nope"), ("threshold", "x"), ("epochs", 0), ("relabel_confidence", 2.0)],
)
def test_bad_config_is_refused_before_any_work(field: str, value: Any) -> None:
    x = np.zeros((10, 2), dtype=np.float32)
    y = np.arange(10) % 2
    config = li.LabelIssuesConfig(**{field: value})
    with pytest.raises(InvalidInputError, match=repr(field)):
        li.find_label_issues({"arch": "linear"}, x, y, config=config)
    with pytest.raises(InvalidInputError, match="'folds'"):
        li.find_label_issues({"arch": "linear"}, x, y, config=li.LabelIssuesConfig(folds=11))


def _noisy_gaussians() -> Any:
    from infoscore.data import make_gaussians

    return make_gaussians(n=300, dim=10, classes=3, separation=5.0, label_noise=0.2, seed=0)


@pytest.mark.parametrize("method", ["limit", "cross-entropy-cv"])
def test_find_label_issues_finds_flipped_labels(method: str, one_torch_thread: None) -> None:
    ds = _noisy_gaussians()
    seen: list[tuple[int, int]] = []
    config = li.LabelIssuesConfig(method=method, epochs=30, batch_size=32, folds=3, seed=0)
    res = li.find_label_issues(
        {"arch": "mlp", "hidden": [32]},
        ds.x_train,
        ds.y_train,
        config=config,
        progress=lambda d, t: seen.append((d, t)),
    )
    ev = res.evaluate(ds.y_train_clean)
    assert ev["auroc_noisy"] is not None and ev["auroc_noisy"] > 0.95
    assert ev["flag_precision"] is not None and ev["flag_precision"] > 0.8
    assert ev["flag_recall"] is not None and ev["flag_recall"] > 0.8
    assert abs(res.confident.estimated_noise_rate - ev["true_noise_rate"]) < 0.08  # type: ignore[operator]
    total = 30 if method == "limit" else 90
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert res.trainings == (1 if method == "limit" else 3)
    assert sorted(res.issue_rank) == list(range(1, 301))


def test_find_label_issues_stops_when_asked(one_torch_thread: None) -> None:
    ds = _noisy_gaussians()
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        li.find_label_issues(
            {"arch": "linear"},
            ds.x_train,
            ds.y_train,
            config=li.LabelIssuesConfig(method="cross-entropy-cv", epochs=50),
            should_stop=stop,
        )
    assert len(calls) == 4


# ------------------------------------------------------------------ runner

REQUEST = {
    "kind": "label-issues",
    "dataset": {
        "builtin": "gaussians",
        "n": 240,
        "dim": 10,
        "classes": 3,
        "separation": 5.0,
        "label_noise": 0.2,
    },
    "model": {"arch": "mlp", "hidden": [32]},
    "params": {"epochs": 30, "batch_size": 32},
}


def test_runner_outputs_the_contract(tmp_path: Path, one_torch_thread: None) -> None:
    from workers.runners import get_runner

    ctx = make_context(REQUEST, tmp_path)
    out = get_runner("label-issues").run(ctx)
    assert out.scores is not None
    assert list(out.scores.columns[:6]) == list(contract.SCORE_COLUMNS)
    assert {"limit_quality", "normalized_margin"} <= set(out.scores.columns)
    s = out.summary
    for key in ("n_issues", "estimated_noise_rate", "noise_matrix", "method", "folds", "thresholds"):
        assert key in s
    for key in ("auroc_noisy", "flag_precision", "flag_recall", "suggested_label_accuracy"):
        assert isinstance(s[key], float)
    assert s["method"] == "limit" and s["n_issues"] == int(out.scores["is_label_issue"].sum())
    assert np.asarray(s["noise_matrix"]).shape == (3, 3)
    decisions = pd.read_csv(io.BytesIO(out.files[contract.DECISIONS_ARTIFACT]))  # type: ignore[arg-type]
    assert list(decisions.columns) == list(contract.DECISION_COLUMNS)
    flagged = out.scores["is_label_issue"].to_numpy()
    assert np.array_equal(decisions["action"].to_numpy() != "keep", flagged)
    relabel = decisions["action"] == "relabel"
    assert (
        decisions.loc[relabel, "new_label"].notna().all()
        and decisions.loc[~relabel, "new_label"].isna().all()
    )
    with np.load(io.BytesIO(out.files[contract.SOURCE_ARTIFACT]), allow_pickle=False) as z:  # type: ignore[arg-type]
        assert z["x"].shape == (240, 10) and z["x_test"].shape == (240, 10)
        np.testing.assert_array_equal(z["y"], ctx.dataset.y_train)


def test_runner_writes_class_names_when_the_upload_has_them(tmp_path: Path, one_torch_thread: None) -> None:
    from workers.runners import get_runner

    ctx = make_context({**REQUEST, "params": {"epochs": 5}}, tmp_path)
    ctx.dataset.info["class_names"] = ["cat", "dog", "emu"]
    out = get_runner("label-issues").run(ctx)
    assert out.scores is not None
    assert set(out.scores["given_label"]) <= {"cat", "dog", "emu"}
    assert out.scores["given_label"].tolist() == [["cat", "dog", "emu"][v] for v in ctx.dataset.y_train]
    decisions = pd.read_csv(io.BytesIO(out.files[contract.DECISIONS_ARTIFACT]))  # type: ignore[arg-type]
    assert set(decisions["new_label"].dropna()) <= {"cat", "dog", "emu"}


def test_estimate_covers_the_kind() -> None:
    from contracts.estimate import builtin_shape, estimate
    from contracts.jobs import parse_job_request

    req = parse_job_request(REQUEST).model_dump(mode="json")
    est = estimate(req, builtin_shape(req["dataset"]))
    assert est.parameters == 10 * 32 + 32 + 32 * 3 + 3 and est.memory_bytes > 0


# ------------------------------------------------------------------ derive over HTTP


def test_derive_end_to_end_http_client_and_cli(api: Any, worker: WorkerProcess) -> None:
    from typer.testing import CliRunner

    from launcher import cli
    from launcher.client import InfoscoreAPIError, InfoscoreClient

    job = api.post("/v1/jobs", json=REQUEST).json()
    done = wait_for_state(api, job["id"], ("succeeded", "failed"), timeout=180)
    assert done["state"] == "succeeded", done["error"]
    assert "decisions.csv" in done["artifacts"] and "source.npz" in done["artifacts"]
    decisions = pd.read_csv(io.StringIO(api.get(f"/v1/jobs/{job['id']}/artifacts/decisions.csv").text))
    n_drop = int((decisions["action"] == "drop").sum())
    n_relabel = int((decisions["action"] == "relabel").sum())
    assert n_drop + n_relabel == done["summary"]["n_issues"] > 0

    r = api.post("/v1/datasets:derive", json={"job": job["id"], "apply": "drop-and-relabel"})
    assert r.status_code == 201, r.text
    record = r.json()
    assert r.headers["location"] == f"/v1/datasets/{record['id']}"
    assert record["n_train"] == 240 - n_drop and record["n_test"] == 240
    assert record["lineage"] == {
        "source_dataset": {
            **typing.cast(dict[str, Any], REQUEST["dataset"]),
            "n_test": None,
            "noise": "uniform",
            "seed": 0,
        },
        "job": job["id"],
        "apply": "drop-and-relabel",
        "n_source": 240,
        "n_dropped": n_drop,
        "n_relabelled": n_relabel,
    }
    assert api.get(f"/v1/datasets/{record['id']}").json()["lineage"]["job"] == job["id"]
    again = api.post("/v1/datasets:derive", json={"job": job["id"], "apply": "drop-and-relabel"})
    assert again.status_code == 200 and again.json()["id"] == record["id"]

    client = InfoscoreClient()
    client.http = api
    dropped = client.derive(job["id"], "drop")
    assert dropped["n_train"] == 240 - n_drop - n_relabel and dropped["lineage"]["n_relabelled"] == 0
    monkey_client = InfoscoreClient()
    monkey_client.http = api
    original = cli._client
    cli._client = lambda url, key: monkey_client  # type: ignore[assignment]
    try:
        out = CliRunner().invoke(cli.app, ["derive", job["id"], "--apply", "relabel"])
    finally:
        cli._client = original  # type: ignore[assignment]
    assert out.exit_code == 0, out.output
    relabelled = pd.read_json(io.StringIO(out.output), typ="series")
    assert relabelled["n_train"] == 240 and relabelled["lineage"]["n_relabelled"] == n_drop + n_relabel

    # The derived dataset is a normal dataset: ids kept (row indices of the source), any job runs on it.
    train = {
        "kind": "training-dynamics",
        "dataset": record["id"],
        "model": {"arch": "linear"},
        "params": {"epochs": 2, "el2n_epoch": 0},
    }
    second = api.post("/v1/jobs", json=train).json()
    finished = wait_for_state(api, second["id"], ("succeeded", "failed"), timeout=120)
    assert finished["state"] == "succeeded", finished["error"]
    table = pd.read_parquet(io.BytesIO(api.get(f"/v1/jobs/{second['id']}/artifacts/scores.parquet").content))
    kept = decisions.loc[decisions["action"] != "drop", "index"].astype(str).tolist()
    assert table["id"].astype(str).tolist() == kept

    # Refusals: a job of another kind, a bad apply value.
    r = api.post("/v1/datasets:derive", json={"job": second["id"]})
    assert r.status_code == 409 and "training-dynamics" in r.json()["detail"]
    assert r.headers["content-type"].startswith("application/problem+json")
    bad = api.post("/v1/datasets:derive", json={"job": job["id"], "apply": "burn"})
    assert bad.status_code == 422
    with pytest.raises(InfoscoreAPIError) as err:
        client.derive("job_" + "0" * 24)
    assert err.value.status == 409


def test_a_tenant_cannot_derive_from_another_tenants_job(
    tmp_path: Path, environment: Any, monkeypatch: Any
) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    for key, value in environment.env().items():
        if key.startswith("INFOSCORE_"):
            monkeypatch.setenv(key, value)
    app = create_app(ServiceSettings(auth="required"))
    with TestClient(app) as client:
        gw = app.state.gateway
        _, key_a = gw.store.create_key("alpha")
        _, key_b = gw.store.create_key("beta")
        job = gw.store.create_job(kind="label-issues", request=REQUEST, fingerprint="f", tenant="alpha")
        gw.store.claim_job(job["id"], "w", stale_after=60)
        gw.store.finish(job["id"], "succeeded", summary={}, artifacts=[])
        body = {"job": job["id"], "apply": "drop"}
        r_b = client.post("/v1/datasets:derive", json=body, headers={"Authorization": f"Bearer {key_b}"})
        r_none = client.post(
            "/v1/datasets:derive",
            json={"job": "job_" + "1" * 24},
            headers={"Authorization": f"Bearer {key_b}"},
        )
        assert r_b.status_code == r_none.status_code == 409
        assert r_b.json()["detail"].replace(job["id"], "X") == r_none.json()["detail"].replace(
            "job_" + "1" * 24, "X"
        )
        # Tenant alpha gets past the tenant check (its job has no artifacts here: 409 naming them).
        r_a = client.post("/v1/datasets:derive", json=body, headers={"Authorization": f"Bearer {key_a}"})
        assert r_a.status_code == 409 and "source.npz" in r_a.json()["detail"]


def test_derive_applies_decisions_exactly_to_an_upload(api: Any) -> None:
    """Hand-written decisions on an uploaded dataset with ids: each apply mode, exactly."""
    gw = api.app.state.gateway
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(
        buf,
        x=x,
        y=np.array([0, 1, 2, 0, 1, 2]),
        x_test=x[:2],
        y_test=np.array([0, 1]),
        ids=np.array(list("abcdef")),
    )
    source = api.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).json()
    req = {**REQUEST, "dataset": source["id"]}
    job = gw.store.create_job(kind="label-issues", request=req, fingerprint="f")
    gw.store.claim_job(job["id"], "w", stale_after=60)
    gw.store.finish(job["id"], "succeeded", summary={}, artifacts=["decisions.csv"])
    decisions = "index,id,action,new_label\n0,a,keep,\n1,b,drop,\n2,c,relabel,0\n3,d,keep,\n4,e,relabel,2\n5,f,keep,\n"
    gw.artifacts.write(job["id"], "decisions.csv", decisions.encode())
    scores = pd.DataFrame({"index": range(6), "suggested_label": [0, 0, 0, 0, 2, 2]})
    gw.artifacts.write(job["id"], "scores.parquet", scores.to_parquet(index=False))

    def derived(apply: str) -> dict[str, np.ndarray]:
        r = api.post("/v1/datasets:derive", json={"job": job["id"], "apply": apply})
        assert r.status_code == 201, r.text
        with np.load(gw.artifacts.dataset_path(r.json()["id"]), allow_pickle=False) as z:
            return {k: z[k] for k in z.files} | {"record": r.json()}  # type: ignore[dict-item]

    both = derived("drop-and-relabel")
    assert both["ids"].tolist() == ["a", "c", "d", "e", "f"]
    assert both["y"].tolist() == [0, 0, 0, 2, 2]
    np.testing.assert_array_equal(both["x"], x[[0, 2, 3, 4, 5]])
    np.testing.assert_array_equal(both["x_test"], x[:2])
    lineage = both["record"]["lineage"]  # type: ignore[call-overload]
    assert lineage["source_dataset"] == source["id"] and (lineage["n_dropped"], lineage["n_relabelled"]) == (
        1,
        2,
    )
    dropped = derived("drop")
    assert dropped["ids"].tolist() == ["a", "d", "f"] and dropped["y"].tolist() == [0, 0, 2]
    relabelled = derived("relabel")
    assert relabelled["ids"].tolist() == list("abcdef")
    assert relabelled["y"].tolist() == [0, 0, 0, 0, 2, 2]  # b (a drop row) takes its suggestion too


def test_runner_evaluates_an_upload_with_a_truth_column(tmp_path: Path, one_torch_thread: None) -> None:
    """An upload that carried its true labels (truth_column / y_true) gets the detection
    numbers in the summary, like a built-in."""
    from infoscore.data import make_gaussians
    from workers.runners import get_runner

    ds = make_gaussians(n=240, dim=10, classes=3, separation=5.0, n_test=60, label_noise=0.2, seed=0)
    assert ds.y_train_clean is not None
    dataset_id = "ds_" + "ab" * 16
    (tmp_path / "datasets").mkdir()
    np.savez(
        tmp_path / "datasets" / f"{dataset_id}.npz",
        x=ds.x_train, y=ds.y_train, y_true=ds.y_train_clean, x_test=ds.x_test, y_test=ds.y_test,
    )  # fmt: skip
    request = {**REQUEST, "dataset": dataset_id}
    ctx = make_context(request, tmp_path / "work", data_dir=tmp_path)
    out = get_runner("label-issues").run(ctx)
    s = out.summary
    for key in ("auroc_noisy", "flag_precision", "flag_recall", "suggested_label_accuracy"):
        assert isinstance(s[key], float), key
    assert s["auroc_noisy"] > 0.8
