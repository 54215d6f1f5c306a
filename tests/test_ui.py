"""The browser pages under /ui.

Fast tests drive the pages over a TestClient with job rows and artifacts written into the
store directly. Browser tests (marked ``browser``) run one real stack (a Redis-compatible
server, a worker process, the API under uvicorn with API keys required), submit one tiny
job of every kind, and drive Debian's headless chromium through selenium: each page's
plots and sample images load and are not blank, a running job's progress updates in
place, another tenant's job is 404, user strings are escaped, and no request leaves
localhost. Without chromium they skip, unless INFOSCORE_REQUIRE_BROWSER=1 (.ci/run).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from service.ui import charts, images, views

from .conftest import ROOT, Environment, RedisServer, WorkerProcess, free_port, wait_until

XSS_NAME = '<script>window.__pwned = 1</script> & "quotes" <b>bold</b>'


# ------------------------------------------------------------------ units


def test_png_encoder_round_trips_through_a_decoder() -> None:
    from PIL import Image  # a dev-only check: the gateway itself never imports PIL

    rng = np.random.default_rng(0)
    for pixels in (
        rng.integers(0, 256, (5, 7), dtype=np.uint8),
        rng.integers(0, 256, (4, 3, 3), dtype=np.uint8),
    ):
        decoded = np.asarray(Image.open(io.BytesIO(images.encode_png(pixels))))
        np.testing.assert_array_equal(decoded, pixels)


def test_thumbnails_follow_the_channel_convention() -> None:
    chw = np.zeros((3, 4, 5), dtype=np.uint8)
    chw[0] = 200  # red channel first
    assert images.to_display(chw).shape == (4, 5, 3) and images.to_display(chw)[0, 0, 0] == 200
    hwc = np.zeros((4, 5, 3), dtype=np.uint8)
    assert images.to_display(hwc).shape == (4, 5, 3)
    assert images.to_display(np.zeros((1, 8, 8), dtype=np.uint8)).shape == (8, 8)
    assert images.is_image_shape([1, 8, 8]) and images.is_image_shape([28, 28])
    assert not images.is_image_shape([64]) and not images.is_image_shape([3, 1, 1])
    thumb = images.thumbnail_png(np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
    assert thumb[16:24] == (64).to_bytes(4, "big") * 2  # upscaled 8x8 -> 64x64


def test_worker_and_gateway_quantize_alike() -> None:
    from types import SimpleNamespace

    from workers.thumbnails import sample_images

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 16)).astype(np.float32)
    ds = SimpleNamespace(input_shape=(1, 4, 4), n_train=6, x_train=x)
    blob = sample_images(ds)
    assert blob is not None
    worker = np.load(io.BytesIO(blob), allow_pickle=False)
    np.testing.assert_array_equal(worker, images.quantize(x.reshape(6, 1, 4, 4)))
    assert worker.min() == 0 and worker.max() == 255
    assert sample_images(SimpleNamespace(input_shape=(16,), n_train=6, x_train=x)) is None


def test_nice_ticks_and_charts_escape_text() -> None:
    assert charts.nice_ticks(0, 1) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert charts.nice_ticks(0, 7) == pytest.approx([0.0, 2.0, 4.0, 6.0])
    ticks = charts.nice_ticks(0.13, 0.87)
    assert ticks[0] >= 0.13 and ticks[-1] <= 0.87 and len(ticks) >= 3
    chart = charts.line_chart(
        "a.svg", "<b>t</b>", [charts.Series("<s>", [1, 2], [0.1, 0.2])], xlabel="x", ylabel="y"
    )
    assert chart is not None and "<b>" not in chart.svg and "&lt;b&gt;t&lt;/b&gt;" in chart.svg
    assert (
        charts.line_chart("a.svg", "t", [charts.Series("s", [1], [float("nan")])], xlabel="x", ylabel="y")
        is None
    )
    hist = charts.histogram(
        "h.svg", "h", [1.0, 2.0, 3.0, 4.0], xlabel="v", highlight=[False, True, False, False]
    )
    assert hist is not None and "flipped labels (1)" in hist.svg and "clean labels (3)" in hist.svg


def test_summary_sections_make_tables() -> None:
    summary = {
        "train_accuracy": 0.91234567,
        "results": [{"n": 10, "bound_mean": 0.5}, {"n": 20, "bound_mean": 0.4, "units": 3}],
        "curves": {"epoch": [1, 2], "test_accuracy": [0.5, 0.6]},
        "modes": {"none": {"test_accuracy_mean": 0.8}, "offline": {"test_accuracy_mean": 0.85}},
        "settings": {"lr": 0.001, "model": {"arch": "mlp"}},
    }
    sections = {s["title"]: s for s in views.summary_sections(summary)}
    assert sections["headline numbers"]["rows"] == [("train_accuracy", "0.9123")]
    assert sections["results"]["columns"] == ["n", "bound_mean", "units"]
    assert sections["results"]["rows"][0] == ["10", "0.5", "—"]
    assert sections["curves"]["rows"] == [["1", "0.5"], ["2", "0.6"]]
    assert sections["modes"]["columns"] == ["modes", "test_accuracy_mean"]
    assert ("model.arch", "mlp") in sections["settings"]["rows"]


# -------------------------------------------------------- pages over HTTP


@pytest.fixture
def pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, dict[str, str]]]:
    """A TestClient with keys required and two tenants; no broker (nothing is submitted)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    for key in [k for k in os.environ if k.startswith("INFOSCORE_")]:
        monkeypatch.delenv(key)
    settings = ServiceSettings(
        data_dir=tmp_path / "data", auth="required", broker_url="redis://127.0.0.1:1/0"
    )
    app = create_app(settings)
    gw = app.state.gateway
    keys = {tenant: gw.store.create_key(tenant)[1] for tenant in ("alice", "bob")}
    with TestClient(app) as client:
        yield client, gw, keys


