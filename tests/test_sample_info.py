"""SI / F-SI: fast exact LOO against brute-force refits, projected vs exact, the linear
zero-init contract (numpy ridge refits), mislabel detection and parameter errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from contracts.sample_information import SampleInformationParams
from infoscore import data, models
from infoscore import ground_truth as gt
from infoscore.errors import InvalidInputError
from infoscore.linearized import explicit_gd_weights, ridge_weights
from infoscore.sample_info import (
    loo_finite,
    loo_infinite,
    loo_primal,
    lyapunov_covariance,
    sample_information,
    weights_full_scores,
)
from tests.runner_helpers import make_context
from workers.runners.sample_information import SampleInformationRunner

# Two cores, shared: more torch threads than one only fight over them.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


RTOL = 1e-8  # float64 exact identities vs refits (observed ~1e-12)


def _kernel_problem(n: int, k: int, p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(n * k, p, generator=gen, dtype=torch.float64) / p**0.5
    r0 = torch.randn(n * k, generator=gen, dtype=torch.float64)
    return jac, r0


def _brute_force(
    jac: torch.Tensor,
    r0: torch.Tensor,
    k: int,
    lam: float,
    lam_loo: float,
    eta: float,
    eta_loo: float,
    t: int | None,
) -> torch.Tensor:
    """Δw_i (n, p) by refitting the linearized model without sample i in weight space."""
    n = jac.shape[0] // k

    def fit(j: torch.Tensor, r: torch.Tensor, lam_: float, eta_: float) -> torch.Tensor:
        if t is None:
            return ridge_weights(j, r, lam=lam_)
        return explicit_gd_weights(j, r, lam=lam_, eta=eta_, t=t)

    full = fit(jac, r0, lam, eta)
    out = []
    for i in range(n):
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        out.append(full - fit(jac[keep], r0[keep], lam_loo, eta_loo))
    return torch.stack(out)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("lam", [0.05, 2.0])
@pytest.mark.parametrize("t", [None, 25, 300])
@pytest.mark.parametrize("p", [40, 400])
def test_fast_loo_equals_brute_force_refits(k: int, lam: float, t: int | None, p: int) -> None:
    n = 60
    jac, r0 = _kernel_problem(n, k, p, seed=k + p)
    theta = jac @ jac.T
    lr = 1.0 * n / float(torch.linalg.eigvalsh(theta).max() + lam)  # η·s_max ≈ 1
    eta, eta_loo = lr / n, lr / (n - 1)
    lam_loo = lam * (n - 1) / n  # the "rescaled" convention: differs from lam on purpose
    if t is None:
        lam_loo = lam
        res = loo_infinite(theta, r0, k=k, lam=lam)
    else:
        res = loo_finite(theta, r0, k=k, lam=lam, lam_loo=lam_loo, eta=eta, eta_loo=eta_loo, t=t)
    dw = _brute_force(jac, r0, k, lam, lam_loo, eta, eta_loo, t)
    expected = (dw**2).sum(1)
    torch.testing.assert_close(res.sq_weight_change, expected, rtol=RTOL, atol=RTOL * float(expected.max()))
    # Δw_i = −Jᵀδ_i, hence Δf_i(x') = J(x')Δw_i for F-SI.
    torch.testing.assert_close(-(jac.T @ res.delta).T, dw, rtol=RTOL, atol=RTOL * float(dw.abs().max()))


def test_infinite_identity_matches_quadratic_form() -> None:
    jac, r0 = _kernel_problem(50, 2, 30)
    theta = jac @ jac.T
    res = loo_infinite(theta, r0, k=2, lam=0.1)
    quad = ((theta @ res.delta) * res.delta).sum(0)
    torch.testing.assert_close(res.sq_weight_change, quad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [None, 40])
def test_primal_route_equals_kernel_route(t: int | None) -> None:
    n, k, d = 40, 3, 25
    phi, r0 = _kernel_problem(n, k, d, seed=3)
    phi_eval = _kernel_problem(7, k, d, seed=4)[0]
    lam = 0.2
    theta = phi @ phi.T
    lr = n / float(torch.linalg.eigvalsh(theta).max() + lam)
    eta, eta_loo = lr / n, lr / (n - 1)
    if t is None:
        ref = loo_infinite(theta, r0, k=k, lam=lam)
    else:
        ref = loo_finite(theta, r0, k=k, lam=lam, t=t, eta=eta, eta_loo=eta_loo, lam_loo=lam)
    res = loo_primal(
        phi,
        r0,
        k=k,
        lam=lam,
        t=t,
        phi_eval=phi_eval,
        chunk=7,
        keep_dv=True,
        eta=eta,
        eta_loo=eta_loo,
        lam_loo=lam,
    )
    torch.testing.assert_close(res.sq_weight_change, ref.sq_weight_change, rtol=1e-9, atol=1e-12)
    dv_ref = -(phi.T @ ref.delta).T
    assert res.dv is not None and res.sq_prediction_change is not None
    torch.testing.assert_close(res.dv, dv_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        res.sq_prediction_change, ((phi_eval @ dv_ref.T) ** 2).sum(0), rtol=1e-9, atol=1e-12
    )


def test_lyapunov_solution_and_full_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    h = a @ a.T + torch.eye(8, dtype=torch.float64)
    g = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    c = g.T @ g / 30 - torch.outer(g.mean(0), g.mean(0))
    sigma = lyapunov_covariance(h, c)
    torch.testing.assert_close(h @ sigma + sigma @ h, c, rtol=1e-10, atol=1e-12)
    dw = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    scores = weights_full_scores(h, g, dw, rel_jitter=1e-6)
    jitter = 1e-6 * float(torch.trace(sigma)) / 8  # relative to Σ's mean eigenvalue
    expected = torch.einsum(
        "ip,pq,iq->i", dw, torch.linalg.inv(sigma + jitter * torch.eye(8, dtype=torch.float64)), dw
    )
    torch.testing.assert_close(scores, expected, rtol=1e-7, atol=0)


@pytest.fixture(scope="module")
def digits_small() -> data.Dataset:
    return data.load_digits(test_fraction=0.25, seed=0)


def _ridge_loo_reference(
    x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, k: int, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy ridge (bias included and penalized) with explicit LOO refits."""
    xt = np.hstack([x.astype(np.float64), np.ones((x.shape[0], 1))])
    xe = np.hstack([x_eval.astype(np.float64), np.ones((x_eval.shape[0], 1))])
    targets = np.eye(k)[y]

    def fit(rows: np.ndarray) -> np.ndarray:
        a = xt[rows].T @ xt[rows] + lam * np.eye(xt.shape[1])
        return np.linalg.solve(a, xt[rows].T @ targets[rows])

    full = fit(np.arange(x.shape[0]))
    sq_w, sq_f = [], []
    for i in range(x.shape[0]):
        diff = full - fit(np.delete(np.arange(x.shape[0]), i))
        sq_w.append((diff**2).sum() / 2)
        sq_f.append(((xe @ diff) ** 2).sum() / 2)
    return np.array(sq_w), np.array(sq_f)


