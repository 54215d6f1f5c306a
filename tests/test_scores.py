"""Baseline per-sample scores (infoscore.scores) and the training-dynamics runner."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score
from torch import nn

from contracts.jobs import parse_job_request
from contracts.training_dynamics import SCORE_COLUMNS, TABLE_COLUMNS, TrainingDynamicsParams
from infoscore.errors import Cancelled, InvalidInputError
from infoscore.models import build_model
from infoscore.scores import (
    SCORE_NAMES,
    TrainingDynamicsResult,
    auroc,
    count_forgetting_events,
    el2n_scores,
    forgetting_rank,
    grand_scores,
    loss_and_margin,
    suspicion_scores,
    training_dynamics,
)
from tests.runner_helpers import make_context
from workers.runners import get_runner

# neural-tangents' starting points; float64 is tightened because both paths do the same sums.
TOL = {torch.float32: 5e-3, torch.float64: 1e-10}


# Two cores, shared: more torch threads than one only fight over them.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


DEFAULT_REQUEST = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "digits", "label_noise": 0.2},
    "model": {"arch": "mlp"},
}


def _tiny_problem(
    dtype: torch.dtype, *, n: int = 13, dim: int = 5, k: int = 3
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP with batch norm and dropout, trained a few steps so its running statistics moved."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=gen, dtype=dtype)
    y = torch.randint(0, k, (n,), generator=gen)
    spec = {"arch": "mlp", "hidden": [7, 6], "batchnorm": True, "dropout": 0.3}
    model = build_model(spec, (dim,), k, seed=1).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def _slow_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: one autograd backward pass per sample, eval mode."""
    model.eval()
    norms = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        squared = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
        norms.append(squared**0.5)
    return torch.tensor(norms, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_bytes", [1, 10**9])  # one sample per batch / all at once
def test_grand_matches_per_sample_autograd_loop(dtype: torch.dtype, max_bytes: int) -> None:
    model, x, y = _tiny_problem(dtype)
    batchnorm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert batchnorm.running_mean is not None
    running_mean = batchnorm.running_mean.clone()
    model.train()
    fast = grand_scores(model, x, y, max_bytes=max_bytes)
    assert model.training, "grand_scores must restore the model's mode"
    torch.testing.assert_close(batchnorm.running_mean, running_mean, rtol=0, atol=0)
    slow = _slow_grad_norms(copy.deepcopy(model), x, y)
    assert fast.shape == (x.shape[0],) and fast.dtype == dtype
    torch.testing.assert_close(fast.double(), slow, rtol=TOL[dtype], atol=TOL[dtype])


def test_loss_and_margin_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    loss, margin = loss_and_margin(logits, y)
    lse = torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(loss, torch.stack([lse[0] - 2.0, lse[1] - 1.0]))
    torch.testing.assert_close(margin, torch.tensor([2.0 - 0.5, 1.0 - 3.0], dtype=torch.float64))


def test_el2n_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    # softmax rows: [1/2, 1/2] and [3/4, 1/4]; minus e_y: [1/2, -1/2] and [-1/4, 1/4].
    expected = torch.tensor([np.sqrt(0.5), np.sqrt(0.125)], dtype=torch.float64)
    torch.testing.assert_close(el2n_scores(logits, y), expected)


def test_el2n_and_grand_at_epoch_zero_use_the_initial_model() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    model = build_model({"arch": "mlp", "hidden": [8]}, (4,), 3, seed=0).double()
    initial = copy.deepcopy(model)
    result = training_dynamics(model, x, y, epochs=2, el2n_epoch=0, batch_size=8, lr=0.05)

    with torch.no_grad():
        probs = torch.softmax(initial(x), dim=1).numpy()
    onehot = np.eye(3)[y.numpy()]
    by_hand = np.sqrt(((probs - onehot) ** 2).sum(axis=1))
    np.testing.assert_allclose(result.scores["el2n"], by_hand, rtol=1e-12)
    np.testing.assert_allclose(result.scores["grand"], _slow_grad_norms(initial, x, y).numpy(), rtol=1e-10)
    # The model did train: final scores come from the trained model, not the initial one.
    with torch.no_grad():
        final_loss = nn.functional.cross_entropy(model(x), y, reduction="none").numpy()
    np.testing.assert_allclose(result.scores["loss"], final_loss, rtol=1e-12)
    assert not np.allclose(result.scores["loss"], -np.log(probs[np.arange(20), y.numpy()]))


def test_count_forgetting_events_on_a_constructed_sequence() -> None:
    correct = np.array(
        [
            # s0 learned once, s1 forgotten twice, s2 never learned, s3 always right, s4 forgotten at the end
            [1, 1, 0, 1, 0],
            [1, 0, 0, 1, 1],
            [1, 1, 0, 1, 1],
            [1, 0, 0, 1, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(count_forgetting_events(correct), [0, 2, 0, 0, 1])
    np.testing.assert_array_equal(count_forgetting_events(torch.as_tensor(correct[:1])), [0, 0, 0, 0, 0])
    with pytest.raises(InvalidInputError, match="'correct' parameter of count_forgetting_events"):
        count_forgetting_events(np.ones(3, dtype=bool))


def test_suspicion_scores_rank_never_learned_first_and_negate_margin() -> None:
    n = 4
    result = TrainingDynamicsResult(
        scores={
            "loss": np.arange(n, dtype=float),
            "margin": np.array([1.0, -2.0, 0.5, 3.0]),
            "el2n": np.zeros(n),
            "grand": np.zeros(n),
            "forgetting_events": np.array([0, 2, 0, 1]),
        },
        never_learned=np.array([False, False, True, False]),
        train_accuracy=0.5,
        test_accuracy=float("nan"),
        epochs=5,
    )
    oriented = suspicion_scores(result)
    np.testing.assert_array_equal(oriented["margin"], [-1.0, 2.0, -0.5, -3.0])
    np.testing.assert_array_equal(oriented["forgetting_events"], [0.0, 2.0, 5.0, 1.0])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    positives = rng.random(n) < 0.3
    positives[0], positives[1] = True, False
    # Few distinct values: many ties, which must count one half.
    scores = rng.integers(0, 5, n) + positives * rng.integers(0, 2, n)
    assert auroc(scores, positives) == pytest.approx(roc_auc_score(positives, scores), abs=1e-12)
    continuous = rng.normal(size=n) + positives
    assert auroc(continuous, positives.astype(int)) == pytest.approx(
        roc_auc_score(positives, continuous), abs=1e-12
    )


def test_auroc_extremes_and_errors() -> None:
    assert auroc(np.array([0.1, 0.2, 0.9]), np.array([False, False, True])) == 1.0
    assert auroc(np.array([0.9, 0.2, 0.1]), np.array([False, False, True])) == 0.0
    assert auroc(np.ones(4), np.array([True, False, True, False])) == 0.5
    with pytest.raises(InvalidInputError, match=r"^The 'positives' parameter of auroc must be at least one"):
        auroc(np.ones(3), np.zeros(3, dtype=bool))
    with pytest.raises(InvalidInputError, match="'positives' parameter of auroc must be an array of shape"):
        auroc(np.ones(3), np.ones(2, dtype=bool))
    with pytest.raises(InvalidInputError, match="'scores' parameter of auroc must be finite"):
        auroc(np.array([0.0, np.nan]), np.array([True, False]))
    with pytest.raises(InvalidInputError, match="'positives' parameter of auroc must be a boolean"):
        auroc(np.ones(2), np.array([2, 0]))


def _small_digits_like() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    return build_model({"arch": "mlp", "hidden": [8]}, (6,), 3, seed=0), x, y


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"epochs": 2, "el2n_epoch": 3}, "el2n_epoch"),
        ({"epochs": 0, "el2n_epoch": 0}, "epochs"),
        ({"epochs": 2, "el2n_epoch": 1, "optimizer": "lbfgs"}, "optimizer"),
    ],
)
def test_training_dynamics_rejects_bad_params(kwargs: dict, param: str) -> None:
    model, x, y = _small_digits_like()
    with pytest.raises(InvalidInputError, match=f"^The '{param}' parameter of training_dynamics must be"):
        training_dynamics(model, x, y, **kwargs)


