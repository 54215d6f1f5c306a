"""The library's f-CMI call: its config mirrors the contract, the call runs without a server."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from typing import Any

import pytest

from .readme_snippets import readme_snippet

# ---------------------------------------------------------------- fcmi-bound


def test_fcmi_config_defaults_equal_the_contract_defaults() -> None:
    from contracts.fcmi import FcmiParams, LearnerName, MiEstimatorName
    from contracts.jobs import FcmiBoundJob
    from infoscore import FcmiConfig, fcmi_config

    config = FcmiConfig()
    params = FcmiParams().model_dump()
    fields = {f.name for f in dataclasses.fields(FcmiConfig)}
    assert fields == set(params) | {"seed"}
    for name, default in params.items():
        value = getattr(config, name)
        assert (list(value) if isinstance(value, tuple) else value) == default, name
    assert config.seed == FcmiBoundJob.model_fields["seed"].default
    assert set(_fcmi_literal_args(fcmi_config.MiEstimatorName)) == set(_fcmi_literal_args(MiEstimatorName))
    assert set(_fcmi_literal_args(fcmi_config.LearnerName)) == set(_fcmi_literal_args(LearnerName))
    assert {m.value for m in fcmi_config.MiEstimator} == set(_fcmi_literal_args(MiEstimatorName))
    assert {m.value for m in fcmi_config.Learner} == set(_fcmi_literal_args(LearnerName))
    # Contract params (possibly lists, unsorted eval_epochs) go straight in.
    custom = FcmiParams(n=[20, 10], eval_epochs=[5, 1], epochs=10, mi_estimator="miller_madow")
    built = FcmiConfig(**custom.model_dump(), seed=3)
    assert built.n == (20, 10) and built.eval_epochs == (1, 5) and built.mi_estimator == "miller_madow"


def _fcmi_literal_args(literal: Any) -> tuple[Any, ...]:
    import typing

    return typing.get_args(literal)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", []),
        ("n", [10, 10]),
        ("n", [0, 5]),
        ("n", 10),
        ("n", [1.5]),
        ("k1", 0),
        ("k2", 1),
        ("k2", 2.0),
        ("epochs", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("batch_size", 0),
        ("optimizer", "rmsprop"),
        ("deterministic", "yes"),
        ("mi_estimator", "jackknife"),
        ("learner", "knn"),
        ("experimental", 1),
        ("eval_epochs", [101]),
        ("eval_epochs", [3, 3]),
        ("seed", -1),
    ],
)
def test_fcmi_config_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    from infoscore import FcmiConfig, InvalidInputError

    with pytest.raises(InvalidInputError, match=f"The '{field}' parameter of FcmiConfig must be") as err:
        FcmiConfig(**{field: value})
    assert err.value.param == field


def test_fcmi_config_eval_epochs_need_the_model_learner() -> None:
    from infoscore import FcmiConfig, InvalidInputError

    with pytest.raises(InvalidInputError, match="'eval_epochs' parameter of FcmiConfig"):
        FcmiConfig(learner="1nn", eval_epochs=(1,))


def test_fcmi_config_imports_without_torch() -> None:
    code = (
        "import sys, infoscore; config = infoscore.FcmiConfig(n=[10]); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules); print(config.n)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(10,)"


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_fcmi_bound_snippet() -> None:
    scope: dict[str, Any] = {}
    exec(readme_snippet("fcmi-bound"), scope)  # the README's lines, verbatim
    result, png = scope["result"], scope["png"]
    rows = result.summary()["results"]
    assert [r["n"] for r in rows] == [50, 100] and all(r["units"] == 2 * 8 for r in rows)
    assert all(0.0 <= r["bound_mean"] <= math.sqrt(2 * math.log(2)) + 1e-9 for r in rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
