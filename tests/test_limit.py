"""LIMIT (docs/science.md §4): Fano values, the update's gradients, a short run, the runner."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import infoscore.limit as limit
from contracts.limit import SCORE_COLUMNS, LimitParams, QDist
from infoscore import data, models
from infoscore.errors import InvalidInputError
from tests.runner_helpers import make_context
from workers.runners.limit import LimitRunner

TOL = {torch.float32: 5e-3, torch.float64: 1e-10}


# Two cores, shared: more torch threads than one only fight over them.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- Fano


@pytest.mark.parametrize(
    ("kind", "p", "k", "info", "expected"),
    [
        ("uniform", 0.8, 10, 0.0, 0.800),
        ("pair", 0.4, 10, 0.0, 0.131),
        ("triple", 0.4, 10, 0.0, 0.204),
        ("triple", 0.4, 4, 0.0, 0.306),
        ("uniform", 0.8, 10, 1.0, 0.406),
    ],
)
def test_fano_reference_values(kind: str, p: float, k: int, info: float, expected: float) -> None:
    law = limit.noise_law(kind, p, n_classes=k)
    assert law.sum() == pytest.approx(1.0)
    assert limit.fano_min_error(law, info_bits_per_sample=info) == pytest.approx(expected, abs=0.002)


def test_fano_custom_law_matches_named_law_and_edge_cases() -> None:
    custom = limit.noise_law("custom", n_classes=10, distribution=[0.6, 0.2, 0.2])
    assert limit.fano_min_error(custom) == limit.fano_min_error(limit.noise_law("triple", 0.4, n_classes=10))
    # No noise, or more information than label entropy: nothing is forced.
    assert limit.fano_min_error(limit.noise_law("uniform", 0.0, n_classes=10)) == 0.0
    assert limit.fano_min_error(limit.noise_law("pair", 0.4, n_classes=10), info_bits_per_sample=5.0) == 0.0
    # The inverse reading: zero train error means all H(y|x) bits were memorized; error p means none.
    law = limit.noise_law("uniform", 0.8, n_classes=10)
    assert limit.label_information_lower_bound(law, 0.0) == pytest.approx(limit.entropy_bits(law))
    assert limit.label_information_lower_bound(law, 0.8) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"kind": "uniform", "noise_level": 1.5, "n_classes": 10}, "noise_level"),
        ({"kind": "uniform", "noise_level": None, "n_classes": 10}, "noise_level"),
        ({"kind": "sideways", "noise_level": 0.1, "n_classes": 10}, "noise"),
        ({"kind": "triple", "noise_level": 0.1, "n_classes": 2}, "n_classes"),
        ({"kind": "uniform", "noise_level": 0.1, "n_classes": 1}, "n_classes"),
        ({"kind": "custom", "n_classes": 3, "distribution": [0.5, 0.2]}, "distribution"),
        ({"kind": "custom", "n_classes": 2, "distribution": [0.5, 0.25, 0.25]}, "distribution"),
    ],
)
def test_noise_law_rejects_bad_input_naming_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidInputError, match=f"'{param}' parameter of noise_law") as err:
        limit.noise_law(**kwargs)
    assert err.value.param == param


@settings(max_examples=60, deadline=None)
@given(p=st.floats(allow_nan=True, allow_infinity=True), k=st.integers(-2, 50))
def test_noise_law_validator_passes_or_raises_invalid_input(p: float, k: int) -> None:
    try:
        law = limit.noise_law("uniform", p, n_classes=k)
    except InvalidInputError as err:
        assert str(err).startswith("The '")
        return
    assert 0.0 <= limit.fano_min_error(law) <= 0.999


# --------------------------------------------------------------------------- the update


def _tiny(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    spec = {"arch": "mlp", "hidden": [7], "activation": "tanh"}
    f = models.build_model(spec, (5,), 4, seed=0).to(dtype)
    q = models.build_model(spec, (5,), 4, seed=1).to(dtype)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=gen).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 1, 1])
    return f, q, x, y


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_classifier_gradient_is_the_summed_surrogate_gradient(dtype: torch.dtype) -> None:
    f, q, x, y = _tiny(dtype)
    surrogate, _ = limit.limit_losses(f, q, x, y, beta=1.0)
    surrogate.backward()
    got = _grads(f)
    with torch.no_grad():
        g_hat = limit.predicted_logit_gradient(f(x), q(x))
    expected = torch.zeros_like(got)
    params = list(f.parameters())
    for i in range(x.shape[0]):  # Σ_i J_iᵀ ĝ_i, row by row
        out = f(x[i : i + 1])[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True)
            expected += g_hat[i, c] * torch.cat([g.reshape(-1) for g in grads])
    torch.testing.assert_close(got, expected, rtol=TOL[dtype], atol=TOL[dtype])
    # A mean would be 1/B of this; the update is a sum on purpose.
    assert got.norm() > 0


def test_labels_never_reach_the_classifier_gradient() -> None:
    f, q, x, y = _tiny(torch.float64)
    perm = torch.tensor([3, 0, 1, 1, 2, 0])
    per_labels = []
    q_grads = []
    for labels in (y, perm):
        f.zero_grad(set_to_none=True)
        q.zero_grad(set_to_none=True)
        surrogate, lq = limit.limit_losses(f, q, x, labels, beta=0.5)
        (surrogate + lq).backward()
        per_labels.append(_grads(f))
        q_grads.append(_grads(q))
    torch.testing.assert_close(per_labels[0], per_labels[1], rtol=0, atol=0)
    assert not torch.allclose(q_grads[0], q_grads[1])  # the labels do reach q


def test_q_loss_does_not_touch_the_classifier() -> None:
    f, q, x, y = _tiny(torch.float64)
    _, lq = limit.limit_losses(f, q, x, y, beta=2.0)
    lq.backward()
    assert all(p.grad is None for p in f.parameters())
    assert all(p.grad is not None for p in q.parameters())
    surrogate, lq = limit.limit_losses(f, q, x, y, beta=2.0, update_classifier=False)
    assert float(surrogate) == 0.0 and not surrogate.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_gap_and_q_loss_closed_forms(dtype: torch.dtype) -> None:
    f, q, x, y = _tiny(dtype)
    with torch.no_grad():
        f_logits, q_logits = f(x), q(x)
    s_q = torch.softmax(q_logits, 1)
    e_y = torch.nn.functional.one_hot(y, 4).to(dtype)
    g_hat = limit.predicted_logit_gradient(f_logits, q_logits)
    g = limit.true_logit_gradient(f_logits, y)
    torch.testing.assert_close(g_hat - g, e_y - s_q, rtol=TOL[dtype], atol=TOL[dtype])
    reg = g_hat.pow(2).sum(1).mean()
    laplace = limit.q_loss(f_logits, q_logits, y, beta=0.3, law=limit.QLaw.LAPLACE)
    mae = (2 * (1 - s_q.gather(1, y[:, None]))).mean()
    torch.testing.assert_close(laplace, mae + 0.3 * reg, rtol=TOL[dtype], atol=TOL[dtype])
    gaussian = limit.q_loss(f_logits, q_logits, y, beta=0.3, law=limit.QLaw.GAUSSIAN)
    brier = (e_y - s_q).pow(2).sum(1).mean()
    torch.testing.assert_close(gaussian, brier + 0.3 * reg, rtol=TOL[dtype], atol=TOL[dtype])


def test_sample_scores_closed_forms() -> None:
    q_logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    f_logits = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    labels = torch.tensor([0, 2, 0])
    scores = limit.score_samples(q_logits, f_logits, labels)
    s_q = torch.softmax(q_logits.double(), 1)
    np.testing.assert_allclose(scores.label_noise_score, 2 * (1 - s_q[[0, 1, 2], labels]).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(scores.predicted_label, [1, 0, 1])
    np.testing.assert_array_equal(scores.suspected_mislabeled, [True, True, True])
    assert scores.predicted_gradient_sq_norm[2] == pytest.approx(0.0, abs=1e-12)
    assert scores.label_noise_score[1] == pytest.approx(4 / 3)


@pytest.mark.parametrize(("law", "variance"), [(limit.QLaw.GAUSSIAN, 0.5), (limit.QLaw.LAPLACE, 2.0)])
def test_q_sampling_noise_has_the_law_variance(law: limit.QLaw, variance: float) -> None:
    noise = limit.sample_q_noise((200_000,), law, torch.Generator().manual_seed(0))
    assert abs(float(noise.mean())) < 0.02
    assert float(noise.var()) == pytest.approx(variance, rel=0.03)


@pytest.mark.parametrize(
    ("law", "lamb", "variance"),
    [
        (limit.QLaw.GAUSSIAN, 25.0, 1 / 50),  # sigma² = 1/(2 lamb)
        (limit.QLaw.GAUSSIAN, 0.5, 1.0),
        (limit.QLaw.LAPLACE, 25.0, 2 / 625),  # scale 1/lamb, variance 2/lamb²
        (limit.QLaw.LAPLACE, 4.0, 2 / 16),
    ],
)
def test_lamb_sets_the_q_sampling_precision(law: limit.QLaw, lamb: float, variance: float) -> None:
    noise = limit.sample_q_noise((200_000,), law, torch.Generator().manual_seed(1), lamb)
    assert abs(float(noise.mean())) < 0.02 * math.sqrt(variance)
    assert float(noise.var()) == pytest.approx(variance, rel=0.03)
    # Same generator state, lamb = 1: the draw is the unit-precision one, rescaled.
    unit = limit.sample_q_noise((200_000,), law, torch.Generator().manual_seed(1))
    scale = 1 / math.sqrt(lamb) if law is limit.QLaw.GAUSSIAN else 1 / lamb
    torch.testing.assert_close(noise, unit * scale)
    with pytest.raises(InvalidInputError) as err:
        limit.sample_q_noise((3,), law, torch.Generator(), 0.0)
    assert err.value.param == "lamb"


def test_qlaw_values_match_the_contract() -> None:
    assert {m.value for m in limit.QLaw} == set(get_args(QDist))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def noisy_digits() -> data.Dataset:
    return data.load_digits(label_noise=0.5, seed=0)


def test_short_limit_run_memorizes_less_than_cross_entropy(noisy_digits: data.Dataset) -> None:
    split = limit.split_from_dataset(noisy_digits, validation_fraction=0.2, seed=0)
    spec = {"arch": "mlp", "hidden": [256]}
    # lr 1e-2 so that cross-entropy memorizes within a short run (noisy-train ≈ 0.75 here).
    epochs, lr, batch = 40, 1e-2, 128
    result = limit.train_limit(
        spec, split, limit.LimitConfig(epochs=epochs, beta=1.0, lr=lr, batch_size=batch)
    )
    _, ce = limit.train_cross_entropy(spec, split, epochs=epochs, lr=lr, batch_size=batch)
    rec = result.record
    assert rec.train_accuracy_noisy < ce.train_accuracy_noisy - 0.1
    assert rec.train_accuracy_clean is not None and ce.train_accuracy_clean is not None
    assert rec.train_accuracy_clean > ce.train_accuracy_clean
    assert len(rec.curves["test_accuracy"]) == epochs and 1 <= rec.best_epoch <= epochs
    # The returned classifier is the best-validation checkpoint, not the last epoch.
    best_test = limit.predict_logits(result.classifier, split.x_test).argmax(1) == split.y_test
    assert rec.test_accuracy == pytest.approx(float(best_test.float().mean()))
    scores = result.scores
    assert scores.label_noise_score.shape == (noisy_digits.n_train,)
    best_pred = limit.predict_logits(result.classifier, split.x).argmax(1).numpy()
    np.testing.assert_array_equal(scores.predicted_label, best_pred)
    assert result.classifier(split.x[:1]).shape == (1, 10)
    assert np.all((scores.label_noise_score >= 0) & (scores.label_noise_score <= 2))
    # Flipped labels score higher on average (the AUROC lives in benchmarks/limit_digits.py).
    mask = noisy_digits.noisy_mask
    assert mask is not None
    assert scores.label_noise_score[mask].mean() > scores.label_noise_score[~mask].mean() + 0.2


def test_training_is_deterministic_and_options_run(noisy_digits: data.Dataset) -> None:
    split = limit.split_from_dataset(noisy_digits, validation_fraction=0.1, clean_validation=True, seed=4)
    assert split.y_clean is not None
    torch.testing.assert_close(split.y_val, split.y_clean[split.val_idx])
    spec = {"arch": "mlp", "hidden": [16]}
    cfg = limit.LimitConfig(epochs=3, sample_from_q=True, warm_up=1, q_dist=limit.QLaw.GAUSSIAN, seed=4)
    progress: list[tuple[int, int]] = []
    runs = [
        limit.train_limit(spec, split, cfg, progress=lambda d, t: progress.append((d, t))) for _ in range(2)
    ]
    assert runs[0].record.curves == runs[1].record.curves
    assert progress[:3] == [(1, 3), (2, 3), (3, 3)]
    # Warm-up froze the classifier: epoch 1 evaluates the initial weights.
    init = models.build_model(spec, split.input_shape, 10, seed=4)
    init_acc = float((limit.predict_logits(init, split.x_test).argmax(1) == split.y_test).float().mean())
    assert runs[0].record.curves["test_accuracy"][0] == pytest.approx(init_acc)


def test_dropout_runs_are_reproducible_and_leave_the_global_rng_alone(noisy_digits: data.Dataset) -> None:
    split = limit.split_from_dataset(noisy_digits, seed=2)
    spec = {"arch": "mlp", "hidden": [16], "dropout": 0.5}
    state = torch.get_rng_state()
    ce = [limit.train_cross_entropy(spec, split, epochs=2, seed=2)[1].curves for _ in range(2)]
    lim = [
        limit.train_limit(spec, split, limit.LimitConfig(epochs=2, seed=2)).record.curves for _ in range(2)
    ]
    assert ce[0] == ce[1] and lim[0] == lim[1]
    assert torch.equal(torch.get_rng_state(), state)


def test_lamb_reaches_the_classifier_update(noisy_digits: data.Dataset) -> None:
    split = limit.split_from_dataset(noisy_digits, validation_fraction=0.0, seed=3)
    spec = {"arch": "mlp", "hidden": [16]}

    def weights(**kw: object) -> torch.Tensor:
        cfg = limit.LimitConfig(epochs=2, seed=3, **kw)  # type: ignore[arg-type]
        net = limit.train_limit(spec, split, cfg).classifier  # no validation: the last epoch
        return torch.cat([p.detach().ravel() for p in net.parameters()])

    plain = weights()
    # Huge precision: the sampled update is the mean update (up to float rounding).
    torch.testing.assert_close(weights(sample_from_q=True, lamb=1e12), plain, atol=1e-4, rtol=0)
    unit_noise = weights(sample_from_q=True)
    small_noise = weights(sample_from_q=True, lamb=50.0)
    # Adam rescales gradients, so the weights move less than the noise scale (1 vs 1/50).
    assert (unit_noise - plain).norm() > 2 * (small_noise - plain).norm() > 0


def test_patience_only_truncates_training(noisy_digits: data.Dataset) -> None:
    split = limit.split_from_dataset(noisy_digits, seed=5)
    spec = {"arch": "mlp", "hidden": [16]}
    epochs = 25
    full = limit.train_limit(spec, split, limit.LimitConfig(epochs=epochs, seed=5, lr=1e-2)).record
    progress: list[tuple[int, int]] = []
    cfg = limit.LimitConfig(epochs=epochs, seed=5, lr=1e-2, patience=2)
    early = limit.train_limit(spec, split, cfg, progress=lambda d, t: progress.append((d, t))).record
    assert early.stopped_epoch is not None and early.stopped_epoch < epochs
    stop = early.stopped_epoch
    assert stop == early.epochs_run == early.best_epoch + 2 == len(progress)
    # The run is the full run's first `stop` epochs, then nothing: same curves, same best.
    assert early.curves == {k: v[:stop] for k, v in full.curves.items()}
    val = full.curves["validation_accuracy"]
    assert max(val[:stop]) == early.best_validation_accuracy
    assert all(v <= early.best_validation_accuracy for v in val[early.best_epoch : stop])
    assert early.summary()["epochs_run"] == stop and early.summary()["stopped_early"] is True
    assert full.stopped_epoch is None and full.summary()["stopped_early"] is False
    # The cross-entropy baseline stops on the same rule.
    _, ce_full = limit.train_cross_entropy(spec, split, epochs=epochs, lr=1e-2, seed=5)
    _, ce = limit.train_cross_entropy(spec, split, epochs=epochs, lr=1e-2, seed=5, patience=2)
    assert ce.stopped_epoch is not None and ce.stopped_epoch == ce.epochs_run == ce.best_epoch + 2
    assert ce.curves == {k: v[: ce.epochs_run] for k, v in ce_full.curves.items()}


def test_patience_waits_for_the_end_of_warm_up(noisy_digits: data.Dataset) -> None:
    # The classifier is frozen for 4 epochs: its validation accuracy cannot improve there.
    split = limit.split_from_dataset(noisy_digits, seed=5)
    cfg = limit.LimitConfig(epochs=12, seed=5, lr=1e-2, warm_up=4, patience=1)
    rec = limit.train_limit({"arch": "mlp", "hidden": [16]}, split, cfg).record
    assert rec.epochs_run >= 5
    assert rec.stopped_epoch is None or rec.stopped_epoch == max(rec.best_epoch, 4) + 1


def test_patience_is_off_without_validation_rows(noisy_digits: data.Dataset) -> None:
    split = limit.split_from_dataset(noisy_digits, validation_fraction=0.0, seed=5)
    cfg = limit.LimitConfig(epochs=6, seed=5, lr=1e-2, patience=1)
    rec = limit.train_limit({"arch": "linear"}, split, cfg).record
    assert rec.epochs_run == 6 and rec.stopped_epoch is None and rec.best_epoch == 6


def test_no_validation_and_no_test_rows() -> None:
    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
    empty = {"x_test": np.zeros((0, 4), dtype=np.float32), "y_test": np.zeros(0, dtype=np.int64)}
    split = limit.prepare_split(x, y, n_classes=3, validation_fraction=0.0, **empty)  # type: ignore[arg-type]
    rec = limit.train_limit({"arch": "linear"}, split, limit.LimitConfig(epochs=3)).record
    assert rec.best_epoch == 3  # without validation rows the last epoch is kept
    summary = rec.summary()
    assert summary["test_accuracy"] is None and summary["best_validation_accuracy"] is None
    assert summary["train_accuracy_clean"] is None and 0.0 <= summary["train_accuracy_noisy"] <= 1.0


def test_should_stop_cancels(noisy_digits: data.Dataset) -> None:
    from infoscore.errors import Cancelled

    split = limit.split_from_dataset(noisy_digits, seed=0)
    with pytest.raises(Cancelled):
        limit.train_limit({"arch": "linear"}, split, limit.LimitConfig(epochs=5), should_stop=lambda: True)


@pytest.mark.parametrize(
    ("config", "param"),
    [
        (limit.LimitConfig(beta=-1.0), "beta"),
        (limit.LimitConfig(beta=math.nan), "beta"),
        (limit.LimitConfig(epochs=0), "epochs"),
        (limit.LimitConfig(lr=0.0), "lr"),
        (limit.LimitConfig(batch_size=0), "batch_size"),
        (limit.LimitConfig(q_dist="cauchy"), "q_dist"),  # type: ignore[arg-type]
        (limit.LimitConfig(epochs=3, warm_up=3), "warm_up"),
        (limit.LimitConfig(seed=-1), "seed"),
        (limit.LimitConfig(lamb=0.0), "lamb"),
        (limit.LimitConfig(lamb=math.inf), "lamb"),
        (limit.LimitConfig(patience=0), "patience"),
        (limit.LimitConfig(patience=2.5), "patience"),  # type: ignore[arg-type]
    ],
)
def test_bad_config_raises_naming_the_parameter(config: limit.LimitConfig, param: str) -> None:
    with pytest.raises(InvalidInputError, match=f"'{param}' parameter of train_limit") as err:
        config.validated()
    assert err.value.param == param


def test_bad_split_inputs_raise_naming_the_parameter() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    y = np.array([0, 1, 0])
    empty = {"x_test": np.zeros((0, 2)), "y_test": np.zeros(0, dtype=np.int64), "n_classes": 2}
    with pytest.raises(InvalidInputError) as err:
        limit.prepare_split(x, y, validation_fraction=0.9, **empty)  # type: ignore[arg-type]
    assert err.value.param == "validation_fraction"
    with pytest.raises(InvalidInputError) as err:
        limit.prepare_split(x, y, clean_validation=True, **empty)  # type: ignore[arg-type]
    assert err.value.param == "clean_validation"
    with pytest.raises(InvalidInputError) as err:
        limit.prepare_split(x, np.array([0, 1, 2]), **empty)  # type: ignore[arg-type]
    assert err.value.param == "y"
    uploaded = data.from_arrays(x, y)
    with pytest.raises(InvalidInputError) as err:
        limit.split_from_dataset(uploaded, clean_validation=True)
    assert err.value.param == "clean_validation"


def test_contract_rejects_warm_up_beyond_epochs() -> None:
    with pytest.raises(ValidationError, match="warm_up"):
        LimitParams(epochs=5, warm_up=5)
    defaults, config = LimitParams(), limit.LimitConfig()
    assert (defaults.q_dist, defaults.beta, defaults.epochs, defaults.lr, defaults.batch_size) == (
        config.q_law.value,
        config.beta,
        config.epochs,
        config.lr,
        config.batch_size,
    )
    assert (defaults.lamb, defaults.patience, defaults.warm_up) == (
        config.lamb,
        config.patience,
        config.warm_up,
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"lamb": 10.0}, "lamb"),  # without sample_from_q it would do nothing
        ({"lamb": 0.0, "sample_from_q": True}, "lamb"),
        ({"patience": 0}, "patience"),
    ],
)
def test_contract_rejects_bad_lamb_and_patience(params: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        LimitParams(**params)
    assert LimitParams(lamb=10.0, sample_from_q=True, patience=100).lamb == 10.0


# --------------------------------------------------------------------------- runner


def _request(dataset: object, **params: object) -> dict:
    return {
        "kind": "limit",
        "dataset": dataset,
        "model": {"arch": "mlp", "hidden": [32]},
        "seed": 1,
        "params": {"epochs": 3, **params},
    }


def test_runner_output_contract(tmp_path: Path) -> None:
    ctx = make_context(_request({"builtin": "digits", "label_noise": 0.5}), tmp_path)
    out = LimitRunner().run(ctx)
    s = out.summary
    for key in ("test_accuracy", "final_test_accuracy", "train_accuracy_noisy", "fano_bound", "seconds"):
        assert key in s
    assert s["fano_bound"] == pytest.approx(
        limit.fano_min_error(limit.noise_law("uniform", 0.5, n_classes=10))
    )
    assert set(s["baseline"]) >= {"test_accuracy", "final_test_accuracy", "train_accuracy_noisy"}
    curves = s["curves"]
    for key in (
        "epoch",
        "train_accuracy_noisy",
        "train_accuracy_clean",
        "validation_accuracy",
        "test_accuracy",
    ):
        assert len(curves[key]) == 3
        assert len(curves.get(f"baseline_{key}", [0, 0, 0])) == 3
    detection = s["noisy_label_detection"]
    assert 0.0 <= detection["auroc_label_noise_score"] <= 1.0 and 0.0 <= detection["flag_recall"] <= 1.0
    assert s["settings"]["beta"] == 30.0 and s["settings"]["q_dist"] == "laplace"
    assert out.scores is not None and len(out.scores) == ctx.dataset.n_train
    assert list(out.scores.columns) == list(SCORE_COLUMNS)
    assert out.scores["in_validation"].sum() == s["n_validation"] > 0
    assert (
        out.scores["suspected_mislabeled"] == (out.scores["predicted_label"] != ctx.dataset.y_train)
    ).all()
    paths = {name: out.files[name] for name in ("model.safetensors", "curves.png")}
    for path in paths.values():
        assert isinstance(path, Path) and path.stat().st_size > 0
    png = paths["curves.png"]
    assert isinstance(png, Path) and png.read_bytes()[:4] == b"\x89PNG"
    from safetensors.torch import load_file

    weights = load_file(str(out.files["model.safetensors"]))
    assert weights["1.weight"].shape == (32, 64)
    assert ctx.progress_log[-1] == (6, 6)  # type: ignore[attr-defined]
    assert s["settings"]["lamb"] == 1.0 and s["settings"]["patience"] is None
    assert s["epochs_run"] == 3 and s["stopped_early"] is False and s["baseline"]["epochs_run"] == 3


def test_runner_passes_lamb_and_patience(tmp_path: Path) -> None:
    params = {"epochs": 12, "patience": 1, "sample_from_q": True, "lamb": 20.0, "lr": 0.05}
    out = LimitRunner().run(
        make_context(_request({"builtin": "digits", "label_noise": 0.5}, **params), tmp_path)
    )
    s = out.summary
    assert s["settings"]["lamb"] == 20.0 and s["settings"]["patience"] == 1
    assert s["settings"]["patience_active"] is True
    for rec in (s, s["baseline"]):
        assert rec["stopped_early"] is True and rec["epochs_run"] == rec["best_epoch"] + 1 < 12
    assert len(s["curves"]["epoch"]) == s["epochs_run"]


def test_runner_fano_null_without_a_known_law(tmp_path: Path) -> None:
    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    np.savez(tmp_path / "ds.npz", x=x, y=y, x_test=x[:10], y_test=y[:10])
    (tmp_path / "datasets").mkdir()
    dataset_id = "ds_" + "0" * 16
    (tmp_path / "ds.npz").rename(tmp_path / "datasets" / f"{dataset_id}.npz")
    unknown = LimitRunner().run(
        make_context(_request(dataset_id, baseline=False), tmp_path / "a", data_dir=tmp_path)
    )
    assert unknown.summary["fano_bound"] is None and unknown.summary["baseline"] is None
    assert unknown.summary["noisy_label_detection"] is None
    assert "train_accuracy_clean" not in unknown.summary["curves"]
    given_p = LimitRunner().run(
        make_context(_request(dataset_id, baseline=False, noise_level=0.3), tmp_path / "b", data_dir=tmp_path)
    )
    assert given_p.summary["fano_bound"] == pytest.approx(0.3)
