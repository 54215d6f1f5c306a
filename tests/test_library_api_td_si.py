"""The library's training-dynamics and sample-information calls: configs mirror the
contracts, calls equal the jobs, the README's lines run as written."""

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
# training-dynamics and sample-information
# ---------------------------------------------------------------------------------------


def test_training_dynamics_config_defaults_equal_the_contract() -> None:
    from contracts.training_dynamics import TrainingDynamicsParams

    params, config = TrainingDynamicsParams(), infoscore.TrainingDynamicsConfig()
    names = [f.name for f in dataclasses.fields(config)]
    assert names == [*TrainingDynamicsParams.model_fields, "seed"]
    for name in TrainingDynamicsParams.model_fields:
        assert getattr(config, name) == getattr(params, name), name
    assert config.seed == 0
    # el2n_epoch's default follows epochs in both.
    for epochs in (1, 3, 5, 40):
        assert (
            infoscore.TrainingDynamicsConfig(epochs=epochs).el2n_epoch
            == TrainingDynamicsParams.model_validate({"epochs": epochs}).el2n_epoch
        )


def test_sample_information_config_defaults_equal_the_contract() -> None:
    from contracts.sample_information import GroundTruth, SampleInformationParams

    params, config = SampleInformationParams(), infoscore.SampleInformationConfig()
    names = [f.name for f in dataclasses.fields(config)]
    library_only = ["seed", "kernel_method", "projection_structure"]
    assert names == [*SampleInformationParams.model_fields, *library_only]
    for name in SampleInformationParams.model_fields:
        want = getattr(params, name)
        got = getattr(config, name)
        assert (list(got) if name == "measures" else got) == want, name
    gt_params, gt_config = GroundTruth(), infoscore.GroundTruthConfig()
    assert [f.name for f in dataclasses.fields(gt_config)] == list(GroundTruth.model_fields)
    assert dataclasses.asdict(gt_config) == gt_params.model_dump()
    # The library-only strategies default to the tensor-level core's defaults.
    from infoscore import sample_info

    core = sample_info.sample_information.__kwdefaults__
    assert core is not None
    assert (config.seed, config.kernel_method, config.projection_structure) == (
        core["seed"],
        core["kernel_method"],
        core["projection_structure"],
    )


def test_sample_information_literals_match_the_contract_and_the_core() -> None:
    from typing import get_args

    from contracts import common
    from contracts import sample_information as c
    from infoscore import linearized, ntk, projection, sample_info, training
    from infoscore import sample_information_config as api

    pairs = [
        (api.Measure, c.Measure, sample_info.MEASURES),
        (api.Method, c.Method, sample_info.METHODS),
        (api.ProjectionKind, c.ProjectionKind, projection.PROJECTION_KINDS),
        (api.TimeMode, c.TimeMode, linearized.TIME_MODES),
        (api.LooLambda, c.LooLambda, linearized.LOO_LAMBDAS),
        (api.GroundTruthReference, c.GroundTruthReference, None),
        (api.LinearizeAtName, c.LinearizeAtName, None),
        (api.Optimizer, common.Optimizer, training.OPTIMIZERS),
        (api.KernelMethod, ntk.KernelMethod, ntk.KERNEL_METHODS),
        (api.ProjectionStructure, projection.ProjectionStructure, projection.PROJECTION_STRUCTURES),
    ]
    for ours, theirs, core in pairs:
        assert get_args(ours) == get_args(theirs)
        if core is not None:
            assert set(get_args(ours)) == set(core)


