"""Supervision complexity and knowledge distillation (docs/science.md §5; arXiv 2301.12245).

Glossary: **n** training samples, **k** classes, **p** student parameters, **m** size of
the seeded subsample on which the student's NTK is formed.

Supervision complexity of targets Y* (m, k) (probability vectors: one-hot labels, random
labels, teacher ``softmax(z_T / τ)``) w.r.t. a student's NTK Gram matrix K::

    C        = tr(Y*ᵀ K⁻¹ Y*)                 (``averaged`` K: m×m, summed over classes)
             = vec(Y*)ᵀ K⁻¹ vec(Y*)           (``full`` K: mk×mk, sample-major vec)
    adjusted = sqrt(C · tr K) / m             (invariant to K → cK)

K is factored once per student checkpoint in float64 with a fixed relative jitter
``ε · (tr K / N) · I`` (N the side of K, ε = 1e-6 by default, tr K taken before the
jitter), and every target is solved against that same factor, so the numbers of one
checkpoint are directly comparable. A Cholesky failure at that jitter is a
:class:`NumericalError`, never a silent escalation: changing the jitter for one
checkpoint would change what is compared.

Distillation trains a student with

- ``none``: cross-entropy on the labels;
- ``offline``: ``α·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) + (1−α)·CE(labels)`` with the
  final, frozen teacher;
- ``online``: the same loss, but during student epoch e (1-based) the teacher is its
  checkpoint of epoch e, or the latest saved checkpoint ≤ e (the final teacher once e
  passes the teacher's training length).

Teachers keep checkpoints (state dicts, on the CPU, in memory) at chosen epochs; epoch 0
is the initialisation. Library code never touches the global RNG: every random draw
comes from an explicit seed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .distill_config import ComplexityKernel, DistillMode
from .errors import NumericalError, invalid
from .ntk import ntk_gram
from .progress import ProgressFn, StopFn, check_stop
from .training import TrainResult, predict_logits, train_classifier

DEFAULT_JITTER = 1e-6
# Largest side of K we agree to form: a float64 12000² matrix is ~1.2 GB, and the
# Cholesky factor doubles it.
MAX_KERNEL_SIDE = 12_000


# ---------------------------------------------------------------------------------------
# Functional core: complexity from a Gram matrix and targets
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelFactor:
    """A student kernel factored once for many targets.

    cholesky (N, N) lower factor of K + jitter·I; trace = tr K before the jitter;
    m = number of samples (N = m for ``averaged``, m·k for ``full``).
    """

    cholesky: torch.Tensor
    trace: float
    jitter: float
    cond: float
    m: int
    kernel: ComplexityKernel


@dataclass(frozen=True)
class ComplexityValue:
    """C (nats-free: a squared RKHS norm), tr K, adjusted = sqrt(C·tr K)/m."""

    complexity: float
    trace: float
    adjusted: float


def factor_kernel(
    gram: torch.Tensor,
    *,
    m: int,
    kernel: ComplexityKernel | str = ComplexityKernel.AVERAGED,
    jitter: float = DEFAULT_JITTER,
    compute_cond: bool = True,
) -> KernelFactor:
    """Cholesky-factor a student Gram matrix with the fixed relative jitter.

    gram (N, N): (m, m) for ``averaged``, (m·k, m·k) for ``full``. Symmetrised and cast to
    float64. The absolute jitter is ``jitter · tr K / N``. cond is that of K + jitter·I
    (from its eigenvalues; skip with ``compute_cond=False``).
    """
    kernel = _check_kernel(kernel, "factor_kernel")
    if not (jitter > 0 and math.isfinite(jitter)):
        raise invalid("jitter", "factor_kernel", "a float in (0, inf)", jitter)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise invalid("gram", "factor_kernel", "a non-empty square matrix", tuple(gram.shape))
    side = gram.shape[0]
    if side % m != 0:
        raise invalid("m", "factor_kernel", f"a divisor of the kernel side {side}", m)
    k64 = gram.detach().to(torch.float64)
    k64 = 0.5 * (k64 + k64.T)
    trace = float(torch.diagonal(k64).sum())
    if not (trace > 0 and math.isfinite(trace)):
        raise NumericalError(f"The student kernel has trace {trace}; expected a finite positive trace.")
    abs_jitter = jitter * trace / side
    shifted = k64 + abs_jitter * torch.eye(side, dtype=torch.float64, device=k64.device)
    # Cholesky, not inv: K is SPD after the jitter, and triangular solves are accurate.
    chol, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        raise NumericalError(
            f"The student kernel is not positive definite after a relative jitter of {jitter} "
            f"(absolute {abs_jitter:.3e}); raise 'jitter'."
        )
    cond = float("nan")
    if compute_cond:
        eig = torch.linalg.eigvalsh(shifted)
        cond = float(eig[-1] / eig[0]) if float(eig[0]) > 0 else float("inf")
    return KernelFactor(chol, trace, abs_jitter, cond, m, kernel)


def complexity_from_factor(factor: KernelFactor, targets: torch.Tensor) -> ComplexityValue:
    """targets Y* (m, k) -> C = ‖L⁻¹Y*‖²_F (averaged) or ‖L⁻¹vec(Y*)‖² (full)."""
    y = targets.detach().to(dtype=torch.float64, device=factor.cholesky.device)
    if y.ndim != 2 or y.shape[0] != factor.m:
        raise invalid(
            "targets", "complexity_from_factor", f"an array of shape ({factor.m}, k)", tuple(y.shape)
        )
    if factor.kernel == ComplexityKernel.FULL:
        if y.numel() != factor.cholesky.shape[0]:
            raise invalid(
                "targets",
                "complexity_from_factor",
                f"m·k = {factor.cholesky.shape[0]} entries for the full kernel",
                tuple(y.shape),
            )
        y = y.reshape(-1, 1)  # sample-major, matching the full NTK's block layout
    z = torch.linalg.solve_triangular(factor.cholesky, y, upper=False)
    c = float((z * z).sum())
    return ComplexityValue(c, factor.trace, math.sqrt(max(c, 0.0) * factor.trace) / factor.m)


def supervision_complexity(
    gram: torch.Tensor,
    targets: torch.Tensor,
    *,
    kernel: ComplexityKernel | str = ComplexityKernel.AVERAGED,
    jitter: float = DEFAULT_JITTER,
) -> ComplexityValue:
    """One-shot form: gram (m, m) or (mk, mk), targets (m, k) -> C, tr K, adjusted."""
    kernel = _check_kernel(kernel, "supervision_complexity")
    per_sample = targets.shape[1] if kernel == ComplexityKernel.FULL and targets.ndim == 2 else 1
    if targets.ndim != 2 or targets.shape[0] * per_sample != gram.shape[0]:
        raise invalid(
            "targets",
            "supervision_complexity",
            f"an (m, k) array matching the kernel side {gram.shape[0]}",
            tuple(targets.shape),
        )
    factor = factor_kernel(gram, m=targets.shape[0], kernel=kernel, jitter=jitter, compute_cond=False)
    return complexity_from_factor(factor, targets)


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A named target matrix on the subsample: values (m, k) probability vectors.

    name: ``labels``, ``random_labels``, ``teacher`` or ``teacher_checkpoint:<epoch>``;
    temperature None for label targets; accuracy = mean(argmax(values) == labels).
    """

    name: str
    values: torch.Tensor
    temperature: float | None
    accuracy: float


