"""Seeded random projections of per-sample Jacobians (SCIENCE.md section 2.5, TRAK-style).

Glossary: **n** samples, **k** outputs, **p** parameters, **d** projection dimension.
R ∈ R^{p×d} has i.i.d. entries ±1/√d (``rademacher``, the default: cheapest to draw, same
first two moments) or N(0, 1/d) (``gaussian``), so E[R Rᵀ] = I and Θ = J Jᵀ ≈ Φ Φᵀ with
Φ = J R. R's rows are split by parameter tensor and, inside a tensor, into blocks of
``ROW_BLOCK`` rows; each block has its own generator seeded from (seed, tensor index, block
index), so R does not depend on how samples are chunked, and a block can be regenerated
instead of stored (:class:`Projector` keeps blocks up to ``cache_bytes``).

The Jacobian is never held whole: :func:`projected_features` projects the chunks of
:func:`infoscore.ntk.jacobian_chunks` as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .errors import invalid
from .ntk import jacobian_chunks
from .progress import ProgressFn, StopFn

ProjectionKind = Literal["rademacher", "gaussian"]
PROJECTION_KINDS: tuple[str, ...] = ("rademacher", "gaussian")
ProjectionStructure = Literal["kronecker", "dense"]
PROJECTION_STRUCTURES: tuple[str, ...] = ("kronecker", "dense")
ROW_BLOCK = 8192
DEFAULT_CACHE_BYTES = 1 << 30


def block_seed(seed: int, tensor_index: int, block_index: int) -> int:
    """Generator seed of one block of R, derived from explicit ids only."""
    state = np.random.SeedSequence([int(seed), int(tensor_index), int(block_index)]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> np.uint64(1))


class Projector:
    """R (p, d) split per parameter tensor; ``project`` maps (b, k, p) -> (b, k, d).

    sizes: the parameter tensors' element counts in ``named_parameters`` order.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        d: int,
        *,
        kind: ProjectionKind = "rademacher",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if d < 1:
            raise invalid("projection_dim", "Projector", "a positive integer", d)
        if kind not in PROJECTION_KINDS:
            raise invalid("projection", "Projector", f"one of {list(PROJECTION_KINDS)}", kind)
        self.sizes = [int(s) for s in sizes]
        self.d = int(d)
        self.kind = kind
        self.seed = int(seed)
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.cached = sum(self.sizes) * self.d * itemsize <= cache_bytes
        self._cache: dict[tuple[int, int], Tensor] = {}

    @property
    def p(self) -> int:
        return sum(self.sizes)

    def block(self, tensor_index: int, block_index: int) -> Tensor:
        """Rows [block_index*ROW_BLOCK, ...) of tensor ``tensor_index``'s part of R."""
        key = (tensor_index, block_index)
        if key in self._cache:
            return self._cache[key]
        rows = min(ROW_BLOCK, self.sizes[tensor_index] - block_index * ROW_BLOCK)
        gen = torch.Generator().manual_seed(block_seed(self.seed, tensor_index, block_index))
        if self.kind == "rademacher":
            r = torch.randint(0, 2, (rows, self.d), generator=gen).to(self.dtype).mul_(2).sub_(1)
        else:
            r = torch.randn((rows, self.d), generator=gen, dtype=self.dtype)
        r = r.mul_(1.0 / np.sqrt(self.d)).to(self.device)
        if self.cached:
            self._cache[key] = r
        return r

    def project(self, jac: Tensor) -> Tensor:
        """jac (b, k, p) -> Φ (b, k, d) = J R, in R's dtype."""
        b, k, p = jac.shape
        if p != self.p:
            raise invalid("jac", "Projector.project", f"a (b, k, {self.p}) tensor", tuple(jac.shape))
        flat = jac.reshape(b * k, p).to(self.dtype)
        out = torch.zeros((b * k, self.d), dtype=self.dtype, device=flat.device)
        offset = 0
        for ti, size in enumerate(self.sizes):
            for bi in range(0, (size + ROW_BLOCK - 1) // ROW_BLOCK):
                lo = offset + bi * ROW_BLOCK
                r = self.block(ti, bi)
                out.addmm_(flat[:, lo : lo + r.shape[0]], r)
            offset += size
        return out.reshape(b, k, self.d)

    def dense(self) -> Tensor:
        """R (p, d) in full: for tests on small models only."""
        parts = []
        for ti, size in enumerate(self.sizes):
            parts += [self.block(ti, bi) for bi in range(0, (size + ROW_BLOCK - 1) // ROW_BLOCK)]
        return torch.cat(parts, dim=0)


def projector_for(
    model: nn.Module, d: int, *, kind: ProjectionKind = "rademacher", seed: int = 0, **kwargs: object
) -> Projector:
    """A :class:`Projector` matching ``model``'s parameter tensors (float32 R)."""
    sizes = [p.numel() for p in model.parameters()]
    return Projector(sizes, d, kind=kind, seed=seed, **kwargs)  # type: ignore[arg-type]


def projected_features(
    model: nn.Module,
    x: Tensor,
    projector: Projector,
    *,
    batch_size: int = 128,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Tensor:
    """Φ (n, k, d) = J(x) R, projecting Jacobian chunks as they are formed (J never whole)."""
    n = x.shape[0]
    out: Tensor | None = None
    for start, jac in jacobian_chunks(model, x, batch_size=batch_size, should_stop=should_stop):
        phi = projector.project(jac)
        if out is None:
            out = torch.empty((n, phi.shape[1], projector.d), dtype=projector.dtype)
        out[start : start + phi.shape[0]] = phi.cpu()
        if progress is not None:
            progress(min(start + batch_size, n), n)
    if out is None:
        raise invalid("x", "projected_features", "at least one sample", tuple(x.shape))
    return out
