"""t = ∞ leave-one-out with its own ridge (``loo_lambda: rescaled``) against brute-force
refits, exact and projected, and the one automatic-ridge rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from infoscore import data, models
from infoscore import ground_truth as gt
from infoscore.linearized import ridge_weights
from infoscore.sample_info import loo_infinite, loo_primal, sample_information

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n: int, k: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n * k, p, generator=gen, dtype=torch.float64) / p**0.5,
        torch.randn(n * k, generator=gen, dtype=torch.float64),
    )


def _refits(jac: torch.Tensor, r0: torch.Tensor, k: int, lam: float, lam_loo: float) -> torch.Tensor:
    """Δw_i (n, p): full ridge fit at λ minus the refit without sample i at λ_loo."""
    n = jac.shape[0] // k
    full = ridge_weights(jac, r0, lam=lam)
    out = []
    for i in range(n):
        keep = torch.ones(n * k, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        out.append(full - ridge_weights(jac[keep], r0[keep], lam=lam_loo))
    return torch.stack(out)


@pytest.mark.parametrize(("p", "k"), [(30, 1), (30, 3), (300, 3)])
def test_kernel_loo_with_its_own_ridge_equals_refits(p: int, k: int) -> None:
    n, lam = 40, 0.3
    lam_loo = lam * (n - 1) / n
    jac, r0 = _problem(n, k, p, seed=p + k)
    theta = jac @ jac.T
    res = loo_infinite(theta, r0, k=k, lam=lam, lam_loo=lam_loo)
    dw = _refits(jac, r0, k, lam, lam_loo)
    expected = (dw**2).sum(1)
    torch.testing.assert_close(res.sq_weight_change, expected, rtol=1e-8, atol=1e-8 * float(expected.max()))
    torch.testing.assert_close(-(jac.T @ res.delta).T, dw, rtol=1e-8, atol=1e-8 * float(dw.abs().max()))
    same = loo_infinite(theta, r0, k=k, lam=lam)
    assert float((same.sq_weight_change - res.sq_weight_change).abs().max()) > 1e-6 * float(expected.max())
    torch.testing.assert_close(res.u, same.u)  # the full run keeps λ


@pytest.mark.parametrize("chunk", [7, 512])
def test_primal_loo_with_its_own_ridge_equals_refits(chunk: int) -> None:
    n, k, d, lam = 35, 3, 20, 0.4
    lam_loo = lam * (n - 1) / n
    phi, r0 = _problem(n, k, d, seed=5)
    phi_eval = _problem(6, k, d, seed=6)[0]
    res = loo_primal(phi, r0, k=k, lam=lam, lam_loo=lam_loo, phi_eval=phi_eval, keep_dv=True, chunk=chunk)
    dv = _refits(phi, r0, k, lam, lam_loo)
    assert res.dv is not None and res.sq_prediction_change is not None
    torch.testing.assert_close(res.dv, dv, rtol=1e-8, atol=1e-9 * float(dv.abs().max()))
    torch.testing.assert_close(res.sq_prediction_change, ((dv @ phi_eval.T) ** 2).sum(1))
    same = loo_primal(phi, r0, k=k, lam=lam, phi_eval=phi_eval)
    assert not torch.allclose(same.sq_weight_change, res.sq_weight_change, rtol=1e-6)


def test_rescaled_is_honoured_end_to_end_at_t_infinity() -> None:
    """sample_information(loo_lambda='rescaled', t=None) equals weight-space ridge refits with
    λ_loo = (n − 1)·l2 (ground_truth.linearized_loo), and differs from 'same'."""
    ds = data.make_gaussians(n=24, dim=5, classes=3, n_test=8, label_noise=0.2, seed=3)
    model = models.build_model({"arch": "mlp", "hidden": [6]}, (5,), 3, seed=2).double()
    x, y = torch.tensor(ds.x_train, dtype=torch.float64), torch.tensor(ds.y_train)
    xe = torch.tensor(ds.x_test, dtype=torch.float64)
    idx = np.arange(24)
    kw: dict[str, Any] = {"t": None, "lr": 0.1, "l2": 0.05}
    by_mode = {}
    for mode in ("same", "rescaled"):
        ref = gt.linearized_loo(model, x, y, k=3, indices=idx, x_eval=xe, loo_lambda=mode, **kw)  # type: ignore[arg-type]
        est = sample_information(model, x, y, k=3, x_eval=xe, loo_lambda=mode, **kw)  # type: ignore[arg-type]
        assert (
            est.si_weights is not None and est.si_predictions is not None and ref.sq_predictions is not None
        )
        np.testing.assert_allclose(2 * est.si_weights, ref.sq_weights, rtol=1e-7)
        np.testing.assert_allclose(2 * est.si_predictions, ref.sq_predictions, rtol=1e-7)
        by_mode[mode] = est
        assert est.info["lam_loo"] == pytest.approx((24 if mode == "same" else 23) * 0.05)
    assert by_mode["same"].si_weights is not None and by_mode["rescaled"].si_weights is not None
    assert not np.allclose(by_mode["same"].si_weights, by_mode["rescaled"].si_weights, rtol=1e-4)
    proj = {
        mode: sample_information(
            model, x, y, k=3, x_eval=xe, loo_lambda=mode, method="projected", projection_dim=16, **kw
        ).si_weights
        for mode in ("same", "rescaled")
    }
    assert proj["same"] is not None and proj["rescaled"] is not None
    assert not np.allclose(proj["same"], proj["rescaled"], rtol=1e-4)