def _finished_job(
    gw: Any, tenant: str, request: dict[str, Any], summary: dict[str, Any], table: Any = None
) -> str:
    row = gw.store.create_job(
        kind=request["kind"],
        request=request,
        fingerprint=os.urandom(8).hex(),
        tenant=tenant,
        name=request.get("name"),
    )
    artifacts = ["summary.json"]
    gw.artifacts.write(row["id"], "summary.json", json.dumps(summary).encode())
    if table is not None:
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        gw.artifacts.write(row["id"], "scores.parquet", buf.getvalue())
        artifacts.append("scores.parquet")
    gw.store.finish(row["id"], "succeeded", summary=summary, artifacts=artifacts)
    return str(row["id"])


def _si_table(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "label": np.arange(n) % 2,
            "label_noisy": np.arange(n) % 7 == 0,
            "si_weights": rng.exponential(size=n),
            "rank_si_weights": np.arange(1, n + 1),
        }
    )


def test_pages_need_a_key_and_honour_the_cookie_or_the_header(pages: Any) -> None:
    client, _, keys = pages
    r = client.get("/ui/jobs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=%2Fui%2Fjobs")
    r = client.get("/ui/jobs", headers={"Authorization": f"Bearer {keys['alice']}"})
    assert r.status_code == 200 and "tenant alice" in r.text
    bad = client.post(
        "/ui/login", data={"api_key": "isk_nope.nope", "next": "/ui/jobs"}, follow_redirects=False
    )
    assert bad.status_code == 401 and "not valid" in bad.text
    login = client.post(
        "/ui/login", data={"api_key": keys["bob"], "next": "https://evil.example/"}, follow_redirects=False
    )
    assert login.status_code == 303 and login.headers["location"] == "/ui/jobs"  # no open redirect
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "tenant bob" in client.get("/ui/jobs").text  # the cookie now authenticates
    client.post("/ui/logout")
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_another_tenants_job_is_404_everywhere(pages: Any) -> None:
    client, gw, keys = pages
    job = _finished_job(
        gw,
        "bob",
        {"kind": "sample-information", "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}},
        {"train_accuracy": 1.0},
        _si_table(),
    )
    alice = {"Authorization": f"Bearer {keys['alice']}"}
    bob = {"Authorization": f"Bearer {keys['bob']}"}
    for path in ("", "/status", "/plots/si-weights-histogram.svg", "/samples/0.png", "/files/summary.json"):
        assert client.get(f"/ui/jobs/{job}{path}", headers=bob).status_code in (200, 404), path
        assert client.get(f"/ui/jobs/{job}{path}", headers=alice).status_code == 404, path
    page = client.get(f"/ui/jobs/{job}", headers=alice)
    assert "No job with id" in page.text and "text/html" in page.headers["content-type"]
    assert job not in client.get("/ui/jobs", headers=alice).text
    assert job in client.get("/ui/jobs", headers=bob).text


def test_job_page_escapes_user_strings_and_sets_a_strict_csp(pages: Any) -> None:
    client, gw, keys = pages
    request = {
        "kind": "sample-information",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "linear"},
        "name": XSS_NAME,
    }
    job = _finished_job(
        gw, "alice", request, {"train_accuracy": 0.5, "note": "<img src=x onerror=alert(1)>"}, _si_table()
    )
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    page = client.get(f"/ui/jobs/{job}", headers=headers)
    assert page.status_code == 200
    assert "<script>window.__pwned" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp
    # Every script, style sheet and image the page names is on this server.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert ref.startswith(("/", "#")), ref
    listing = client.get("/ui/jobs", headers=headers).text
    assert "&lt;script&gt;" in listing and "<script>window" not in listing
    svg = client.get(f"/ui/jobs/{job}/plots/si-weights-histogram.svg", headers=headers)
    assert svg.headers["content-type"] == "image/svg+xml" and "flipped labels (6)" in svg.text


