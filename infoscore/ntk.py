"""Per-sample logit Jacobians and the empirical neural tangent kernel (NTK).

Glossary: n samples, k outputs, p parameters. ``J`` stacks per-sample Jacobians
sample-major: ``J[i]`` is (k, p), the derivative of sample i's k logits w.r.t. the
flattened parameters (``named_parameters`` order). The NTK is Θ = J Jᵀ.

Memory policy lives in the chunking wrapper (``jacobian_chunks``), not in the math: the
Jacobian is formed ``batch_size`` samples at a time, so callers that only need
contractions (Gram matrices, projections) never hold all of J.

Models are evaluated in eval mode (BatchNorm uses its running statistics, dropout off)
through ``torch.func.functional_call``; the module itself is not modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .errors import invalid
from .progress import ProgressFn, StopFn, check_stop

KernelKind = Literal["full", "averaged", "trace"]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """(p,) detached copy of the parameters in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    """Inverse of :func:`flat_parameters` (in place)."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def logit_function(
    model: nn.Module,
) -> tuple[Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], dict[str, torch.Tensor]]:
    """A pure function ``f(params, x_single) -> logits (k,)`` and the current params."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def f(prm: dict[str, torch.Tensor], x_single: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (prm, buffers), (x_single.unsqueeze(0),))[0]

    return f, params


def jacobian_chunks(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 128,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, J_chunk)`` with J_chunk (b, k, p) for x[start:start+b].

    x (n, ...) on the model's device; the Jacobian has the model's dtype.
    """
    if batch_size < 1:
        raise invalid("batch_size", "jacobian_chunks", "a positive integer", batch_size)
    was_training = model.training
    model.eval()
    try:
        f, params = logit_function(model)
        jac_fn = vmap(jacrev(f), in_dims=(None, 0))
        n = x.shape[0]
        for start in range(0, n, batch_size):
            check_stop(should_stop)
            jac = jac_fn(params, x[start : start + batch_size])
            b = x[start : start + batch_size].shape[0]
            chunk = torch.cat([j.reshape(b, j.shape[1], -1) for j in jac.values()], dim=2)
            yield start, chunk
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)


def per_sample_jacobians(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 128, should_stop: StopFn | None = None
) -> torch.Tensor:
    """J (n, k, p): all per-sample logit Jacobians (memory n*k*p)."""
    chunks = [c for _, c in jacobian_chunks(model, x, batch_size=batch_size, should_stop=should_stop)]
    return torch.cat(chunks, dim=0)


def gram_from_jacobians(
    j1: torch.Tensor, j2: torch.Tensor | None = None, *, kernel: KernelKind = "full"
) -> torch.Tensor:
    """Contract Jacobians into a kernel, in float64.

    j1 (n1, k, p), j2 (n2, k, p) or None (= j1).
    ``full`` -> (n1*k, n2*k), sample-major blocks; ``averaged`` -> (n1, n2) with
    K_ij = (1/k) Σ_c <∇f_c(x_i), ∇f_c(x_j)>; ``trace`` -> (n1, n2) = k * averaged.
    """
    a = j1.to(torch.float64)
    b = a if j2 is None else j2.to(torch.float64)
    if kernel == "full":
        return a.reshape(-1, a.shape[2]) @ b.reshape(-1, b.shape[2]).T
    if kernel in ("averaged", "trace"):
        g = torch.einsum("ikp,jkp->ij", a, b)
        return g / a.shape[1] if kernel == "averaged" else g
    raise invalid("kernel", "gram_from_jacobians", "'full', 'averaged' or 'trace'", kernel)


def ntk_gram(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    kernel: KernelKind = "full",
    batch_size: int = 128,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> torch.Tensor:
    """Empirical NTK between x1 (n1, ...) and x2 (n2, ...) (x2 None -> x1), float64.

    Shapes as in :func:`gram_from_jacobians`. Holds J(x2) whole and streams J(x1) in
    chunks; for large n1 = n2 this is the memory-bounded form (one J plus one chunk).
    """
    j2 = per_sample_jacobians(model, x1 if x2 is None else x2, batch_size=batch_size, should_stop=should_stop)
    n1 = x1.shape[0]
    k = j2.shape[1]
    rows = n1 * k if kernel == "full" else n1
    cols = j2.shape[0] * k if kernel == "full" else j2.shape[0]
    out = torch.empty((rows, cols), dtype=torch.float64, device=j2.device)
    for start, chunk in jacobian_chunks(
        model, x1, batch_size=batch_size, progress=progress, should_stop=should_stop
    ):
        block = gram_from_jacobians(chunk, j2, kernel=kernel)
        r0 = start * k if kernel == "full" else start
        out[r0 : r0 + block.shape[0]] = block
    return out
