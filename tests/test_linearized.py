"""Closed-form linearized GD dynamics against explicit weight-space GD (float64)."""

from __future__ import annotations

import pytest
import torch

from infoscore.errors import InvalidInputError, NumericalError
from infoscore.linearized import (
    cholesky_with_jitter,
    dynamics_coefficients,
    explicit_gd_weights,
    gd_filter,
    loo_sum_form,
    ridge_weights,
    sum_form,
)

# Two cores, shared: more torch threads than one only fight over them.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n_rows: int = 30, p: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(n_rows, p, generator=gen, dtype=torch.float64) / p**0.5
    r0 = torch.randn(n_rows, generator=gen, dtype=torch.float64)
    return jac, r0


@pytest.mark.parametrize("t", [1, 7, 150])
@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("p", [12, 50])
def test_closed_form_matches_explicit_gd(t: int, lam: float, p: int) -> None:
    jac, r0 = _problem(p=p)
    theta = jac @ jac.T
    eta = 1.5 / float(torch.linalg.eigvalsh(theta + lam * torch.eye(30, dtype=torch.float64)).max())
    u, _ = dynamics_coefficients(theta, r0, lam=lam, eta=eta, t=t)
    ref = explicit_gd_weights(jac, r0, lam=lam, eta=eta, t=t)
    torch.testing.assert_close(-jac.T @ u, ref, rtol=1e-10, atol=1e-12)
    # Predictions: f_t(X) − f₀(X) = −Θu = J(w_t − w₀).
    torch.testing.assert_close(-theta @ u, jac @ ref, rtol=1e-10, atol=1e-12)


def test_continuous_time_matches_weight_space_form() -> None:
    jac, r0 = _problem(p=20)
    theta = jac @ jac.T
    u, _ = dynamics_coefficients(theta, r0, lam=0.1, eta=0.01, t=300, time="continuous")
    ref = explicit_gd_weights(jac, r0, lam=0.1, eta=0.01, t=300, time="continuous")
    torch.testing.assert_close(-jac.T @ u, ref, rtol=1e-10, atol=1e-12)


def test_infinite_time_is_ridge_and_limit_of_gd() -> None:
    jac, r0 = _problem(p=12)
    theta = jac @ jac.T
    u, jitter = dynamics_coefficients(theta, r0, lam=0.5, eta=0.0, t=None)
    assert jitter == 0.0
    torch.testing.assert_close(-jac.T @ u, ridge_weights(jac, r0, lam=0.5), rtol=1e-10, atol=1e-12)
    u_long, _ = dynamics_coefficients(theta, r0, lam=0.5, eta=0.3, t=20_000)
    torch.testing.assert_close(u_long, u, rtol=1e-9, atol=1e-12)


def test_filter_is_stable_for_tiny_eigenvalues() -> None:
    s = torch.tensor([0.0, 1e-300, 1e-12, 1.0], dtype=torch.float64)
    g = gd_filter(s, eta=0.1, t=1000)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g[:3], torch.full((3,), 100.0, dtype=torch.float64), rtol=1e-9, atol=0)
    # 1 ≤ ηs < 2 uses the direct power (oscillating but convergent GD).
    g2 = gd_filter(torch.tensor([15.0], dtype=torch.float64), eta=0.1, t=3)
    torch.testing.assert_close(g2, torch.tensor([(1 - (1 - 1.5) ** 3) / 15.0], dtype=torch.float64))


def test_divergent_step_is_rejected_naming_lr() -> None:
    with pytest.raises(InvalidInputError, match="'lr'"):
        gd_filter(torch.tensor([1.0, 30.0], dtype=torch.float64), eta=0.1, t=5)


def test_infinite_time_needs_positive_definite() -> None:
    with pytest.raises(NumericalError):
        gd_filter(torch.tensor([0.0, 1.0], dtype=torch.float64), eta=0.1, t=None)


def test_cholesky_jitter_ladder_reports_the_jitter() -> None:
    jac, _ = _problem(n_rows=20, p=5)
    chol = cholesky_with_jitter(jac @ jac.T)  # rank 5 < 20: singular
    assert chol.eps > 0 and chol.jitter > 0
    assert chol.eps <= 1e-6


def test_mean_and_sum_form_conventions() -> None:
    assert sum_form(100, 0.5, 0.01) == (0.005, 1.0)
    eta, lam = loo_sum_form(100, 0.5, 0.01, "same")
    assert eta == pytest.approx(0.5 / 99) and lam == pytest.approx(1.0)
    assert loo_sum_form(100, 0.5, 0.01, "rescaled")[1] == pytest.approx(0.99)
    with pytest.raises(InvalidInputError, match="'loo_lambda'"):
        loo_sum_form(100, 0.5, 0.01, "bogus")  # type: ignore[arg-type]