def test_job_page_sorts_and_pages_the_table_and_lists_samples(pages: Any) -> None:
    client, gw, keys = pages
    table = _si_table(45)
    request = {"kind": "sample-information", "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}}
    job = _finished_job(gw, "alice", request, {"train_accuracy": 1.0}, table)
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    # Without pixels (a digits job from before workers wrote sample_images.npy): no images.
    page = client.get(f"/ui/jobs/{job}", headers=headers).text
    assert "rows 1–20 of 45" in page and "/samples/" not in page and "Most informative" not in page
    assert client.get(f"/ui/jobs/{job}/samples/0.png", headers=headers).status_code == 404
    pixels = np.random.default_rng(2).integers(0, 256, (45, 1, 8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, pixels)
    gw.artifacts.write(job, "sample_images.npy", buf.getvalue())
    page = client.get(f"/ui/jobs/{job}", headers=headers).text
    top = table.sort_values("si_weights", ascending=False, kind="stable")
    assert "rows 1–20 of 45, sorted by <code>si_weights</code> (desc)" in page
    assert "Most informative samples (SI)" in page
    first_rows = re.findall(r'/samples/(\d+)\.png" alt="sample \d+" width="32"', page)
    assert [int(i) for i in first_rows] == top["index"].tolist()[:20]
    page3 = client.get(
        f"/ui/jobs/{job}", headers=headers, params={"sort": "index", "order": "asc", "offset": 40}
    ).text
    assert "rows 41–45 of 45" in page3 and 'id="next-rows"' not in page3 and 'id="prev-rows"' in page3
    # The page's rows are the API's: its link answers the same rows, on any page.
    for params in ({}, {"sort": "label", "order": "asc", "offset": 20}):
        html = client.get(f"/ui/jobs/{job}", headers=headers, params=params).text
        api_url = re.search(r'<a href="(/v1/jobs/[^"]+)">this page as JSON', html).group(1)  # type: ignore[union-attr]
        api_rows = client.get(api_url.replace("&amp;", "&"), headers=headers).json()["rows"]
        shown = re.findall(r'width="32" height="32"></td><td>(\d+)</td>', html)
        assert [int(i) for i in shown] == [r["index"] for r in api_rows] and len(api_rows) == 20
    bad = client.get(f"/ui/jobs/{job}", headers=headers, params={"sort": "nope"})
    assert bad.status_code == 422 and "must be one of" in bad.text
    png = client.get(f"/ui/jobs/{job}/samples/5.png", headers=headers)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content)))[::8, ::8], pixels[5, 0])


