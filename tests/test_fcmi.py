"""f-CMI bounds: estimator, supersample construction, runner plan/run_unit/reduce."""

from __future__ import annotations

import csv
import io
import json
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mutual_info_score

from contracts.fcmi import FcmiParams, LearnerName, MiEstimatorName
from infoscore import fcmi
from infoscore.errors import InvalidInputError
from tests.runner_helpers import make_context
from workers.runners.fcmi import FcmiRunner

GAUSSIANS = {"builtin": "gaussians", "n": 400, "dim": 10, "classes": 2, "label_noise": 0.2, "seed": 3}
RESULT_KEYS = {"n", "gap_mean", "gap_std", "bound_mean", "bound_std", "train_acc", "test_acc", "units"}


# Two cores, shared: more torch threads than one only fight over them.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _request(params: dict[str, Any], model: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "fcmi-bound",
        "dataset": GAUSSIANS,
        "model": model or {"arch": "linear"},
        "params": params,
        **extra,
    }


def _run_all(runner: FcmiRunner, ctx: Any) -> Any:
    units = runner.plan(ctx)
    results = {u.name: runner.run_unit(ctx, u) for u in units}
    return runner.reduce(ctx, results)


# ---------------------------------------------------------------- estimator


def test_plugin_mi_exactly_independent_is_zero() -> None:
    # Every (s, u) combination appears equally often: the empirical joint factorizes.
    s = np.array([0, 1] * 20)
    u = np.array([0, 0, 1, 1] * 10)
    mi = fcmi.plugin_mi(s, u)
    assert mi.shape == (1,)
    assert mi[0] == pytest.approx(0.0, abs=1e-12)


def test_plugin_mi_random_independent_is_small_and_clipped() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, size=(2000, 50))
    u = rng.integers(0, 3, size=(2000, 50))
    plug = fcmi.plugin_mi(s, u)
    corrected = fcmi.estimate_mi(s, u, "miller_madow")
    assert np.all(plug >= 0.0) and np.all(corrected >= 0.0)
    # First-order bias (|U|-1)/(2 k2) = 5e-4 nats; the mean sits near it.
    assert plug.mean() == pytest.approx(2 / (2 * 2000), rel=0.5)
    assert corrected.mean() < plug.mean()


def test_plugin_mi_selector_determines_symbol_is_log2() -> None:
    s = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    u = 7 * s + 3
    assert fcmi.plugin_mi(s, u)[0] == pytest.approx(math.log(2.0), abs=1e-12)
    assert fcmi.samplewise_bound(fcmi.plugin_mi(s, u)) == pytest.approx(math.sqrt(2 * math.log(2.0)))


def test_miller_madow_hand_value() -> None:
    # joint counts (0,0) (0,1) (1,0) (1,2) once each: Î = log(2)/2; m_S = 2, m_U = 3,
    # m_SU = 4, k2 = 4: correction (2 + 3 - 4 - 1)/8 = 0 (the old (m_S-1)(m_U-1)/(2k2) cut 0.25).
    s = np.array([0, 0, 1, 1])
    u = np.array([0, 1, 0, 2])
    assert fcmi.plugin_mi(s, u)[0] == pytest.approx(math.log(2) / 2, abs=1e-12)
    assert fcmi.miller_madow_term(s, u)[0] == pytest.approx(0.0, abs=1e-15)
    assert fcmi.estimate_mi(s, u, "miller_madow")[0] == pytest.approx(math.log(2) / 2, abs=1e-12)