def one_hot_targets(y: torch.Tensor, k: int) -> torch.Tensor:
    """y (m,) int -> (m, k) float64 one-hot."""
    return nn.functional.one_hot(y.long(), k).to(torch.float64)


def random_label_targets(m: int, k: int, *, seed: int) -> torch.Tensor:
    """(m, k) one-hot of labels drawn uniformly from ``seed`` (the control target)."""
    gen = torch.Generator().manual_seed(seed)
    return one_hot_targets(torch.randint(0, k, (m,), generator=gen), k)


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits (m, k) -> softmax(logits / τ) (m, k) in float64 (log-sum-exp inside softmax)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise invalid("temperature", "soft_targets", "a float in (0, inf)", temperature)
    return torch.softmax(logits.detach().to(torch.float64) / temperature, dim=1)


def _target(name: str, values: torch.Tensor, temperature: float | None, y: torch.Tensor) -> Target:
    acc = float((values.argmax(1).cpu() == y.cpu()).double().mean())
    return Target(name, values, temperature, acc)


# ---------------------------------------------------------------------------------------
# Teachers with checkpoints
# ---------------------------------------------------------------------------------------


@dataclass
class TeacherRun:
    """A trained teacher and its checkpoints.

    model: the final teacher (eval mode); checkpoints: epoch -> state dict (CPU clones),
    epoch 0 = initialisation; epochs: the teacher's training length; train: its
    per-epoch training loss and accuracy.
    """

    model: nn.Module
    checkpoints: dict[int, dict[str, torch.Tensor]]
    epochs: int
    train: TrainResult = field(default_factory=TrainResult)

    def checkpoint_for(self, epoch: int) -> int:
        """The teacher epoch used at student epoch ``epoch``: the latest kept checkpoint ≤ epoch.

        The final teacher (``self.epochs``) past the end of the teacher's training, or when
        no checkpoint ≤ epoch was kept.
        """
        if epoch >= self.epochs:
            return self.epochs
        saved = [e for e in self.checkpoints if e <= epoch]
        return max(saved) if saved else self.epochs

    def at_epoch(self, epoch: int) -> nn.Module:
        """The teacher at :meth:`checkpoint_for` (``epoch``): the final model or a copy."""
        chosen = self.checkpoint_for(epoch)
        return self.model if chosen == self.epochs else self.at_epoch_exact(chosen)

    def at_epoch_exact(self, epoch: int) -> nn.Module:
        """A copy of the teacher (eval mode) loaded with exactly checkpoint ``epoch`` (must be kept)."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.checkpoints[epoch])
        model.eval()
        return model


def train_teacher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    checkpoints: Iterable[int] | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TeacherRun:
    """Train ``model`` in place with cross-entropy, keeping state dicts at ``checkpoints``.

    x (n, ...), y (n,) on the model's device. checkpoints: epochs in 0..epochs to keep
    (None = every epoch, 0..epochs, as online distillation needs).
    """
    if epochs < 1:
        raise invalid("teacher_epochs", "train_teacher", "a positive integer", epochs)
    wanted = set(range(epochs + 1)) if checkpoints is None else {int(e) for e in checkpoints}
    bad = sorted(e for e in wanted if not 0 <= e <= epochs)
    if bad:
        raise invalid("checkpoints", "train_teacher", f"epochs in 0..{epochs} (teacher_epochs)", bad)
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def keep(epoch: int, net: nn.Module) -> None:
        if epoch in wanted:
            # Kept on the model's device: restoring a checkpoint is then a device copy.
            saved[epoch] = {name: t.detach().clone() for name, t in net.state_dict().items()}

    result = train_classifier(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        on_epoch=keep,
        progress=progress,
        should_stop=should_stop,
    )
    model.eval()
    return TeacherRun(model, saved, epochs, result)


# ---------------------------------------------------------------------------------------
# Complexity of many targets at one student state
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComplexityRow:
    """One (student checkpoint, target, temperature) result."""

    student_checkpoint: int
    target: str
    temperature: float | None
    complexity: float
    adjusted: float
    trace: float
    target_accuracy: float
    jitter: float
    cond: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "student_checkpoint": self.student_checkpoint,
            "target": self.target,
            "temperature": self.temperature,
            "complexity": self.complexity,
            "adjusted": self.adjusted,
            "trace": self.trace,
            "target_accuracy": self.target_accuracy,
            "jitter": self.jitter,
            "cond": self.cond,
        }


def subsample_indices(n: int, m: int, *, seed: int) -> torch.Tensor:
    """m distinct indices in 0..n-1 drawn from ``seed`` (sorted), m clamped to n."""
    if m < 2:
        raise invalid("subsample", "subsample_indices", "an integer >= 2", m)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(m, n)].sort().values


def complexity_at(
    student: nn.Module,
    x_sub: torch.Tensor,
    targets: Sequence[Target],
    *,
    student_checkpoint: int,
    kernel: ComplexityKernel | str = ComplexityKernel.AVERAGED,
    jitter: float = DEFAULT_JITTER,
    batch_size: int = 128,
    should_stop: StopFn | None = None,
) -> list[ComplexityRow]:
    """The student's NTK on x_sub (m, ...), factored once, against every target (m, k)."""
    m = x_sub.shape[0]
    kernel = check_kernel_size(m, _n_outputs(targets), kernel, "complexity_at")
    gram = ntk_gram(student, x_sub, kernel=kernel.value, batch_size=batch_size, should_stop=should_stop)
    factor = factor_kernel(gram, m=m, kernel=kernel, jitter=jitter)
    rows = []
    for t in targets:
        v = complexity_from_factor(factor, t.values)
        rows.append(
            ComplexityRow(
                student_checkpoint,
                t.name,
                t.temperature,
                v.complexity,
                v.adjusted,
                v.trace,
                t.accuracy,
                factor.jitter,
                factor.cond,
            )
        )
    return rows


