"""Fan-out speedup: the same ``fcmi-bound`` job on ``infoscore up --workers 1`` and
``--workers 2`` (fresh data dirs, so no unit is reused), wall time from submit to success.

    .venv/bin/python benchmarks/fcmi_workers.py --n 50 100 200 400 --k1 3 --k2 30 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedded import submit_and_wait

ROOT = Path(__file__).resolve().parent.parent


def run(workers: int, request: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    return submit_and_wait(workers, request, prefix=f"infoscore-fcmi-w{workers}-")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--k1", type=int, default=3)
    ap.add_argument("--k2", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=128)
    args = ap.parse_args()
    request = {
        "kind": "fcmi-bound",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [args.hidden]},
        "params": {"n": args.n, "k1": args.k1, "k2": args.k2, "epochs": args.epochs, "batch_size": 64},
    }
    units = len(args.n) * args.k1 * args.k2  # trainings (len(n) * k1 fan-out units of k2 each)
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores; job: {json.dumps(request)}; {units} trainings"
    )
    times = {}
    results = {}
    for workers in (1, 2):
        print(f"workers = {workers}:")
        seconds, record = run(workers, request)
        times[workers] = seconds
        results[workers] = record.get("summary", {}).get("results")
        print(f"  state {record['state']}, wall {seconds:.1f} s, {units / seconds:.2f} trainings/s")
    print(f"speedup 2 vs 1 workers: {times[1] / times[2]:.2f}x")
    print(f"same numbers with 1 and 2 workers: {results[1] == results[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