def test_training_dynamics_rejects_labels_outside_the_model_outputs() -> None:
    model, x, y = _small_digits_like()
    y[0] = 3
    with pytest.raises(InvalidInputError, match=r"'y' parameter .* labels in 0\.\.2\. Got 'range 0\.\.3'"):
        training_dynamics(model, x, y, epochs=1, el2n_epoch=0)


def test_training_dynamics_reports_progress_cancels_and_is_reproducible() -> None:
    calls: list[tuple[int, int]] = []
    model, x, y = _small_digits_like()
    first = training_dynamics(
        model, x, y, epochs=3, el2n_epoch=1, batch_size=8, seed=4, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert set(first.scores) == set(SCORE_NAMES)
    assert all(v.shape == (30,) for v in first.scores.values())
    assert first.scores["forgetting_events"].dtype == np.int64
    assert np.isnan(first.test_accuracy)

    model, x, y = _small_digits_like()
    again = training_dynamics(model, x, y, epochs=3, el2n_epoch=1, batch_size=8, seed=4)
    for name in SCORE_NAMES:
        np.testing.assert_array_equal(first.scores[name], again.scores[name])

    model, x, y = _small_digits_like()
    with pytest.raises(Cancelled):
        training_dynamics(model, x, y, epochs=3, el2n_epoch=1, should_stop=lambda: True)


def test_contract_columns_match_library_and_params_validate() -> None:
    assert tuple(SCORE_COLUMNS) == SCORE_NAMES
    params = parse_job_request(DEFAULT_REQUEST).params
    assert isinstance(params, TrainingDynamicsParams)
    assert params.el2n_epoch <= params.epochs
    with pytest.raises(ValidationError, match="el2n_epoch must be at most epochs"):
        parse_job_request({**DEFAULT_REQUEST, "params": {"epochs": 2, "el2n_epoch": 3}})


def test_runner_default_request_flags_flipped_digits(tmp_path: Path) -> None:
    """Acceptance: digits with 20% uniform noise, MLP, default params: el2n AUROC >= 0.9."""
    ctx = make_context(DEFAULT_REQUEST, tmp_path)
    out = get_runner("training-dynamics").run(ctx)

    assert out.scores is not None
    assert list(out.scores.columns) == list(TABLE_COLUMNS)
    assert len(out.scores) == ctx.dataset.n_train
    assert np.isfinite(out.scores.to_numpy(dtype=float)).all()
    expected_keys = {"train_accuracy", "test_accuracy", "epochs", "seconds", "settings", "auroc_noisy"}
    assert set(out.summary) == expected_keys
    assert json.loads(json.dumps(out.summary, allow_nan=False)) == out.summary
    assert out.summary["epochs"] == ctx.params.epochs
    assert out.summary["settings"]["el2n_epoch"] == ctx.params.el2n_epoch
    assert out.summary["test_accuracy"] > 0.85
    assert ctx.progress_log[-1] == (ctx.params.epochs, ctx.params.epochs)  # type: ignore[attr-defined]

    mask = ctx.dataset.noisy_mask
    assert mask is not None and mask.any()
    el2n_auc = roc_auc_score(mask, out.scores["el2n"])
    assert el2n_auc >= 0.9
    assert out.summary["auroc_noisy"]["el2n"] == pytest.approx(el2n_auc, abs=1e-12)
    assert out.summary["auroc_noisy"]["margin"] == pytest.approx(roc_auc_score(mask, -out.scores["margin"]))
    assert set(out.summary["auroc_noisy"]) == set(SCORE_COLUMNS)

    # The table agrees with the summary: the documented ranking rule (never-learned rows
    # first, then by forgetting_events) applied to the table's columns gives its AUROC.
    table = out.scores
    assert table["never_learned"].dtype == bool and table["never_learned"].any()
    assert (table.loc[table["never_learned"], "forgetting_events"] == 0).all()
    ranked = forgetting_rank(
        table["forgetting_events"].to_numpy(), table["never_learned"].to_numpy(), out.summary["epochs"]
    )
    from_table = roc_auc_score(mask, ranked)
    assert out.summary["auroc_noisy"]["forgetting_events"] == pytest.approx(from_table, abs=1e-12)


def test_runner_without_noise_has_no_auroc(tmp_path: Path) -> None:
    request = {
        "kind": "training-dynamics",
        "dataset": {"builtin": "gaussians", "n": 60, "dim": 4, "n_test": 0},
        "model": {"arch": "linear"},
        "params": {"epochs": 2, "el2n_epoch": 1},
    }
    out = get_runner("training-dynamics").run(make_context(request, tmp_path))
    assert "auroc_noisy" not in out.summary
    assert out.summary["test_accuracy"] is None
    assert out.scores is not None and out.scores.shape == (60, len(TABLE_COLUMNS))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "model"),
    [(1, {"arch": "mlp"}), (2, {"arch": "mlp", "batchnorm": True}), (3, {"arch": "cnn"})],
)
def test_runner_el2n_separates_flipped_labels_across_seeds_and_models(
    tmp_path: Path, seed: int, model: dict
) -> None:
    request = {**DEFAULT_REQUEST, "seed": seed, "model": model}
    request["dataset"] = {"builtin": "digits", "label_noise": 0.2, "seed": seed}
    out = get_runner("training-dynamics").run(make_context(request, tmp_path))
    assert out.summary["auroc_noisy"]["el2n"] >= 0.9
    assert out.summary["auroc_noisy"]["grand"] >= 0.9