def check_kernel_size(m: int, k: int, kernel: ComplexityKernel | str, caller: str) -> ComplexityKernel:
    """Validate the kernel kind and that its side (m, or m·k for ``full``) fits the cap."""
    kind = _check_kernel(kernel, caller)
    side = m * k if kind == ComplexityKernel.FULL else m
    if side > MAX_KERNEL_SIDE:
        raise invalid(
            "subsample", caller, f"small enough that the {kind.value} kernel side is ≤ {MAX_KERNEL_SIDE}", m
        )
    return kind


def _n_outputs(targets: Sequence[Target]) -> int:
    return int(targets[0].values.shape[1]) if targets else 1


def build_targets(
    y_sub: torch.Tensor,
    k: int,
    *,
    teacher: TeacherRun | None,
    x_sub: torch.Tensor | None,
    temperatures: Sequence[float] = (1.0,),
    teacher_checkpoints: Sequence[int] = (),
    random_seed: int = 0,
) -> list[Target]:
    """The compared targets on the subsample.

    y_sub (m,) labels; x_sub (m, ...) inputs for the teacher. Returns ``labels``,
    ``random_labels`` (seeded), then for each temperature ``teacher`` (final) and
    ``teacher_checkpoint:<e>`` for each kept checkpoint e in ``teacher_checkpoints``.
    """
    for tau in temperatures:
        if not (tau > 0 and math.isfinite(tau)):
            raise invalid("temperatures", "build_targets", "positive finite floats", list(temperatures))
    m = y_sub.shape[0]
    targets = [
        _target("labels", one_hot_targets(y_sub, k), None, y_sub),
        # Drawn on the host (the same labels on every device), moved to the device once.
        _target("random_labels", random_label_targets(m, k, seed=random_seed).to(y_sub.device), None, y_sub),
    ]
    if teacher is None:
        return targets
    if x_sub is None:
        raise invalid("x_sub", "build_targets", "the subsample inputs when a teacher is given", None)
    missing = sorted(set(teacher_checkpoints) - set(teacher.checkpoints))
    if missing:
        raise invalid("checkpoints", "build_targets", "epochs the teacher kept", missing)
    final_logits = predict_logits(teacher.model, x_sub)
    ckpt_logits = {
        e: predict_logits(teacher.at_epoch_exact(e), x_sub) for e in sorted(set(teacher_checkpoints))
    }
    for tau in temperatures:
        targets.append(_target("teacher", soft_targets(final_logits, tau), float(tau), y_sub))
        for e, logits in ckpt_logits.items():
            targets.append(_target(f"teacher_checkpoint:{e}", soft_targets(logits, tau), float(tau), y_sub))
    return targets


