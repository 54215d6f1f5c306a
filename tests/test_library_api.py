"""The library on its own: one call per job kind, typed configs whose defaults are the
contract's, and the README's library snippets (run as written)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import infoscore

from .readme_snippets import readme_snippet

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------
# supervision-complexity and distillation
# ---------------------------------------------------------------------------------------

_TEACHER = {"arch": "mlp", "hidden": [32]}


@pytest.mark.parametrize(
    ("config_cls", "params_cls"),
    [
        ("SupervisionComplexityConfig", "SupervisionComplexityParams"),
        ("DistillationConfig", "DistillationParams"),
    ],
)
def test_distill_config_defaults_equal_the_contract(config_cls: str, params_cls: str) -> None:
    from contracts import distill as contract

    config = getattr(infoscore, config_cls)()
    names = {f.name for f in dataclasses.fields(config)}
    params_model = getattr(contract, params_cls)
    assert names == set(params_model.model_fields) | {"seed"}
    params = params_model.model_validate({"teacher": _TEACHER})
    for name in sorted(names - {"seed", "teacher", "checkpoints", "curve_epochs"}):
        value = getattr(config, name)
        expected = getattr(params, name)
        assert (list(value) if isinstance(value, tuple) else value) == expected, name
    # The contract requires a teacher; the library's default is a valid model spec.
    from infoscore.models import build_model

    assert build_model(config.teacher, (4,), 3) is not None
    assert config.seed == 0
    if config_cls == "SupervisionComplexityConfig":
        # None = the contract's default, which follows teacher_epochs.
        assert config.checkpoints is None
        for epochs in (50, 7, 3, 1):
            cut = params_model.model_validate({"teacher": _TEACHER, "teacher_epochs": epochs}).checkpoints
            assert infoscore.SupervisionComplexityConfig(teacher_epochs=epochs).teacher_checkpoints() == cut
    else:
        assert config.curve_epochs is None and params.curve_epochs is None
        assert config.curve_epoch_list() == [0, 12, 25, 38, 50]


def test_distill_configs_are_torch_free() -> None:
    code = (
        "import sys, infoscore; "
        "infoscore.SupervisionComplexityConfig(); infoscore.DistillationConfig(mode=['none']); "
        "assert 'torch' not in sys.modules, 'torch loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "field"),
    [
        ("SupervisionComplexityConfig", {"teacher_epochs": 0}, "teacher_epochs"),
        ("SupervisionComplexityConfig", {"teacher_epochs": 3, "checkpoints": [0, 7]}, "checkpoints"),
        ("SupervisionComplexityConfig", {"temperatures": []}, "temperatures"),
        ("SupervisionComplexityConfig", {"temperatures": [1.0, -2.0]}, "temperatures"),
        ("SupervisionComplexityConfig", {"student_checkpoints": []}, "student_checkpoints"),
        ("SupervisionComplexityConfig", {"subsample": 1}, "subsample"),
        ("SupervisionComplexityConfig", {"kernel": "diagonal"}, "kernel"),
        ("SupervisionComplexityConfig", {"jitter": 0.0}, "jitter"),
        ("SupervisionComplexityConfig", {"teacher": {"hidden": [4]}}, "teacher"),
        ("SupervisionComplexityConfig", {"optimizer": "rmsprop"}, "optimizer"),
        ("SupervisionComplexityConfig", {"seed": -1}, "seed"),
        ("DistillationConfig", {"mode": ["none", "teacherless"]}, "mode"),
        ("DistillationConfig", {"mode": []}, "mode"),
        ("DistillationConfig", {"alpha": 1.5}, "alpha"),
        ("DistillationConfig", {"temperature": float("inf")}, "temperature"),
        ("DistillationConfig", {"epochs": 4, "curve_epochs": [0, 9]}, "curve_epochs"),
        ("DistillationConfig", {"seeds": 0}, "seeds"),
        ("DistillationConfig", {"batch_size": 0}, "batch_size"),
        ("DistillationConfig", {"lr": float("nan")}, "lr"),
    ],
)
def test_distill_configs_reject_bad_values_naming_the_field(
    config_cls: str, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(infoscore.InvalidInputError) as info:
        getattr(infoscore, config_cls)(**kwargs)
    assert info.value.param == field
    assert f"'{field}' parameter of {config_cls}" in str(info.value)


def test_distill_library_calls_check_the_kernel_size_before_training() -> None:
    from infoscore.data import make_gaussians

    ds = make_gaussians(n=200, dim=3, classes=100, n_test=0, seed=0)
    calls: list[tuple[int, int]] = []
    config = infoscore.SupervisionComplexityConfig(teacher=_TEACHER, subsample=200, kernel="full")
    with pytest.raises(infoscore.InvalidInputError) as info:
        infoscore.supervision_complexity(ds, None, config, progress=lambda d, t: calls.append((d, t)))
    assert info.value.param == "subsample" and calls == []


@pytest.mark.usefixtures("one_torch_thread")
def test_distill_library_calls_on_their_own() -> None:
    """Defaults filled by the library: the default student, checkpoints following
    teacher_epochs, default curve epochs; results typed; cancellation honoured."""
    from infoscore.data import make_gaussians

    ds = make_gaussians(n=60, dim=4, classes=3, n_test=30, seed=1)
    sc = infoscore.supervision_complexity(
        ds,
        None,
        infoscore.SupervisionComplexityConfig(
            teacher=_TEACHER, teacher_epochs=3, subsample=20, batch_size=32
        ),
    )
    assert isinstance(sc, infoscore.SupervisionComplexityResult)
    assert {r.target for r in sc.rows} == {"labels", "random_labels", "teacher", "teacher_checkpoint:1"}
    assert sc.summary()["settings"]["checkpoints"] == [1]
    assert sc.summary()["student"]["parameters"] == (4 * 256 + 256) + (256 * 3 + 3)  # the default MLP
    assert sc.table() is None and set(sc.figures()) == {"complexity.png"}

    kd = infoscore.distillation(
        ds,
        {"arch": "mlp", "hidden": [8]},
        infoscore.DistillationConfig(
            teacher=_TEACHER, teacher_epochs=2, mode=["offline", "none"], epochs=4, seeds=2, subsample=20
        ),
        device="cpu",
    )
    assert isinstance(kd, infoscore.DistillationResult)
    assert list(kd.modes) == ["none", "offline"]
    assert kd.curve_epochs == [0, 1, 2, 3, 4]
    assert {(r["mode"], r["student_checkpoint"]) for r in kd.curves} == {
        (m, e) for m in ("none", "offline") for e in range(5)
    }
    means = {m: r.summary()["test_accuracy_mean"] for m, r in kd.modes.items()}
    assert means[kd.best_mode] == max(means.values())
    assert kd.summary()["student_file_mode"] == kd.best_mode

    with pytest.raises(infoscore.Cancelled):
        infoscore.distillation(
            ds, None, infoscore.DistillationConfig(teacher=_TEACHER), should_stop=lambda: True
        )


def test_distill_best_mode_ranks_nan_last_and_breaks_ties_in_mode_order() -> None:
    from infoscore.distill_protocol import ModeResult, best_mode

    nan = float("nan")
    assert best_mode({"none": ModeResult([nan], [0.0]), "offline": ModeResult([0.1], [0.0])}) == "offline"
    assert (
        best_mode({"none": ModeResult([0.5, 0.7], [1.0, 1.0]), "online": ModeResult([0.6, 0.6], [1.0, 1.0])})
        == "none"
    )
    assert best_mode({"offline": ModeResult([0.5], [1.0]), "online": ModeResult([0.9], [1.0])}) == "online"


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_snippet_supervision_complexity_and_distillation(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(readme_snippet("supervision-complexity-and-distillation"), scope)  # the README's lines, verbatim
    sc, kd = scope["sc"], scope["kd"]
    adjusted = {(r.target, r.temperature): r.adjusted for r in sc.rows}
    assert adjusted[("random_labels", None)] > adjusted[("labels", None)]
    assert set(kd.modes) == {"none", "offline", "online"}
    assert Path("complexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_readme_snippet_is_run_by_a_test() -> None:
    from .readme_snippets import snippet_names

    names = snippet_names()
    assert len(names) >= 3
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    for name in names:
        assert f'readme_snippet("{name}")' in sources, name