def _entropy_mm(values: np.ndarray) -> float:
    """Reference: Miller-Madow entropy of one column, Ĥ + (m - 1)/(2 k2), nats."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / values.size
    return float(-(p * np.log(p)).sum() + (counts.size - 1) / (2 * values.size))


def test_miller_madow_is_the_entropy_correction_per_column() -> None:
    # Reference built entropy by entropy: Î_MM = H_MM(S) + H_MM(U) - H_MM(S, U), clipped at 0.
    rng = np.random.default_rng(5)
    s = rng.integers(0, 2, size=(12, 40))
    u = np.where(rng.random((12, 40)) < 0.5, 3 * s, rng.integers(0, 6, size=(12, 40))) + 7
    got = fcmi.estimate_mi(s, u, "miller_madow")
    for i in range(s.shape[1]):
        joint = s[:, i] * 1000 + u[:, i]
        ref = _entropy_mm(s[:, i]) + _entropy_mm(u[:, i]) - _entropy_mm(joint)
        assert got[i] == pytest.approx(max(ref, 0.0), abs=1e-12)


def test_miller_madow_memorizing_pair_is_raised_not_cut() -> None:
    # u determines S with 2 symbols: m_S = m_U = m_SU = 2, correction +1/(2 k2).
    s = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    u = 7 * s + 3
    assert fcmi.miller_madow_term(s, u)[0] == pytest.approx(-1 / 16)
    assert fcmi.estimate_mi(s, u, "miller_madow")[0] == pytest.approx(math.log(2) + 1 / 16, abs=1e-12)


def _simulated_cases(k2: int = 30, repeats: int = 4000, seed: int = 14) -> dict[str, np.ndarray]:
    """Issue 14's simulation: each column one repeat, S ~ Bernoulli(1/2) over k2 draws."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, size=(k2, repeats))
    return {
        "s": s,
        "independent, 4 symbols": rng.integers(0, 4, size=(k2, repeats)),
        "memorizing, u = S": s.copy(),
        "memorizing, 4 symbols": 2 * s + rng.integers(0, 2, size=(k2, repeats)),
    }


@pytest.mark.parametrize(
    ("case", "true_mi", "plugin", "corrected"),
    [
        ("independent, 4 symbols", 0.0, 0.057, 0.023),
        ("memorizing, u = S", math.log(2), 0.677, 0.693),
        ("memorizing, 4 symbols", math.log(2), 0.677, 0.693),
    ],
)
def test_miller_madow_reproduces_issue_simulation(
    case: str, true_mi: float, plugin: float, corrected: float
) -> None:
    # k2 = 30, 4,000 repeats (issue 14). The old rule (subtract (m_S-1)(m_U-1)/(2k2)) gave
    # 0.021 / 0.660 / 0.626: it over-corrects exactly when the pair is memorized.
    cases = _simulated_cases()
    s, u = cases["s"], cases[case]
    plug = fcmi.estimate_mi(s, u, "plugin").mean()
    mm = fcmi.estimate_mi(s, u, "miller_madow").mean()
    assert plug == pytest.approx(plugin, abs=0.004)
    assert mm == pytest.approx(corrected, abs=0.004)
    if true_mi > 0:
        assert abs(mm - true_mi) < abs(plug - true_mi)  # less biased where the bound matters


def test_miller_madow_clips_at_zero() -> None:
    s = np.array([0, 1, 0, 1])
    u = np.array([0, 1, 1, 0])  # independent in the sample, 2 symbols: 0 - 1/8 -> 0
    assert fcmi.plugin_mi(s, u)[0] == pytest.approx(0.0, abs=1e-12)
    assert fcmi.estimate_mi(s, u, fcmi.MiEstimator.MILLER_MADOW)[0] == 0.0


def test_plugin_mi_matches_sklearn_reference_per_column() -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(0, 2, size=(30, 12))
    u = (s * rng.integers(0, 2, size=(30, 12)) + rng.integers(0, 4, size=(30, 12))) % 5
    fast = fcmi.plugin_mi(s, u)
    slow = np.array([max(mutual_info_score(s[:, i], u[:, i]), 0.0) for i in range(12)])
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=40).flatmap(
        lambda k2: st.tuples(
            st.lists(st.integers(0, 1), min_size=k2, max_size=k2),
            st.lists(st.integers(0, 99), min_size=k2, max_size=k2),
        )
    )
)
def test_plugin_mi_between_zero_and_log2(draws: tuple[list[int], list[int]]) -> None:
    s, u = (np.array(v) for v in draws)
    mi = fcmi.plugin_mi(s, u)[0]
    assert 0.0 <= mi <= math.log(2.0) + 1e-12