def test_linear_zero_init_equals_ridge_loo(digits_small: data.Dataset) -> None:
    n, m, l2 = 80, 30, 0.01
    x, y = digits_small.x_train[:n], digits_small.y_train[:n]
    xe = digits_small.x_test[:m]
    model = models.build_model({"arch": "linear", "init": "zeros"}, (64,), 10, seed=0)
    res = sample_information(
        model, torch.tensor(x), torch.tensor(y), k=10, x_eval=torch.tensor(xe), t=None, lr=1e-3, l2=l2
    )
    ref_w, ref_f = _ridge_loo_reference(x, y, xe, 10, n * l2)
    assert res.si_weights is not None and res.si_predictions is not None
    np.testing.assert_allclose(res.si_weights, ref_w, rtol=1e-8, atol=1e-10 * ref_w.max())
    np.testing.assert_allclose(res.si_predictions, ref_f, rtol=1e-7, atol=1e-9 * ref_f.max())
    assert res.info["lam"] == pytest.approx(n * l2)


def test_projected_approaches_exact_as_d_grows(digits_small: data.Dataset) -> None:
    torch.manual_seed(0)
    model = models.build_model({"arch": "mlp", "hidden": [8]}, (64,), 3, seed=0).double()
    keep = digits_small.y_train < 3
    x = torch.tensor(digits_small.x_train[keep][:50], dtype=torch.float64)
    y = torch.tensor(digits_small.y_train[keep][:50])
    xe = torch.tensor(digits_small.x_test[:20], dtype=torch.float64)
    kw = {"k": 3, "x_eval": xe, "l2": 1e-3}
    exact = sample_information(model, x, y, **kw)  # type: ignore[arg-type]
    assert exact.si_weights is not None
    errors = []
    for d in (32, 256, 2048):
        proj = sample_information(model, x, y, method="projected", projection_dim=d, seed=1, **kw)  # type: ignore[arg-type]
        assert proj.si_weights is not None
        errors.append(np.linalg.norm(proj.si_weights - exact.si_weights) / np.linalg.norm(exact.si_weights))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(np.argsort(scores))  # ranks 0..n-1 (ties are rare for float scores)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((order[positive].sum() + n_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def gaussian_mislabeled() -> tuple[torch.nn.Module, data.Dataset]:
    ds = data.make_gaussians(n=300, dim=20, classes=2, separation=3.0, n_test=200, label_noise=0.1, seed=0)
    model = models.build_model({"arch": "mlp", "hidden": [256]}, (20,), 2, seed=0)
    return model, ds


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def test_mislabeled_samples_rank_top_at_infinite_t(
    gaussian_mislabeled: tuple[torch.nn.Module, data.Dataset],
) -> None:
    model, ds = gaussian_mislabeled
    assert ds.noisy_mask is not None
    res = sample_information(
        model, torch.tensor(ds.x_train), torch.tensor(ds.y_train), k=2,
        x_eval=torch.tensor(ds.x_test), y_eval=torch.tensor(ds.y_test), t=None,
    )  # fmt: skip
    assert res.si_weights is not None and res.si_predictions is not None
    noisy = ds.noisy_mask
    assert _auc(res.si_weights, noisy) >= 0.75
    assert _auc(res.si_predictions, noisy) >= 0.75
    assert res.si_weights[noisy].mean() / res.si_weights[~noisy].mean() >= 2.0
    assert _spearman(res.si_weights, res.si_predictions) >= 0.9


