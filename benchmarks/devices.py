"""One request per job kind through ``infoscore up`` on a chosen device: job seconds and key results.

Starts the embedded service (fresh data dir, free loopback port) from ``--tree`` (default:
this checkout), submits the requests one after another over HTTP with ``device`` set to
``--device``, waits for each, and prints a table of the job's seconds (``finished_at -
started_at``, as the service records them) and a few headline numbers from its summary.

The requests are the table of issue #10 (``--kinds`` picks a subset; the exact and
projected sample-information requests take minutes on a 2-core CPU)::

    .venv/bin/python benchmarks/devices.py --device cpu
    .venv/bin/python benchmarks/devices.py --device cuda --kinds fcmi-bound sample-information
    .venv/bin/python benchmarks/devices.py --device cpu --kinds fcmi-bound --tree /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedded import EmbeddedService

ROOT = Path(__file__).resolve().parents[1]
NOISY_DIGITS = {"builtin": "digits", "label_noise": 0.2}
REQUESTS: dict[str, dict[str, Any]] = {
    "training-dynamics": {"kind": "training-dynamics", "dataset": NOISY_DIGITS, "model": {"arch": "mlp"}},
    "sample-information": {
        "kind": "sample-information",
        "dataset": NOISY_DIGITS,
        "model": {"arch": "mlp", "hidden": [512]},
    },
    "sample-information-projected": {
        "kind": "sample-information",
        "dataset": {"builtin": "gaussians", "n": 50_000, "dim": 32, "classes": 10},
        "model": {"arch": "mlp", "hidden": [128]},
        "params": {"method": "projected", "projection_dim": 2048},
    },
    "fcmi-bound": {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [128]},
        "params": {"n": [100, 400], "k1": 2, "k2": 10},
    },
    "limit": {
        "kind": "limit",
        "dataset": {"builtin": "digits", "label_noise": 0.8},
        "model": {"arch": "mlp", "hidden": [256, 256]},
    },
    "supervision-complexity": {
        "kind": "supervision-complexity",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp"},
        "params": {"teacher": {"arch": "mlp", "hidden": [512, 512]}},
    },
    "distillation": {
        "kind": "distillation",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp"},
        "params": {"teacher": {"arch": "mlp", "hidden": [512, 512]}},
    },
    "label-issues": {
        "kind": "label-issues",
        "dataset": NOISY_DIGITS,
        "model": {"arch": "mlp", "hidden": [128]},
        "params": {"epochs": 60, "lr": 3e-3},
    },
}
CHEAP = ["training-dynamics", "fcmi-bound", "limit", "supervision-complexity", "distillation", "label-issues"]
HEADLINE_WORDS = (
    "accuracy",
    "auroc",
    "bound",
    "gap",
    "spearman",
    "complexity",
    "precision",
    "recall",
    "n_issues",
)


@contextmanager
def service(tree: Path, env: dict[str, str]) -> Iterator[str]:
    """``infoscore up`` run from ``tree`` (its code first on the path); yields the API URL."""
    up = EmbeddedService(env=env, prefix="infoscore-devices-", tree=tree)
    print(f"# {up.start()}", flush=True)
    try:
        yield up.url
    finally:
        up.stop()


def headline(summary: dict[str, Any], limit: int = 6) -> dict[str, Any]:
    """A few scalar numbers of the summary whose names say accuracy, AUROC, bound or gap."""
    found: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(value, dict):
            for key, sub in value.items():
                if key not in ("settings", "curves", "timings", "dataset"):
                    walk(sub, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list) and value and isinstance(value[0], dict) and len(value) <= 4:
            for i, sub in enumerate(value):
                walk(sub, f"{path}[{i}]")
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and any(w in path.lower() for w in HEADLINE_WORDS)
            and not path.endswith("_std")
        ):
            found[path] = round(float(value), 4)

    walk(summary, "")
    return found


def run_job(client: httpx.Client, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    job = client.post("/v1/jobs", json=request)
    if 400 <= job.status_code < 500:  # refused at submit (e.g. no-gpu-worker): a row, not a crash
        return {"state": f"refused {job.status_code}", "error": job.json().get("detail")}
    job.raise_for_status()
    job_id = job.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/v1/jobs/{job_id}").json()
        if state["state"] in ("succeeded", "failed", "cancelled"):
            return dict(state)
        time.sleep(0.2)
    client.delete(f"/v1/jobs/{job_id}")
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def seconds(job: dict[str, Any]) -> float:
    start = datetime.fromisoformat(job["started_at"])
    end = datetime.fromisoformat(job["finished_at"])
    return (end - start).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--kinds", nargs="+", default=CHEAP, choices=list(REQUESTS))
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose service runs")
    ap.add_argument("--threads", type=int, default=None, help="INFOSCORE_TORCH_THREADS for the worker")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per job, seconds")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    env = {} if args.threads is None else {"INFOSCORE_TORCH_THREADS": str(args.threads)}
    load = os.getloadavg()
    print(
        f"# devices: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}, "
        f"tree {args.tree}, load average {load[0]:.1f} at start"
    )
    print("# command: " + " ".join(sys.argv), flush=True)
    rows = []
    with service(args.tree.resolve(), env) as url, httpx.Client(base_url=url, timeout=60) as client:
        for name in args.kinds:
            request = {**REQUESTS[name], "device": args.device, "name": f"devices: {name}"}
            wall = time.perf_counter()
            job = run_job(client, request, args.timeout)
            wall = time.perf_counter() - wall
            summary = job.get("summary") or {}
            row = {
                "job": name,
                "state": job["state"],
                "device": summary.get("device"),
                "job_seconds": seconds(job) if job.get("finished_at") and job.get("started_at") else None,
                "submit_to_done_seconds": wall,
                "results": headline(summary) if job["state"] == "succeeded" else job.get("error"),
            }
            rows.append(row)
            print(f"  {name}: {row['state']} in {wall:.1f} s", file=sys.stderr, flush=True)
    print("\n| job | state | device | job s | submit→done s | key results |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        js = "–" if r["job_seconds"] is None else f"{r['job_seconds']:.1f}"
        print(
            f"| {r['job']} | {r['state']} | {r['device']} | {js} | {r['submit_to_done_seconds']:.1f} | "
            f"{json.dumps(r['results'])} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