def test_pair_symbols_encoding() -> None:
    preds = np.array([[[3, 1], [0, 9]]], dtype=np.int16)  # (k2=1, n=2, 2)
    np.testing.assert_array_equal(fcmi.pair_symbols(preds, 10), [[31, 9]])


def test_mismatched_shapes_raise_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="'symbols' parameter of plugin_mi"):
        fcmi.plugin_mi(np.zeros((4, 2)), np.zeros((4, 3)))


# ---------------------------------------------------------------- construction


def test_supersample_pairs_are_disjoint_and_seeded() -> None:
    pairs = fcmi.make_supersample(100, 30, seed=5)
    assert pairs.shape == (30, 2)
    assert len(np.unique(pairs)) == 60
    assert pairs.min() >= 0 and pairs.max() < 100
    np.testing.assert_array_equal(pairs, fcmi.make_supersample(100, 30, seed=5))
    assert not np.array_equal(pairs, fcmi.make_supersample(100, 30, seed=6))


def test_train_rows_are_pair_member_selected_by_s() -> None:
    pairs = fcmi.make_supersample(50, 20, seed=0)
    selector = fcmi.draw_selector(20, seed=3)
    assert set(np.unique(selector)) <= {0, 1}
    train, held = fcmi.split_pairs(pairs, selector)
    flat = pairs.reshape(-1)  # row 2i + c of the draw is pair i, member c
    np.testing.assert_array_equal(train, flat[2 * np.arange(20) + selector])
    np.testing.assert_array_equal(held, flat[2 * np.arange(20) + 1 - selector])
    assert not set(train) & set(held)


def test_supersample_rejects_too_large_n() -> None:
    with pytest.raises(InvalidInputError, match="'n' parameter of make_supersample") as err:
        fcmi.make_supersample(10, 6, seed=0)
    assert err.value.param == "n"


def test_unit_seeds_default_vs_deterministic() -> None:
    assert fcmi.unit_seeds(0, 1, 2, deterministic=True) == fcmi.unit_seeds(9, 3, 4, deterministic=True) == 42
    a = fcmi.unit_seeds(0, 0, 0, deterministic=False)
    assert a == fcmi.unit_seeds(0, 0, 0, deterministic=False)
    assert a != fcmi.unit_seeds(0, 0, 1, deterministic=False)
    assert a != fcmi.unit_seeds(1, 0, 0, deterministic=False)


def test_one_nn_memorizes_its_training_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    pairs = fcmi.make_supersample(40, 20, seed=1)
    selector = fcmi.draw_selector(20, seed=2)
    res = fcmi.train_unit(x, y, pairs, selector, n_classes=3, learner="1nn")
    assert res.predictions.dtype == np.int16 and res.predictions.shape == (20, 2)
    assert res.train_accuracy == 1.0


# ---------------------------------------------------------------- experimental form


def test_binary_kl_interpolating_closed_form() -> None:
    for c in (0.01, 0.1, 0.5):
        assert fcmi.binary_kl_test_error_bound(0.0, c) == pytest.approx(2 * (1 - math.exp(-c)), abs=1e-9)
    assert fcmi.binary_kl_test_error_bound(0.1, 0.0) == pytest.approx(0.1, abs=1e-6)
    assert fcmi.binary_kl_test_error_bound(0.2, 10.0) == 1.0


# ---------------------------------------------------------------- contracts and runner


def test_contract_literals_mirror_enums() -> None:
    assert set(typing.get_args(MiEstimatorName)) == {e.value for e in fcmi.MiEstimator}
    assert set(typing.get_args(LearnerName)) == {e.value for e in fcmi.Learner}


def test_contract_rejects_bad_n() -> None:
    for bad in ([0], [10, 10], []):
        with pytest.raises(pydantic.ValidationError):
            FcmiParams(n=bad)


