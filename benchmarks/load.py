"""Load benchmark: many clients submit and poll jobs against ``infoscore up`` on loopback.

Starts the embedded service on a fresh data dir (or uses --url), then runs:

1. a status phase: C concurrent clients GET /v1/jobs/{id} for D seconds while a long job
   runs, reporting requests/s and p50/p99 latency;
2. a submit phase: J small jobs POSTed by C clients (p50/p99 of POST /v1/jobs), then
   waits until every job has ended and reports how many succeeded (lost = 0 expected).

Every request loop is bounded in count and time and targets 127.0.0.1 only.

    .venv/bin/python benchmarks/load.py --clients 32 --duration 20 --jobs 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedded import embedded_service

ROOT = Path(__file__).resolve().parent.parent
LONG_JOB = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "mlp", "hidden": [256]},
    "params": {"epochs": 2000, "el2n_epoch": 5},
    "name": "load-benchmark background job",
}
SMALL_JOB = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "gaussians", "n": 60, "dim": 5, "classes": 2},
    "model": {"arch": "linear"},
    "params": {"epochs": 1, "el2n_epoch": 0, "batch_size": 60},
}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx] * 1000


async def status_phase(url: str, job_id: str, clients: int, duration: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.get(f"/v1/jobs/{job_id}")
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return len(latencies), latencies, errors


async def submit_phase(url: str, jobs: int, clients: int) -> tuple[list[str], list[float], int]:
    ids: list[str] = []
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one() -> None:
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                r = await client.post("/v1/jobs", json={**SMALL_JOB, "seed": i})
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 202:
                    ids.append(r.json()["id"])
                else:
                    errors += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return ids, latencies, errors


def wrk_status(url: str, job_id: str, clients: int, duration: float) -> str:
    """The status phase with wrk (a C load generator, so the client does not take the
    CPU the server needs on a 2-core machine). Returns wrk's report."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{int(duration)}s", "--latency", f"{url}/v1/jobs/{job_id}"],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    return out.stdout


def _wrk_ms(text: str) -> float:
    if text.endswith("us"):
        return float(text[:-2]) / 1000
    if text.endswith("ms"):
        return float(text[:-2])
    return float(text.rstrip("s")) * 1000


def parse_wrk(report: str) -> dict[str, float]:
    stats: dict[str, float] = {"non_2xx": 0.0}
    for line in report.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "50%":
            stats["p50_ms"] = _wrk_ms(parts[1])
        elif parts[0] == "99%":
            stats["p99_ms"] = _wrk_ms(parts[1])
        elif parts[0] == "Requests/sec:":
            stats["rps"] = float(parts[1])
        elif "requests in" in line:
            stats["requests"] = float(parts[0])
        elif parts[0] == "Non-2xx":
            stats["non_2xx"] = float(parts[-1])
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use a running API instead of starting infoscore up")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all jobs")
    ap.add_argument(
        "--status-client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator of the status phase (wrk: Debian's wrk; python: asyncio httpx)",
    )
    args = ap.parse_args()

    if args.url is not None:
        return measure(args.url, args)
    env = {"INFOSCORE_MAX_ACTIVE_JOBS": str(args.jobs + 10)}
    with embedded_service(args.workers, env=env, prefix="infoscore-load-") as url:
        return measure(url, args)


def measure(url: str, args: argparse.Namespace) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        long_job = client.post("/v1/jobs", json=LONG_JOB).json()["id"]
        while client.get(f"/v1/jobs/{long_job}").json()["state"] != "running":
            time.sleep(0.2)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        f"status phase: {args.clients} clients x {args.duration:.0f} s on GET /v1/jobs/{{id}} while a job runs"
    )
    if args.status_client == "wrk":
        stats = parse_wrk(wrk_status(url, long_job, args.clients, args.duration))
        print(
            f"  [wrk] requests {stats['requests']:.0f}, non-2xx {stats['non_2xx']:.0f}, "
            f"{stats['rps']:.0f} req/s, p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms"
        )
    else:
        t0 = time.perf_counter()
        count, lat, errors = asyncio.run(status_phase(url, long_job, args.clients, args.duration))
        elapsed = time.perf_counter() - t0
        print(
            f"  [python] requests {count}, errors {errors}, {count / elapsed:.0f} req/s, "
            f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat) * 1000:.1f} ms"
        )
    with httpx.Client(base_url=url, timeout=30) as client:
        state = client.get(f"/v1/jobs/{long_job}").json()["state"]
    print(f"  the background job was still {state} at the end of the phase")

    with httpx.Client(base_url=url, timeout=30) as client:
        client.delete(f"/v1/jobs/{long_job}")
    print(f"submit phase: {args.jobs} jobs by {args.clients} clients")
    t0 = time.perf_counter()
    ids, lat, errors = asyncio.run(submit_phase(url, args.jobs, args.clients))
    elapsed = time.perf_counter() - t0
    print(
        f"  accepted {len(ids)}, errors {errors}, {len(ids) / elapsed:.0f} submits/s, "
        f"POST p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms"
    )
    t0 = time.perf_counter()
    states: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() - t0 < args.timeout:
            for job_id in ids:
                if states.get(job_id) in (None, "queued", "running"):
                    states[job_id] = client.get(f"/v1/jobs/{job_id}").json()["state"]
            if all(s in ("succeeded", "failed", "cancelled") for s in states.values()):
                break
            time.sleep(1)
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    lost = len(ids) - sum(v for k, v in counts.items() if k in ("succeeded", "failed", "cancelled"))
    print(
        f"  all ended after {time.perf_counter() - t0:.0f} s: {counts}; lost {lost}; "
        f"failed {counts.get('failed', 0)}"
    )
    ok = lost == 0 and counts.get("succeeded", 0) == len(ids) == args.jobs
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