@pytest.mark.slow
def test_mislabeled_detection_finite_t(gaussian_mislabeled: tuple[torch.nn.Module, data.Dataset]) -> None:
    model, ds = gaussian_mislabeled
    assert ds.noisy_mask is not None
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    common = {"k": 2, "x_eval": torch.tensor(ds.x_test), "y_eval": torch.tensor(ds.y_test)}
    inf = sample_information(model, x, y, t=None, **common)  # type: ignore[arg-type]
    lr = 300 / inf.info["eig_max"]  # η·s_max ≈ 1
    fin = sample_information(model, x, y, t=200, lr=lr, **common)  # type: ignore[arg-type]
    assert inf.si_weights is not None and fin.si_weights is not None and fin.si_predictions is not None
    auc_inf, auc_fin = _auc(inf.si_weights, ds.noisy_mask), _auc(fin.si_weights, ds.noisy_mask)
    assert auc_fin >= 0.75
    assert auc_fin >= auc_inf - 0.02
    assert _spearman(fin.si_weights, fin.si_predictions) >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"t": 0}, "t"),
        ({"lr": -1.0}, "lr"),
        ({"l2": -0.5}, "l2"),
        ({"sigma": 0.0}, "sigma"),
        ({"measures": ["weights", "bogus"]}, "measures"),
        ({"measures": []}, "measures"),
        ({"method": "magic"}, "method"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"projection": "sparse"}, "projection"),
        ({"time": "weird"}, "time"),
        ({"loo_lambda": "half"}, "loo_lambda"),
        ({"max_exact_nk": 10}, "method"),
        ({"measures": ["weights_full"], "max_full_p": 10}, "measures"),
        ({"t": 10, "max_finite_t_cost": 1.0}, "t"),
        ({"t": 10, "lr": 1e9}, "lr"),
    ],
)
def test_bad_params_raise_naming_the_parameter(kwargs: dict[str, object], param: str) -> None:
    model = models.build_model({"arch": "mlp", "hidden": [4]}, (5,), 2, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=gen)
    y = torch.arange(12) % 2
    with pytest.raises(InvalidInputError) as err:
        sample_information(model, x, y, k=2, x_eval=x[:3], **kwargs)  # type: ignore[arg-type]
    assert err.value.param == param
    assert f"'{param}'" in str(err.value)


