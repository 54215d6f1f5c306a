"""f-CMI bound vs generalization gap on scikit-learn digits (CPU, serial).

Calls ``FcmiRunner.plan / run_unit / reduce`` directly (no Celery), one thread, and
prints, per configuration, the measured table beside the paper's MNIST 4 vs 9 row
(docs/science.md §3.6). Configurations (``--parts``):

* ``mlp``: digits, 10 classes, MLP 64-128-10, Adam 1e-3, batch 64;
* ``mlp-det``: as ``mlp`` with ``deterministic`` (init and data-order seed 42 for every unit);
* ``cnn``: digits 4 vs 9, CNN (conv 16, conv 32, pool, dense 64), Adam 1e-3, batch 64;
* ``1nn``: digits, 10 classes, 1-nearest-neighbour (memorizes; generalizes well on digits);
* ``1nn-random``: as ``1nn`` with pure-noise labels (label_noise 0.9 at k = 10);
* ``mlp-random``: the MLP on pure-noise labels (memorizing control with a trained model).

Usage::

    .venv/bin/python benchmarks/fcmi_digits.py --parts mlp cnn 1nn 1nn-random --out /tmp/fcmi
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.jobs import parse_job_request
from workers.datasets import load_dataset
from workers.runners.base import JobContext
from workers.runners.fcmi import FcmiRunner

PAPER_MNIST_4V9 = {  # docs/science.md §3.6, standard Adam, 4-layer CNN, epoch 200: n -> (gap, bound)
    75: (0.0892, 0.2427),
    250: (0.0363, 0.1073),
    1000: (0.0155, 0.0467),
    4000: (0.0081, 0.0257),
}
MLP = {"arch": "mlp", "hidden": [128]}
CNN = {"arch": "cnn", "channels": [16, 32], "hidden": 64}
DIGITS10 = {"builtin": "digits"}
DIGITS_4V9 = {"builtin": "digits", "classes": [4, 9]}
RANDOM10 = {"builtin": "digits", "label_noise": 0.9}


def context(request: dict[str, Any], workdir: Path) -> JobContext:
    req = parse_job_request(request)
    workdir.mkdir(parents=True, exist_ok=True)
    return JobContext(
        job_id="bench",
        request=req,
        dataset=load_dataset(req.dataset, workdir),
        device=torch.device("cpu"),
        progress=lambda done, total: None,
        should_stop=lambda: False,
        workdir=workdir,
    )


def configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    common = {"k1": args.k1, "k2": args.k2, "lr": 1e-3, "batch_size": 64, "optimizer": "adam"}
    return {
        "mlp": {"dataset": DIGITS10, "model": MLP, "params": {**common, "n": args.n, "epochs": args.epochs}},
        "mlp-det": {
            "dataset": DIGITS10,
            "model": MLP,
            "params": {**common, "n": args.n, "epochs": args.epochs, "deterministic": True},
        },
        "cnn": {
            "dataset": DIGITS_4V9,
            "model": CNN,
            "params": {**common, "n": args.n_4v9, "epochs": args.cnn_epochs},
        },
        "1nn": {"dataset": DIGITS10, "model": MLP, "params": {**common, "n": args.n, "learner": "1nn"}},
        "1nn-random": {
            "dataset": RANDOM10,
            "model": MLP,
            "params": {**common, "n": args.n, "learner": "1nn"},
        },
        "mlp-random": {
            "dataset": RANDOM10,
            "model": MLP,
            "params": {**common, "n": args.n, "epochs": args.epochs},
        },
    }


def print_table(name: str, summary: dict[str, Any]) -> None:
    print(
        f"\n## {name}  (mi_estimator={summary['mi_estimator']}, bias_estimate={summary['bias_estimate']:.4f} nats/pair)"
    )
    print("| n | gap (mean ± std) | bound (mean ± std) | bound/gap | train acc | held-out acc | units |")
    print("|---|---|---|---|---|---|---|")
    for r in summary["results"]:
        ratio = r["bound_mean"] / r["gap_mean"] if r["gap_mean"] > 0 else float("inf")
        print(
            f"| {r['n']} | {r['gap_mean']:.4f} ± {r['gap_std']:.4f} | {r['bound_mean']:.4f} ± {r['bound_std']:.4f}"
            f" | {ratio:.2f} | {r['train_acc']:.4f} | {r['test_acc']:.4f} | {r['units']} |"
        )


def print_paper() -> None:
    print("\n## paper reference: MNIST 4 vs 9, 4-layer CNN, standard Adam, epoch 200 (docs/science.md §3.6)")
    print("| n | gap | bound | bound/gap |")
    print("|---|---|---|---|")
    for n, (gap, bound) in PAPER_MNIST_4V9.items():
        print(f"| {n} | {gap:.4f} | {bound:.4f} | {bound / gap:.2f} |")


def check_targets(name: str, summary: dict[str, Any]) -> None:
    rows = summary["results"]
    above = all(r["bound_mean"] >= r["gap_mean"] for r in rows)
    bounds = [r["bound_mean"] for r in rows]
    gaps = [r["gap_mean"] for r in rows]
    falling = all(b < a for a, b in itertools.pairwise(bounds)) and all(
        b < a for a, b in itertools.pairwise(gaps)
    )
    large = [r["bound_mean"] < 0.5 for r in rows if r["n"] >= 200]
    below_half = all(large) if large else "n/a (no n >= 200)"
    print(
        f"targets[{name}]: bound >= gap for every n: {above}; both fall with n: {falling}; "
        f"bound < 0.5 from n = 200: {below_half}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["mlp", "cnn", "1nn", "1nn-random"])
    ap.add_argument("--n", nargs="+", type=int, default=[50, 100, 200, 400, 600])
    ap.add_argument("--n-4v9", nargs="+", type=int, default=[25, 50, 100, 135])
    ap.add_argument("--k1", type=int, default=3)
    ap.add_argument("--k2", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=200, help="MLP epochs")
    ap.add_argument("--cnn-epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="folder for bound-<part>.png, mi-<part>.csv, json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"# fcmi_digits: torch {torch.__version__}, device cpu, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, k1={args.k1}, k2={args.k2}"
    )
    print("# command: " + " ".join(sys.argv))
    runner = FcmiRunner()
    workdir = Path(args.out or "/tmp/fcmi-bench")
    all_summaries: dict[str, Any] = {}
    for name in args.parts:
        spec = configs(args)[name]
        ctx = context({"kind": "fcmi-bound", **spec}, workdir)
        units = runner.plan(ctx)
        t0 = time.perf_counter()
        results = {}
        per_n: dict[int, float] = {}
        for i, unit in enumerate(units):
            results[unit.name] = runner.run_unit(ctx, unit)
            n = int(unit.params["n"])
            per_n[n] = per_n.get(n, 0.0) + float(results[unit.name]["seconds"][0])
            if (i + 1) % max(1, len(units) // 10) == 0:
                print(
                    f"  [{name}] {i + 1}/{len(units)} units, {time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                )
        wall = time.perf_counter() - t0
        out = runner.reduce(ctx, results)
        print_table(name, out.summary)
        cost = ", ".join(f"n={n}: {s / (args.k1 * args.k2):.3f} s" for n, s in per_n.items())
        print(f"wall {wall:.0f} s for {len(units)} units; mean seconds per unit: {cost}")
        if name in ("mlp", "mlp-det", "cnn"):
            check_targets(name, out.summary)
        # Same trainings, bias-corrected estimator: reduce again, no retraining.
        mm_ctx = context(
            {"kind": "fcmi-bound", **{**spec, "params": {**spec["params"], "mi_estimator": "miller_madow"}}},
            workdir,
        )
        mm = runner.reduce(mm_ctx, results)
        print_table(f"{name}, bias-corrected (not comparable with the paper)", mm.summary)
        all_summaries[name] = {"plugin": out.summary, "miller_madow": mm.summary}
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"bound-{name}.png").write_bytes(out.files["bound.png"])  # type: ignore[arg-type]
            (args.out / f"mi-{name}.csv").write_bytes(out.files["mi.csv"])  # type: ignore[arg-type]
    print_paper()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mb:.0f} MiB")
    if args.out is not None:
        (args.out / "summaries.json").write_text(json.dumps(all_summaries, indent=1))


if __name__ == "__main__":
    main()
