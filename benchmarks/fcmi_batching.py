"""f-CMI unit batching: the issue's fcmi-bound request, old code vs this tree, in one run.

The request (issue #10): digits, MLP [128], n = [100, 400], k1 = 2, k2 = 10, 100 epochs,
Adam 1e-3, batch 64. Each side runs ``FcmiRunner.plan / run_unit / reduce`` serially in
its own fresh interpreter (one torch thread unless ``--threads``), with ``PYTHONPATH``
set to the tree under test, alternating old and new ``--repeats`` times, and prints wall
and CPU seconds, peak RSS and the bound/gap per n of each side.

``--old`` is a checkout of the code before batching, e.g.::

    git archive a990ab6 | (mkdir -p /tmp/fcmi-old && tar -x -C /tmp/fcmi-old)
    .venv/bin/python benchmarks/fcmi_batching.py --old /tmp/fcmi-old --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REQUEST = {
    "kind": "fcmi-bound",
    "dataset": {"builtin": "digits"},
    "model": {"arch": "mlp", "hidden": [128]},
    "params": {"n": [100, 400], "k1": 2, "k2": 10},
}


def measure(threads: int, workdir: Path) -> dict[str, Any]:
    """Run the request serially twice in this interpreter: cold (first: pays one-time
    imports such as torch._dynamo, which torch.optim loads on first use, and matplotlib)
    and warm (second, as in a worker that already ran a job). -> seconds, RSS, results."""
    import resource
    import time

    import torch

    from contracts.jobs import parse_job_request
    from workers.datasets import load_dataset
    from workers.runners.base import JobContext
    from workers.runners.fcmi import FcmiRunner

    torch.set_num_threads(threads)
    req = parse_job_request(REQUEST)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(
        job_id="bench",
        request=req,
        dataset=load_dataset(req.dataset, workdir),
        device=torch.device("cpu"),
        progress=lambda done, total: None,
        should_stop=lambda: False,
        workdir=workdir,
    )
    runner = FcmiRunner()
    times = []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        units = runner.plan(ctx)
        out = runner.reduce(ctx, {u.name: runner.run_unit(ctx, u) for u in units})
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        "cold_wall_s": times[0][0],
        "cold_cpu_s": times[0][1],
        "wall_s": times[1][0],
        "cpu_s": times[1][1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "units": len(units),
        "results": out.summary["results"],
    }


def run_side(tree: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, help="tree with the code before batching")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.threads, Path("/tmp/fcmi-batching-bench"))))
        return
    load = os.getloadavg()
    print(
        f"# fcmi_batching: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s), load average {load[0]:.1f} at start"
    )
    print("# command: " + " ".join(sys.argv))
    print(f"# request: {json.dumps(REQUEST)}")
    sides = [("new (batched)", ROOT)] + ([("old (one at a time)", args.old)] if args.old else [])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
    for rep in range(args.repeats):
        for name, tree in sides:
            r = run_side(tree, args.threads)
            runs[name].append(r)
            print(
                f"  repeat {rep + 1} {name}: cold wall {r['cold_wall_s']:.2f} s, cpu {r['cold_cpu_s']:.2f} s; "
                f"warm wall {r['wall_s']:.2f} s, cpu {r['cpu_s']:.2f} s; "
                f"{r['units']} units, peak RSS {r['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
    print("\n| code | run | units | wall s (median; all) | CPU s (median; all) | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        for run, prefix in (("cold", "cold_"), ("warm", "")):
            walls = [r[f"{prefix}wall_s"] for r in rs]
            cpus = [r[f"{prefix}cpu_s"] for r in rs]
            print(
                f"| {name} | {run} | {rs[0]['units']} | {statistics.median(walls):.2f} "
                f"({', '.join(f'{w:.2f}' for w in walls)}) | {statistics.median(cpus):.2f} "
                f"({', '.join(f'{c:.2f}' for c in cpus)}) | {max(r['peak_rss_mib'] for r in rs):.0f} |"
            )
    if args.old:
        new, old = runs["new (batched)"], runs["old (one at a time)"]
        for run, prefix in (("cold", "cold_"), ("warm", "")):
            ratios = [
                statistics.median(r[f"{prefix}{what}_s"] for r in old)
                / statistics.median(r[f"{prefix}{what}_s"] for r in new)
                for what in ("wall", "cpu")
            ]
            print(f"speedup old/new, {run}: wall {ratios[0]:.2f}x, CPU {ratios[1]:.2f}x")
    print("\n| code | n | gap mean | bound mean | train acc | held-out acc |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        for row in rs[0]["results"]:
            print(
                f"| {name} | {row['n']} | {row['gap_mean']:.4f} | {row['bound_mean']:.4f} | "
                f"{row['train_acc']:.4f} | {row['test_acc']:.4f} |"
            )
    if args.old:
        same = runs["new (batched)"][0]["results"] == runs["old (one at a time)"][0]["results"]
        print(f"\nresults identical between old and new: {same}", flush=True)


if __name__ == "__main__":
    main()
