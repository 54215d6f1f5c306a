"""Seeded random projections of per-sample Jacobians (docs/science.md §2.5, TRAK-style).

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
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .errors import invalid
from .ntk import (
    ConvFactor,
    DenseFactor,
    ExplicitFactor,
    Factor,
    jacobian_chunks,
    layer_factors,
    structured_modules,
)
from .progress import ProgressFn, StopFn, check_stop

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
    """Φ (n, k, d) = J(x) R, projecting Jacobian chunks as they are formed (J never whole).
    Φ stays on the Jacobians' device, where the LOO algebra then runs."""
    n = x.shape[0]
    out: Tensor | None = None
    for start, jac in jacobian_chunks(model, x, batch_size=batch_size, should_stop=should_stop):
        phi = projector.project(jac)
        if out is None:
            out = torch.empty((n, phi.shape[1], projector.d), dtype=projector.dtype, device=phi.device)
        out[start : start + phi.shape[0]] = phi
        if progress is not None:
            progress(min(start + batch_size, n), n)
    if out is None:
        raise invalid("x", "projected_features", "at least one sample", tuple(x.shape))
    return out


# ---------------------------------------------------------------------------
# Kronecker-factored projection (after LoGra, Choe et al. 2024): per-sample gradients are
# never formed. A dense layer's gradient of logit c is G = δ_c ⊗ ã (out × (in [+1]), ã the
# input with a trailing 1 for the bias). Each projection direction of the layer is itself a
# Kronecker product r_out,q ⊗ r_in,q, so the q-th feature is
#     Φ_q = ⟨r_out,q ⊗ r_in,q, δ_c ⊗ ã⟩ = (r_out,qᵀ δ_c) · (r_in,qᵀ ã),
# i.e. Φ = (R_outᵀδ_c) ⊙ (R_inᵀã): a projection of the signal and one of the input,
# multiplied (a column-wise Kronecker, or Khatri–Rao, projection R = R_out ⊙ R_in). Its
# variance is within a small constant of a dense projection with the same d, where the
# outer-product form (R_outᵀδ) ⊗ (R_inᵀã) behaves like a projection of dimension
# min(d_out, d_in). A convolution sums the same product over positions. Small groups
# (BatchNorm's scale and shift, the output head when it fits) are kept exact (R = I).
# E[R Rᵀ] = I (independent ±1 entries, R_in scaled by 1/√d), so Φ Φᵀ is an unbiased
# estimate of Θ (Johnson–Lindenstrauss); only δ and a (n·(k·out + in) numbers per layer)
# are kept and Φ rows are formed on demand.
# ---------------------------------------------------------------------------


def _draw(
    rows: int, cols: int, kind: str, seed: int, dtype: torch.dtype, device: torch.device, scale: float
) -> Tensor:
    """A seeded (rows, cols) matrix with entries ±scale (rademacher) or N(0, scale²).

    Drawn from a seeded CPU generator and placed on ``device``: the same seed gives the
    same R on every device (a CUDA generator uses another stream), and the factors are
    small ((out + in)·d numbers per layer)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "rademacher":
        r = torch.randint(0, 2, (rows, cols), generator=gen).to(torch.float64).mul_(2).sub_(1)
    else:
        r = torch.randn((rows, cols), generator=gen, dtype=torch.float64)
    return r.mul_(scale).to(device=device, dtype=dtype)


@dataclass
class _Group:
    """One parameterised module's share of the projection."""

    kind: str  # "dense" | "conv" | "explicit"
    p: int  # parameters of the module
    shape: tuple[int, int]  # (out, in [+1]) for dense/conv; (q, 1) for explicit
    bias: bool = False
    d: int = 0
    exact: bool = False
    r_out: Tensor | None = None  # (out, d) ±1, or (q, d) ±1/√d for an explicit group
    r_in: Tensor | None = None  # (in [+1], d) ±1/√d


def allocate_dims(sizes: Sequence[int], d: int, weights: Sequence[float] | None = None) -> list[int]:
    """Split d over groups of sizes p_g. A group with p_g ≤ d/(2·groups) is kept whole
    (exact); the rest is shared proportionally to ``weights`` (default p_g; pass each
    group's share of tr Θ to minimise the summed projection variance, Σ_g w_g²/d_g), a group
    that fits its share keeps all its p_g coordinates and the remainder is shared again
    (water-filling)."""
    if weights is None:
        weights = [float(sz) for sz in sizes]
    w = [max(float(x), 1e-12) for x in weights]
    dims = [0] * len(sizes)
    open_ = list(range(len(sizes)))
    budget = d
    for g in sorted(open_, key=lambda i: sizes[i]):  # small groups (a head, BatchNorm) stay exact
        if sizes[g] <= d / (2 * len(sizes)) and sizes[g] <= budget:
            dims[g] = sizes[g]
            budget -= sizes[g]
            open_.remove(g)
    while open_:
        total = sum(w[g] for g in open_)
        fits = [g for g in open_ if sizes[g] <= budget * w[g] / total]
        if not fits:
            break
        for g in fits:
            dims[g] = sizes[g]
            budget -= sizes[g]
            open_.remove(g)
    total = sum(w[g] for g in open_)
    for g in open_:
        dims[g] = max(1, int(budget * w[g] / total + 1e-9))
    # Hand the rounding remainder out (largest fractional parts first) so that Σ d_g = d.
    left = budget - sum(dims[g] for g in open_)
    for g in sorted(open_, key=lambda i: -((budget * w[i] / total) % 1.0)):
        if left <= 0:
            break
        if dims[g] < sizes[g]:
            dims[g] += 1
            left -= 1
    return dims