def test_pages_without_keys_on_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auth off (make up): no login, everything is the tenant 'default'."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    for key in [k for k in os.environ if k.startswith("INFOSCORE_")]:
        monkeypatch.delenv(key)
    app = create_app(ServiceSettings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0"))
    gw = app.state.gateway
    failed = gw.store.create_job(
        kind="limit",
        request={"kind": "limit", "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}},
        fingerprint="f",
        tenant="default",
        name=None,
    )
    gw.store.finish(
        failed["id"], "failed", error={"title": "Unprocessable", "status": 422, "detail": "bad <x>"}
    )
    queued = gw.store.create_job(
        kind="fcmi-bound",
        request={"kind": "fcmi-bound", "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}},
        fingerprint="g",
        tenant="default",
        name="waiting",
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:  # loopback, as make up serves
        listing = client.get("/ui/jobs")
        assert listing.status_code == 200 and "log out" not in listing.text
        assert failed["id"] in listing.text and queued["id"] in listing.text
        only = client.get("/ui/jobs", params={"state": "failed"}).text
        assert failed["id"] in only and queued["id"] not in only
        assert client.get("/ui/jobs", params={"kind": "nope"}).status_code == 422
        page = client.get(f"/ui/jobs/{failed['id']}").text
        assert "bad &lt;x&gt;" in page and 'data-terminal="yes"' in page
        running = client.get(f"/ui/jobs/{queued['id']}").text
        assert 'data-terminal="no"' in running and "/ui/static/job.js" in running
        status = client.get(f"/ui/jobs/{queued['id']}/status").json()
        assert status == {
            "id": queued["id"],
            "state": "queued",
            "progress": {"done": 0, "total": 0},
            "terminal": False,
        }
        assert client.get("/ui/static/job.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/static/..%2Fviews.py").status_code == 404


def test_upload_images_come_from_the_dataset_file(pages: Any) -> None:
    client, gw, keys = pages
    from service.uploads import UploadLimits, parse_upload, write_canonical_npz

    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 6, 6)).astype(np.float32)
    src = gw.artifacts.tmp_dir() / "up.npz"
    np.savez(src, x=x, y=np.arange(30) % 3)
    parsed = parse_upload(src, "up.npz", UploadLimits(max_bytes=10**7))
    dataset_id = "ds_" + "ab" * 16
    write_canonical_npz(parsed, gw.artifacts.dataset_path(dataset_id))
    gw.store.add_dataset(
        {
            "id": dataset_id,
            "sha256": "ab" * 32,
            "format": "npz",
            "filename": "up.npz",
            "n_train": 30,
            "n_test": 0,
            "n_classes": 3,
            "input_shape": [6, 6],
            "size_bytes": 1,
        },
        "alice",
    )
    table = pd.DataFrame(
        {"index": np.arange(30), "label": np.arange(30) % 3, "forgetting_events": np.arange(30) % 4}
    )
    request = {"kind": "training-dynamics", "dataset": dataset_id, "model": {"arch": "mlp"}}
    job = _finished_job(gw, "alice", request, {"train_accuracy": 1.0}, table)
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    assert "Most forgotten samples" in client.get(f"/ui/jobs/{job}", headers=headers).text
    png = client.get(f"/ui/jobs/{job}/samples/7.png", headers=headers)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from PIL import Image

    shown = np.asarray(Image.open(io.BytesIO(png.content)))
    np.testing.assert_array_equal(shown[::11, ::11], images.quantize(x)[7])  # 6x6 upscaled by 11
    assert client.get(f"/ui/jobs/{job}/samples/30.png", headers=headers).status_code == 404


# ------------------------------------------------------------- the browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRE_BROWSER = os.environ.get("INFOSCORE_REQUIRE_BROWSER") == "1"


def _browser_or_skip() -> None:
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver; .ci/run does)"
        if REQUIRE_BROWSER:
            pytest.fail(f"INFOSCORE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


DIGITS_NOISY = {"builtin": "digits", "classes": [1, 7], "label_noise": 0.2}
KIND_JOBS: dict[str, dict[str, Any]] = {
    "training-dynamics": {
        "kind": "training-dynamics",
        "name": XSS_NAME,
        "dataset": {"builtin": "digits", "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": [32]},
        "params": {"epochs": 4, "el2n_epoch": 1, "batch_size": 128},
    },
    "sample-information": {
        "kind": "sample-information",
        "dataset": DIGITS_NOISY,
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {"eval_size": 50},
    },
    "fcmi-bound": {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "gaussians", "n": 120, "dim": 5, "classes": 2, "label_noise": 0.1},
        "model": {"arch": "linear"},
        "params": {"n": [10, 20, 40], "k1": 2, "k2": 3, "epochs": 5, "batch_size": 16},
    },
    "limit": {
        "kind": "limit",
        "dataset": {"builtin": "digits", "label_noise": 0.3},
        "model": {"arch": "mlp", "hidden": [32]},
        "params": {"epochs": 4, "batch_size": 128},
    },
    "supervision-complexity": {
        "kind": "supervision-complexity",
        "dataset": DIGITS_NOISY,
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {
            "teacher": {"arch": "mlp", "hidden": [32]},
            "teacher_epochs": 3,
            "checkpoints": [1, 3],
            "student_checkpoints": [0, 1, 2],
            "temperatures": [1.0, 4.0],
            "subsample": 60,
        },
    },
    "distillation": {
        "kind": "distillation",
        "dataset": DIGITS_NOISY,
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {
            "teacher": {"arch": "mlp", "hidden": [32]},
            "teacher_epochs": 3,
            "epochs": 2,
            "seeds": 2,
            "curve_epochs": [0, 2],
            "subsample": 60,
        },
    },
}
# What each kind's page must show: (plot images, sample thumbnails at least).
EXPECTED = {
    "training-dynamics": (2, 12),
    "sample-information": (2, 12),
    "fcmi-bound": (2, 0),
    "limit": (4, 12),
    "supervision-complexity": (2, 0),
    "distillation": (2, 0),
}


class Stack:
    def __init__(self, base: str, keys: dict[str, str], jobs: dict[str, str], worker: WorkerProcess) -> None:
        self.base = base
        self.keys = keys
        self.jobs = jobs
        self.worker = worker

    def client(self, tenant: str = "alice") -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.keys[tenant]}"}, timeout=30
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    """Redis, a worker and uvicorn (keys required); one finished job per kind for alice,
    one for bob."""
    _browser_or_skip()
    from store.db import JobStore

    tmp = tmp_path_factory.mktemp("ui")
    redis_server.flush()
    environment = Environment(
        data_dir=tmp / "data", broker_url=redis_server.url, extra={"INFOSCORE_AUTH": "required"}
    )
    environment.data_dir.mkdir(parents=True)
    store = JobStore(f"sqlite:///{environment.data_dir / 'infoscore.db'}")
    keys = {tenant: store.create_key(tenant)[1] for tenant in ("alice", "bob")}
    store.dispose()
    port = free_port()
    log = open(tmp / "api.log", "ab")  # noqa: SIM115
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "service.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=environment.env(),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = WorkerProcess(environment, tmp / "worker.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(base), 30, what="uvicorn")
        stack = Stack(base, keys, {}, worker)
        alice, bob = stack.client("alice"), stack.client("bob")
        started = time.monotonic()
        for kind, body in KIND_JOBS.items():
            r = alice.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            stack.jobs[kind] = r.json()["id"]
        r = bob.post("/v1/jobs", json={**KIND_JOBS["fcmi-bound"], "name": "bob's"})
        stack.jobs["bob"] = r.json()["id"]
        for kind, job_id in stack.jobs.items():
            done = wait_until(
                lambda j=job_id, c=(bob if kind == "bob" else alice): _ended(c, j), 300, what=kind
            )
            assert done["state"] == "succeeded", (kind, done["error"])
        print(f"\nui stack: {len(stack.jobs)} jobs ran in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        worker.stop()
        api.terminate()
        api.wait(timeout=20)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _ended(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(60)
    try:
        driver.get(f"{stack.base}/ui/jobs")
        assert "/ui/login" in driver.current_url  # keys required: the pages ask for one
        driver.find_element("id", "api_key").send_keys(stack.keys["alice"])
        driver.find_element("id", "login-submit").click()
        wait_until(lambda: driver.current_url.endswith("/ui/jobs"), 10, what="login")
        yield driver
    finally:
        driver.quit()


IMAGES_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.querySelectorAll('img'));
Promise.all(imgs.map(i => i.decode().catch(() => null))).then(() => {
  done(imgs.map(img => {
    const out = {src: img.getAttribute('src'), cls: img.className, w: img.naturalWidth, colours: 0};
    if (!img.complete || img.naturalWidth === 0) return out;
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length && seen.size < 3; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    out.colours = seen.size;
    return out;
  }));
});
"""


def _text_of(driver: Any, element_id: str) -> str:
    """The element's text, or "" while the page is between loads (the script reloads it
    when the job ends: the element may be gone or stale for a moment)."""
    from selenium.common.exceptions import WebDriverException

    try:
        return str(driver.find_element("id", element_id).text)
    except WebDriverException:
        return ""


def _off_host(driver: Any, base: str) -> list[str]:
    urls: list[str] = driver.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));"
    )
    return [u for u in urls if not u.startswith(base + "/")]


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.parametrize("kind", list(KIND_JOBS))
def test_each_kind_page_renders_its_plots_and_samples(browser: Any, stack: Stack, kind: str) -> None:
    browser.get(f"{stack.base}/ui/jobs/{stack.jobs[kind]}")
    assert browser.find_element("id", "state").text == "succeeded"
    shown = browser.execute_async_script(IMAGES_JS)
    plots = [i for i in shown if "plot" in i["cls"]]
    thumbs = [i for i in shown if "thumb" in i["cls"]]
    want_plots, want_thumbs = EXPECTED[kind]
    assert len(plots) >= want_plots, [p["src"] for p in plots]
    assert len(thumbs) >= want_thumbs
    blank = [i["src"] for i in shown if i["w"] == 0 or i["colours"] < 2]
    assert not blank, f"images that did not load or are blank: {blank}"
    assert browser.find_elements("css selector", "#summary table")
    assert not _off_host(browser, stack.base)
    if kind == "training-dynamics":  # the job name holds markup: shown as text, never run
        assert browser.find_element("id", "job-name").text == XSS_NAME.replace("  ", " ")
        assert browser.execute_script("return window.__pwned === undefined")
    if kind == "sample-information":
        assert "Most informative samples (SI)" in browser.page_source
    shots = os.environ.get("INFOSCORE_UI_SCREENSHOTS")  # a folder: docs/ui-job-page.png comes from here
    if shots:
        browser.save_screenshot(str(Path(shots) / f"{kind}.png"))


@pytest.mark.browser
@pytest.mark.integration
def test_jobs_list_filters_and_login_cookie(browser: Any, stack: Stack) -> None:
    browser.get(f"{stack.base}/ui/jobs")
    rows = browser.find_elements("css selector", "#jobs tbody tr")
    assert {r.get_attribute("data-job") for r in rows} >= {stack.jobs[k] for k in KIND_JOBS}
    assert stack.jobs["bob"] not in browser.page_source
    browser.get(f"{stack.base}/ui/jobs?kind=limit")
    rows = browser.find_elements("css selector", "#jobs tbody tr")
    assert [r.get_attribute("data-job") for r in rows] == [stack.jobs["limit"]]
    cookie = browser.get_cookie("infoscore_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "infoscore_key" not in browser.execute_script("return document.cookie")
    assert not _off_host(browser, stack.base)


@pytest.mark.browser
@pytest.mark.integration
def test_another_tenants_job_is_404_in_the_browser(browser: Any, stack: Stack) -> None:
    browser.get(f"{stack.base}/ui/jobs/{stack.jobs['bob']}")
    assert browser.find_element("tag name", "h1").text.startswith("404")
    assert stack.client("alice").get(f"/ui/jobs/{stack.jobs['bob']}").status_code == 404
    assert stack.client("bob").get(f"/ui/jobs/{stack.jobs['bob']}").status_code == 200


@pytest.mark.browser
@pytest.mark.integration
def test_a_running_jobs_progress_updates_in_place(browser: Any, stack: Stack) -> None:
    client = stack.client("alice")
    body = {
        **KIND_JOBS["training-dynamics"],
        "name": "long",
        "params": {"epochs": 400, "el2n_epoch": 1, "batch_size": 32},
    }
    job = client.post("/v1/jobs", json=body).json()["id"]
    try:
        wait_until(
            lambda: client.get(f"/v1/jobs/{job}").json()["progress"]["done"] >= 1, 120, what="progress"
        )
        browser.get(f"{stack.base}/ui/jobs/{job}")
        first = browser.find_element("id", "progress-text").text
        browser.execute_script("window.__samePage = true;")
        wait_until(
            lambda: _text_of(browser, "progress-text") not in ("", first),
            30,
            interval=0.3,
            what="progress update",
        )
        assert browser.execute_script("return window.__samePage === true")  # updated without a reload
        assert int(browser.find_element("id", "progress").get_attribute("value")) > int(first.split("/")[0])
        client.delete(f"/v1/jobs/{job}")
        wait_until(lambda: _text_of(browser, "state") == "cancelled", 60, what="cancelled shown")
    finally:
        client.delete(f"/v1/jobs/{job}")
    assert not _off_host(browser, stack.base)


def test_label_issue_style_tables_show_flags_in_rank_order(pages: Any) -> None:
    """A kind this branch does not define (label-issues) still gets its gallery and plot."""
    client, gw, keys = pages
    n = 30
    rank = np.random.default_rng(4).permutation(n) + 1
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "label": np.arange(n) % 3,
            "suggested_label": (np.arange(n) + 1) % 3,
            "label_quality": rank / n,
            "is_label_issue": rank <= 5,
            "issue_rank": rank,
        }
    )
    request = {"kind": "label-issues", "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}}
    job = _finished_job(gw, "alice", request, {"n_issues": 5}, table)
    buf = io.BytesIO()
    np.save(buf, np.zeros((n, 1, 8, 8), dtype=np.uint8))
    gw.artifacts.write(job, "sample_images.npy", buf.getvalue())
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    page = client.get(f"/ui/jobs/{job}", headers=headers).text
    assert "Suspected mislabeled (5 flagged)" in page
    gallery = page.split("Suspected mislabeled")[1].split("</div>")[0]
    shown = [int(i) for i in re.findall(r'samples/(\d+)\.png" alt', gallery)]
    assert shown == table.sort_values("issue_rank")["index"].tolist()[:5]
    assert "suggested " in gallery and "label_quality " in gallery
    assert "sorted by <code>issue_rank</code> (asc)" in page
    assert "/plots/label-quality-histogram.svg" in page


def test_histogram_of_counts_has_one_bar_per_value() -> None:
    chart = charts.histogram(
        "c.svg", "counts", [0, 0, 0, 1, 1, 3], xlabel="events", highlight=[True] + [False] * 5
    )
    assert chart is not None
    bars = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', chart.svg)
    # Four values 0..3: bars for 0 (clean and flipped), 1 and 3; none for 2. Heights in pixels
    # follow the counts: 2 clean + 1 flipped at 0, 2 at 1, 1 at 3.
    heights = sorted(round(float(h)) for h in bars if float(h) < 300)
    assert len(heights) == 4 and heights[0] == heights[1] and heights[2] == heights[3] == 2 * heights[0]


def test_the_server_root_opens_the_jobs(pages: Any) -> None:
    client, _, _ = pages
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/jobs"
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/jobs"
