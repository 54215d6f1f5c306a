"""Runners of the ``supervision-complexity`` and ``distillation`` job kinds (docs/science.md §5).

Thin: build the teacher and the student from their specs, call ``infoscore.distill``,
and turn the rows into the summary, ``student.safetensors`` and ``complexity.png``.
Seeds derive from the job seed s: teacher s, student s + 10000 (+ i for the i-th
distillation seed), subsample s + 20000, random labels s + 30000.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from infoscore import distill
from infoscore.errors import invalid
from infoscore.models import build_model, count_parameters, save_safetensors
from infoscore.progress import ProgressFn
from infoscore.training import accuracy, as_tensor, predict_logits

from .base import JobContext, JobOutput, Runner

STUDENT_SEED_OFFSET = 10_000
SUBSAMPLE_SEED_OFFSET = 20_000
RANDOM_LABELS_SEED_OFFSET = 30_000


def _finite(value: float) -> float | None:
    """JSON has no NaN: a missing accuracy (empty test split) becomes null."""
    return value if math.isfinite(value) else None


class _Progress:
    """Adds stage offsets so one job reports one monotone (done, total)."""

    def __init__(self, ctx: JobContext, total: int) -> None:
        self.ctx = ctx
        self.total = max(total, 1)
        self.offset = 0

    def stage(self, size: int) -> ProgressFn:
        start = self.offset
        self.offset += size

        def report(done: int, _total: int) -> None:
            self.ctx.progress(min(start + done, self.total), self.total)

        return report


def _tensors(ctx: JobContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ds = ctx.dataset
    dev = ctx.device
    return (
        as_tensor(ds.x_train, dev),
        torch.as_tensor(ds.y_train, device=dev),
        as_tensor(ds.x_test, dev),
        torch.as_tensor(ds.y_test, device=dev),
    )


def _build(spec: dict[str, Any], ctx: JobContext, seed: int) -> nn.Module:
    ds = ctx.dataset
    return build_model(spec, ds.input_shape, ds.n_classes, seed=seed).to(ctx.device)


def plot_complexity(
    panels: dict[str, list[dict[str, Any]]], path: Path, *, epoch_key: str = "student_checkpoint"
) -> Path:
    """One panel per key; in each, adjusted complexity vs student epoch, one line per series.

    rows need ``epoch_key``, ``adjusted`` and ``series`` (the legend label).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 3)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, rows) in zip(axes.flat, panels.items(), strict=False):
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rows:
            series[r["series"]].append((int(r[epoch_key]), float(r["adjusted"])))
        for name, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("student epoch")
        ax.set_ylabel("adjusted supervision complexity")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class SupervisionComplexityRunner(Runner):
    """Complexity of labels, random labels and teacher soft labels w.r.t. the student's NTK.

    The student is trained on the labels (cross-entropy) up to the largest student
    checkpoint; K is formed at each checkpoint on one seeded subsample.
    """

    kind = "supervision-complexity"

    def run(self, ctx: JobContext) -> JobOutput:
        t0 = time.perf_counter()
        p = ctx.params
        seed = ctx.seed
        ds = ctx.dataset
        x, y, x_test, y_test = _tensors(ctx)
        k = ds.n_classes
        checkpoints = sorted(set(p.checkpoints))
        student_ckpts = sorted(set(p.student_checkpoints))
        student_epochs = max(student_ckpts)
        # Fail before any training on what would only fail after it.
        distill.check_kernel_size(min(p.subsample, ds.n_train), k, p.kernel, "SupervisionComplexityRunner")
        progress = _Progress(ctx, p.teacher_epochs + student_epochs + len(student_ckpts))

        teacher_model = _build(p.teacher.model_dump(), ctx, seed)
        teacher = distill.train_teacher(
            teacher_model,
            x,
            y,
            epochs=p.teacher_epochs,
            checkpoints=checkpoints,
            batch_size=p.batch_size,
            lr=p.lr,
            optimizer=p.optimizer,
            seed=seed,
            progress=progress.stage(p.teacher_epochs),
            should_stop=ctx.should_stop,
        )
        idx = distill.subsample_indices(ds.n_train, p.subsample, seed=seed + SUBSAMPLE_SEED_OFFSET).to(
            ctx.device
        )
        targets = distill.build_targets(
            y[idx],
            k,
            teacher=teacher,
            x_sub=x[idx],
            temperatures=p.temperatures,
            teacher_checkpoints=checkpoints,
            random_seed=seed + RANDOM_LABELS_SEED_OFFSET,
        )
        kernel_report = progress.stage(len(student_ckpts))
        done = [0]

        def on_row(_epoch: int) -> None:
            done[0] += 1
            kernel_report(done[0], len(student_ckpts))

        hook, rows = distill.complexity_curve_hook(
            x[idx],
            lambda _e: targets,
            epochs=student_ckpts,
            kernel=p.kernel,
            jitter=p.jitter,
            should_stop=ctx.should_stop,
            on_row=on_row,
        )
        student = _build(ctx.model_spec, ctx, seed + STUDENT_SEED_OFFSET)
        train = distill.distill_student(
            student,
            x,
            y,
            mode="none",
            epochs=student_epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            optimizer=p.optimizer,
            seed=seed + STUDENT_SEED_OFFSET,
            on_epoch=hook,
            progress=progress.stage(student_epochs),
            should_stop=ctx.should_stop,
        )

        row_dicts = distill.rows_as_dicts(rows)
        student_path = ctx.workdir / "student.safetensors"
        save_safetensors(student, str(student_path), metadata={"student_epoch": str(student_epochs)})
        # One panel per temperature, label targets repeated in each as the reference.
        panels = {
            f"teacher targets at τ = {tau:g}": [
                {**r, "series": r["target"]} for r in row_dicts if r["temperature"] in (None, float(tau))
            ]
            for tau in sorted(set(p.temperatures))
        }
        png = plot_complexity(panels, ctx.workdir / "complexity.png")
        teacher_test = _finite(accuracy(teacher.model, x_test, y_test))
        summary = {
            "complexity": row_dicts,
            "teacher_test_accuracy": teacher_test,
            "teacher": {
                "train_accuracy": accuracy(teacher.model, x, y),
                "test_accuracy": teacher_test,
                "epochs": p.teacher_epochs,
                "parameters": count_parameters(teacher.model),
            },
            "student": {
                "epochs": student_epochs,
                "training": "labels, cross-entropy",
                "train_accuracy": train.train_accuracy[-1] if train.train_accuracy else None,
                "test_accuracy": _finite(accuracy(student, x_test, y_test)),
                "parameters": count_parameters(student),
            },
            "settings": {
                "m": int(idx.numel()),
                "k": k,
                "kernel": p.kernel,
                "jitter_relative": p.jitter,
                "temperatures": list(p.temperatures),
                "checkpoints": checkpoints,
                "student_checkpoints": student_ckpts,
                "teacher_seed": seed,
                "student_seed": seed + STUDENT_SEED_OFFSET,
                "subsample_seed": seed + SUBSAMPLE_SEED_OFFSET,
                "random_labels_seed": seed + RANDOM_LABELS_SEED_OFFSET,
            },
            "seconds": time.perf_counter() - t0,
        }
        return JobOutput(summary=summary, files={"student.safetensors": student_path, "complexity.png": png})