def test_configs_import_without_torch() -> None:
    code = (
        "import sys, infoscore\n"
        "infoscore.TrainingDynamicsConfig(epochs=3); infoscore.SampleInformationConfig(t=5)\n"
        "infoscore.GroundTruthConfig(); infoscore.LinearizationCheckpoint('w.safetensors')\n"
        "assert 'torch' not in sys.modules, 'torch loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"epochs": 3, "el2n_epoch": 4}, "el2n_epoch"),
        ({"el2n_epoch": -1}, "el2n_epoch"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_training_dynamics_config_rejects_bad_values_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(
        infoscore.InvalidInputError, match=f"^The '{field}' parameter of TrainingDynamicsConfig"
    ) as err:
        infoscore.TrainingDynamicsConfig(**kwargs)
    assert err.value.param == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"t": 0}, "t"),
        ({"lr": -1.0}, "lr"),
        ({"l2": -0.1}, "l2"),
        ({"l2_auto_scale": 0.0}, "l2_auto_scale"),
        ({"sigma": float("inf")}, "sigma"),
        ({"measures": ()}, "measures"),
        ({"measures": "weights"}, "measures"),
        ({"measures": ["weights", "loss"]}, "measures"),
        ({"method": "approximate"}, "method"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"projection": "sparse"}, "projection"),
        ({"time": "stochastic"}, "time"),
        ({"loo_lambda": "n"}, "loo_lambda"),
        ({"eval_size": 0}, "eval_size"),
        ({"ground_truth": {"subset": 5}}, "ground_truth"),
        ({"weights_full_jitter": 0.0}, "weights_full_jitter"),
        ({"delta_f": 1}, "delta_f"),
        ({"linearize_at": "checkpoint"}, "linearize_at"),
        ({"linearize_at": "trained", "train_epochs": 0}, "train_epochs"),
        ({"linearize_at": "trained", "train_optimizer": "lbfgs"}, "train_optimizer"),
        ({"train_epochs": 5}, "train_epochs"),  # training fields only with linearize_at 'trained'
        ({"ground_truth": infoscore.GroundTruthConfig()}, "t"),  # the network reference needs finite t
        ({"kernel_method": "fast"}, "kernel_method"),
        ({"projection_structure": "sparse"}, "projection_structure"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_sample_information_config_rejects_bad_values_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(
        infoscore.InvalidInputError, match=f"^The '{field}' parameter of SampleInformationConfig"
    ) as err:
        infoscore.SampleInformationConfig(**kwargs)
    assert err.value.param == field


def test_ground_truth_config_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(infoscore.InvalidInputError, match="'reference' parameter of GroundTruthConfig"):
        infoscore.GroundTruthConfig(reference="exact")  # type: ignore[arg-type]
    with pytest.raises(infoscore.InvalidInputError, match="'subset' parameter of GroundTruthConfig"):
        infoscore.GroundTruthConfig(subset=0)


def test_sample_information_config_accepts_a_list_of_measures() -> None:
    config = infoscore.SampleInformationConfig(measures=["predictions"])  # type: ignore[arg-type]
    assert config.measures == ("predictions",)
    assert hash(config) == hash(infoscore.SampleInformationConfig(measures=("predictions",)))


def _td_si_without_timings(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("seconds", "timings")}


@pytest.mark.usefixtures("one_torch_thread")
def test_training_dynamics_library_call_equals_the_job(tmp_path: Path) -> None:
    import pandas as pd

    from tests.runner_helpers import make_context
    from workers.runners import get_runner
    from workers.runners.base import json_safe

    request = {
        "kind": "training-dynamics",
        "dataset": {
            "builtin": "gaussians",
            "n": 80,
            "dim": 5,
            "classes": 3,
            "n_test": 20,
            "label_noise": 0.2,
        },
        "model": {"arch": "mlp", "hidden": [16]},
        "seed": 4,
        "params": {"epochs": 4, "batch_size": 16, "lr": 0.01},
    }
    ctx = make_context(request, tmp_path)
    job = get_runner("training-dynamics").run(ctx)
    progress: list[tuple[int, int]] = []
    result = infoscore.training_dynamics(
        ctx.dataset,
        {"arch": "mlp", "hidden": [16]},
        infoscore.TrainingDynamicsConfig(epochs=4, batch_size=16, lr=0.01, seed=4),
        progress=lambda done, total: progress.append((done, total)),
    )
    assert job.scores is not None
    pd.testing.assert_frame_equal(result.table(), job.scores, check_exact=True)
    summary = result.summary()
    # The job records the model spec with its defaults spelled out; same values otherwise.
    assert summary["settings"].pop("model") == {"arch": "mlp", "hidden": [16]}
    assert job.summary["settings"].pop("model")["hidden"] == [16]
    assert _td_si_without_timings(json_safe(summary)) == _td_si_without_timings(job.summary)
    assert "auroc_noisy" in summary and summary["seconds"] > 0
    assert progress == [(e, 4) for e in range(1, 5)]
    assert result.figures() == {}


@pytest.mark.usefixtures("one_torch_thread")
def test_training_dynamics_library_defaults_and_cancel() -> None:
    from infoscore.data import make_gaussians

    ds = make_gaussians(n=30, dim=4, classes=2, n_test=0, seed=1)
    result = infoscore.training_dynamics(ds, config=infoscore.TrainingDynamicsConfig(epochs=1))
    summary = result.summary()
    assert summary["settings"]["model"] == {
        "arch": "mlp",
        "hidden": [256],
        "activation": "relu",
        "batchnorm": False,
        "dropout": 0.0,
    }
    assert summary["test_accuracy"] is None and "auroc_noisy" not in summary
    assert summary["settings"]["el2n_epoch"] == 1
    with pytest.raises(infoscore.Cancelled):
        infoscore.training_dynamics(ds, should_stop=lambda: True)
    with pytest.raises(infoscore.InvalidInputError, match="'config' parameter of training_dynamics"):
        infoscore.training_dynamics(ds, None, {"epochs": 1})  # type: ignore[arg-type]


def _si_request(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "sample-information",
        "dataset": {"builtin": "gaussians", "n": 40, "dim": 6, "classes": 3, "n_test": 12, "seed": 1},
        "model": {"arch": "mlp", "hidden": [8]},
        "seed": 3,
        "params": params,
    }


@pytest.mark.usefixtures("one_torch_thread")
def test_sample_information_library_call_equals_the_job(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from tests.runner_helpers import make_context
    from workers.runners import get_runner
    from workers.runners.base import json_safe

    params = {
        "linearize_at": "trained",
        "train_epochs": 2,
        "t": 15,
        "lr": 0.5,
        "l2": 1e-2,
        "measures": ["predictions"],
        "ground_truth": {"subset": 5, "reference": "linearized"},
        "delta_f": True,
        "eval_size": 7,
    }
    ctx = make_context(_si_request(params), tmp_path / "job")
    job = get_runner("sample-information").run(ctx)
    config = infoscore.SampleInformationConfig(
        linearize_at="trained",
        train_epochs=2,
        t=15,
        lr=0.5,
        l2=1e-2,
        measures=("predictions",),
        ground_truth=infoscore.GroundTruthConfig(subset=5, reference="linearized"),
        delta_f=True,
        eval_size=7,
        seed=3,
    )
    progress: list[tuple[int, int]] = []
    result = infoscore.sample_information(
        ctx.dataset,
        {"arch": "mlp", "hidden": [8]},
        config,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert job.scores is not None
    table = result.table()
    pd.testing.assert_frame_equal(table, job.scores, check_exact=True)
    # ground truth alone needed si_weights: computed, but not a column
    assert list(table.columns) == ["si_predictions", "rank_si_predictions"]
    summary = json_safe(result.summary())
    assert _td_si_without_timings(summary) == _td_si_without_timings(job.summary)
    assert set(summary["timings"]) >= {"kernel_s", "loo_s", "ground_truth_s"}
    assert summary["ground_truth"]["reference"] == "linearized" and summary["train_epochs"] == 2
    assert progress[-1][0] == progress[-1][1] == ctx.progress_log[-1][1]  # type: ignore[attr-defined]
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)  # never goes back
    files = result.write_files(tmp_path)
    with np.load(files["delta_f.npz"], allow_pickle=False) as z, np.load(job.files["delta_f.npz"]) as j:
        np.testing.assert_array_equal(z["delta_f"], j["delta_f"])
        assert z["delta_f"].shape == (40, 7, 3)
    assert result.eval_indices is not None and summary["delta_f"]["eval_indices"] == list(result.eval_indices)


@pytest.mark.usefixtures("one_torch_thread")
def test_sample_information_library_checkpoint_and_refusals(tmp_path: Path) -> None:
    import math

    import numpy as np

    from infoscore import models
    from infoscore.data import make_gaussians

    ds = make_gaussians(n=30, dim=5, classes=3, n_test=0, seed=2)
    spec = {"arch": "linear"}
    path = tmp_path / "w.safetensors"
    models.save_safetensors(models.build_model(spec, ds.input_shape, 3, seed=9), str(path))
    config = infoscore.SampleInformationConfig(
        measures=("weights",), l2=0.1, linearize_at=infoscore.LinearizationCheckpoint(path), seed=0
    )
    result = infoscore.sample_information(ds, spec, config)
    summary = result.summary()
    assert summary["linearize_at"] == {"path": str(path)} and summary["checkpoint_tensors"] == 2
    assert summary["m"] == 0 and math.isnan(summary["test_accuracy"]) and result.eval_indices is None
    # the scores are those of the checkpoint's weights, not of the seed's initialisation
    at_init = infoscore.sample_information(ds, spec, dataclasses.replace(config, linearize_at="init"))
    assert not np.allclose(result.table()["si_weights"], at_init.table()["si_weights"])
    # No test split: predictions are refused before any work, naming the field.
    with pytest.raises(infoscore.InvalidInputError, match="'measures'") as err:
        infoscore.sample_information(ds, spec, infoscore.SampleInformationConfig())
    assert err.value.param == "measures"
    with pytest.raises(infoscore.Cancelled):
        infoscore.sample_information(ds, spec, config, should_stop=lambda: True)


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_snippet_training_dynamics_and_sample_information() -> None:
    """The README's lines for these two kinds, as written there (CPU, a few seconds)."""
    scope: dict[str, Any] = {}
    exec(readme_snippet("training-dynamics-and-sample-information"), scope)  # verbatim
    ds, td, si = scope["ds"], scope["td"], scope["si"]

    from infoscore.scores import auroc

    assert ds.noisy_mask is not None
    assert td.summary()["auroc_noisy"]["el2n"] > 0.95
    assert auroc(si.table()["si_predictions"].to_numpy(), ds.noisy_mask) > 0.9
    assert len(si.table()) == ds.n_train and si.summary()["d"] == 512


def _td_si_any_value() -> Any:
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.sampled_from(["weights", "exact", "projected", "gaussian", "continuous", "rescaled", "trained"]),
    )
    return st.one_of(scalars, st.lists(scalars, max_size=3), st.tuples(scalars))


def test_td_si_configs_either_build_or_raise_invalid_input_naming_a_field() -> None:
    """Any value of any field: the config builds, or raises InvalidInputError in the one
    message format naming a field; never another exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    configs = (
        infoscore.TrainingDynamicsConfig,
        infoscore.SampleInformationConfig,
        infoscore.GroundTruthConfig,
    )

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(configs), st.data())
    def check(cls: Any, data: Any) -> None:
        names = [f.name for f in dataclasses.fields(cls)]
        chosen = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        kwargs = {name: data.draw(_td_si_any_value()) for name in chosen}
        try:
            cls(**kwargs)
        except infoscore.InvalidInputError as err:
            assert err.param in names
            assert str(err).startswith(f"The '{err.param}' parameter of {cls.__name__} must be")

    check()