def test_plan_rejects_n_larger_than_half_the_pool(tmp_path: Path) -> None:
    ctx = make_context(_request({"n": [50, 201], "k1": 1, "k2": 2}), tmp_path)
    with pytest.raises(InvalidInputError, match="'n' parameter of fcmi-bound") as err:
        FcmiRunner().plan(ctx)
    assert err.value.param == "n"


def test_plan_units_are_keyed_by_their_content(tmp_path: Path) -> None:
    runner = FcmiRunner()
    ctx = make_context(_request({"n": [10, 20], "k1": 2, "k2": 3}), tmp_path)
    units = runner.plan(ctx)
    assert len(units) == 2 * 2  # one unit per (n, supersample), holding its k2 draws
    assert len({u.name for u in units}) == len({u.key("fp") for u in units}) == 4
    for u in units:
        json.dumps(u.params)
        assert {
            "n",
            "supersample_seed",
            "selector_seeds",
            "model",
            "epochs",
            "init_seeds",
            "eval_epochs",
        } <= set(u.params)
        assert u.params["selector_seeds"] == [0, 1, 2] and len(set(u.params["init_seeds"])) == 3
        assert u.params["eval_epochs"] == [100]
    det = runner.plan(make_context(_request({"n": [10], "k2": 3, "deterministic": True}), tmp_path))
    assert {s for u in det for s in u.params["init_seeds"]} == {42}
    # A different n list shares the n = 10 units with the first job.
    other = runner.plan(make_context(_request({"n": [10, 30], "k1": 2, "k2": 3}), tmp_path))
    assert {u.key("fp") for u in units if u.params["n"] == 10} <= {u.key("fp") for u in other}
    # Recording more epochs is another unit.
    evals = runner.plan(make_context(_request({"n": [10], "k1": 2, "k2": 3, "eval_epochs": [5]}), tmp_path))
    assert not {u.key("fp") for u in evals} & {u.key("fp") for u in units}
    # The 1-NN control does not depend on the model or the training recipe.
    nn_a = runner.plan(make_context(_request({"n": [10], "k2": 3, "learner": "1nn"}), tmp_path))
    nn_b = runner.plan(
        make_context(_request({"n": [10], "k2": 3, "learner": "1nn", "epochs": 7}, {"arch": "mlp"}), tmp_path)
    )
    assert [u.key("fp") for u in nn_a] == [u.key("fp") for u in nn_b]


def test_run_unit_is_deterministic(tmp_path: Path) -> None:
    runner = FcmiRunner()
    ctx = make_context(_request({"n": [30], "k1": 2, "k2": 2, "epochs": 5, "lr": 0.05}), tmp_path)
    unit = runner.plan(ctx)[1]
    first = runner.run_unit(ctx, unit)
    second = runner.run_unit(ctx, unit)
    assert first["predictions"].dtype == np.int16 and first["predictions"].shape == (1, 2, 30, 2)
    assert first["accuracy"].shape == (1, 2, 2) and first["epochs"].tolist() == [5]
    np.testing.assert_array_equal(first["predictions"], second["predictions"])
    np.testing.assert_array_equal(first["accuracy"], second["accuracy"])
    np.testing.assert_array_equal(first["selectors"][1], fcmi.draw_selector(30, 1))


