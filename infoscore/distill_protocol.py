"""The ``supervision-complexity`` and ``distillation`` experiments as library calls
(docs/jobs/supervision-complexity.md, docs/jobs/distillation.md, docs/science.md §5).

:func:`supervision_complexity` trains a teacher (keeping checkpoints) and a student on
the labels, and at each student checkpoint measures how complex the labels, random
labels and the teacher's soft labels are for the student's NTK.
:func:`distillation` trains students with ``none`` / ``offline`` / ``online``
supervision over several seeds, records complexity curves for each mode's first-seed
student, and keeps that student of the best mode.

The building blocks (teachers with checkpoints, distillation loss, kernel factoring)
are in :mod:`infoscore.distill`; the settings in :mod:`infoscore.distill_config`. Seeds
derive from ``config.seed`` = s: teacher s, student s + 10000 (+ i for the i-th
distillation seed), subsample s + 20000, random labels s + 30000.
"""

from __future__ import annotations

import io
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import distill
from .config_checks import model_spec
from .data import Dataset
from .distill_config import DistillationConfig, SupervisionComplexityConfig
from .models import build_model, count_parameters
from .progress import ProgressFn, StopFn, no_progress
from .training import accuracy, as_tensor, predict_logits

if TYPE_CHECKING:
    import pandas as pd

STUDENT_SEED_OFFSET = 10_000
SUBSAMPLE_SEED_OFFSET = 20_000
RANDOM_LABELS_SEED_OFFSET = 30_000


class _Stages:
    """Adds stage offsets so one call reports one monotone (done, total)."""

    def __init__(self, progress: ProgressFn, total: int) -> None:
        self.progress = progress
        self.total = max(total, 1)
        self.offset = 0

    def stage(self, size: int) -> ProgressFn:
        start = self.offset
        self.offset += size

        def report(done: int, _total: int) -> None:
            self.progress(min(start + done, self.total), self.total)

        return report


@dataclass
class _Data:
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    dataset: Dataset
    device: torch.device

    @classmethod
    def of(cls, dataset: Dataset, device: torch.device | str) -> _Data:
        dev = torch.device(device)
        return cls(
            as_tensor(dataset.x_train, dev),
            torch.as_tensor(dataset.y_train, device=dev),
            as_tensor(dataset.x_test, dev),
            torch.as_tensor(dataset.y_test, device=dev),
            dataset,
            dev,
        )

    def build(self, spec: Mapping[str, Any], seed: int) -> nn.Module:
        ds = self.dataset
        return build_model(spec, ds.input_shape, ds.n_classes, seed=seed).to(self.device)


@dataclass(frozen=True)
class NetworkStats:
    """Accuracies (test: NaN when the dataset has no test split) and size of a trained network.

    train_accuracy: the teacher's recomputed on the training split; the student's is its last
    epoch's running training accuracy, as the job has always reported (None without epochs).
    """

    train_accuracy: float | None
    test_accuracy: float
    parameters: int


def _stats(model: nn.Module, data: _Data) -> NetworkStats:
    """Train accuracy recomputed on the whole training split (eval mode)."""
    return NetworkStats(
        accuracy(model, data.x, data.y), accuracy(model, data.x_test, data.y_test), count_parameters(model)
    )


def _teacher_summary(stats: NetworkStats, epochs: int) -> dict[str, Any]:
    return {
        "train_accuracy": stats.train_accuracy,
        "test_accuracy": stats.test_accuracy,
        "epochs": epochs,
        "parameters": stats.parameters,
    }


