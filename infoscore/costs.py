"""Cost model of finite-t leave-one-out (docs/science.md §2), in flop-like units.

Standard library only (no torch, no numpy), so that the gateway's job estimator
(``contracts/estimate.py``) imports this very formula instead of a copy of it:
``infoscore.sample_info`` uses it to choose a route and to refuse what will not fit, the
estimator to turn it into seconds. Importing ``infoscore.costs`` loads
``infoscore/__init__.py``, which is torch-free too (its heavy names load lazily).
"""

from __future__ import annotations

import math

RECURRENCE_BLOCK = 64  # time steps per block of the recurrence route (upper end; see recurrence_block)


# Cost weight of the in-block substitution (small batched matmuls, launch- and memory-bound):
# fitted so that n = 2000, k = 10, d = 512, t = 2000 (projected, 31 s of CPU) and n = 1000,
# k = 2, t = 2000 (kernel, 6 s) come out at or above their measured CPU time at 2.4e10/s.
IN_BLOCK_WEIGHT = 80.0


def recurrence_block(dim: int, k: int, t: int) -> int:
    """Time steps per block: the in-block substitution reads k²·block/2 numbers per sample and
    step, the block boundaries 3·k·dim per sample and block, so √(6·dim/k) balances them
    (dim = N for the kernel route, d for the feature-space one); clamped to [8, 64] and t."""
    return max(1, min(t, RECURRENCE_BLOCK, max(8, round(math.sqrt(6.0 * dim / max(k, 1))))))


def finite_t_cost(n: int, k: int, t: int, route: str) -> float:
    """Flop-like cost of exact finite-t LOO on the full kernel (N = nk), for the route choice
    (``infoscore.sample_info``) and the job estimator (``contracts.estimate``).

    ``recurrence``: one ``eigh`` of Θ (≈10 N³), GEMMs of 6 nkNt for the residual curves,
    history read-outs and state updates, the Markov blocks (2 nk²N·64), the in-block
    substitution (n k²·block·t: many small batched matmuls, weighted ``IN_BLOCK_WEIGHT``) and
    δ = U δ̃ (2 N²n).
    ``eigh``: one ``eigh`` of A₋ᵢ,₋ᵢ per sample, ≈ 10 n (N − k)³, and the quadratic forms.
    """
    big_n = float(n * k)
    if route == "eigh":
        return 10.0 * n * (big_n - k) ** 3 + 2.0 * big_n * big_n * n
    block = float(recurrence_block(n * k, k, t))
    return (
        10.0 * big_n**3
        + 6.0 * n * k * big_n * t
        + 2.0 * n * k * k * big_n * block
        + IN_BLOCK_WEIGHT * n * k * k * block * t
        + 2.0 * big_n * big_n * n
    )


def projected_finite_t_cost(n: int, k: int, d: int, t: int, time: str) -> float:
    """Cost of projected finite-t LOO in the units of :func:`finite_t_cost`: discrete time
    uses ``infoscore.sample_info.loo_primal_finite`` (one eigh of the d x d Gram matrix, its
    formation, the recurrence), continuous time one eigh per sample."""
    if time != "discrete":
        return 10.0 * n * float(d) ** 3
    block = float(recurrence_block(d, k, t))
    big_n = float(n * k)
    return (
        10.0 * float(d) ** 3
        + 2.0 * big_n * d * d
        + 6.0 * big_n * d * t
        + 2.0 * n * k * k * d * block
        + IN_BLOCK_WEIGHT * n * k * k * block * t
    )