# --- runner and contract -------------------------------------------------------------------


def _request(model: dict[str, object], params: dict[str, object], **dataset: object) -> dict[str, object]:
    ds = {
        "builtin": "gaussians",
        "n": 60,
        "dim": 16,
        "classes": 3,
        "n_test": 25,
        "label_noise": 0.1,
        "seed": 1,
    }
    ds.update(dataset)
    return {"kind": "sample-information", "dataset": ds, "model": model, "seed": 3, "params": params}


def test_runner_linear_zero_init_equals_ridge_loo(tmp_path: Path) -> None:
    ctx = make_context(_request({"arch": "linear", "init": "zeros"}, {"t": None, "l2": 0.02}), tmp_path)
    out = SampleInformationRunner().run(ctx)
    ds = ctx.dataset
    ref_w, ref_f = _ridge_loo_reference(ds.x_train, ds.y_train, ds.x_test, 3, 60 * 0.02)
    assert out.scores is not None
    np.testing.assert_allclose(out.scores["si_weights"], ref_w, rtol=1e-8, atol=1e-10 * ref_w.max())
    np.testing.assert_allclose(out.scores["si_predictions"], ref_f, rtol=1e-7, atol=1e-9 * ref_f.max())
    assert set(out.scores.columns) == {
        "si_weights",
        "si_predictions",
        "rank_si_weights",
        "rank_si_predictions",
    }
    top = int(np.argmax(ref_w))
    assert out.scores["rank_si_weights"][top] == 1
    for key in ("train_accuracy", "test_accuracy", "n", "k", "p", "t", "l2", "method", "seconds"):
        assert key in out.summary
    assert out.summary["n"] == 60 and out.summary["k"] == 3 and out.summary["p"] == 51
    assert out.summary["l2"] == pytest.approx(0.02) and out.summary["lam"] == pytest.approx(1.2)
    assert out.summary["top10_si_weights"][0] == top
    assert ctx.progress_log and ctx.progress_log[-1][0] == ctx.progress_log[-1][1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "reference"),
    [
        ({"arch": "mlp", "hidden": [32]}, "linearized"),
        ({"arch": "cnn", "channels": [2, 3], "hidden": 8}, "network"),
    ],
)
def test_runner_ground_truth_and_architectures(
    tmp_path: Path, model: dict[str, object], reference: str
) -> None:
    params = {
        "t": 30,
        "lr": 0.1,
        "l2": 1e-3,
        "measures": ["weights", "predictions", "weights_full"] if model["arch"] == "mlp" else ["weights"],
        "ground_truth": {"subset": 12, "reference": reference},
    }
    out = SampleInformationRunner().run(make_context(_request(model, params, n=40), tmp_path))
    gt_report = out.summary["ground_truth"]
    assert set(gt_report) >= {
        "pearson_weights",
        "spearman_weights",
        "pearson_predictions",
        "spearman_predictions",
        "subset",
    }
    assert gt_report["subset"] == 12
    # The linearized reference checks the closed form: near-perfect agreement.
    assert gt_report["pearson_weights"] > (0.999 if reference == "linearized" else 0.5)
    assert out.scores is not None and len(out.scores) == 40
    if model["arch"] == "mlp":
        assert (out.scores["si_weights_full"] >= 0).all()


