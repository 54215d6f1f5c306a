"""Supervision complexity and distillation on scikit-learn's digits (docs/science.md §5).

Runs the two job kinds through their runners (no Celery), on one CPU thread:

1. ``supervision-complexity``: a wide MLP teacher, a small MLP student trained on the
   labels; adjusted complexity of labels, random labels, the final teacher and teacher
   checkpoints, at several temperatures and student checkpoints.
2. ``distillation``: none / offline / online over 3 seeds, test accuracy mean ± std, and
   the complexity curves of each mode's first-seed student.

    .venv/bin/python benchmarks/distill_digits.py [--out DIR] [--quick] [--epochs E]
        [--temperature T] [--alpha A] [--subsample M] [--only-distillation | --only-complexity]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.jobs import parse_job_request
from workers.datasets import load_dataset
from workers.runners.base import JobContext, JobOutput, Runner
from workers.runners.distill import DistillationRunner, SupervisionComplexityRunner

TEACHER = {"arch": "mlp", "hidden": [512, 512]}
STUDENT = {"arch": "mlp", "hidden": [16]}
DATASET = {"builtin": "digits", "seed": 0}


def run(runner: Runner, request: dict[str, Any], workdir: Path) -> JobOutput:
    req = parse_job_request(request)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(
        job_id=runner.kind,
        request=req,
        dataset=load_dataset(req.dataset, workdir),
        device=torch.device("cpu"),
        progress=lambda done, total: None,
        should_stop=lambda: False,
        workdir=workdir,
    )
    output = runner.run(ctx)
    for name, content in output.files.items():  # the runners return bytes; keep the figures
        if isinstance(content, bytes):
            (workdir / name).write_bytes(content)
    return output


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def complexity_table(
    rows: list[dict[str, Any]], key: str = "student_checkpoint", online: bool = False
) -> None:
    """online: merge the per-epoch teacher checkpoints into one 'online teacher' row."""
    if online:
        rows = [
            {**r, "target": "online teacher (checkpoint = epoch)"}
            if r["target"].startswith("teacher_checkpoint:")
            else r
            for r in rows
        ]
    epochs = sorted({r[key] for r in rows})
    labels = sorted(
        {(r["target"], r["temperature"]) for r in rows},
        key=lambda t: (
            t[0] != "labels",
            t[0] != "random_labels",
            t[1] or 0.0,
            t[0] != "teacher",
            int(t[0].split(":")[1]) if t[0].startswith("teacher_checkpoint:") else 0,
        ),
    )
    acc = {(r["target"], r["temperature"]): r["target_accuracy"] for r in rows}
    if online:
        print("| target | τ | target acc (last) | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
    else:
        print("| target | τ | target acc | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
    print("|---|---|---|" + "---|" * len(epochs))
    for target, tau in labels:
        vals = {r[key]: r["adjusted"] for r in rows if r["target"] == target and r["temperature"] == tau}
        cells = " | ".join(fmt(vals.get(e)) for e in epochs)
        print(f"| {target} | {fmt(tau, 'g')} | {acc[(target, tau)]:.3f} | {cells} |")
    conds = {r[key]: (r["trace"], r["jitter"], r["cond"]) for r in rows}
    print()
    print("| student epoch | tr K | jitter | cond(K + jitter) |")
    print("|---|---|---|---|")
    for e in epochs:
        tr, jit, cond = conds[e]
        print(f"| {e} | {tr:.4g} | {jit:.3g} | {cond:.3g} |")


def jitter_sensitivity(teacher_epochs: int) -> None:
    """Adjusted complexity at the student's initialization for several ε and m.

    Re-trains the same teacher (same seed, same recipe as the job, so the same weights)
    through the library, and reuses one NTK per m for every ε.
    """
    from infoscore import data, distill, models, ntk
    from infoscore.training import as_tensor

    ds = data.load_digits(seed=0)
    x = as_tensor(ds.x_train, torch.device("cpu"))
    y = torch.as_tensor(ds.y_train)
    teacher = distill.train_teacher(
        models.build_model(TEACHER, ds.input_shape, 10, seed=0), x, y, epochs=teacher_epochs, checkpoints=[1]
    )
    student = models.build_model(STUDENT, ds.input_shape, 10, seed=10_000)
    print("\n## sensitivity to the relative jitter ε and to m (student at initialization)\n")
    print("| m | ε | cond | labels | random | teacher τ=1 | teacher τ=4 | ckpt 1 τ=4 | ordering holds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in (250, 1000):
        idx = distill.subsample_indices(ds.n_train, m, seed=20_000)
        targets = distill.build_targets(
            y[idx],
            10,
            teacher=teacher,
            x_sub=x[idx],
            temperatures=[1.0, 4.0],
            teacher_checkpoints=[1],
            random_seed=30_000,
        )
        by_name = {(t.name, t.temperature): t.values for t in targets}
        gram = ntk.ntk_gram(student, x[idx], kernel="averaged")
        for eps in (1e-8, 1e-6, 1e-4, 1e-2):
            factor = distill.factor_kernel(gram, m=m, jitter=eps)
            adj = {key: distill.complexity_from_factor(factor, v).adjusted for key, v in by_name.items()}
            keys = [
                ("labels", None),
                ("random_labels", None),
                ("teacher", 1.0),
                ("teacher", 4.0),
                ("teacher_checkpoint:1", 4.0),
            ]
            a = [adj[k] for k in keys]
            holds = a[1] > a[0] > a[2] > a[3] > a[4]
            print(
                f"| {m} | {eps:g} | {factor.cond:.3g} | "
                + " | ".join(f"{v:.3f}" for v in a)
                + f" | {holds} |"
            )


def complexity_job(teacher_epochs: int, out: Path, subsample: int) -> None:
    t0 = time.perf_counter()
    sc = run(
        SupervisionComplexityRunner(),
        {
            "kind": "supervision-complexity",
            "dataset": DATASET,
            "model": STUDENT,
            "seed": 0,
            "params": {
                "teacher": TEACHER,
                "teacher_epochs": teacher_epochs,
                "checkpoints": [e for e in (0, 1, 2, 5, 10, 20) if e <= teacher_epochs],
                "temperatures": [1.0, 2.0, 4.0, 8.0],
                "subsample": subsample,
                "kernel": "averaged",
                "student_checkpoints": sorted({0, 1, 5, teacher_epochs // 2, teacher_epochs}),
            },
        },
        out / "supervision-complexity",
    )
    s = sc.summary
    print(f"\n## supervision-complexity ({time.perf_counter() - t0:.1f} s)")
    print(
        f"teacher: train acc {s['teacher']['train_accuracy']:.4f}, test acc {s['teacher_test_accuracy']:.4f}, "
        f"{s['teacher']['parameters']} parameters, {s['teacher']['epochs']} epochs"
    )
    print(
        f"student (labels, CE, {s['student']['epochs']} epochs): test acc {fmt(s['student']['test_accuracy'], '.4f')}, "
        f"{s['student']['parameters']} parameters; m = {s['settings']['m']}, kernel {s['settings']['kernel']}, "
        f"relative jitter {s['settings']['jitter_relative']}"
    )
    print("\nadjusted supervision complexity sqrt(C·tr K)/m by student epoch:\n")
    complexity_table(s["complexity"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None, help="keep complexity.png files here")
    parser.add_argument("--quick", action="store_true", help="smaller settings (smoke run)")
    parser.add_argument("--epochs", type=int, default=None, help="teacher and student epochs (default 40)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--subsample", type=int, default=1000, help="m of the supervision-complexity job")
    parser.add_argument("--only-distillation", action="store_true")
    parser.add_argument("--only-complexity", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine's cores are shared
    out = args.out or Path(tempfile.mkdtemp(prefix="distill_bench_"))
    teacher_epochs = args.epochs or (10 if args.quick else 40)
    student_epochs = teacher_epochs
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, float64 kernels"
    )
    print(f"dataset digits (seed 0, 75/25 split); teacher {TEACHER}; student {STUDENT}")

    t0 = time.perf_counter()
    if not args.only_distillation:
        complexity_job(teacher_epochs, out, args.subsample)
    if args.only_complexity:
        return
    t1 = time.perf_counter()
    dist = run(
        DistillationRunner(),
        {
            "kind": "distillation",
            "dataset": DATASET,
            "model": STUDENT,
            "seed": 0,
            "params": {
                "teacher": TEACHER,
                "teacher_epochs": teacher_epochs,
                "epochs": student_epochs,
                "temperature": args.temperature,
                "alpha": args.alpha,
                "seeds": 3,
                "subsample": 500,
                "mode": ["none", "offline", "online"],
            },
        },
        out / "distillation",
    )
    d = dist.summary
    print(f"\n## distillation ({time.perf_counter() - t1:.1f} s)")
    print(
        f"teacher test acc {d['teacher_test_accuracy']:.4f}; τ = {args.temperature:g}, α = {args.alpha:g}, "
        f"{student_epochs} student epochs\n"
    )
    print("| mode | test acc mean ± std (3 seeds) | per seed | train acc mean |")
    print("|---|---|---|---|")
    for mode, e in d["modes"].items():
        seeds = ", ".join(f"{a:.4f}" for a in e["seeds"])
        print(
            f"| {mode} | {e['test_accuracy_mean']:.4f} ± {e['test_accuracy_std']:.4f} | {seeds} | "
            f"{e['train_accuracy_mean']:.4f} |"
        )
    print(f"\nstudent.safetensors holds the first-seed student of mode {d['student_file_mode']!r}")
    print(
        "\ncomplexity curves (first seed, m = 500; 'teacher' = offline target, checkpoints = online target):"
    )
    for mode in d["modes"]:
        print(f"\n### student trained with {mode}\n")
        complexity_table([r for r in d["complexity_curves"] if r["mode"] == mode], online=True)
    if not args.only_distillation:
        t2 = time.perf_counter()
        jitter_sensitivity(teacher_epochs)
        print(f"({time.perf_counter() - t2:.1f} s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ntotal {time.perf_counter() - t0:.1f} s, peak RSS {peak:.0f} MiB; figures in {out}")


if __name__ == "__main__":
    main()