def default_curve_epochs(epochs: int) -> list[int]:
    """0, E/4, E/2, 3E/4, E (rounded, deduplicated)."""
    return sorted({round(epochs * f) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})


class DistillationRunner(Runner):
    """Students trained with none / offline / online supervision over several seeds.

    The teacher is trained once (job seed) and keeps a checkpoint every epoch when
    ``online`` is requested. Complexity curves are recorded for the first seed's student
    of each mode. ``student.safetensors`` is that first-seed student of the mode with the
    best mean test accuracy (ties: the order none, offline, online); the summary names it.
    """

    kind = "distillation"

    def run(self, ctx: JobContext) -> JobOutput:
        t0 = time.perf_counter()
        p = ctx.params
        seed = ctx.seed
        ds = ctx.dataset
        x, y, x_test, y_test = _tensors(ctx)
        k = ds.n_classes
        modes = [m for m in ("none", "offline", "online") if m in set(p.mode)]
        curve_epochs = (
            default_curve_epochs(p.epochs) if p.curve_epochs is None else sorted(set(p.curve_epochs))
        )
        bad = [e for e in curve_epochs if e > p.epochs]
        if bad:
            raise invalid("curve_epochs", "DistillationRunner", f"epochs in 0..{p.epochs} (epochs)", bad)
        distill.check_distill_params("none", p.temperature, p.alpha, None)  # τ and α, before training
        distill.check_kernel_size(min(p.subsample, ds.n_train), k, p.kernel, "DistillationRunner")
        needs_teacher = any(m != "none" for m in modes) or bool(curve_epochs)
        progress = _Progress(
            ctx, (p.teacher_epochs if needs_teacher else 0) + p.epochs * p.seeds * len(modes)
        )

        teacher: distill.TeacherRun | None = None
        if needs_teacher:
            teacher = distill.train_teacher(
                _build(p.teacher.model_dump(), ctx, seed),
                x,
                y,
                epochs=p.teacher_epochs,
                checkpoints=None if "online" in modes else [],
                batch_size=p.batch_size,
                lr=p.lr,
                optimizer=p.optimizer,
                seed=seed,
                progress=progress.stage(p.teacher_epochs),
                should_stop=ctx.should_stop,
            )

        idx = distill.subsample_indices(ds.n_train, p.subsample, seed=seed + SUBSAMPLE_SEED_OFFSET).to(
            ctx.device
        )
        x_sub, y_sub = x[idx], y[idx]
        base_targets = distill.build_targets(
            y_sub,
            k,
            teacher=teacher,
            x_sub=x_sub,
            temperatures=[p.temperature],
            random_seed=seed + RANDOM_LABELS_SEED_OFFSET,
        )
        online_cache: dict[int, distill.Target] = {}

        def targets_at(epoch: int) -> Sequence[distill.Target]:
            if teacher is None or "online" not in modes:
                return base_targets
            t_epoch = teacher.checkpoint_for(epoch)
            if t_epoch not in online_cache:
                values = distill.soft_targets(predict_logits(teacher.at_epoch(t_epoch), x_sub), p.temperature)
                acc = float((values.argmax(1) == y_sub).double().mean())
                online_cache[t_epoch] = distill.Target(
                    f"teacher_checkpoint:{t_epoch}", values, float(p.temperature), acc
                )
            return [*base_targets, online_cache[t_epoch]]

        accs: dict[str, list[float]] = {m: [] for m in modes}
        train_accs: dict[str, list[float]] = {m: [] for m in modes}
        curves: list[dict[str, Any]] = []
        first_students: dict[str, nn.Module] = {}
        for s in range(p.seeds):
            student_seed = seed + STUDENT_SEED_OFFSET + s
            for mode in modes:
                student = _build(ctx.model_spec, ctx, student_seed)
                hook = None
                rows: list[distill.ComplexityRow] = []
                if s == 0 and curve_epochs:
                    hook, rows = distill.complexity_curve_hook(
                        x_sub,
                        targets_at,
                        epochs=curve_epochs,
                        kernel=p.kernel,
                        jitter=p.jitter,
                        should_stop=ctx.should_stop,
                    )
                result = distill.distill_student(
                    student,
                    x,
                    y,
                    mode=mode,
                    teacher=teacher,
                    temperature=p.temperature,
                    alpha=p.alpha,
                    epochs=p.epochs,
                    batch_size=p.batch_size,
                    lr=p.lr,
                    optimizer=p.optimizer,
                    seed=student_seed,
                    on_epoch=hook,
                    progress=progress.stage(p.epochs),
                    should_stop=ctx.should_stop,
                )
                accs[mode].append(accuracy(student, x_test, y_test))
                train_accs[mode].append(result.train_accuracy[-1])
                if s == 0:
                    first_students[mode] = student
                    for r in distill.rows_as_dicts(rows):
                        r["mode"] = mode
                        r["series"] = _series(r["target"])
                        curves.append(r)

        modes_summary = distill.summarize_modes(accs)
        for mode, entry in modes_summary.items():
            entry["test_accuracy_mean"] = _finite(entry["test_accuracy_mean"])
            entry["test_accuracy_std"] = _finite(entry["test_accuracy_std"])
            entry["seeds"] = [_finite(a) for a in entry["seeds"]]
            entry["train_accuracy_mean"] = distill.mean_std(train_accs[mode])[0]
        best = max(
            modes, key=lambda m: (_sort_value(modes_summary[m]["test_accuracy_mean"]), -modes.index(m))
        )
        student_path = ctx.workdir / "student.safetensors"
        save_safetensors(first_students[best], str(student_path), metadata={"mode": best, "seed": "0"})
        files: dict[str, bytes | Path] = {"student.safetensors": student_path}
        if curves:
            panels = {f"student trained with: {m}": [r for r in curves if r["mode"] == m] for m in modes}
            files["complexity.png"] = plot_complexity(panels, ctx.workdir / "complexity.png")
        teacher_test = _finite(accuracy(teacher.model, x_test, y_test)) if teacher is not None else None
        summary = {
            "modes": modes_summary,
            "teacher_test_accuracy": teacher_test,
            "teacher": None
            if teacher is None
            else {
                "train_accuracy": accuracy(teacher.model, x, y),
                "test_accuracy": teacher_test,
                "epochs": p.teacher_epochs,
                "parameters": count_parameters(teacher.model),
            },
            "complexity_curves": [{key: v for key, v in r.items() if key != "series"} for r in curves],
            "student_file_mode": best,
            "settings": {
                "m": int(idx.numel()),
                "k": k,
                "kernel": p.kernel,
                "jitter_relative": p.jitter,
                "temperature": p.temperature,
                "alpha": p.alpha,
                "epochs": p.epochs,
                "curve_epochs": curve_epochs,
                "teacher_seed": seed,
                "student_seeds": [seed + STUDENT_SEED_OFFSET + s for s in range(p.seeds)],
                "subsample_seed": seed + SUBSAMPLE_SEED_OFFSET,
                "random_labels_seed": seed + RANDOM_LABELS_SEED_OFFSET,
                "online_schedule": "student epoch e uses the teacher checkpoint of epoch min(e, teacher_epochs)",
                "std": "sample standard deviation over seeds (ddof=1)",
            },
            "seconds": time.perf_counter() - t0,
        }
        return JobOutput(summary=summary, files=files)


def _series(target: str) -> str:
    if target == "teacher":
        return "offline teacher"
    if target.startswith("teacher_checkpoint:"):
        return "online teacher"
    return target


def _sort_value(value: float | None) -> float:
    return -math.inf if value is None else value
