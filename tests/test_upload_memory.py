"""Bounded memory per upload (issue 17): the four reproductions sent to a real API process
whose peak RSS is read from outside (/proc/PID/status VmHWM), the parse pool's memory limit
and recovery, and the estimator's dataset part against the worker's measured peak."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
# The API's peak RSS may grow at most this much over its RSS after a warm-up upload.
RSS_BOUND = 150 * MiB


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, data_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.data_dir = data_dir
        self.start = 0
        self.client = httpx.Client(base_url=url, timeout=120)

    def upload(self, name: str, content: bytes, **form: str) -> httpx.Response:
        return self.client.post("/v1/datasets", files={"file": (name, content)}, data=form)

    def hwm(self) -> int:
        return _status(self.proc.pid, "VmHWM")

    def rss(self) -> int:
        return _status(self.proc.pid, "VmRSS")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("upmem")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "INFOSCORE_DATA_DIR": str(data_dir),
        "INFOSCORE_PORT": str(port),
        "INFOSCORE_BROKER_URL": "redis://127.0.0.1:1/0",  # uploads never touch the broker
        "INFOSCORE_UPLOAD_PARSE_PROCESSES": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api"],
        cwd=data_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the API exited at start"
            assert time.monotonic() < deadline, "the API did not start in 60 s"
            time.sleep(0.2)
        yield Api(proc, url, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _csv(n: int, ids: list[str] | None, features: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).round(3)
    head = (["id"] if ids is not None else []) + ["label"] + [f"f{j}" for j in range(features)]
    lines = [",".join(head)]
    for i in range(n):
        row = ([ids[i]] if ids is not None else []) + [str(i % 2)] + [str(v) for v in x[i]]
        lines.append(",".join(row))
    return ("\n".join(lines) + "\n").encode()


def _problem(r: httpx.Response, status: int, setting: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert setting in body["detail"], body["detail"]
    return dict(body)


@pytest.fixture(scope="module")
def warm_api(api: Api) -> Api:
    """The first upload imports numpy/pandas/pyarrow into the API and starts the parse
    process; the RSS bound is measured from the RSS after it."""
    warm = api.upload("warm.csv", _csv(200, [f"w{i}" for i in range(200)]))
    assert warm.status_code == 201, warm.text
    api.start = api.rss()
    return api


def _check_rss(api: Api, what: str) -> None:
    peak = api.hwm()
    print(f"{what}: API RSS after warm-up {api.start / MiB:.0f} MiB, peak so far {peak / MiB:.0f} MiB")
    assert peak - api.start < RSS_BOUND, f"{what}: the API's peak RSS grew {(peak - api.start) / MiB:.0f} MiB"
    assert api.proc.poll() is None


def test_csv_with_one_long_id(warm_api: Api) -> None:
    # 20,000 rows, one 5,000-character id (was: API +800 MB, a 400 MB dataset file).
    ids = [f"r{i}" for i in range(20_000)]
    ids[7] = "x" * 5000
    r = warm_api.upload("long-id.csv", _csv(20_000, ids))
    _check_rss(warm_api, "long-id CSV")
    body = _problem(r, 413, "INFOSCORE_MAX_ID_LENGTH")
    assert "5000 characters" in body["detail"] and body.get("field") == "id"


def test_npz_with_long_byte_string_ids(warm_api: Api) -> None:
    # ids of dtype S5000 (was: +955 MB and a 400 MB file): refused from the .npy header.
    n = 20_000
    rng = np.random.default_rng(1)
    letters = rng.integers(97, 123, size=(n, 200), dtype=np.uint8)
    raw_ids = np.array([bytes(row) + b"%d" % i for i, row in enumerate(letters)], dtype="S5000")
    buf = io.BytesIO()
    np.savez_compressed(buf, x=rng.normal(size=(n, 4)).astype(np.float32), y=np.arange(n) % 2, ids=raw_ids)
    r = warm_api.upload("ids.npz", buf.getvalue())
    _check_rss(warm_api, f"S5000-ids npz ({buf.tell()} bytes)")
    body = _problem(r, 413, "INFOSCORE_MAX_ID_LENGTH")
    assert body.get("field") == "ids"


def test_parquet_of_constant_columns(warm_api: Api) -> None:
    # ~0.4 MB that decodes to 640 MB of float64 (was: +1,029 MB): refused from the metadata.
    rows, cols = 80_000, 1000
    const = pa.array(np.ones(rows))
    table = pa.table({"label": pa.array(np.arange(rows) % 2), **{f"f{j}": const for j in range(cols)}})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    assert buf.tell() < 2 * MiB
    r = warm_api.upload("const.parquet", buf.getvalue())
    _check_rss(warm_api, f"constant Parquet ({buf.tell()} bytes)")
    _problem(r, 413, "INFOSCORE_MAX_EXPANSION_RATIO")


def test_csv_with_a_million_columns(warm_api: Api) -> None:
    # One row, 1,000,000 columns (was: 65 s, 2.66 GB): refused from the header line.
    header = "label," + ",".join(f"f{j}" for j in range(1, 1_000_000))
    wide = (header + "\n" + ",".join(["0"] * 1_000_000) + "\n").encode()
    t0 = time.monotonic()
    r = warm_api.upload("wide.csv", wide)
    elapsed = time.monotonic() - t0
    print(f"1,000,000-column CSV ({len(wide)} bytes) answered in {elapsed:.2f} s")
    _check_rss(warm_api, "1,000,000-column CSV")
    _problem(r, 413, "INFOSCORE_MAX_COLUMNS")
    assert elapsed < 2.0  # well under a second on a quiet machine; this one may be shared


def test_stored_file_is_budgeted_size(warm_api: Api) -> None:
    api = warm_api
    n = 5000
    r = api.upload("sized.csv", _csv(n, [f"id-{i:05d}" for i in range(n)], features=4, seed=3))
    assert r.status_code == 201, r.text
    ds_id = r.json()["id"]
    size = (api.data_dir / "datasets" / f"{ds_id}.npz").stat().st_size
    # 5000 x 4 float32 + 5000 int64 labels + 5000 ids of 8 characters (U8) + headers.
    expected = n * 4 * 4 + n * 8 + n * 8 * 4
    assert expected <= size < expected + 16 * 1024
    _check_rss(api, "fine CSV")
