"""Settings of :func:`infoscore.supervision_complexity` and :func:`infoscore.distillation`.

Torch-free: importing a config (or the strategy enums) does not load torch. Field names
are exactly the params of the ``supervision-complexity`` and ``distillation`` job kinds
(docs/jobs/supervision-complexity.md, docs/jobs/distillation.md) plus ``seed``, and the
defaults are the contract's. Every field is checked when the config is built: a bad value
raises :class:`~infoscore.errors.InvalidInputError` naming the field, before any work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from .errors import invalid

OPTIMIZER_NAMES = ("adam", "sgd")  # infoscore.training.OPTIMIZERS, without importing torch
CHECKPOINTS_DEFAULT = (1, 5, 10, 25)


class ComplexityKernel(StrEnum):
    """Which student NTK the complexity uses."""

    # default: m×m, so the Cholesky costs O(m³) instead of O((mk)³); per class targets.
    AVERAGED = "averaged"
    FULL = "full"  # mk×mk, exact for a k-output kernel machine


class DistillMode(StrEnum):
    NONE = "none"  # labels only, cross-entropy
    OFFLINE = "offline"  # final frozen teacher
    ONLINE = "online"  # teacher checkpoint of the student's current epoch


def _default_teacher() -> dict[str, Any]:
    return {"arch": "mlp", "hidden": [512, 512]}


def default_checkpoints(teacher_epochs: int) -> list[int]:
    """The contract's default ``checkpoints``: [1, 5, 10, 25] cut to those ≤ teacher_epochs
    (``[teacher_epochs]`` when none is)."""
    return [c for c in CHECKPOINTS_DEFAULT if c <= teacher_epochs] or [teacher_epochs]


def default_curve_epochs(epochs: int) -> list[int]:
    """0, E/4, E/2, 3E/4, E (rounded, deduplicated)."""
    return sorted({round(epochs * f) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})


class _Checker:
    """Field checks in the one message format, naming the config class as the caller."""

    def __init__(self, caller: str) -> None:
        self.caller = caller

    def positive_int(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(name, self.caller, "a positive integer", value)
        return int(value)

    def positive_float(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
            raise invalid(name, self.caller, "a float in (0, inf)", value)
        return float(value)

    def epochs(
        self, name: str, value: Any, *, upto: int | None, upto_name: str, min_length: int
    ) -> tuple[int, ...]:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise invalid(name, self.caller, "a list of epochs", value)
        out = tuple(value)
        if len(out) < min_length or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in out):
            at_least = f"at least {min_length} " if min_length else ""
            raise invalid(name, self.caller, f"a list of {at_least}non-negative integers", list(out))
        bad = sorted(e for e in out if upto is not None and e > upto)
        if bad:
            raise invalid(name, self.caller, f"epochs in 0..{upto} ({upto_name})", bad)
        return out

    def choice(self, name: str, value: Any, allowed: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise invalid(name, self.caller, f"one of {list(allowed)}", value)
        return str(value)

    def model_spec(self, name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or "arch" not in value:
            raise invalid(name, self.caller, "a model spec mapping with an 'arch' key", value)
        return dict(value)

    def seed(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid("seed", self.caller, "a non-negative integer", value)
        return int(value)

    def common(self, cfg: Any) -> None:
        """teacher, teacher_epochs, subsample, kernel, jitter, lr, batch_size, optimizer, seed."""
        _set(cfg, "teacher", self.model_spec("teacher", cfg.teacher))
        self.positive_int("teacher_epochs", cfg.teacher_epochs)
        if isinstance(cfg.subsample, bool) or not isinstance(cfg.subsample, int) or cfg.subsample < 2:
            raise invalid("subsample", self.caller, "an integer >= 2", cfg.subsample)
        _set(
            cfg,
            "kernel",
            ComplexityKernel(self.choice("kernel", cfg.kernel, [k.value for k in ComplexityKernel])).value,
        )
        self.positive_float("jitter", cfg.jitter)
        self.positive_float("lr", cfg.lr)
        self.positive_int("batch_size", cfg.batch_size)
        _set(cfg, "optimizer", self.choice("optimizer", cfg.optimizer, OPTIMIZER_NAMES))
        self.seed(cfg.seed)


def _set(cfg: Any, name: str, value: Any) -> None:
    object.__setattr__(cfg, name, value)  # normalising a frozen dataclass in __post_init__


@dataclass(frozen=True)
class SupervisionComplexityConfig:
    """Settings of :func:`infoscore.supervision_complexity` (docs/jobs/supervision-complexity.md).

    teacher: the teacher's model spec (``infoscore.models.build_model``). The job requires
    it; the library default is the MLP 64-512-512 teacher of the digits benchmark (test
    accuracy 0.976 after 40 epochs, docs/benchmarks/distill.md).
    teacher_epochs: teacher training length (default 50, the contract's: past 100 % train
    accuracy on digits, so the final teacher's soft labels are settled).
    checkpoints: teacher epochs whose soft labels are targets too; None (default) = the
    contract's default [1, 5, 10, 25] cut to those ≤ ``teacher_epochs`` (early checkpoints
    are where the complexity changes most, docs/benchmarks/distill.md).
    temperatures: τ of the teacher targets softmax(z/τ) (default 1 and 4: the plain teacher
    and the usual distillation temperature).
    subsample: m, the seeded training subsample on which K is formed (default 1000,
    clamped to n; the kernel side is capped at 12 000).
    kernel: ``averaged`` (default: m×m, O(m³) instead of O((mk)³)) or ``full``
    (:class:`ComplexityKernel`).
    student_checkpoints: student epochs at which K is formed (default [0]: the student at
    initialization, the setting of docs/science.md §5; the student is trained on the
    labels up to the largest).
    jitter: relative jitter ε, K + ε·(tr K / N)·I (default 1e-6: values moved by at most
    1.7 % for ε in 1e-8..1e-4 at m = 250, docs/benchmarks/distill.md).
    lr, batch_size, optimizer: training recipe of both networks (Adam 1e-3, batch 128, as
    the rest of infoscore).
    seed: teacher seed; student seed + 10000, subsample seed + 20000, random labels
    seed + 30000.
    """

    teacher: Mapping[str, Any] = field(default_factory=_default_teacher)
    teacher_epochs: int = 50
    checkpoints: Sequence[int] | None = None
    temperatures: Sequence[float] = (1.0, 4.0)
    subsample: int = 1000
    kernel: Literal["averaged", "full"] = "averaged"
    student_checkpoints: Sequence[int] = (0,)
    jitter: float = 1e-6
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    seed: int = 0

    def __post_init__(self) -> None:
        check = _Checker(type(self).__name__)
        check.common(self)
        if self.checkpoints is not None:
            _set(
                self,
                "checkpoints",
                check.epochs(
                    "checkpoints",
                    self.checkpoints,
                    upto=self.teacher_epochs,
                    upto_name="teacher_epochs",
                    min_length=0,
                ),
            )
        temps = self.temperatures
        if isinstance(temps, str | bytes) or not isinstance(temps, Sequence) or not temps:
            raise invalid("temperatures", check.caller, "a non-empty list of floats in (0, inf)", temps)
        _set(self, "temperatures", tuple(check.positive_float("temperatures", t) for t in temps))
        _set(
            self,
            "student_checkpoints",
            check.epochs(
                "student_checkpoints", self.student_checkpoints, upto=None, upto_name="", min_length=1
            ),
        )

    def teacher_checkpoints(self) -> list[int]:
        """The teacher checkpoints used: ``checkpoints``, or the default for ``teacher_epochs``."""
        if self.checkpoints is None:
            return default_checkpoints(self.teacher_epochs)
        return list(self.checkpoints)


@dataclass(frozen=True)
class DistillationConfig:
    """Settings of :func:`infoscore.distillation` (docs/jobs/distillation.md).

    teacher: the teacher's model spec; required by the job, the library default is the
    MLP 64-512-512 of the digits benchmark (docs/benchmarks/distill.md).
    teacher_epochs: teacher training length (default 50).
    mode: which supervisions to compare, any of ``none``, ``offline``, ``online``
    (:class:`DistillMode`; default all three, the comparison the job exists for).
    temperature: τ of the soft targets (default 4, the usual distillation temperature;
    at τ = 1 a teacher at 100 % train accuracy gives almost one-hot targets,
    docs/benchmarks/distill.md).
    alpha: weight α of the distillation term (default 0.5: soft and hard targets weighted
    equally).
    epochs: student training length (default 50).
    seeds: students per mode (default 3: enough for a mean ± sample std).
    curve_epochs: student epochs of the complexity curves; None (default) = 0, E/4, E/2,
    3E/4, E; () = no curves.
    subsample, kernel, jitter: as in :class:`SupervisionComplexityConfig` (default m = 500:
    five curve points × three modes stay cheap).
    lr, batch_size, optimizer: training recipe of teacher and students (Adam 1e-3, 128).
    seed: teacher seed; student i seed + 10000 + i (the same in every mode), subsample
    seed + 20000, random labels seed + 30000.
    """

    teacher: Mapping[str, Any] = field(default_factory=_default_teacher)
    teacher_epochs: int = 50
    mode: Sequence[Literal["none", "offline", "online"]] = ("none", "offline", "online")
    temperature: float = 4.0
    alpha: float = 0.5
    epochs: int = 50
    seeds: int = 3
    curve_epochs: Sequence[int] | None = None
    subsample: int = 500
    kernel: Literal["averaged", "full"] = "averaged"
    jitter: float = 1e-6
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    seed: int = 0

    def __post_init__(self) -> None:
        check = _Checker(type(self).__name__)
        check.common(self)
        modes = self.mode
        allowed = [m.value for m in DistillMode]
        if isinstance(modes, str | bytes) or not isinstance(modes, Sequence) or not modes:
            raise invalid("mode", check.caller, f"a non-empty list of {allowed}", modes)
        _set(self, "mode", tuple(check.choice("mode", m, allowed) for m in modes))
        check.positive_float("temperature", self.temperature)
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not 0 <= self.alpha <= 1
        ):
            raise invalid("alpha", check.caller, "a float in [0, 1]", self.alpha)
        check.positive_int("epochs", self.epochs)
        check.positive_int("seeds", self.seeds)
        if self.curve_epochs is not None:
            _set(
                self,
                "curve_epochs",
                check.epochs(
                    "curve_epochs", self.curve_epochs, upto=self.epochs, upto_name="epochs", min_length=0
                ),
            )

    def modes(self) -> list[str]:
        """The requested modes in the fixed order none, offline, online."""
        return [m.value for m in DistillMode if m.value in set(self.mode)]

    def curve_epoch_list(self) -> list[int]:
        """The curve epochs used: sorted ``curve_epochs``, or the default for ``epochs``."""
        if self.curve_epochs is None:
            return default_curve_epochs(self.epochs)
        return sorted(set(self.curve_epochs))