def _pool() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "mlp", "hidden": [32]},
        {"arch": "cnn", "channels": [4, 8], "hidden": 16},
        {"arch": "mlp", "hidden": [16], "batchnorm": True},  # not batchable: one at a time
    ],
    ids=["mlp", "cnn", "batchnorm"],
)
def test_batched_unit_equals_one_training_at_a_time(spec: dict[str, Any]) -> None:
    """The k2 draws trained as one ensemble give the numbers of k2 separate trainings."""
    x, y = _pool()
    n, k2, epochs = 40, 4, 6
    pairs = fcmi.make_supersample(len(y), n, 3)
    selectors = np.stack([fcmi.draw_selector(n, j) for j in range(k2)])
    seeds = [fcmi.unit_seeds(0, 3, j, deterministic=False) for j in range(k2)]
    recipe: dict[str, Any] = {"epochs": epochs, "batch_size": 16, "lr": 1e-2, "optimizer": "adam"}
    batch = fcmi.train_units(
        x, y, pairs, selectors, n_classes=10, seeds=seeds, model_spec=spec, input_shape=(1, 8, 8), **recipe
    )
    singles = [
        fcmi.train_unit(
            x,
            y,
            pairs,
            selectors[j],
            n_classes=10,
            model_spec=spec,
            input_shape=(1, 8, 8),
            seed=seeds[j],
            **recipe,
        )
        for j in range(k2)
    ]
    assert batch.predictions.shape == (1, k2, n, 2) and batch.epochs.tolist() == [epochs]
    np.testing.assert_array_equal(batch.predictions[0], np.stack([u.predictions for u in singles]))
    np.testing.assert_array_equal(batch.train_accuracy[0], [u.train_accuracy for u in singles])
    np.testing.assert_array_equal(batch.heldout_accuracy[0], [u.heldout_accuracy for u in singles])
    # The trainings differ from each other (different rows, init and order), so the
    # equality above is not the trivial one.
    assert len({u.predictions.tobytes() for u in singles}) > 1


