"""Supervision complexity and distillation: exact identities, digits orderings, runner contract."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from contracts import distill as contract
from infoscore import data, distill, models, ntk
from infoscore.errors import Cancelled, InvalidInputError
from infoscore.training import as_tensor, predict_logits
from tests.runner_helpers import make_context
from workers.runners.distill import DistillationRunner, SupervisionComplexityRunner

CPU = torch.device("cpu")


# Two cores, shared: more torch threads than one only fight over them.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spd(n: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    return a @ a.T


def _probabilities(m: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(m, k, generator=gen, dtype=torch.float64), dim=1)


# ---------------------------------------------------------------------------------------
# Exact identities
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["averaged", "full"])
@pytest.mark.parametrize("scale", [1e-4, 3.0, 1e5])
def test_adjusted_is_invariant_to_kernel_scale(kernel: str, scale: float) -> None:
    m, k = 12, 3
    side = m * k if kernel == "full" else m
    gram = _spd(side, side // 2, seed=0)  # rank-deficient: the relative jitter matters
    y = _probabilities(m, k, seed=1)
    base = distill.supervision_complexity(gram, y, kernel=kernel)
    scaled = distill.supervision_complexity(scale * gram, y, kernel=kernel)
    assert scaled.adjusted == pytest.approx(base.adjusted, rel=1e-10)
    assert scaled.complexity == pytest.approx(base.complexity / scale, rel=1e-10)
    assert scaled.trace == pytest.approx(base.trace * scale, rel=1e-12)


def test_complexity_matches_direct_solve() -> None:
    m, k = 7, 4
    gram = _spd(m, m + 3, seed=2)
    y = _probabilities(m, k, seed=3)
    factor = distill.factor_kernel(gram, m=m, jitter=1e-3)
    value = distill.complexity_from_factor(factor, y)
    jitter = 1e-3 * torch.trace(gram) / m
    shifted = gram + jitter * torch.eye(m, dtype=torch.float64)
    direct = torch.trace(y.T @ torch.linalg.solve(shifted, y))
    assert factor.jitter == pytest.approx(float(jitter), rel=1e-14)
    assert value.complexity == pytest.approx(float(direct), rel=1e-10)
    assert value.trace == pytest.approx(float(torch.trace(gram)), rel=1e-14)
    assert value.adjusted == pytest.approx(float(torch.sqrt(direct * torch.trace(gram)) / m), rel=1e-10)
    eig = torch.linalg.eigvalsh(shifted)
    assert factor.cond == pytest.approx(float(eig[-1] / eig[0]), rel=1e-8)


def test_full_kernel_uses_sample_major_vec() -> None:
    m, k = 5, 3
    gram = _spd(m * k, m * k + 2, seed=4)
    y = _probabilities(m, k, seed=5)
    value = distill.supervision_complexity(gram, y, kernel="full", jitter=1e-4)
    shifted = gram + 1e-4 * torch.trace(gram) / (m * k) * torch.eye(m * k, dtype=torch.float64)
    vec = y.reshape(-1)  # row i of y = block i of the full kernel
    assert value.complexity == pytest.approx(float(vec @ torch.linalg.solve(shifted, vec)), rel=1e-10)


def test_full_and_averaged_agree_for_one_output() -> None:
    ds = data.load_digits()
    x = as_tensor(ds.x_train[:40], CPU)
    model = models.build_model({"arch": "mlp", "hidden": [16]}, (64,), 1, seed=0)
    y = (
        torch.full((40, 1), 0.5, dtype=torch.float64)
        + torch.linspace(-0.4, 0.4, 40, dtype=torch.float64)[:, None]
    )
    target = [distill.Target("t", y, None, 1.0)]
    full = distill.complexity_at(model, x, target, student_checkpoint=0, kernel="full")[0]
    averaged = distill.complexity_at(model, x, target, student_checkpoint=0, kernel="averaged")[0]
    assert full.complexity == pytest.approx(averaged.complexity, rel=1e-9)
    assert full.adjusted == pytest.approx(averaged.adjusted, rel=1e-9)
    assert full.jitter == pytest.approx(averaged.jitter, rel=1e-12)


def test_distillation_loss_limits() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 4, generator=gen)
    teacher = torch.randn(6, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = torch.nn.functional.cross_entropy(student, labels)
    loss0 = distill.distillation_loss(student, teacher, labels, temperature=3.0, alpha=0.0)
    torch.testing.assert_close(loss0, ce)
    self_kl = distill.distillation_loss(student, student, labels, temperature=2.0, alpha=1.0)
    assert float(self_kl) == pytest.approx(0.0, abs=1e-6)
    tau = 2.5
    p_t = torch.softmax(teacher / tau, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / tau, 1))).sum(1).mean()
    mixed = distill.distillation_loss(student, teacher, labels, temperature=tau, alpha=0.3)
    torch.testing.assert_close(mixed, 0.3 * tau**2 * kl + 0.7 * ce)


# ---------------------------------------------------------------------------------------
# Teacher checkpoints and online distillation
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[data.Dataset, torch.Tensor, torch.Tensor]:
    ds = data.load_digits()
    return ds, as_tensor(ds.x_train, CPU), torch.as_tensor(ds.y_train)


@pytest.fixture(scope="module")
def teacher(digits: tuple[data.Dataset, torch.Tensor, torch.Tensor]) -> distill.TeacherRun:
    _, x, y = digits
    model = models.build_model({"arch": "mlp", "hidden": [64]}, (64,), 10, seed=0)
    return distill.train_teacher(model, x, y, epochs=10, checkpoints=[0, 1, 2, 10], batch_size=64, seed=0)


def test_teacher_keeps_checkpoints(teacher: distill.TeacherRun) -> None:
    assert sorted(teacher.checkpoints) == [0, 1, 2, 10]
    final = teacher.at_epoch_exact(10)
    for name, value in final.state_dict().items():
        torch.testing.assert_close(value, teacher.model.state_dict()[name], rtol=0, atol=0)
    assert teacher.checkpoint_for(0) == 0
    assert teacher.checkpoint_for(5) == 2  # latest kept checkpoint <= 5
    assert teacher.checkpoint_for(40) == 10  # past the teacher's training: the final teacher
    init = models.build_model({"arch": "mlp", "hidden": [64]}, (64,), 10, seed=0)
    for name, value in init.state_dict().items():
        torch.testing.assert_close(teacher.checkpoints[0][name], value, rtol=0, atol=0)


def test_online_with_constant_checkpoints_equals_offline(
    digits: tuple[data.Dataset, torch.Tensor, torch.Tensor], teacher: distill.TeacherRun
) -> None:
    _, x, y = digits
    x, y = x[:200], y[:200]
    final_state = {n: t.clone() for n, t in teacher.model.state_dict().items()}
    frozen = distill.TeacherRun(teacher.model, {e: final_state for e in range(4)}, epochs=3)
    trained = {}
    for mode in ("offline", "online"):
        student = models.build_model({"arch": "mlp", "hidden": [16]}, (64,), 10, seed=7)
        distill.distill_student(student, x, y, mode=mode, teacher=frozen, epochs=3, seed=7, batch_size=50)
        trained[mode] = predict_logits(student, x)
    torch.testing.assert_close(trained["online"], trained["offline"], rtol=0, atol=0)
    # With the real (changing) checkpoints, online is a different supervision.
    student = models.build_model({"arch": "mlp", "hidden": [16]}, (64,), 10, seed=7)
    distill.distill_student(student, x, y, mode="online", teacher=teacher, epochs=3, seed=7, batch_size=50)
    assert not torch.allclose(predict_logits(student, x), trained["offline"])


def test_offline_with_alpha_zero_is_plain_training(
    digits: tuple[data.Dataset, torch.Tensor, torch.Tensor], teacher: distill.TeacherRun
) -> None:
    _, x, y = digits
    x, y = x[:150], y[:150]
    logits = {}
    for mode in ("none", "offline"):
        student = models.build_model({"arch": "mlp", "hidden": [8]}, (64,), 10, seed=4)
        distill.distill_student(
            student, x, y, mode=mode, teacher=teacher, alpha=0.0, epochs=2, seed=4, batch_size=50
        )
        logits[mode] = predict_logits(student, x)
    torch.testing.assert_close(logits["offline"], logits["none"], rtol=0, atol=0)


class _SpyTeacher(distill.TeacherRun):
    def __init__(self, base: distill.TeacherRun, epochs: int) -> None:
        state = base.model.state_dict()
        super().__init__(base.model, {e: state for e in range(epochs + 1)}, epochs)
        self.requested: list[int] = []

    def at_epoch(self, epoch: int) -> torch.nn.Module:
        self.requested.append(epoch)
        return super().at_epoch(epoch)


@pytest.mark.parametrize(("teacher_epochs", "expected"), [(3, [1, 2, 3]), (5, [1, 2, 3]), (2, [1, 2, 2])])
def test_online_schedule_uses_checkpoint_of_current_epoch(
    digits: tuple[data.Dataset, torch.Tensor, torch.Tensor],
    teacher: distill.TeacherRun,
    teacher_epochs: int,
    expected: list[int],
) -> None:
    _, x, y = digits
    spy = _SpyTeacher(teacher, teacher_epochs)
    student = models.build_model({"arch": "linear"}, (64,), 10, seed=0)
    distill.distill_student(student, x[:50], y[:50], mode="online", teacher=spy, epochs=3, batch_size=50)
    # one teacher forward per epoch whose checkpoint changes; epoch e uses checkpoint min(e, T)
    assert [spy.checkpoint_for(e) for e in (1, 2, 3)] == expected
    assert spy.requested == sorted(set(expected))


# ---------------------------------------------------------------------------------------
# Orderings on digits (the acceptance criteria of docs/science.md §5.3)
# ---------------------------------------------------------------------------------------


def test_complexity_orderings_on_digits(
    digits: tuple[data.Dataset, torch.Tensor, torch.Tensor], teacher: distill.TeacherRun
) -> None:
    ds, x, y = digits
    idx = distill.subsample_indices(ds.n_train, 250, seed=1)
    targets = distill.build_targets(
        y[idx],
        10,
        teacher=teacher,
        x_sub=x[idx],
        temperatures=[1.0, 4.0],
        teacher_checkpoints=[0, 1, 2],
        random_seed=2,
    )
    student = models.build_model({"arch": "mlp", "hidden": [32]}, (64,), 10, seed=3)
    hook, rows = distill.complexity_curve_hook(x[idx], lambda _e: targets, epochs=[0, 3])
    distill.distill_student(student, x, y, mode="none", epochs=3, seed=3, batch_size=64, on_epoch=hook)
    assert sorted({r.student_checkpoint for r in rows}) == [0, 3]
    for epoch in (0, 3):
        adj = {(r.target, r.temperature): r.adjusted for r in rows if r.student_checkpoint == epoch}
        assert len({r.jitter for r in rows if r.student_checkpoint == epoch}) == 1  # one jitter per K
        assert adj[("random_labels", None)] > adj[("labels", None)] > adj[("teacher", 1.0)]
        # early checkpoints lowest; at τ = 1 complexity grows along the teacher's training
        chain = [adj[(f"teacher_checkpoint:{e}", 1.0)] for e in (0, 1, 2)] + [adj[("teacher", 1.0)]]
        assert chain == sorted(chain), (epoch, chain)
        for tau in (1.0, 4.0):
            # at τ = 4 the first checkpoints are all near uniform (ties), so only "below final"
            early = max(adj[(f"teacher_checkpoint:{e}", tau)] for e in (0, 1, 2))
            assert early < 0.5 * adj[("teacher", tau)] < adj[("labels", None)]
        for name in ("teacher", "teacher_checkpoint:1", "teacher_checkpoint:2"):
            assert adj[(name, 4.0)] < adj[(name, 1.0)]  # higher temperature -> lower
    accs = {(t.name, t.temperature): t.accuracy for t in targets}
    assert accs[("labels", None)] == 1.0
    assert accs[("random_labels", None)] < 0.3
    assert accs[("teacher", 1.0)] > 0.9


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _raises_naming(param: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        fn(*args, **kwargs)
    assert info.value.param == param
    assert f"'{param}'" in str(info.value)


def test_library_rejects_bad_params() -> None:
    gram = _spd(4, 4, seed=0)
    y = _probabilities(4, 2, seed=0)
    _raises_naming("jitter", distill.factor_kernel, gram, m=4, jitter=0.0)
    _raises_naming("kernel", distill.supervision_complexity, gram, y, kernel="diagonal")
    _raises_naming("targets", distill.supervision_complexity, gram, y[:3])
    _raises_naming("temperature", distill.soft_targets, y, 0.0)
    _raises_naming("subsample", distill.subsample_indices, 10, 1, seed=0)
    model = models.build_model({"arch": "linear"}, (3,), 2, seed=0)
    x, labels = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    _raises_naming("checkpoints", distill.train_teacher, model, x, labels, epochs=2, checkpoints=[3])
    _raises_naming("teacher_epochs", distill.train_teacher, model, x, labels, epochs=0)
    _raises_naming("mode", distill.distill_student, model, x, labels, mode="sideways", epochs=1)
    _raises_naming("alpha", distill.distill_student, model, x, labels, mode="none", alpha=1.5, epochs=1)
    _raises_naming("teacher", distill.distill_student, model, x, labels, mode="offline", epochs=1)


def test_should_stop_cancels_training_and_kernels() -> None:
    model = models.build_model({"arch": "linear"}, (3,), 2, seed=0)
    x, labels = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(Cancelled):
        distill.train_teacher(model, x, labels, epochs=2, should_stop=lambda: True)
    target = [distill.Target("labels", distill.one_hot_targets(labels, 2), None, 1.0)]
    hook, rows = distill.complexity_curve_hook(x, lambda _e: target, epochs=[0], should_stop=lambda: True)
    with pytest.raises(Cancelled):
        hook(0, model)
    assert rows == []


def test_contract_literals_mirror_library_enums() -> None:
    assert set(typing.get_args(contract.ComplexityKernelName)) == {k.value for k in distill.ComplexityKernel}
    assert set(typing.get_args(contract.DistillModeName)) == {m.value for m in distill.DistillMode}


# ---------------------------------------------------------------------------------------
# Runners: output contract
# ---------------------------------------------------------------------------------------

GAUSSIANS = {"builtin": "gaussians", "n": 90, "dim": 6, "classes": 3, "n_test": 60, "seed": 0}
TINY_TEACHER = {"arch": "mlp", "hidden": [32]}
TINY_STUDENT = {"arch": "mlp", "hidden": [8]}


def _complexity_request(**params: Any) -> dict[str, Any]:
    base = {
        "teacher": TINY_TEACHER,
        "teacher_epochs": 3,
        "checkpoints": [0, 1],
        "temperatures": [1.0, 4.0],
        "subsample": 40,
        "student_checkpoints": [0, 2],
        "batch_size": 32,
    }
    base.update(params)
    return {"kind": "supervision-complexity", "dataset": GAUSSIANS, "model": TINY_STUDENT, "params": base}


def _distillation_request(**params: Any) -> dict[str, Any]:
    base = {
        "teacher": TINY_TEACHER,
        "teacher_epochs": 3,
        "epochs": 3,
        "seeds": 2,
        "subsample": 30,
        "batch_size": 32,
    }
    base.update(params)
    return {"kind": "distillation", "dataset": GAUSSIANS, "model": TINY_STUDENT, "params": base, "seed": 5}


def test_supervision_complexity_runner_contract(tmp_path: Path) -> None:
    ctx = make_context(_complexity_request(), tmp_path)
    out = SupervisionComplexityRunner().run(ctx)
    rows = out.summary["complexity"]
    required = {"student_checkpoint", "target", "temperature", "complexity", "adjusted", "trace"}
    assert all(required <= set(r) for r in rows)
    names = {r["target"] for r in rows}
    assert names == {"labels", "random_labels", "teacher", "teacher_checkpoint:0", "teacher_checkpoint:1"}
    # 2 label targets + 3 teacher targets x 2 temperatures, at 2 student checkpoints
    assert len(rows) == 2 * (2 + 3 * 2)
    assert {r["temperature"] for r in rows if r["target"] == "labels"} == {None}
    assert {r["student_checkpoint"] for r in rows} == {0, 2}
    assert 0.0 <= out.summary["teacher_test_accuracy"] <= 1.0
    assert out.summary["settings"]["m"] == 40
    assert out.summary["seconds"] > 0
    assert out.scores is None
    assert set(out.files) == {"student.safetensors", "complexity.png"}
    png = out.files["complexity.png"]
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(out.files["student.safetensors"]) > 0  # type: ignore[arg-type]
    assert ctx.progress_log[-1][0] == ctx.progress_log[-1][1]  # type: ignore[attr-defined]


def test_distillation_runner_contract(tmp_path: Path) -> None:
    ctx = make_context(_distillation_request(curve_epochs=[0, 3]), tmp_path)
    out = DistillationRunner().run(ctx)
    s = out.summary
    assert set(s["modes"]) == {"none", "offline", "online"}
    for entry in s["modes"].values():
        assert {"test_accuracy_mean", "test_accuracy_std", "seeds"} <= set(entry)
        assert len(entry["seeds"]) == 2
        assert 0.0 <= entry["test_accuracy_mean"] <= 1.0
    assert 0.0 <= s["teacher_test_accuracy"] <= 1.0
    assert s["student_file_mode"] in s["modes"]
    curves = s["complexity_curves"]
    assert {(r["mode"], r["student_checkpoint"]) for r in curves} == {
        (m, e) for m in ("none", "offline", "online") for e in (0, 3)
    }
    online_targets = {r["target"] for r in curves if r["target"].startswith("teacher_checkpoint:")}
    assert online_targets == {"teacher_checkpoint:0", "teacher_checkpoint:3"}
    assert set(out.files) == {"student.safetensors", "complexity.png"}
    assert s["settings"]["student_seeds"] == [10_005, 10_006]


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        # checkpoints beyond teacher_epochs and curve_epochs beyond epochs are refused by the
        # contract itself now, before a runner sees them (tests/test_distill.py::
        # test_contract_refuses_epochs_beyond_training).
        (
            {**_complexity_request(subsample=5000, kernel="full"), "dataset": {**GAUSSIANS, "n": 5000}},
            "subsample",
        ),
    ],
)
def test_runners_reject_inconsistent_params(request_: dict[str, Any], param: str, tmp_path: Path) -> None:
    ctx = make_context(request_, tmp_path)
    runner = (
        SupervisionComplexityRunner()
        if request_["kind"] == "supervision-complexity"
        else DistillationRunner()
    )
    _raises_naming(param, runner.run, ctx)


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (_complexity_request(checkpoints=[0, 7]), "checkpoints"),
        (_distillation_request(curve_epochs=[0, 9]), "curve_epochs"),
    ],
)
def test_contract_refuses_epochs_beyond_training(request_: dict[str, Any], param: str) -> None:
    from pydantic import ValidationError

    from contracts.jobs import parse_job_request

    with pytest.raises(ValidationError, match=param):
        parse_job_request(request_)


def test_ntk_reuse_matches_complexity_at() -> None:
    """complexity_at forms the same averaged kernel as infoscore.ntk (no second NTK path)."""
    x = torch.linspace(-1, 1, 30).reshape(10, 3)
    model = models.build_model({"arch": "mlp", "hidden": [5]}, (3,), 2, seed=0)
    y = _probabilities(10, 2, seed=9)
    row = distill.complexity_at(model, x, [distill.Target("t", y, None, 1.0)], student_checkpoint=0)[0]
    direct = distill.supervision_complexity(ntk.ntk_gram(model, x, kernel="averaged"), y)
    assert row.adjusted == pytest.approx(direct.adjusted, rel=1e-12)


@pytest.mark.slow
def test_digits_orderings_through_the_runner(tmp_path: Path) -> None:
    """The acceptance orderings at benchmark-like sizes, through the job runner."""
    request = {
        "kind": "supervision-complexity",
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [16]},
        "params": {
            "teacher": {"arch": "mlp", "hidden": [256, 256]},
            "teacher_epochs": 20,
            "checkpoints": [0, 1, 2, 5],
            "temperatures": [1.0, 2.0, 4.0, 8.0],
            "subsample": 600,
            "student_checkpoints": [0, 5, 20],
        },
    }
    rows = SupervisionComplexityRunner().run(make_context(request, tmp_path)).summary["complexity"]
    for epoch in (0, 5, 20):
        adj = {
            (r["target"], r["temperature"]): r["adjusted"] for r in rows if r["student_checkpoint"] == epoch
        }
        assert adj[("random_labels", None)] > adj[("labels", None)] > adj[("teacher", 1.0)]
        for name in ("teacher", "teacher_checkpoint:1", "teacher_checkpoint:2", "teacher_checkpoint:5"):
            by_tau = [adj[(name, tau)] for tau in (1.0, 2.0, 4.0, 8.0)]
            assert by_tau == sorted(by_tau, reverse=True), (epoch, name, by_tau)
        for tau in (1.0, 2.0, 4.0, 8.0):
            assert (
                adj[("teacher_checkpoint:0", tau)]
                < adj[("teacher_checkpoint:5", tau)]
                < adj[("teacher", tau)]
            )