def _safetensors_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """The model's state dict (contiguous CPU tensors) as a safetensors file's bytes."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return bytes(save(state, metadata=metadata))


def _train_teacher(
    data: _Data,
    c: SupervisionComplexityConfig | DistillationConfig,
    checkpoints: Sequence[int] | None,
    progress: ProgressFn,
    should_stop: StopFn | None,
) -> distill.TeacherRun:
    """The teacher (seed ``c.seed``) trained on the labels, keeping ``checkpoints``
    (None = every epoch)."""
    return distill.train_teacher(
        data.build(c.teacher, c.seed),
        data.x,
        data.y,
        epochs=c.teacher_epochs,
        checkpoints=checkpoints,
        batch_size=c.batch_size,
        lr=c.lr,
        optimizer=c.optimizer,
        seed=c.seed,
        progress=progress,
        should_stop=should_stop,
    )


def plot_complexity(
    panels: Mapping[str, Sequence[Mapping[str, Any]]], *, epoch_key: str = "student_checkpoint"
) -> bytes:
    """PNG: one panel per key; in each, adjusted complexity vs student epoch, one line per series.

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# supervision-complexity
# ---------------------------------------------------------------------------------------


@dataclass
class SupervisionComplexityResult:
    """What :func:`supervision_complexity` measured.

    rows: one per (student checkpoint, target, temperature); teacher / student: the
    trained networks (the student at its last checkpoint) and their stats; m, k: the
    subsample size and classes; checkpoints, student_checkpoints: sorted, deduplicated.
    """

    config: SupervisionComplexityConfig
    rows: list[distill.ComplexityRow]
    teacher: nn.Module
    teacher_stats: NetworkStats
    student: nn.Module
    student_stats: NetworkStats
    m: int
    k: int
    checkpoints: list[int]
    student_checkpoints: list[int]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The job's summary (NaN where the dataset has no test split; json_safe cleans it)."""
        c = self.config
        seed = c.seed
        return {
            "complexity": distill.rows_as_dicts(self.rows),
            "teacher_test_accuracy": self.teacher_stats.test_accuracy,
            "teacher": _teacher_summary(self.teacher_stats, c.teacher_epochs),
            "student": {
                "epochs": max(self.student_checkpoints),
                "training": "labels, cross-entropy",
                "train_accuracy": self.student_stats.train_accuracy,
                "test_accuracy": self.student_stats.test_accuracy,
                "parameters": self.student_stats.parameters,
            },
            "settings": {
                "m": self.m,
                "k": self.k,
                "kernel": c.kernel,
                "jitter_relative": c.jitter,
                "temperatures": list(c.temperatures),
                "checkpoints": self.checkpoints,
                "student_checkpoints": self.student_checkpoints,
                "teacher_seed": seed,
                "student_seed": seed + STUDENT_SEED_OFFSET,
                "subsample_seed": seed + SUBSAMPLE_SEED_OFFSET,
                "random_labels_seed": seed + RANDOM_LABELS_SEED_OFFSET,
            },
            "seconds": self.seconds,
        }

    def table(self) -> pd.DataFrame | None:
        """None: no per-sample scores (the complexities are per target, not per sample)."""
        return None

    def figures(self) -> dict[str, bytes]:
        """``complexity.png``: one panel per temperature, label targets repeated in each."""
        rows = distill.rows_as_dicts(self.rows)
        panels = {
            f"teacher targets at τ = {tau:g}": [
                {**r, "series": r["target"]} for r in rows if r["temperature"] in (None, float(tau))
            ]
            for tau in sorted(set(self.config.temperatures))
        }
        return {"complexity.png": plot_complexity(panels)}

    def student_safetensors(self) -> bytes:
        """The student at its last checkpoint (metadata ``student_epoch``)."""
        return _safetensors_bytes(self.student, {"student_epoch": str(max(self.student_checkpoints))})