class KroneckerProjector:
    """Per-module Kronecker-factored projection of a model's per-sample logit gradients.

    d: the total budget; the dimension used (``self.d``) is d, or p when every module fits
    (R = I), or more than d only when there are more parameterised modules than d. Needs a model the
    structured NTK path supports (:func:`infoscore.ntk.structured_modules`).
    """

    def __init__(
        self,
        model: nn.Module,
        d: int,
        *,
        kind: ProjectionKind = "rademacher",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(d, int) or d < 1:
            raise invalid("projection_dim", "KroneckerProjector", "a positive integer", d)
        if kind not in PROJECTION_KINDS:
            raise invalid("projection", "KroneckerProjector", f"one of {list(PROJECTION_KINDS)}", kind)
        self.kind = kind
        self.seed = int(seed)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.groups: list[_Group] = []
        for mod in structured_modules(model):
            p = sum(q.numel() for q in mod.parameters(recurse=False))
            if isinstance(mod, nn.Linear):
                out = mod.out_features
                self.groups.append(_Group("dense", p, (out, p // out), mod.bias is not None))
            elif isinstance(mod, nn.Conv2d):
                out = mod.out_channels
                self.groups.append(_Group("conv", p, (out, p // out), mod.bias is not None))
            else:
                self.groups.append(_Group("explicit", p, (p, 1)))
        dims = allocate_dims([g.p for g in self.groups], d, weights)
        for gi, (g, dg) in enumerate(zip(self.groups, dims, strict=True)):
            out, inn = g.shape
            if dg >= g.p:
                g.exact, g.d = True, g.p
                continue
            g.d = dg
            if g.kind == "explicit":
                g.r_out = _draw(out, dg, kind, block_seed(self.seed, gi, 0), dtype, self.device, dg**-0.5)
                continue
            g.r_out = _draw(out, dg, kind, block_seed(self.seed, gi, 0), dtype, self.device, 1.0)
            g.r_in = _draw(inn, dg, kind, block_seed(self.seed, gi, 1), dtype, self.device, dg**-0.5)
        self.d = sum(g.d for g in self.groups)

    def project_factors(self, factors: Sequence[Factor]) -> list[tuple[str, Tensor, Tensor | None]]:
        """Per group, what :class:`FactoredFeatures` keeps: ("outer", sig (b, k, out), act
        (b, in [+1])) for an exact dense layer, ("product", sig, act) for a projected one
        (Φ = (sig R_out) ⊙ (act R_in)), ("features", Φ (b, k, d_g), None) otherwise."""
        parts: list[tuple[str, Tensor, Tensor | None]] = []
        for g, f in zip(self.groups, factors, strict=True):
            if isinstance(f, DenseFactor):
                parts.append(("outer" if g.exact else "product", f.sig.to(self.dtype), f.act.to(self.dtype)))
            elif isinstance(f, ConvFactor):
                sig, patches = f.sig.to(self.dtype), f.patches.to(self.dtype)
                if g.exact:
                    phi = torch.einsum("bkol,blq->bkoq", sig, patches).reshape(sig.shape[0], sig.shape[1], -1)
                else:
                    assert g.r_out is not None and g.r_in is not None
                    phi = torch.einsum("bkol,od,bld->bkd", sig, g.r_out, patches @ g.r_in)
                parts.append(("features", phi, None))
            else:
                assert isinstance(f, ExplicitFactor)
                grad = f.grad.to(self.dtype)
                parts.append(("features", grad if g.exact else grad @ g.r_out, None))  # type: ignore[operator]
        return parts

    def dense(self) -> Tensor:
        """R (p, self.d) in full, rows in ``named_parameters`` order (tests, small models):
        block-diagonal over modules; inside one, column q is r_out,q ⊗ r_in,q (weight rows,
        then bias rows)."""
        blocks = []
        for g in self.groups:
            out, inn = g.shape
            if g.kind == "explicit":
                blocks.append(g.r_out if g.r_out is not None else torch.eye(g.p, dtype=self.dtype))
                continue
            if g.exact:  # feature (o, i) is gradient entry (o, i) of the out × (in [+1]) layout
                cols = torch.eye(out * inn, dtype=self.dtype).reshape(out, inn, g.d)
            else:
                assert g.r_out is not None and g.r_in is not None
                cols = g.r_out[:, None, :] * g.r_in[None, :, :]  # (out, inn, d): row (o, i)
            weight = cols[:, : inn - 1 if g.bias else inn].reshape(-1, g.d)
            blocks.append(torch.cat([weight, cols[:, inn - 1]]) if g.bias else weight)
        return torch.block_diag(*blocks)


class FactoredFeatures:
    """Φ (n·k, d) of :class:`KroneckerProjector`, held as per-layer factors.

    Row slices (``phi[lo:hi]``, sample-major rows i·k + c) form that block only; memory is
    the layers' signals and inputs (n·(k·out + in) numbers each) instead of n·k·d.
    """

    def __init__(self, parts: list[tuple[str, Tensor, Tensor | None]], projector: KroneckerProjector, k: int):
        self.parts = parts
        self.projector = projector
        self.k = k
        self.d = projector.d
        self.n = int(parts[0][1].shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n * self.k, self.d)

    @property
    def device(self) -> torch.device:
        return self.parts[0][1].device

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0][1].dtype

    def samples(self, i0: int, i1: int) -> Tensor:
        """(i1 − i0, k, d) features of samples i0..i1."""
        cols = []
        for (how, a, b), g in zip(self.parts, self.projector.groups, strict=True):
            if how == "features":
                cols.append(a[i0:i1])
                continue
            assert b is not None
            s, x = a[i0:i1], b[i0:i1]
            if how == "outer":
                cols.append((s.unsqueeze(-1) * x[:, None, None, :]).reshape(s.shape[0], self.k, -1))
            else:
                assert g.r_out is not None and g.r_in is not None
                cols.append((s @ g.r_out) * (x @ g.r_in).unsqueeze(1))
        return torch.cat(cols, dim=2)

    def __getitem__(self, index: slice) -> Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("FactoredFeatures supports contiguous row slices only")
        lo, hi, _ = index.indices(self.n * self.k)
        hi = max(hi, lo)
        i0, i1 = lo // self.k, -(-hi // self.k)
        block = self.samples(i0, i1).reshape(-1, self.d)
        return block[lo - i0 * self.k : hi - i0 * self.k]

    def dense(self) -> Tensor:
        """All of Φ (n·k, d): for small problems and tests."""
        return self.samples(0, self.n).reshape(-1, self.d)

    def reshape(self, *shape: int) -> Tensor:
        return self.dense().reshape(*shape)


def kronecker_features(
    model: nn.Module,
    x: Tensor,
    projector: KroneckerProjector,
    *,
    batch_size: int = 512,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> FactoredFeatures:
    """Φ(x) = J(x) R for the Kronecker-factored R of ``projector``, from per-layer factors
    (no per-sample gradient is formed). Factors live on ``projector.device``."""
    n = x.shape[0]
    if n < 1:
        raise invalid("x", "kronecker_features", "at least one sample", tuple(x.shape))
    chunks: list[list[tuple[str, Tensor, Tensor | None]]] = []
    k = 0
    for start in range(0, n, batch_size):
        check_stop(should_stop)
        factors = layer_factors(model, x[start : start + batch_size], dtype=projector.dtype)
        parts = projector.project_factors(factors)
        k = int(parts[0][1].shape[1])
        dev = projector.device
        chunks.append([(h, a.to(dev), None if b is None else b.to(dev)) for h, a, b in parts])
        if progress is not None:
            progress(min(start + batch_size, n), n)
    merged: list[tuple[str, Tensor, Tensor | None]] = []
    for gi in range(len(chunks[0])):
        how = chunks[0][gi][0]
        a = torch.cat([c[gi][1] for c in chunks])
        bs = [c[gi][2] for c in chunks]
        merged.append((how, a, None if bs[0] is None else torch.cat([t for t in bs if t is not None])))
    return FactoredFeatures(merged, projector, k)


def trace_shares(model: nn.Module, x: Tensor) -> list[float]:
    """Each parameterised module's share of tr Θ on x (a sample of the data), for
    :func:`allocate_dims`: Σ_i Σ_c ‖δ_ic‖²·‖a_i‖² for a dense layer, ‖g‖² otherwise."""
    shares = []
    for f in layer_factors(model, x):
        if isinstance(f, DenseFactor):
            shares.append(float(((f.sig**2).sum(2) * (f.act**2).sum(1, keepdim=True)).sum()))
        else:
            g = f.gradients() if isinstance(f, ConvFactor) else f.grad
            shares.append(float((g**2).sum()))
    total = sum(shares)
    return [sh / total if total > 0 else 1.0 for sh in shares]
