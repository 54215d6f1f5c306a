"""The resource estimator (contracts/estimate.py): one estimator per kind, same numbers.

The pinned values were printed by contracts/estimate.py before it became a registry of
per-kind estimators (commit 9f6ceec, the if/elif version); the registry must give the same
bytes and the same seconds, to the last bit (stages are summed in the old order). One
deliberate change since: exact sample-information on a linear or MLP model is estimated for
the structured kernel and the in-place leave-one-out (about 2.25 N^2 float64, 2.6 Choleskys;
digits MLP [512]: 3.83 GiB estimated, 3.56 GiB measured), and projected sample-information
for the Kronecker factors instead of dense features (n = 200,000: 5.2 GiB estimated, 4.70
measured; was 33 GiB), so their pins were printed again.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from contracts import estimate as cest
from contracts.jobs import JOB_KINDS, params_model, parse_job_request

MLP = {"arch": "mlp", "hidden": [256]}
DIGITS = {"builtin": "digits"}

# (kind, params, device, memory_bytes, seconds, compute_seconds) on digits with the MLP [256]
PINNED: list[tuple[str, dict[str, Any], str, int, float, dict[str, float]]] = [
    ("training-dynamics", {}, "auto", 524214302, 3.059218675, {}),
    ("training-dynamics", {"batch_size": 16, "epochs": 7}, "auto", 524214302, 2.3849464416666666, {}),
    ("sample-information", {}, "auto", 4114885262, 75.21116015119999, {}),
    ("sample-information", {"method": "projected"}, "auto", 1575225686, 34.8403360992, {}),
    ("sample-information", {"t": 100}, "auto", 9920994062, 808.4138370512001, {"finite_t_loo": 5067.793}),
    ("sample-information", {"t": 100}, "cuda", 9920994062, 808.4138370512001, {"finite_t_loo": 126.695}),
    (
        "sample-information",
        {"t": 100, "time": "continuous"},
        "auto",
        9920994062,
        808.4138370512001,
        {"finite_t_loo": 6569604.629},
    ),
    (
        "sample-information",
        {"t": 100, "time": "continuous"},
        "cuda",
        9920994062,
        808.4138370512001,
        {"finite_t_loo": 164240.116},
    ),
    (
        "sample-information",
        {"method": "projected", "projection_dim": 256, "t": 50},
        "auto",
        799275350,
        7.8715546848,
        {"finite_t_loo": 2.052},
    ),
    (
        "sample-information",
        {"method": "projected", "projection_dim": 256, "t": 50},
        "cuda",
        799275350,
        7.8715546848,
        {"finite_t_loo": 0.051},
    ),
    ("sample-information", {"measures": ["weights_full"]}, "auto", 15041533262, 75.21116015119999, {}),
    ("sample-information", {"delta_f": True, "eval_size": 300}, "auto", 4147213262, 74.9935927112, {}),
    (
        "sample-information",
        {"ground_truth": {"reference": "network", "subset": 10}, "t": 20},
        "auto",
        9920994062,
        822.6455655512001,
        {"finite_t_loo": 5005.51},
    ),
    (
        "sample-information",
        {"ground_truth": {"reference": "network", "subset": 10}, "t": 20},
        "cuda",
        9920994062,
        822.6455655512001,
        {"finite_t_loo": 125.138},
    ),
    (
        "sample-information",
        {"ground_truth": {"reference": "linearized", "subset": 10}, "t": 20},
        "auto",
        9920994062,
        822.6455655512001,
        {"finite_t_loo": 5005.51},
    ),
    (
        "sample-information",
        {"ground_truth": {"reference": "linearized", "subset": 10}, "t": 20},
        "cuda",
        9920994062,
        822.6455655512001,
        {"finite_t_loo": 125.138},
    ),
    ("fcmi-bound", {}, "auto", 421376524, 189.27499999999998, {}),
    ("fcmi-bound", {"k1": 2, "k2": 5, "learner": "1nn", "n": [10, 20]}, "auto", 421376524, 3.0000256, {}),
    ("fcmi-bound", {"epochs": 3, "n": [30]}, "auto", 421376524, 6.72689, {}),
    ("limit", {}, "auto", 421376524, 28.955869999999997, {}),
    ("limit", {"baseline": False, "batch_size": 32, "epochs": 20}, "auto", 421376524, 3.4940386666666665, {}),
    (
        "supervision-complexity",
        {"teacher": {"arch": "mlp", "hidden": [64]}},
        "auto",
        1213744014,
        4.530126111111111,
        {},
    ),
    (
        "supervision-complexity",
        {
            "teacher": {"arch": "mlp", "hidden": [64]},
            "checkpoints": [1, 5, 10],
            "kernel": "full",
            "student_checkpoints": [0, 3],
            "subsample": 50,
            "teacher_epochs": 10,
        },
        "auto",
        465744774,
        2.7018870111111113,
        {},
    ),
    ("distillation", {"teacher": {"arch": "mlp", "hidden": [64]}}, "auto", 811467054, 53.91988333333333, {}),
    (
        "distillation",
        {
            "teacher": {"arch": "mlp", "hidden": [64]},
            "curve_epochs": [],
            "kernel": "full",
            "mode": ["offline"],
            "seeds": 1,
        },
        "auto",
        811467054,
        4.017496666666667,
        {},
    ),
    (
        "distillation",
        {"teacher": {"arch": "mlp", "hidden": [64]}, "curve_epochs": [1, 2]},
        "auto",
        811467054,
        31.406683333333337,
        {},
    ),
    ("label-issues", {}, "auto", 421449222, 2.0, {}),
    ("label-issues", {"folds": 3, "method": "cross-entropy-cv"}, "auto", 421376524, 2.0, {}),
    ("label-issues", {"method": "ensemble"}, "auto", 421449222, 2.0, {}),
    ("label-issues", {"method": "limit-cv"}, "auto", 421449222, 2.0, {}),
]


@pytest.mark.parametrize(("kind", "params", "device", "memory", "seconds", "compute"), PINNED)
def test_estimates_are_the_numbers_of_the_if_elif_version(
    kind: str, params: dict[str, Any], device: str, memory: int, seconds: float, compute: dict[str, float]
) -> None:
    request = parse_job_request(
        {"kind": kind, "dataset": DIGITS, "model": MLP, "params": params, "device": device}
    ).model_dump(mode="json")
    shape = cest.builtin_shape(request["dataset"])
    est = cest.estimate(request, shape)
    assert est.memory_bytes == memory
    assert est.seconds == seconds
    assert cest.estimate_seconds(request, shape) == seconds
    assert est.as_dict()["compute_seconds"] == compute


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_left_out_params_take_the_contract_defaults(kind: str) -> None:
    """A request without params (as the tests and benchmarks send) is estimated exactly as
    the validated one with every default written out."""
    teacher = {"teacher": {"arch": "linear"}} if "teacher" in params_model(kind).model_fields else {}
    full = parse_job_request({"kind": kind, "dataset": DIGITS, "model": MLP, "params": teacher})
    shape = cest.builtin_shape(DIGITS)
    dumped = full.model_dump(mode="json")
    sparse = {"kind": kind, "model": MLP, "dataset": DIGITS, "params": teacher, "device": "auto"}
    assert cest.estimate(sparse, shape).as_dict() == cest.estimate(dumped, shape).as_dict()


def test_the_estimator_spells_no_param_default() -> None:
    """Estimators read the validated params model; a ``params.get("x", default)`` or
    ``params["x"]`` on the raw dict would be a second spelling of a contract default."""
    tree = ast.parse(Path(cest.__file__).read_text())
    raw = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "params"
    ]
    assert raw == []


def test_the_finite_t_cost_is_the_library_formula_itself() -> None:
    from infoscore import costs, sample_info

    assert cest.finite_t_cost is costs.finite_t_cost is sample_info.finite_t_cost
    assert (
        cest.projected_finite_t_cost is costs.projected_finite_t_cost is sample_info.projected_finite_t_cost
    )
    assert cest.recurrence_block is sample_info.recurrence_block


def test_exact_sample_information_is_estimated_for_the_structured_kernel() -> None:
    """Linear and MLP kernels are formed layer by layer: no (nk x p) Jacobian, so a wider
    MLP costs only its training state; the CNN keeps the Jacobian estimate."""

    def memory(model: dict[str, Any], params: dict[str, Any] | None = None) -> int:
        request = parse_job_request(
            {"kind": "sample-information", "dataset": DIGITS, "model": model, "params": params or {}}
        ).model_dump(mode="json")
        shape = cest.builtin_shape(request["dataset"])
        return cest.estimate(request, shape).memory_bytes

    shape = cest.builtin_shape(DIGITS)
    narrow, wide = {"arch": "mlp", "hidden": [256]}, {"arch": "mlp", "hidden": [2048]}
    p_narrow, p_wide = cest.parameter_count(narrow, shape), cest.parameter_count(wide, shape)
    training = cest._training_bytes(p_wide, shape) - cest._training_bytes(p_narrow, shape)
    assert memory(wide) - memory(narrow) == training
    nk = shape.n_train * shape.n_classes
    # weights_full needs J (nk x p, float64) on top of its p x p matrices
    assert memory(wide, {"measures": ["weights_full"]}) - memory(wide) == nk * p_wide * 8 + 3 * p_wide**2 * 8
    cnn = {"arch": "cnn"}
    assert memory(cnn) > cest._training_bytes(cest.parameter_count(cnn, shape), shape) + nk * nk * 8 * 4


def test_projected_sample_information_is_estimated_for_the_kronecker_factors() -> None:
    """The Kronecker path holds per-layer factors, n (k out + in) numbers, not n k d: going
    from d = 1024 to 4096 adds the d-sized work (chunks, d x d, held-out features) only, and
    200,000 samples fit the default 16 GiB (4.70 GiB measured)."""

    def estimate(n: int, d: int) -> cest.Estimate:
        request = parse_job_request(
            {
                "kind": "sample-information",
                "dataset": {"builtin": "gaussians", "n": n, "dim": 32, "classes": 10},
                "model": {"arch": "mlp", "hidden": [128]},
                "params": {"method": "projected", "projection_dim": d},
            }
        ).model_dump(mode="json")
        return cest.estimate(request, cest.builtin_shape(request["dataset"]))

    big = estimate(200_000, 2048)
    assert 4.70 * 2**30 < big.memory_bytes < 16 * 2**30
    per_sample = 10 * (128 + 10) + (32 + 128)  # k * outputs + inputs of the two layers
    small, large = estimate(200_000, 1024), estimate(200_000, 4096)
    rows, m, k = 65536, min(200_000, 1000), 10
    d_terms = 2 * rows * (4 + 8) + m * k * 8  # per unit of d, plus 4 d^2 float64
    assert large.memory_bytes - small.memory_bytes == d_terms * 3072 + 4 * 8 * (4096**2 - 1024**2)
    assert estimate(100_000, 2048).memory_bytes - estimate(50_000, 2048).memory_bytes < (
        50_000 * per_sample * 4 + 50_000 * 32 * 8 * 8  # factors plus the dataset's copies
    )
