"""The client and the CLI against the real app (TestClient as the HTTP transport): upload
options, datasets(), wait(on_progress=...), the progress bar, result tables, INFOSCORE_URL
in --help, keys create --json."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from launcher import cli
from launcher.client import InfoscoreClient

runner = CliRunner()
TD = {"kind": "training-dynamics", "dataset": {"builtin": "digits"}, "model": {"arch": "mlp"}}


@pytest.fixture
def client(api: Any, monkeypatch: pytest.MonkeyPatch) -> InfoscoreClient:
    c = InfoscoreClient("http://testserver")
    c.http = api  # the TestClient is an httpx.Client
    monkeypatch.setattr(cli, "_client", lambda url, key: c)
    return c


def _run_job_in_background(api: Any, job_id: str, steps: int = 4, pause: float = 0.3) -> threading.Thread:
    store = api.app.state.gateway.store

    def work() -> None:
        time.sleep(pause)
        store.claim_job(job_id, "w1", stale_after=60)
        for i in range(1, steps + 1):
            store.set_progress(job_id, i, steps)
            time.sleep(pause)
        store.finish(job_id, "succeeded", summary={"test_accuracy": 0.9})

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_help_names_infoscore_url() -> None:
    out = runner.invoke(cli.app, ["--help"]).output
    assert "INFOSCORE_URL" in out
    assert "INFOSCORE_URL" in runner.invoke(cli.app, ["result", "--help"]).output


def test_upload_dataset_with_options_and_datasets(client: InfoscoreClient, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    df = pd.DataFrame({"a": np.arange(8.0) ** 2, "b": [1.0, 0, 2, 0, 1, 3, 0, 1], "y": list("xyxyxyxy")})
    df.reset_index().to_csv(path, index=False)
    rec = client.upload_dataset(path, label_column="y", exclude_columns=["index"], standardize=True)
    assert rec["feature_names"] == ["a", "b"] and rec["class_names"] == ["x", "y"]
    assert rec["standardization"] is not None
    assert client.upload is not None  # the short name exists too
    assert [d["id"] for d in client.datasets()] == [rec["id"]]
    out = runner.invoke(cli.app, ["datasets"])
    assert out.exit_code == 0 and rec["id"] in out.output and "n_train" in out.output
    cli_up = runner.invoke(
        cli.app, ["upload", str(path), "--label-column", "y", "--exclude-columns", "index"]
    )
    assert cli_up.exit_code == 0, cli_up.output
    assert json.loads(cli_up.stdout)["class_names"] == ["x", "y"]


def test_wait_calls_on_progress_until_the_end(client: InfoscoreClient, api: Any) -> None:
    job = client.submit(TD)
    thread = _run_job_in_background(api, job["id"])
    seen: list[tuple[str, int, int]] = []
    final = client.wait(
        job["id"],
        poll=0.1,
        on_progress=lambda j: seen.append((j["state"], j["progress"]["done"], j["progress"]["total"])),
    )
    thread.join()
    assert final["state"] == "succeeded" and seen[-1][0] == "succeeded"
    assert seen[0][0] == "queued" and any(s == "running" and 0 < d < t for s, d, t in seen)
    dones = [d for _, d, _ in seen]
    assert dones == sorted(dones)


def test_cli_wait_shows_a_progress_bar_with_state_and_eta(client: InfoscoreClient, api: Any) -> None:
    job = client.submit(TD)
    thread = _run_job_in_background(api, job["id"])
    out = runner.invoke(cli.app, ["wait", job["id"]])
    thread.join()
    assert out.exit_code == 0, out.output
    lines = [line for line in out.stderr.splitlines() if "ETA" in line]
    assert any("running" in line and "ETA" in line and "/4" in line for line in lines), out.stderr
    assert "succeeded" in lines[-1] and "4/4 (100%)" in lines[-1]
    assert json.loads(out.stdout)["state"] == "succeeded"


def test_progress_bar_eta_from_the_observed_rate() -> None:
    stream = io.StringIO()
    bar = cli.ProgressBar(stream)
    job = {"id": "job_x", "state": "running", "progress": {"done": 0, "total": 10}}
    assert "ETA ?" in bar.line(job)
    bar.first_done = (time.monotonic() - 10.0, 2)  # 2 done 10 s ago
    line = bar.line({**job, "progress": {"done": 6, "total": 10}})  # 4 per 10 s: 4 left -> ~10 s
    assert "6/10 (60%)" in line and "ETA 0:1" in line and "#" * 18 in line


def test_result_prints_a_table_of_the_top_rows(client: InfoscoreClient, api: Any) -> None:
    gw = api.app.state.gateway
    job = gw.store.create_job(kind="training-dynamics", request=TD, fingerprint="f")
    table = pd.DataFrame({"index": range(50), "label": [0, 1] * 25, "loss": np.linspace(0, 1, 50)})
    path = gw.artifacts.artifact_path(job["id"], "scores.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path)
    big_summary = {"test_accuracy": 0.9, "auroc_noisy": {"loss": 0.97}, "settings": {"x": list(range(500))}}
    gw.store.finish(job["id"], "succeeded", summary=big_summary)
    out = runner.invoke(cli.app, ["result", job["id"], "--sort", "loss", "--limit", "5"])
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "test_accuracy: 0.9" in text and "auroc_noisy: loss: 0.97" in text
    assert "top 5 of 50 rows, sorted by loss desc" in text
    body = text.split("sorted by loss desc:")[1].strip().splitlines()
    assert body[0].split() == ["index", "label", "loss"] and body[1].split() == ["49", "1", "1"]
    assert len(text.splitlines()) < 20  # not the whole summary
    as_json = json.loads(runner.invoke(cli.app, ["result", job["id"], "--json", "--limit", "5"]).stdout)
    assert as_json["summary"] == big_summary and len(as_json["rows"]) == 5


def test_keys_create_json(tmp_path: Path) -> None:
    out = runner.invoke(
        cli.app, ["keys", "create", "--tenant", "acme", "--data-dir", str(tmp_path), "--json"]
    )
    assert out.exit_code == 0, out.output
    key = json.loads(out.stdout)
    assert key["tenant"] == "acme" and key["id"].startswith("key_") and len(key["key"]) > 30
