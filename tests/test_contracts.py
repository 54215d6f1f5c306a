"""The wire format: round trips, clear validation errors, and mirrors of library enums."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import common
from contracts.jobs import JOB_KINDS, JobRequest, parse_job_request
from contracts.problems import problem

BASE = {"dataset": {"builtin": "digits", "label_noise": 0.2}, "model": {"arch": "mlp"}}


@pytest.mark.parametrize(
    "kind", [k for k in JOB_KINDS if k not in ("supervision-complexity", "distillation")]
)
def test_every_kind_has_defaults_and_round_trips(kind: str) -> None:
    req = parse_job_request({**BASE, "kind": kind})
    again = parse_job_request(json.loads(req.model_dump_json()))
    assert again == req
    assert req.kind == kind


@pytest.mark.parametrize("kind", ["supervision-complexity", "distillation"])
def test_distill_kinds_need_a_teacher(kind: str) -> None:
    with pytest.raises(ValidationError, match="params"):
        parse_job_request({**BASE, "kind": kind})
    req = parse_job_request({**BASE, "kind": kind, "params": {"teacher": {"arch": "mlp", "hidden": [512]}}})
    assert parse_job_request(json.loads(req.model_dump_json())) == req


def test_unknown_kind_and_typos_are_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_job_request({**BASE, "kind": "no-such-kind"})
    with pytest.raises(ValidationError, match="epochz"):
        parse_job_request({**BASE, "kind": "training-dynamics", "params": {"epochz": 3}})


def test_el2n_epoch_must_be_within_training() -> None:
    with pytest.raises(ValidationError, match="el2n_epoch"):
        parse_job_request({**BASE, "kind": "training-dynamics", "params": {"epochs": 2, "el2n_epoch": 5}})


def test_dataset_id_pattern() -> None:
    ok = parse_job_request({**BASE, "kind": "limit", "dataset": "ds_" + "a" * 32})
    assert ok.dataset == "ds_" + "a" * 32
    with pytest.raises(ValidationError):
        parse_job_request({**BASE, "kind": "limit", "dataset": "../../etc/passwd"})


def test_contract_literals_mirror_the_library() -> None:
    from infoscore.data import NOISE_KINDS
    from infoscore.models import ACTIVATIONS, ARCHITECTURES
    from infoscore.training import OPTIMIZERS

    assert set(typing.get_args(common.NoiseKind)) == set(NOISE_KINDS)
    assert set(typing.get_args(common.Activation)) == set(ACTIVATIONS)
    assert set(typing.get_args(common.Optimizer)) == set(OPTIMIZERS)
    archs: list[Any] = [
        m.model_fields["arch"].annotation for m in (common.LinearModel, common.MLPModel, common.CNNModel)
    ]
    assert {typing.get_args(a)[0] for a in archs} == set(ARCHITECTURES)


def test_runner_registry_covers_every_kind() -> None:
    from workers.runners import RUNNERS

    assert set(RUNNERS) == set(JOB_KINDS)


@given(
    epochs=st.integers(min_value=-5, max_value=3000),
    lr=st.floats(allow_nan=True, allow_infinity=True),
    noise=st.floats(min_value=-1, max_value=2),
)
def test_params_either_validate_or_raise_validation_error(epochs: int, lr: float, noise: float) -> None:
    body = {
        "kind": "training-dynamics",
        "dataset": {"builtin": "digits", "label_noise": noise},
        "model": {"arch": "linear"},
        "params": {"epochs": epochs, "lr": lr, "el2n_epoch": 0},
    }
    try:
        req: JobRequest = parse_job_request(body)
    except ValidationError:
        return
    assert 1 <= req.params.epochs <= 2000  # type: ignore[union-attr,operator]
    assert 0 < req.params.lr <= 10  # type: ignore[union-attr]


def test_problem_shape() -> None:
    body = problem(422, "The 'x' array must be finite.", type_="invalid-upload", field="x")
    assert body == {
        "type": "https://infoscore.dev/problems/invalid-upload",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "The 'x' array must be finite.",
        "field": "x",
    }


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ({"builtin": "digits"}, {"arch": "mlp", "hidden": [256, 64], "batchnorm": True}),
        ({"builtin": "digits", "classes": [4, 9], "test_fraction": 0.3}, {"arch": "cnn"}),
        ({"builtin": "gaussians", "n": 50, "dim": 7, "classes": 4}, {"arch": "linear"}),
        ({"builtin": "digits", "classes": [0, 3, 8]}, {"arch": "cnn", "channels": [4, 8], "hidden": 16}),
    ],
)
def test_estimates_match_the_real_dataset_and_model(dataset: dict[str, Any], model: dict[str, Any]) -> None:
    from contracts.estimate import builtin_shape, parameter_count
    from infoscore.models import build_model, count_parameters
    from workers.datasets import load_dataset

    req = parse_job_request({"kind": "training-dynamics", "dataset": dataset, "model": model})
    ds = load_dataset(req.dataset, Path("."))
    shape = builtin_shape(req.dataset.model_dump())  # type: ignore[union-attr]
    assert (shape.n_train, shape.n_test, shape.n_classes) == (ds.n_train, ds.n_test, ds.n_classes)
    real = count_parameters(build_model(req.model.model_dump(), ds.input_shape, ds.n_classes))
    assert parameter_count(req.model.model_dump(), shape) == real


def test_worker_dataset_cache_hands_out_independent_copies(tmp_path: Path) -> None:
    from workers.datasets import load_dataset

    ref = parse_job_request(
        {"kind": "limit", "dataset": {"builtin": "digits", "label_noise": 0.3}, "model": {"arch": "linear"}}
    ).dataset
    first = load_dataset(ref, tmp_path)
    first.x_train[:] = -1.0
    first.y_train[:] = 0
    first.info["mutated"] = True
    second = load_dataset(ref, tmp_path)
    assert second.x_train.min() >= 0.0 and len(set(second.y_train.tolist())) == 10
    assert "mutated" not in second.info
    assert second.noisy_mask is not None and 0.25 < second.noisy_mask.mean() < 0.35