@pytest.mark.parametrize("gather", ["per-epoch", "per-batch"])
def test_ensemble_weights_equal_separate_trainings(gather: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights after training, not only argmax predictions: float32 tolerance."""
    import torch

    from infoscore import training
    from infoscore.models import build_model
    from infoscore.training import Ensemble, train_classifier

    if gather == "per-batch":
        monkeypatch.setattr(training, "EPOCH_GATHER_BYTES", 0)
    x, y = _pool()
    spec = {"arch": "mlp", "hidden": [24]}
    rows = [np.arange(i * 30, i * 30 + 50) for i in range(3)]  # overlapping training sets
    seeds = [5, 6, 7]
    for optimizer in ("adam", "sgd"):
        singles = []
        for r, seed in zip(rows, seeds, strict=True):
            model = build_model(spec, (64,), 10, seed=seed)
            train_classifier(
                model,
                torch.tensor(x[r]),
                torch.tensor(y[r]),
                epochs=5,
                batch_size=16,
                lr=1e-2,
                optimizer=optimizer,
                weight_decay=1e-3,
                seed=seed,
            )
            singles.append(model.state_dict())
        ens = Ensemble([build_model(spec, (64,), 10, seed=s) for s in seeds], torch.device("cpu"))
        ens.train(
            torch.tensor(x),
            torch.tensor(y),
            torch.tensor(np.stack(rows)),
            seeds=seeds,
            epochs=5,
            batch_size=16,
            lr=1e-2,
            optimizer=optimizer,
            weight_decay=1e-3,
        )
        for single, batched in zip(singles, ens.state_dicts(), strict=True):
            assert single.keys() == batched.keys()
            for key in single:
                torch.testing.assert_close(batched[key], single[key], rtol=1e-4, atol=1e-5)
            # Moved away from the initialisation, so the comparison is not of untouched weights.
        first = build_model(spec, (64,), 10, seed=seeds[0]).state_dict()
        assert (first["1.weight"] - singles[0]["1.weight"]).abs().max() > 1e-3


def test_eval_epochs_record_the_same_trainings_at_each_epoch() -> None:
    """Predictions recorded at epoch e equal those of a training stopped at e."""
    x, y = _pool()
    n, k2 = 30, 3
    pairs = fcmi.make_supersample(len(y), n, 0)
    selectors = np.stack([fcmi.draw_selector(n, j) for j in range(k2)])
    seeds = [11, 12, 13]
    common: dict[str, Any] = {"n_classes": 10, "seeds": seeds, "model_spec": {"arch": "mlp", "hidden": [16]}}
    common.update(batch_size=8, lr=5e-3)
    batch = fcmi.train_units(x, y, pairs, selectors, epochs=6, eval_epochs=[0, 2], **common)
    assert batch.epochs.tolist() == [0, 2, 6] and batch.predictions.shape == (3, k2, n, 2)
    for e_i, epoch in enumerate((0, 2, 6)):
        alone = fcmi.train_units(x, y, pairs, selectors, epochs=epoch, **common)
        np.testing.assert_array_equal(batch.predictions[e_i], alone.predictions[-1])
        np.testing.assert_array_equal(batch.heldout_accuracy[e_i], alone.heldout_accuracy[-1])
    assert not np.array_equal(batch.predictions[0], batch.predictions[2])
    with pytest.raises(InvalidInputError, match="eval_epochs"):
        fcmi.train_units(x, y, pairs, selectors, epochs=6, eval_epochs=[7], **common)


def test_eval_epochs_in_summary_files_and_contract(tmp_path: Path) -> None:
    runner = FcmiRunner()
    params = {
        "n": [20, 40],
        "k1": 2,
        "k2": 4,
        "epochs": 6,
        "lr": 0.05,
        "batch_size": 16,
        "eval_epochs": [3, 0],
    }
    out = _run_all(runner, make_context(_request(params), tmp_path))
    rows = out.summary["by_epoch"]
    assert [(r["epoch"], r["n"]) for r in rows] == [(0, 20), (3, 20), (6, 20), (0, 40), (3, 40), (6, 40)]
    final = {r["n"]: r for r in rows if r["epoch"] == 6}
    for r in out.summary["results"]:
        assert {k: v for k, v in final[r["n"]].items() if k not in ("epoch", "mi_mean")} == r
    for r in rows:
        assert set(r) == RESULT_KEYS | {"epoch", "mi_mean"} and r["mi_mean"] >= 0
    assert out.summary["settings"]["eval_epochs"] == [0, 3]
    table = list(csv.DictReader(io.StringIO(out.files["mi_by_epoch.csv"].decode())))  # type: ignore[union-attr]
    assert list(table[0]) == ["epoch", "n", "supersample", "pair", "mi"] and len(table) == 3 * 2 * (20 + 40)
    assert out.files["bound_epochs.png"][:8] == b"\x89PNG\r\n\x1a\n"  # type: ignore[index]
    plain = _run_all(runner, make_context(_request({**params, "eval_epochs": []}), tmp_path))
    assert "by_epoch" not in plain.summary and "mi_by_epoch.csv" not in plain.files
    assert plain.summary["results"] == out.summary["results"]
    for bad in (
        {"epochs": 5, "eval_epochs": [6]},
        {"eval_epochs": [1, 1]},
        {"learner": "1nn", "eval_epochs": [1]},
    ):
        with pytest.raises(pydantic.ValidationError, match="eval_epochs"):
            FcmiParams(**bad)


def test_reduce_requires_every_unit(tmp_path: Path) -> None:
    runner = FcmiRunner()
    ctx = make_context(_request({"n": [10], "k1": 2, "k2": 2, "learner": "1nn"}), tmp_path)
    units = runner.plan(ctx)
    with pytest.raises(InvalidInputError, match="'results' parameter"):
        runner.reduce(ctx, {units[0].name: runner.run_unit(ctx, units[0])})


def test_end_to_end_linear_bound_above_gap_and_1nn_control_high(tmp_path: Path) -> None:
    runner = FcmiRunner()
    params = {"n": [20, 80], "k1": 2, "k2": 10, "epochs": 40, "lr": 0.05, "batch_size": 32}
    linear = _run_all(runner, make_context(_request(params), tmp_path))
    control = _run_all(runner, make_context(_request({**params, "learner": "1nn"}), tmp_path))

    for out in (linear, control):
        assert out.scores is None
        rows = out.summary["results"]
        assert [r["n"] for r in rows] == [20, 80]
        for r in rows:
            assert set(r) == RESULT_KEYS
            assert r["units"] == 2 * 10
            assert r["bound_mean"] >= r["gap_mean"]
        assert out.summary["mi_estimator"] == "plugin"
        assert math.isfinite(out.summary["bias_estimate"])
        assert out.files["bound.png"][:8] == b"\x89PNG\r\n\x1a\n"  # type: ignore[index]
        table = list(csv.DictReader(io.StringIO(out.files["mi.csv"].decode())))  # type: ignore[union-attr]
        assert list(table[0]) == ["n", "supersample", "pair", "mi"]
        assert len(table) == 2 * (20 + 80)

    lin = {r["n"]: r for r in linear.summary["results"]}
    nn = {r["n"]: r for r in control.summary["results"]}
    assert lin[80]["bound_mean"] < 0.5
    # Miller-Madow's estimate of the plug-in bias: upward for the regularized learner, and
    # negative (the plug-in is low) for the memorizing control, whose u determines S.
    assert linear.summary["bias_estimate"] > 0 > control.summary["bias_estimate"]
    for n in (20, 80):
        assert nn[n]["train_acc"] == 1.0
        assert nn[n]["bound_mean"] > 0.5
        assert nn[n]["bound_mean"] > lin[n]["bound_mean"]


def test_bias_corrected_and_experimental_outputs(tmp_path: Path) -> None:
    runner = FcmiRunner()
    base = {"n": [20], "k1": 1, "k2": 6, "learner": "1nn"}
    plug = _run_all(runner, make_context(_request(base), tmp_path))
    mm = _run_all(
        runner,
        make_context(_request({**base, "mi_estimator": "miller_madow", "experimental": True}), tmp_path),
    )
    assert mm.summary["mi_estimator"] == "miller_madow"
    assert "bias-corrected" in mm.summary["mi_estimator_label"]
    # 1-NN memorizes (u determines S): Miller-Madow raises the plug-in MI, it does not cut it.
    assert mm.summary["results"][0]["bound_mean"] > plug.summary["results"][0]["bound_mean"]
    assert "experimental" not in plug.summary
    exp = mm.summary["experimental"]
    assert "unverified" in exp["label"]
    assert 0.0 <= exp["supersamples"][0]["test_error_bound"] <= 1.0


def test_contract_round_trips_through_json() -> None:
    params = FcmiParams(n=[10, 30], k2=5, learner="1nn", mi_estimator="miller_madow", experimental=True)
    assert FcmiParams.model_validate_json(params.model_dump_json()) == params


@settings(max_examples=50, deadline=None)
@given(st.integers(-5, 60), st.integers(-5, 60), st.integers(0, 2**31 - 1))
def test_make_supersample_passes_or_raises_invalid_input(pool: int, n: int, seed: int) -> None:
    try:
        pairs = fcmi.make_supersample(pool, n, seed)
    except InvalidInputError as err:
        assert err.param == "n" and str(err).startswith("The 'n' parameter of make_supersample must be")
    else:
        assert pairs.shape == (n, 2) and len(np.unique(pairs)) == 2 * n and pairs.max() < pool


def test_units_run_from_their_stored_params_without_replanning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fan-out writes each unit's params beside its cache key; run_unit uses them."""
    from contracts.jobs import parse_job_request
    from workers.execution import Executor
    from workers.settings import WorkerSettings

    sent: list[list[str]] = []
    settings = WorkerSettings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    executor = Executor(settings, lambda name, args, queue: sent.append(args))
    request = parse_job_request(
        _request({"n": [10, 20], "k1": 1, "k2": 3, "epochs": 3, "batch_size": 8})
    ).model_dump(mode="json")
    job = executor.store.create_job(kind="fcmi-bound", request=request, fingerprint="fp-stored-params")
    assert executor.run_job(job["id"]) == "fanned-out"
    assert sorted(name for _, name in sent) == ["n10-s0", "n20-s0"]
    stored = sorted((tmp_path / "cache" / "units").glob("*.json"))
    assert len(stored) == 2 and {json.loads(p.read_text())["n"] for p in stored} == {10, 20}

    def no_plan(self: FcmiRunner, ctx: Any) -> list[Any]:
        raise AssertionError("run_unit planned the whole job again")

    monkeypatch.setattr(FcmiRunner, "plan", no_plan)
    assert [executor.run_unit(job_id, name) for job_id, name in sent] == ["unit-done", "succeeded"]
    done = executor.store.get_job(job["id"])
    assert done is not None and [r["n"] for r in done["summary"]["results"]] == [10, 20]
