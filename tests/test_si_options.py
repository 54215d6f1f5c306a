"""Sample information options of issue #14 (weights_full at w_t, relative jitter, honest
projected names, delta_f, linearize_at) and the uncapped finite-t LOO of issue #10, each
against a slow reference (brute-force refits, autograd loops, explicit Lyapunov algebra)."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contracts import estimate as cest
from contracts.estimate import Shape
from infoscore import data, models
from infoscore import ground_truth as gt
from infoscore import sample_info as si
from infoscore.errors import InvalidInputError
from infoscore.linearized import explicit_gd_weights, one_hot, ridge_weights
from infoscore.ntk import flat_parameters, per_sample_jacobians, set_flat_parameters
from infoscore.projection import projector_for
from infoscore.training import train_classifier
from tests.runner_helpers import make_context
from workers.runners.sample_information import SampleInformationRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n: int, k: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(n * k, p, generator=gen, dtype=torch.float64) / p**0.5
    return jac, torch.randn(n * k, generator=gen, dtype=torch.float64)


# --- finite t ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("t", [1, 63, 64, 65, 200])
def test_recurrence_route_equals_refits_and_eigh_route(k: int, t: int) -> None:
    n, p, lam, lam_loo = 25, 30, 0.05, 0.04
    jac, r0 = _problem(n, k, p, seed=t + k)
    theta = jac @ jac.T
    lr = 1.5 * n / float(torch.linalg.eigvalsh(theta).max() + lam)  # η·s_max ≈ 1.5: oscillating GD
    eta, eta_loo = lr / n, lr / (n - 1)
    kw = {"k": k, "lam": lam, "lam_loo": lam_loo, "eta": eta, "eta_loo": eta_loo, "t": t}
    rec = si.loo_finite(theta, r0, route="recurrence", **kw)  # type: ignore[arg-type]
    eig = si.loo_finite(theta, r0, route="eigh", **kw)  # type: ignore[arg-type]
    full = explicit_gd_weights(jac, r0, lam=lam, eta=eta, t=t)
    for i in (0, n // 2, n - 1):
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        dw = full - explicit_gd_weights(jac[keep], r0[keep], lam=lam_loo, eta=eta_loo, t=t)
        torch.testing.assert_close(rec.sq_weight_change[i], (dw**2).sum(), rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(-(jac.T @ rec.delta[:, i]), dw, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rec.sq_weight_change, eig.sq_weight_change, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(rec.delta, eig.delta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("k", "t"), [(1, 1), (2, 64), (3, 150)])
def test_primal_recurrence_equals_the_per_sample_eigh_route(k: int, t: int) -> None:
    n, d, lam = 30, 20, 0.05
    phi, r0 = _problem(n, k, d, seed=11 + t)
    phi_eval = _problem(7, k, d, seed=3)[0]
    lr = 1.5 * n / float(torch.linalg.eigvalsh(phi.T @ phi).max() + lam)
    kw = {"k": k, "lam": lam, "lam_loo": 0.9 * lam, "eta": lr / n, "eta_loo": lr / (n - 1), "t": t}
    ref = si.loo_primal(phi, r0, phi_eval=phi_eval, keep_dv=True, **kw)  # type: ignore[arg-type]
    new = si.loo_primal_finite(phi, r0, phi_eval=phi_eval, keep_dv=True, **kw)  # type: ignore[arg-type]
    assert ref.dv is not None and new.dv is not None and new.sq_prediction_change is not None
    torch.testing.assert_close(new.sq_weight_change, ref.sq_weight_change, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(new.sq_prediction_change, ref.sq_prediction_change, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(new.dv, ref.dv, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(new.v, ref.v, rtol=1e-10, atol=1e-13)


def test_eigh_route_continuous_time_equals_refits() -> None:
    n, k, p = 12, 2, 10
    jac, r0 = _problem(n, k, p, seed=5)
    theta = jac @ jac.T
    res = si.loo_finite(theta, r0, k=k, lam=0.1, lam_loo=0.1, eta=0.02, eta_loo=0.02, t=40, time="continuous")
    full = explicit_gd_weights(jac, r0, lam=0.1, eta=0.02, t=40, time="continuous")
    keep = torch.ones(n * k, dtype=torch.bool)
    keep[2 * k : 3 * k] = False
    dw = full - explicit_gd_weights(jac[keep], r0[keep], lam=0.1, eta=0.02, t=40, time="continuous")
    torch.testing.assert_close(res.sq_weight_change[2], (dw**2).sum(), rtol=1e-9, atol=1e-14)


def test_finite_t_beyond_the_old_fixed_cap_runs_and_matches_refits() -> None:
    """n = 150, k = 10: n·(nk)³ = 5e11 was over the old fixed cap of 3e11 (refused)."""
    ds = data.make_gaussians(n=150, dim=8, classes=10, n_test=20, seed=0)
    model = models.build_model({"arch": "linear"}, (8,), 10, seed=0).double()
    x, y = torch.tensor(ds.x_train, dtype=torch.float64), torch.tensor(ds.y_train)
    kw = {"t": 30, "lr": 0.2, "l2": 1e-3}
    res = si.sample_information(model, x, y, k=10, measures=["weights"], **kw)  # type: ignore[arg-type]
    assert res.info["finite_t_route"] == "recurrence" and res.si_weights is not None
    idx = np.array([0, 77, 149])
    ref = gt.linearized_loo(model, x, y, k=10, indices=idx, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(2 * res.si_weights[idx], ref.sq_weights, rtol=1e-8)


def test_estimator_cost_mirrors_the_library_and_refuses_only_what_does_not_fit() -> None:
    for n, k, t in [(1000, 2, 2000), (300, 10, 50), (50, 3, 10**6)]:
        for route in ("recurrence", "eigh"):
            assert cest.finite_t_cost(n, k, t, route) == pytest.approx(si.finite_t_cost(n, k, t, route))
    assert cest.RECURRENCE_BLOCK == si.RECURRENCE_BLOCK
    for time in ("discrete", "continuous"):
        assert cest.projected_finite_t_cost(5000, 10, 2048, 2000, time) == pytest.approx(
            si.projected_finite_t_cost(5000, 10, 2048, 2000, time)
        )
    model = {"arch": "mlp", "hidden": [256]}
    shape = Shape(1000, 500, 784, 2, [784])  # MNIST 4 vs 9, the official protocol
    request = {"kind": "sample-information", "model": model, "params": {"t": 2000}, "device": "auto"}
    seconds = cest.estimate(request, shape).compute_seconds["finite_t_loo"]
    assert 1 < seconds < 600  # fits the default 6 h limit by far
    big = cest.estimate(
        {**request, "params": {"t": 100, "time": "continuous"}}, Shape(2000, 10, 20, 10, [20])
    )
    assert big.compute_seconds["finite_t_loo"] > 6 * 3600  # 2000 eighs of 20000 x 20000
    gpu = cest.estimate({**request, "device": "cuda"}, shape).compute_seconds["finite_t_loo"]
    assert gpu < seconds


# --- weights_full ---------------------------------------------------------------------------


def _tiny_net(seed: int = 0) -> torch.nn.Module:
    return models.build_model(
        {"arch": "mlp", "hidden": [5], "activation": "tanh"}, (3,), 2, seed=seed
    ).double()


def _tiny_data(n: int = 14) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    return x, y, torch.randn(6, 3, generator=gen, dtype=torch.float64)


def _full_score_reference(h: torch.Tensor, grads: torch.Tensor, dw: torch.Tensor, eps: float) -> torch.Tensor:
    c = torch.cov(grads.T, correction=0)
    sigma = si.lyapunov_covariance(h, c)
    sigma = sigma + eps * float(torch.trace(sigma)) / sigma.shape[0] * torch.eye(
        sigma.shape[0], dtype=torch.float64
    )
    return torch.einsum("ip,pq,iq->i", dw, torch.linalg.inv(sigma), dw)


def test_weights_full_uses_the_networks_gradients_at_w_t() -> None:
    model = _tiny_net()
    x, y, xe = _tiny_data()
    n, k, l2 = x.shape[0], 2, 0.05
    lam = n * l2
    res = si.sample_information(
        model, x, y, k=k, x_eval=xe, l2=l2, measures=["weights", "weights_full", "weights_full_linearized"]
    )
    assert res.si_weights_full is not None and res.si_weights_full_linearized is not None
    # Reference: weight-space refits, then the real network's per-example gradients at w_t by autograd.
    jac = per_sample_jacobians(model, x).double().reshape(n * k, -1)
    p = jac.shape[1]
    r0 = (model(x) - one_hot(y, k)).detach().reshape(-1)
    w_delta = ridge_weights(jac, r0, lam=lam)
    dws = []
    for i in range(n):
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        dws.append(w_delta - ridge_weights(jac[keep], r0[keep], lam=lam))
    dw = torch.stack(dws)
    net = copy.deepcopy(model)
    set_flat_parameters(net, flat_parameters(model) + w_delta)
    grads = []
    for i in range(n):
        loss = 0.5 * ((net(x[i : i + 1])[0] - one_hot(y[i : i + 1], k)[0]) ** 2).sum()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))]))
    h = jac.T @ jac + lam * torch.eye(p, dtype=torch.float64)
    expected = _full_score_reference(h, torch.stack(grads), dw, 1e-6)
    np.testing.assert_allclose(res.si_weights_full, expected.numpy(), rtol=1e-6)
    # The linearized variant: J(w₀)ᵀ(f_t − y), f_t the linearized predictions.
    resid = (r0 + jac @ w_delta).reshape(n, k)
    lin_grads = torch.einsum("ikp,ik->ip", jac.reshape(n, k, p), resid)
    expected_lin = _full_score_reference(h, lin_grads, dw, 1e-6)
    np.testing.assert_allclose(res.si_weights_full_linearized, expected_lin.numpy(), rtol=1e-6)
    assert np.abs(res.si_weights_full / res.si_weights_full_linearized - 1).max() > 1e-3  # they differ


def test_weights_full_jitter_is_relative_so_scores_follow_the_gradient_units() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    h = a @ a.T + torch.eye(12, dtype=torch.float64)
    g = 1e-3 * torch.randn(5, 12, generator=gen, dtype=torch.float64)  # n < p: C is singular
    dw = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    base = si.weights_full_scores(h, g, dw)
    for c in (1e-3, 1e3):
        torch.testing.assert_close(si.weights_full_scores(h, c * g, dw) * c**2, base, rtol=1e-6, atol=0)


@pytest.mark.parametrize("structure", ["dense", "kronecker"])
def test_projected_weights_full_is_named_and_computed_in_the_projection_space(
    tmp_path: Path, structure: str
) -> None:
    from infoscore.projection import KroneckerProjector, trace_shares

    model = _tiny_net(seed=2)
    x, y, xe = _tiny_data(10)
    n, k, d, l2 = 10, 2, 16, 0.05
    res = si.sample_information(
        model, x, y, k=k, x_eval=xe, l2=l2, method="projected", projection_dim=d, seed=4,
        measures=["weights", "weights_full"], projection_structure=structure,  # type: ignore[arg-type]
    )  # fmt: skip
    assert set(res.columns()) == {"si_weights", "si_weights_full_projected"}
    assert res.info["weights_full_space"] == "projection"
    # Reference: the network restricted to w₀ + R v; v-gradients Rᵀ∇_w, H_v = ΦᵀΦ + λI.
    if structure == "dense":
        r = projector_for(model, d, seed=4).dense().double()
    else:  # the same R as the job: seed, budget split by trace shares
        kron = KroneckerProjector(
            model, d, kind="rademacher", seed=4, device=x.device, weights=trace_shares(model, x[:512])
        )
        r = kron.dense().double()
        d = kron.d
    phi = per_sample_jacobians(model, x).double().reshape(n * k, -1) @ r
    r0 = (model(x) - one_hot(y, k)).detach().reshape(-1)
    lam = n * l2
    v = ridge_weights(phi, r0, lam=lam)
    dv = []
    for i in range(n):
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        dv.append(v - ridge_weights(phi[keep], r0[keep], lam=lam))
    net = copy.deepcopy(model)
    set_flat_parameters(net, flat_parameters(model) + r @ v)
    grads = []
    for i in range(n):
        loss = 0.5 * ((net(x[i : i + 1])[0] - one_hot(y[i : i + 1], k)[0]) ** 2).sum()
        g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, list(net.parameters()))])
        grads.append(r.T @ g)
    h = phi.T @ phi + lam * torch.eye(d, dtype=torch.float64)
    expected = _full_score_reference(h, torch.stack(grads), torch.stack(dv), 1e-6)
    assert res.si_weights_full is not None
    np.testing.assert_allclose(res.si_weights_full, expected.numpy(), rtol=1e-5)


# --- delta_f -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "projected"])
def test_delta_f_is_the_prediction_change_of_each_refit(method: str) -> None:
    model = _tiny_net(seed=3)
    x, y, xe = _tiny_data(12)
    n, k, m, l2 = 12, 2, 6, 0.05
    kw = {"k": k, "x_eval": xe, "l2": l2, "t": 25, "lr": 0.5, "method": method, "projection_dim": 24}
    res = si.sample_information(model, x, y, delta_f=True, **kw)  # type: ignore[arg-type]
    assert res.delta_f is not None and res.delta_f.dtype == np.float32 and res.delta_f.shape == (n, m, k)
    assert res.si_predictions is not None
    np.testing.assert_allclose(
        (res.delta_f.astype(np.float64) ** 2).sum((1, 2)), 2 * res.si_predictions, rtol=1e-5
    )
    if method == "exact":  # the sign and the layout against explicit GD refits of the linearized model
        jac = per_sample_jacobians(model, x).double().reshape(n * k, -1)
        jac_eval = per_sample_jacobians(model, xe).double().reshape(m * k, -1)
        r0 = (model(x) - one_hot(y, k)).detach().reshape(-1)
        full = explicit_gd_weights(jac, r0, lam=n * l2, eta=0.5 / n, t=25)
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[4 * k : 5 * k] = False
        loo = explicit_gd_weights(jac[keep], r0[keep], lam=n * l2, eta=0.5 / (n - 1), t=25)
        expected = (jac_eval @ (full - loo)).reshape(m, k)
        np.testing.assert_allclose(res.delta_f[4], expected.numpy(), rtol=1e-4, atol=1e-7)


def test_delta_f_over_the_limit_is_refused_before_any_work() -> None:
    model = _tiny_net()
    x, y, xe = _tiny_data()
    with pytest.raises(InvalidInputError) as err:
        si.sample_information(model, x, y, k=2, x_eval=xe, delta_f=True, max_delta_f_bytes=100)
    assert err.value.param == "delta_f" and "'delta_f'" in str(err.value)
    shape = Shape(60_000, 10_000, 784, 10, [784])
    est = cest.estimate(
        {
            "kind": "sample-information",
            "model": {"arch": "linear"},
            "params": {"delta_f": True, "method": "projected"},
        },
        shape,
    )
    assert [p["type"] for p in est.problems] == ["delta-f-too-large"] and "GiB" in est.problems[0]["detail"]


def _request(params: dict[str, object], model: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "kind": "sample-information",
        "dataset": {"builtin": "gaussians", "n": 40, "dim": 6, "classes": 3, "n_test": 12, "seed": 1},
        "model": model or {"arch": "mlp", "hidden": [8]},
        "seed": 3,
        "params": params,
    }


def test_runner_writes_delta_f_npz(tmp_path: Path) -> None:
    out = SampleInformationRunner().run(make_context(_request({"delta_f": True, "eval_size": 7}), tmp_path))
    path = out.files["delta_f.npz"]
    assert isinstance(path, Path)
    with np.load(path, allow_pickle=False) as z:
        arr = z["delta_f"]
    assert arr.dtype == np.float32 and arr.shape == (40, 7, 3)
    assert out.summary["delta_f"]["shape"] == [40, 7, 3] and len(out.summary["delta_f"]["eval_indices"]) == 7
    assert out.scores is not None
    np.testing.assert_allclose(
        (arr.astype(np.float64) ** 2).sum((1, 2)) / 2, out.scores["si_predictions"], rtol=1e-4
    )


# --- linearize_at --------------------------------------------------------------------------


def test_linearize_at_trained_equals_the_library_on_a_trained_copy(tmp_path: Path) -> None:
    params = {"linearize_at": "trained", "train_epochs": 3, "l2": 1e-2}
    ctx = make_context(_request(params), tmp_path)
    out = SampleInformationRunner().run(ctx)
    ds = ctx.dataset
    model = models.build_model({"arch": "mlp", "hidden": [8]}, ds.input_shape, 3, seed=3)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    init = si.sample_information(model, x, y, k=3, x_eval=None, l2=1e-2, measures=["weights"])
    train_classifier(model, x, y, epochs=3, batch_size=64, lr=1e-3, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(12, size=12, replace=False))
    trained = si.sample_information(model, x, y, k=3, x_eval=torch.tensor(ds.x_test[rows]), l2=1e-2)
    assert out.scores is not None and trained.si_weights is not None and init.si_weights is not None
    np.testing.assert_allclose(out.scores["si_weights"], trained.si_weights, rtol=1e-6)
    assert np.abs(trained.si_weights / init.si_weights - 1).max() > 1e-2  # not the init point
    assert out.summary["linearize_at"] == "trained" and out.summary["train_epochs"] == 3
    assert 0 <= out.summary["trained_accuracy"] <= 1


def test_linearize_at_checkpoint_loads_safetensors_and_validates_the_spec(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    job_dir = data_dir / "jobs" / ("job_" + "a" * 24)
    job_dir.mkdir(parents=True)
    ctx0 = make_context(_request({}), tmp_path / "w0", data_dir=data_dir)
    ds = ctx0.dataset
    source = models.build_model({"arch": "mlp", "hidden": [8]}, ds.input_shape, 3, seed=11)
    models.save_safetensors(source, str(job_dir / "model.safetensors"))
    ref = {"job": "job_" + "a" * 24, "artifact": "model.safetensors"}
    ctx = make_context(_request({"linearize_at": ref, "l2": 1e-2}), tmp_path / "w1", data_dir=data_dir)
    out = SampleInformationRunner().run(ctx)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    rows = np.sort(np.random.default_rng(3).choice(12, size=12, replace=False))
    expected = si.sample_information(source, x, y, k=3, x_eval=torch.tensor(ds.x_test[rows]), l2=1e-2)
    assert out.scores is not None and expected.si_weights is not None
    np.testing.assert_allclose(out.scores["si_weights"], expected.si_weights, rtol=1e-6)
    assert out.summary["linearize_at"] == ref

    wrong = make_context(
        _request({"linearize_at": ref}, {"arch": "mlp", "hidden": [9]}), tmp_path / "w2", data_dir=data_dir
    )
    with pytest.raises(InvalidInputError, match="linearize_at") as err:
        SampleInformationRunner().run(wrong)
    assert err.value.param == "linearize_at"

    # A pickle under a .safetensors name is refused, never unpickled.
    flag = tmp_path / "unpickled"
    (job_dir / "evil.safetensors").write_bytes(pickle.dumps(_Marker(flag)))
    bad = make_context(
        _request({"linearize_at": {**ref, "artifact": "evil.safetensors"}}),
        tmp_path / "w3",
        data_dir=data_dir,
    )
    with pytest.raises(InvalidInputError, match="safetensors"):
        SampleInformationRunner().run(bad)
    assert not flag.exists()


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


def test_ground_truth_follows_the_linearization_point(tmp_path: Path) -> None:
    """The network reference retrains from the same (trained) w₀ as the estimate."""
    params = {
        "linearize_at": "trained", "train_epochs": 2, "t": 20, "lr": 0.5, "l2": 1e-2, "measures": ["weights"],
        "ground_truth": {"subset": 6, "reference": "linearized"},
    }  # fmt: skip
    out = SampleInformationRunner().run(make_context(_request(params), tmp_path))
    assert out.summary["ground_truth"]["pearson_weights"] > 0.999999


# --- gateway: refusals at submit ----------------------------------------------------------


def _problem_body(r: Any, status: int, type_: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["type"].endswith(type_), body
    return body


def test_gateway_refuses_slow_finite_t_and_large_delta_f_with_the_estimate(api: Any) -> None:
    ok = {
        "kind": "sample-information",
        "dataset": {"builtin": "digits", "classes": [4, 9]},
        "model": {"arch": "mlp", "hidden": [64]},
        "params": {"t": 2000},
    }
    est = api.post("/v1/jobs:estimate", json=ok).json()
    assert est["fits"] is True and 0 < est["compute_seconds"]["finite_t_loo"] < est["limits"]["seconds"]
    slow = {
        **ok,
        "dataset": {"builtin": "gaussians", "n": 1500, "dim": 4, "classes": 10, "n_test": 50},
        "model": {"arch": "linear"},
        "params": {"t": 100, "time": "continuous"},
    }
    body = _problem_body(api.post("/v1/jobs", json=slow), 422, "too-slow")
    assert "INFOSCORE_JOB_TIME_LIMIT" in str(body["detail"])
    assert body["estimate"]["compute_seconds"]["finite_t_loo"] > body["limit"]
    big = {
        **ok,
        "dataset": {"builtin": "gaussians", "n": 30_000, "dim": 4, "classes": 10, "n_test": 2000},
        "model": {"arch": "linear"},
        "params": {"method": "projected", "projection_dim": 64, "delta_f": True},
    }
    body = _problem_body(api.post("/v1/jobs", json=big), 422, "delta-f-too-large")
    assert body["field"] == "params.delta_f" and "eval_size" in str(body["detail"])
    assert api.get("/v1/jobs").json()["items"] == []


def test_gateway_checks_the_checkpoint_reference(api: Any, environment: Any, tmp_path: Path) -> None:
    from store.db import JobStore

    store = JobStore(f"sqlite:///{(environment.data_dir / 'infoscore.db').resolve()}")
    model = {"arch": "mlp", "hidden": [8]}
    dataset = {"builtin": "gaussians", "n": 30, "dim": 6, "classes": 3, "n_test": 10}
    source = store.create_job(
        kind="limit", request={"kind": "limit", "model": model, "dataset": dataset}, fingerprint="f" * 64
    )
    net = models.build_model(model, (6,), 3, seed=0)
    path = environment.data_dir / "jobs" / source["id"] / "model.safetensors"
    path.parent.mkdir(parents=True)
    models.save_safetensors(net, str(path))
    ref = {"job": source["id"], "artifact": "model.safetensors"}
    job = {"kind": "sample-information", "dataset": dataset, "model": model, "params": {"linearize_at": ref}}
    body = _problem_body(api.post("/v1/jobs", json=job), 422, "bad-checkpoint")
    assert "queued" in str(body["detail"])  # not finished yet
    store.finish(source["id"], "succeeded", artifacts=["model.safetensors"])
    other = {**job, "model": {"arch": "mlp", "hidden": [9]}, "params": {"linearize_at": ref}}
    body = _problem_body(api.post("/v1/jobs", json=other), 422, "bad-checkpoint")
    assert "same model spec" in str(body["detail"])
    wider = {**job, "dataset": {**dataset, "classes": 4}}
    body = _problem_body(api.post("/v1/jobs", json=wider), 422, "bad-checkpoint")
    assert "parameters" in str(body["detail"])
    unknown = {**job, "params": {"linearize_at": {**ref, "job": "job_" + "0" * 24}}}
    _problem_body(api.post("/v1/jobs", json=unknown), 422, "unknown-checkpoint")
    r = api.post("/v1/jobs", json=job)
    assert r.status_code == 202, r.text


# --- through the service: a real worker --------------------------------------------------


def test_service_linearizes_at_a_limit_checkpoint_and_serves_delta_f(api: Any, worker: Any) -> None:
    from tests.conftest import wait_for_state

    dataset = {"builtin": "gaussians", "n": 60, "dim": 6, "classes": 3, "n_test": 20, "seed": 2}
    model = {"arch": "mlp", "hidden": [8]}
    limit = {"kind": "limit", "dataset": dataset, "model": model, "params": {"epochs": 3, "baseline": False}}
    r = api.post("/v1/jobs", json=limit)
    assert r.status_code == 202, r.text
    source = wait_for_state(api, r.json()["id"], ("succeeded", "failed"), timeout=180)
    assert source["state"] == "succeeded", source["error"]
    ref = {"job": source["id"], "artifact": "model.safetensors"}
    params = {"linearize_at": ref, "delta_f": True, "eval_size": 5, "l2": 1e-2}
    job = {"kind": "sample-information", "dataset": dataset, "model": model, "params": params}
    r = api.post("/v1/jobs", json=job)
    assert r.status_code == 202, r.text
    done = wait_for_state(api, r.json()["id"], ("succeeded", "failed"), timeout=180)
    assert done["state"] == "succeeded", done["error"]
    assert done["summary"]["linearize_at"] == ref and "delta_f.npz" in done["artifacts"]
    blob = api.get(f"/v1/jobs/{done['id']}/artifacts/delta_f.npz")
    assert blob.status_code == 200
    with np.load(io.BytesIO(blob.content), allow_pickle=False) as z:
        arr = z["delta_f"]
    assert arr.shape == (60, 5, 3) and arr.dtype == np.float32
    rows = api.get(f"/v1/jobs/{done['id']}/result", params={"limit": 100}).json()
    assert "si_predictions" in str(rows)


def test_exact_path_copies_to_the_host_only_when_returning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device residency (issue #10): no .cpu()/.numpy() round trips mid-computation; the only
    host copies are the returned arrays (si_weights, si_predictions, si_weights_full, delta_f)."""
    model = _tiny_net()
    x, y, xe = _tiny_data()
    calls: list[str] = []
    real_cpu, real_numpy = torch.Tensor.cpu, torch.Tensor.numpy

    def cpu(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        calls.append("cpu")
        return real_cpu(self, *a, **k)

    def numpy(self: torch.Tensor, *a: Any, **k: Any) -> np.ndarray:
        calls.append("numpy")
        return real_numpy(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    monkeypatch.setattr(torch.Tensor, "numpy", numpy)
    res = si.sample_information(
        model, x, y, k=2, x_eval=xe, y_eval=y[:6], t=30, lr=0.5, l2=0.05, delta_f=True,
        measures=["weights", "predictions", "weights_full"],
    )  # fmt: skip
    monkeypatch.undo()
    assert res.delta_f is not None and res.si_weights_full is not None
    assert calls.count("cpu") <= 4 and calls.count("numpy") <= 4, calls