# ---------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """α·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) + (1−α)·CE(z_S, labels).

    student_logits, teacher_logits (b, k); labels (b,). KL summed over classes, mean
    over the batch; τ² keeps the soft-target gradients on the scale of the CE ones.
    """
    log_p_student = torch.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = torch.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1).mean()
    loss = alpha * temperature**2 * kl
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * nn.functional.cross_entropy(student_logits, labels)
    return loss


def check_distill_params(
    mode: str, temperature: float, alpha: float, teacher: TeacherRun | None
) -> DistillMode:
    caller = "distill_student"
    if mode not in DistillMode.__members__.values():
        raise invalid("mode", caller, f"one of {[m.value for m in DistillMode]}", mode)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise invalid("temperature", caller, "a float in (0, inf)", temperature)
    if not 0.0 <= alpha <= 1.0:
        raise invalid("alpha", caller, "a float in [0, 1]", alpha)
    if mode != DistillMode.NONE and teacher is None:
        raise invalid("teacher", caller, f"a trained teacher for mode {mode!r}", None)
    return DistillMode(mode)


def distill_student(
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: DistillMode | str,
    teacher: TeacherRun | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train ``student`` in place on x (n, ...), y (n,) with the chosen supervision.

    Teacher logits on x are computed once per teacher state (eval mode) and indexed by
    the batch indices. ``on_epoch(e, student)`` runs after student epoch e (and at e = 0).
    """
    mode = check_distill_params(str(mode), temperature, alpha, teacher)
    if mode == DistillMode.NONE:
        return train_classifier(
            student,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            on_epoch=on_epoch,
            progress=progress,
            should_stop=should_stop,
        )
    assert teacher is not None
    cache: dict[int, torch.Tensor] = {}

    def teacher_logits(student_epoch: int) -> torch.Tensor:
        t_epoch = teacher.epochs if mode == DistillMode.OFFLINE else teacher.checkpoint_for(student_epoch)
        if t_epoch not in cache:
            cache.clear()  # one teacher state at a time: memory n·k, not epochs·n·k
            cache[t_epoch] = predict_logits(teacher.at_epoch(t_epoch), x)
        return cache[t_epoch]

    current: dict[str, torch.Tensor] = {"logits": teacher_logits(1)}

    def hook(epoch: int, net: nn.Module) -> None:
        if on_epoch is not None:
            on_epoch(epoch, net)
        if epoch < epochs:
            current["logits"] = teacher_logits(epoch + 1)  # used during epoch + 1

    def loss_fn(logits: torch.Tensor, y_batch: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return distillation_loss(
            logits, current["logits"][idx], y_batch, temperature=temperature, alpha=alpha
        )

    return train_classifier(
        student,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        loss_fn=loss_fn,
        on_epoch=hook,
        progress=progress,
        should_stop=should_stop,
    )


# ---------------------------------------------------------------------------------------
# Complexity curves along a student's training
# ---------------------------------------------------------------------------------------


def complexity_curve_hook(
    x_sub: torch.Tensor,
    targets_at: Callable[[int], Sequence[Target]],
    *,
    epochs: Iterable[int],
    kernel: ComplexityKernel | str = ComplexityKernel.AVERAGED,
    jitter: float = DEFAULT_JITTER,
    batch_size: int = 128,
    should_stop: StopFn | None = None,
    rows: list[ComplexityRow] | None = None,
    on_row: Callable[[int], None] | None = None,
) -> tuple[Callable[[int, nn.Module], None], list[ComplexityRow]]:
    """An ``on_epoch`` hook that appends complexity rows at the chosen student epochs.

    targets_at(e) gives the targets at student epoch e (online targets change with e).
    Returns (hook, rows); rows fills up as training runs.
    """
    wanted = {int(e) for e in epochs}
    out: list[ComplexityRow] = [] if rows is None else rows

    def hook(epoch: int, student: nn.Module) -> None:
        if epoch in wanted:
            check_stop(should_stop)
            out.extend(
                complexity_at(
                    student,
                    x_sub,
                    targets_at(epoch),
                    student_checkpoint=epoch,
                    kernel=kernel,
                    jitter=jitter,
                    batch_size=batch_size,
                    should_stop=should_stop,
                )
            )
            if on_row is not None:
                on_row(epoch)

    return hook, out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _check_kernel(kernel: ComplexityKernel | str, caller: str) -> ComplexityKernel:
    try:
        return ComplexityKernel(kernel)
    except ValueError:
        raise invalid("kernel", caller, f"one of {[k.value for k in ComplexityKernel]}", kernel) from None


def rows_as_dicts(rows: Iterable[ComplexityRow]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rows]


def summarize_modes(accuracies: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    """mode -> per-seed test accuracies  =>  mode -> {test_accuracy_mean, _std, seeds}."""
    out: dict[str, dict[str, Any]] = {}
    for mode, accs in accuracies.items():
        mean, std = mean_std(accs)
        out[mode] = {
            "test_accuracy_mean": mean,
            "test_accuracy_std": std,
            "seeds": [float(a) for a in accs],
        }
    return out