def test_runner_projected_method(tmp_path: Path) -> None:
    params = {"method": "projected", "projection_dim": 64, "measures": ["weights", "predictions"]}
    out = SampleInformationRunner().run(
        make_context(_request({"arch": "mlp", "hidden": [16]}, params), tmp_path)
    )
    assert out.summary["d"] == 64 and out.summary["method"] == "projected"
    assert out.scores is not None and np.isfinite(out.scores["si_weights"]).all()
    assert out.summary["l2_auto"] is True and out.summary["lam"] > 0


def test_runner_refuses_exact_beyond_budget(tmp_path: Path) -> None:
    ctx = make_context(_request({"arch": "linear"}, {}, n=7000, classes=3, dim=4, n_test=10), tmp_path)
    with pytest.raises(InvalidInputError, match="projected") as err:
        SampleInformationRunner().run(ctx)
    assert err.value.param == "method"


def test_contract_network_ground_truth_needs_finite_t() -> None:
    with pytest.raises(ValidationError, match="finite 't'"):
        SampleInformationParams.model_validate({"ground_truth": {"subset": 5}})
    params = SampleInformationParams.model_validate({"t": 10, "ground_truth": {"subset": 5}})
    assert SampleInformationParams.model_validate_json(params.model_dump_json()) == params


def test_contract_literals_match_library() -> None:
    from typing import get_args

    from contracts import sample_information as c
    from infoscore import linearized, projection, sample_info

    assert set(get_args(c.Measure)) == set(sample_info.MEASURES)
    assert set(get_args(c.Method)) == set(sample_info.METHODS)
    assert set(get_args(c.ProjectionKind)) == set(projection.PROJECTION_KINDS)
    assert set(get_args(c.TimeMode)) == set(linearized.TIME_MODES)
    assert set(get_args(c.LooLambda)) == set(linearized.LOO_LAMBDAS)


def test_ground_truth_protocols_agree_on_a_linear_model() -> None:
    """A linear model is its own linearization: retraining it by full-batch GD must give exactly
    the linearized refits and the closed-form finite-t LOO (checks the lr/n, n·l2 conventions)."""
    ds = data.make_gaussians(n=30, dim=6, classes=3, n_test=10, label_noise=0.2, seed=2)
    model = models.build_model({"arch": "linear"}, (6,), 3, seed=1).double()
    x, y, xe = (torch.tensor(ds.x_train, dtype=torch.float64), torch.tensor(ds.y_train),
                torch.tensor(ds.x_test, dtype=torch.float64))  # fmt: skip
    kw = {"t": 40, "lr": 0.1, "l2": 0.01}
    idx = gt.choose_subset(30, 8, seed=0)
    net = gt.network_loo(model, x, y, k=3, indices=idx, x_eval=xe, **kw)  # type: ignore[arg-type]
    lin = gt.linearized_loo(model, x, y, k=3, indices=idx, x_eval=xe, **kw)  # type: ignore[arg-type]
    est = sample_information(model, x, y, k=3, x_eval=xe, **kw)  # type: ignore[arg-type]
    assert net.sq_predictions is not None and lin.sq_predictions is not None
    assert est.si_weights is not None and est.si_predictions is not None
    np.testing.assert_allclose(net.sq_weights, lin.sq_weights, rtol=1e-8)
    np.testing.assert_allclose(net.sq_predictions, lin.sq_predictions, rtol=1e-8)
    np.testing.assert_allclose(2 * est.si_weights[idx], lin.sq_weights, rtol=1e-8)
    np.testing.assert_allclose(2 * est.si_predictions[idx], lin.sq_predictions, rtol=1e-8)
    report = gt.compare(est.si_weights, net, est.si_predictions)
    assert report["pearson_weights"] == pytest.approx(1.0) and report["spearman_weights"] == pytest.approx(
        1.0
    )


def test_rank_correlations() -> None:
    a = np.array([1.0, 2.0, 2.0, 5.0])
    assert gt.spearman(a, a**3) == pytest.approx(1.0)
    assert gt.pearson(a, -a) == pytest.approx(-1.0)
    assert gt.spearman(a, np.array([4.0, 3.0, 3.0, 1.0])) == pytest.approx(-1.0)
