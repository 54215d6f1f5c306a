"""The library's limit and label-issues calls: configs mirror the contracts, calls run without a server."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import infoscore
from infoscore import InvalidInputError

from .readme_snippets import readme_snippet

# --------------------------------------------------------------------------- limit, label-issues


def test_limit_and_label_issues_readme_snippet_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(readme_snippet("limit-and-label-issues"), scope)  # the README's lines, verbatim
    run, found = scope["run"], scope["found"]
    assert isinstance(run, infoscore.LimitResult) and isinstance(found, infoscore.LabelIssuesResult)
    assert run.fano_bound == pytest.approx(0.2) and 0.5 < run.summary()["test_accuracy"] <= 1.0
    decisions = pd.read_csv(tmp_path / "decisions.csv")
    assert (decisions["action"] != "keep").sum() == found.summary()["n_issues"] > 0
    assert found.summary()["flag_precision"] > 0.5  # digits at 20% noise: flags are mostly flipped rows


def test_limit_and_label_issues_configs_equal_the_contract_defaults() -> None:
    from contracts.jobs import LabelIssuesJob, LimitJob
    from contracts.label_issues import LabelIssuesParams
    from contracts.limit import LimitParams

    seed_default = LimitJob.model_fields["seed"].default
    assert seed_default == LabelIssuesJob.model_fields["seed"].default
    pairs = ((infoscore.LimitConfig, LimitParams), (infoscore.LabelIssuesConfig, LabelIssuesParams))
    for config_cls, params_cls in pairs:
        config = config_cls()
        assert {f.name for f in dataclasses.fields(config_cls)} == {*params_cls.model_fields, "seed"}
        for name, value in params_cls().model_dump().items():
            assert getattr(config, name) == value, f"{config_cls.__name__}.{name}"
        assert config.seed == seed_default


def test_limit_and_label_issues_configs_import_without_torch() -> None:
    code = (
        "import sys, infoscore\n"
        "infoscore.LimitConfig(beta=3.0).validated('limit')\n"
        "infoscore.LabelIssuesConfig(method='ensemble').validated(10)\n"
        "assert 'torch' not in sys.modules, 'a config import loaded torch'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_limit_and_label_issues_stay_callable_once_their_modules_are_imported() -> None:
    """``infoscore.limit`` is a submodule and the job's call: both spellings keep working."""
    code = (
        "import infoscore\n"
        "first = infoscore.limit, infoscore.label_issues\n"  # lazily: the functions
        "import infoscore.label_issues as li, infoscore.limit as lim\n"
        "assert infoscore.limit is lim and infoscore.label_issues is li\n"  # now the modules
        "assert callable(lim) and callable(li) and all(map(callable, first))\n"
        "assert lim.train_limit and li.find_label_issues and lim.limit is first[0]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def _tiny_dataset() -> Any:
    from infoscore.data import make_gaussians

    return make_gaussians(n=60, dim=4, classes=3, separation=4.0, n_test=30, label_noise=0.2, seed=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validation_fraction", 1.0),
        ("noise_level", 1.5),
        ("baseline", "yes"),
        ("q_dist", "cauchy"),
        ("epochs", 0),
        ("patience", 0),
        ("warm_up", 300),
    ],
)
def test_limit_refuses_a_bad_config_before_any_work(field: str, value: Any) -> None:
    calls: list[int] = []
    config = infoscore.LimitConfig(**{field: value})
    with pytest.raises(InvalidInputError, match=f"'{field}' parameter of limit") as err:
        infoscore.limit(_tiny_dataset(), None, config, progress=lambda done, _: calls.append(done))
    assert err.value.param == field and calls == []


@pytest.mark.parametrize(("field", "value"), [("folds", 61), ("method", "nope"), ("q_dist", "cauchy")])
def test_label_issues_refuses_a_bad_config_before_any_work(field: str, value: Any) -> None:
    calls: list[int] = []
    config = infoscore.LabelIssuesConfig(**{field: value})
    with pytest.raises(InvalidInputError, match=f"'{field}' parameter of label_issues") as err:
        infoscore.label_issues(_tiny_dataset(), None, config, progress=lambda done, _: calls.append(done))
    assert err.value.param == field and calls == []


def test_limit_default_model_and_string_device(one_torch_thread: None) -> None:
    result = infoscore.limit(
        _tiny_dataset(), config=infoscore.LimitConfig(epochs=1, baseline=False), device="cpu"
    )
    assert result.classifier.state_dict()["1.weight"].shape == (256, 4)  # build_model's default MLP
    assert result.summary()["settings"]["device"] == "cpu" and result.baseline is None
    assert list(result.table()["in_validation"]).count(True) == result.summary()["n_validation"] == 12


def _without_seconds(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "seconds"}


def test_limit_runner_adds_nothing_to_the_library_call(tmp_path: Path, one_torch_thread: None) -> None:
    from tests.runner_helpers import make_context
    from workers.runners.base import json_safe
    from workers.runners.limit import LimitRunner

    request = {
        "kind": "limit",
        "dataset": {"builtin": "digits", "label_noise": 0.5},
        "model": {"arch": "mlp", "hidden": [16]},
        "seed": 3,
        "params": {"epochs": 2, "validation_fraction": 0.0},
    }
    ctx = make_context(request, tmp_path)
    out = LimitRunner().run(ctx)
    config = infoscore.LimitConfig(epochs=2, validation_fraction=0.0, seed=3)
    result = infoscore.limit(ctx.dataset, ctx.model_spec, config)
    assert _without_seconds(json_safe(result.summary())) == _without_seconds(out.summary)
    assert out.scores is not None
    pd.testing.assert_frame_equal(result.table(), out.scores)
    curves = out.files["curves.png"]
    assert isinstance(curves, Path) and curves.read_bytes() == result.figures()["curves.png"]
    assert curves.read_bytes()[:4] == b"\x89PNG"


def test_label_issues_runner_adds_nothing_to_the_library_call(tmp_path: Path, one_torch_thread: None) -> None:
    from contracts.label_issues import DECISIONS_ARTIFACT
    from infoscore.data import make_gaussians
    from tests.runner_helpers import make_context
    from workers.runners.base import json_safe
    from workers.runners.label_issues import LabelIssuesRunner

    dataset = {
        "builtin": "gaussians",
        "n": 120,
        "dim": 6,
        "classes": 3,
        "separation": 4.0,
        "label_noise": 0.2,
    }
    request = {
        "kind": "label-issues",
        "dataset": dataset,
        "model": {"arch": "mlp", "hidden": [16]},
        "seed": 2,
        "params": {"epochs": 4, "batch_size": 32, "method": "ensemble", "folds": 2},
    }
    ctx = make_context(request, tmp_path)
    out = LabelIssuesRunner().run(ctx)
    config = infoscore.LabelIssuesConfig(epochs=4, batch_size=32, method="ensemble", folds=2, seed=2)
    result = infoscore.label_issues(ctx.dataset, ctx.model_spec, config)
    assert _without_seconds(json_safe(result.summary())) == _without_seconds(out.summary)
    assert out.scores is not None
    pd.testing.assert_frame_equal(result.table(), out.scores)
    assert out.files[DECISIONS_ARTIFACT] == result.decisions_csv() and result.figures() == {}
    # The same call on a Dataset built in a notebook (no service in sight) agrees too.
    kwargs = {k: v for k, v in dataset.items() if k != "builtin"}
    notebook = make_gaussians(**kwargs)  # type: ignore[arg-type]
    again = infoscore.label_issues(notebook, ctx.model_spec, config)
    np.testing.assert_array_equal(again.issues.is_label_issue, result.issues.is_label_issue)