def supervision_complexity(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: SupervisionComplexityConfig = SupervisionComplexityConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> SupervisionComplexityResult:
    """Complexity of labels, random labels and teacher soft labels w.r.t. the student's NTK.

    model: the student's spec (None = the default MLP); ``config.teacher`` the teacher's.
    The teacher is trained on the labels keeping its ``checkpoints``; the student is
    trained on the labels (cross-entropy) up to the largest student checkpoint, and K is
    formed at each student checkpoint on one seeded subsample of m rows.
    """
    t0 = time.perf_counter()
    c = config
    seed = c.seed
    spec = model_spec(model, "supervision_complexity")
    data = _Data.of(dataset, device)
    x, y = data.x, data.y
    k = dataset.n_classes
    checkpoints = sorted(set(c.teacher_checkpoints()))
    student_ckpts = sorted(set(c.student_checkpoints))
    student_epochs = max(student_ckpts)
    # Fail before any training on what would only fail after it.
    distill.check_kernel_size(min(c.subsample, dataset.n_train), k, c.kernel, "supervision_complexity")
    stages = _Stages(progress or no_progress, c.teacher_epochs + student_epochs + len(student_ckpts))

    teacher = _train_teacher(data, c, checkpoints, stages.stage(c.teacher_epochs), should_stop)
    idx = distill.subsample_indices(dataset.n_train, c.subsample, seed=seed + SUBSAMPLE_SEED_OFFSET).to(
        data.device
    )
    targets = distill.build_targets(
        y[idx],
        k,
        teacher=teacher,
        x_sub=x[idx],
        temperatures=c.temperatures,
        teacher_checkpoints=checkpoints,
        random_seed=seed + RANDOM_LABELS_SEED_OFFSET,
    )
    kernel_report = stages.stage(len(student_ckpts))
    done = [0]

    def on_row(_epoch: int) -> None:
        done[0] += 1
        kernel_report(done[0], len(student_ckpts))

    hook, rows = distill.complexity_curve_hook(
        x[idx],
        lambda _e: targets,
        epochs=student_ckpts,
        kernel=c.kernel,
        jitter=c.jitter,
        should_stop=should_stop,
        on_row=on_row,
    )
    student = data.build(spec, seed + STUDENT_SEED_OFFSET)
    train = distill.distill_student(
        student,
        x,
        y,
        mode="none",
        epochs=student_epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        optimizer=c.optimizer,
        seed=seed + STUDENT_SEED_OFFSET,
        on_epoch=hook,
        progress=stages.stage(student_epochs),
        should_stop=should_stop,
    )
    return SupervisionComplexityResult(
        config=c,
        rows=list(rows),
        teacher=teacher.model,
        teacher_stats=_stats(teacher.model, data),
        student=student,
        # Today's summary: the last epoch's running training accuracy, None without epochs.
        student_stats=NetworkStats(
            train.train_accuracy[-1] if train.train_accuracy else None,
            accuracy(student, data.x_test, data.y_test),
            count_parameters(student),
        ),
        m=int(idx.numel()),
        k=k,
        checkpoints=checkpoints,
        student_checkpoints=student_ckpts,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------


ONLINE_SCHEDULE = "student epoch e uses the teacher checkpoint of epoch min(e, teacher_epochs)"


@dataclass
class ModeResult:
    """One supervision mode: per-seed test and final train accuracies (seed order)."""

    test_accuracies: list[float] = field(default_factory=list)
    train_accuracies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        mean, std = distill.mean_std(self.test_accuracies)
        return {
            "test_accuracy_mean": mean,
            "test_accuracy_std": std,
            "seeds": [float(a) for a in self.test_accuracies],
            "train_accuracy_mean": distill.mean_std(self.train_accuracies)[0],
        }


@dataclass
class DistillationResult:
    """What :func:`distillation` measured.

    modes: mode -> accuracies over seeds (modes in the order none, offline, online);
    curves: complexity rows of each mode's first-seed student (each with ``mode``);
    students: mode -> that first-seed student; best_mode: the mode with the best mean
    test accuracy (ties: the order none, offline, online), whose student is the job's
    ``student.safetensors``; teacher / teacher_stats: None when no teacher was needed
    (only ``none`` and no curves); m, k: subsample size and classes.
    """

    config: DistillationConfig
    modes: dict[str, ModeResult]
    curves: list[dict[str, Any]]
    students: dict[str, nn.Module]
    best_mode: str
    teacher: nn.Module | None
    teacher_stats: NetworkStats | None
    m: int
    k: int
    curve_epochs: list[int]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The job's summary (NaN where the dataset has no test split; json_safe cleans it)."""
        c = self.config
        seed = c.seed
        stats = self.teacher_stats
        return {
            "modes": {mode: r.summary() for mode, r in self.modes.items()},
            "teacher_test_accuracy": None if stats is None else stats.test_accuracy,
            "teacher": None if stats is None else _teacher_summary(stats, c.teacher_epochs),
            "complexity_curves": [{key: v for key, v in r.items() if key != "series"} for r in self.curves],
            "student_file_mode": self.best_mode,
            "settings": {
                "m": self.m,
                "k": self.k,
                "kernel": c.kernel,
                "jitter_relative": c.jitter,
                "temperature": c.temperature,
                "alpha": c.alpha,
                "epochs": c.epochs,
                "curve_epochs": self.curve_epochs,
                "teacher_seed": seed,
                "student_seeds": [seed + STUDENT_SEED_OFFSET + s for s in range(c.seeds)],
                "subsample_seed": seed + SUBSAMPLE_SEED_OFFSET,
                "random_labels_seed": seed + RANDOM_LABELS_SEED_OFFSET,
                "online_schedule": ONLINE_SCHEDULE,
                "std": "sample standard deviation over seeds (ddof=1)",
            },
            "seconds": self.seconds,
        }

    def table(self) -> pd.DataFrame | None:
        """None: no per-sample scores."""
        return None

    def figures(self) -> dict[str, bytes]:
        """``complexity.png`` (one panel per mode) when curves were recorded, else nothing."""
        if not self.curves:
            return {}
        panels = {
            f"student trained with: {m}": [
                {**r, "series": _series(r["target"])} for r in self.curves if r["mode"] == m
            ]
            for m in self.modes
        }
        return {"complexity.png": plot_complexity(panels)}

    def student_safetensors(self) -> bytes:
        """The first-seed student of ``best_mode`` (metadata ``mode``, ``seed``)."""
        return _safetensors_bytes(self.students[self.best_mode], {"mode": self.best_mode, "seed": "0"})


class _CurveTargets:
    """Targets of the complexity curves at student epoch e: labels, random labels and the
    final teacher at τ, plus (when ``online`` runs) the teacher checkpoint used at e, whose
    soft labels are computed once per teacher epoch."""

    def __init__(
        self,
        base: Sequence[distill.Target],
        teacher: distill.TeacherRun | None,
        x_sub: torch.Tensor,
        y_sub: torch.Tensor,
        temperature: float,
    ) -> None:
        self.base, self.teacher, self.x_sub, self.y_sub = base, teacher, x_sub, y_sub
        self.temperature = temperature
        self.cache: dict[int, distill.Target] = {}

    def __call__(self, epoch: int) -> Sequence[distill.Target]:
        if self.teacher is None:
            return self.base
        t_epoch = self.teacher.checkpoint_for(epoch)
        if t_epoch not in self.cache:
            logits = predict_logits(self.teacher.at_epoch(t_epoch), self.x_sub)
            values = distill.soft_targets(logits, self.temperature)
            acc = float((values.argmax(1) == self.y_sub).double().mean())
            name = f"teacher_checkpoint:{t_epoch}"
            self.cache[t_epoch] = distill.Target(name, values, float(self.temperature), acc)
        return [*self.base, self.cache[t_epoch]]


def distillation(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: DistillationConfig = DistillationConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> DistillationResult:
    """Students trained with none / offline / online supervision over ``config.seeds`` seeds.

    model: the student's spec (None = the default MLP); ``config.teacher`` the teacher's.
    The teacher is trained once (seed ``config.seed``) and keeps a checkpoint every epoch
    when ``online`` is requested. Complexity curves are recorded for the first seed's
    student of each mode.
    """
    t0 = time.perf_counter()
    c = config
    seed = c.seed
    spec = model_spec(model, "distillation")
    data = _Data.of(dataset, device)
    k = dataset.n_classes
    modes = c.modes()
    curve_epochs = c.curve_epoch_list()
    # The config checked its fields when built (curve epochs within epochs, τ, α); what
    # needs the data is checked here, before any training.
    distill.check_kernel_size(min(c.subsample, dataset.n_train), k, c.kernel, "distillation")
    needs_teacher = any(m != "none" for m in modes) or bool(curve_epochs)
    stages = _Stages(
        progress or no_progress, (c.teacher_epochs if needs_teacher else 0) + c.epochs * c.seeds * len(modes)
    )
    teacher: distill.TeacherRun | None = None
    if needs_teacher:
        keep: list[int] | None = None if "online" in modes else []  # online: every epoch
        teacher = _train_teacher(data, c, keep, stages.stage(c.teacher_epochs), should_stop)

    idx = distill.subsample_indices(dataset.n_train, c.subsample, seed=seed + SUBSAMPLE_SEED_OFFSET).to(
        data.device
    )
    x_sub, y_sub = data.x[idx], data.y[idx]
    base_targets = distill.build_targets(
        y_sub,
        k,
        teacher=teacher,
        x_sub=x_sub,
        temperatures=[c.temperature],
        random_seed=seed + RANDOM_LABELS_SEED_OFFSET,
    )
    online = teacher if "online" in modes else None
    targets_at = _CurveTargets(base_targets, online, x_sub, y_sub, c.temperature)

    results = {m: ModeResult() for m in modes}
    curves: list[dict[str, Any]] = []
    first_students: dict[str, nn.Module] = {}
    for s in range(c.seeds):
        for mode in modes:
            hook: Callable[[int, nn.Module], None] | None = None
            rows: list[distill.ComplexityRow] = []
            if s == 0 and curve_epochs:
                hook, rows = distill.complexity_curve_hook(
                    x_sub,
                    targets_at,
                    epochs=curve_epochs,
                    kernel=c.kernel,
                    jitter=c.jitter,
                    should_stop=should_stop,
                )
            student, train_accuracy = _train_student(
                data,
                spec,
                c,
                mode,
                seed + STUDENT_SEED_OFFSET + s,
                teacher,
                hook,
                stages.stage(c.epochs),
                should_stop,
            )
            results[mode].test_accuracies.append(accuracy(student, data.x_test, data.y_test))
            results[mode].train_accuracies.append(train_accuracy)
            if s == 0:
                first_students[mode] = student
                curves.extend({**r, "mode": mode} for r in distill.rows_as_dicts(rows))

    return DistillationResult(
        config=c,
        modes=results,
        curves=curves,
        students=first_students,
        best_mode=best_mode(results),
        teacher=None if teacher is None else teacher.model,
        teacher_stats=None if teacher is None else _stats(teacher.model, data),
        m=int(idx.numel()),
        k=k,
        curve_epochs=curve_epochs,
        seconds=time.perf_counter() - t0,
    )


def _train_student(
    data: _Data,
    spec: Mapping[str, Any],
    c: DistillationConfig,
    mode: str,
    seed: int,
    teacher: distill.TeacherRun | None,
    hook: Callable[[int, nn.Module], None] | None,
    progress: ProgressFn,
    should_stop: StopFn | None,
) -> tuple[nn.Module, float]:
    """One student (init and data order from ``seed``) trained with ``mode``'s supervision;
    returns it and its last epoch's training accuracy."""
    student = data.build(spec, seed)
    trained = distill.distill_student(
        student,
        data.x,
        data.y,
        mode=mode,
        teacher=teacher,
        temperature=c.temperature,
        alpha=c.alpha,
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        optimizer=c.optimizer,
        seed=seed,
        on_epoch=hook,
        progress=progress,
        should_stop=should_stop,
    )
    return student, trained.train_accuracy[-1]


def best_mode(results: Mapping[str, ModeResult]) -> str:
    """The mode with the best mean test accuracy; NaN ranks last; ties: the earlier mode
    (``results`` is in the order none, offline, online)."""
    order = list(results)

    def key(mode: str) -> tuple[float, int]:
        mean = results[mode].summary()["test_accuracy_mean"]
        return (mean if math.isfinite(mean) else -math.inf, -order.index(mode))

    return max(order, key=key)


def _series(target: str) -> str:
    if target == "teacher":
        return "offline teacher"
    if target.startswith("teacher_checkpoint:"):
        return "online teacher"
    return target
