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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
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
    method: KernelMethod | str = "auto",
) -> torch.Tensor:
    """Empirical NTK between x1 (n1, ...) and x2 (n2, ...) (x2 None -> x1), float64.

    Shapes as in :func:`gram_from_jacobians`. ``method``: ``structured`` contracts per-layer
    factors (no per-sample Jacobian; see :func:`layer_factors`), ``jacobian`` forms J and
    J Jᵀ (the reference), ``auto`` (default) the structured path whenever the model's
    modules allow it. Either way x2's representation is held whole and x1 is streamed.
    """
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    if x2 is None and resolve_kernel_method(model, method) == "structured":
        return _symmetric_structured_gram(model, x1, kernel, batch_size, progress, should_stop)
    out: torch.Tensor | None = None
    for start, block in ntk_cross_chunks(
        model, x1, x2, kernel=kernel, batch_size=batch_size, method=method,
        progress=progress, should_stop=should_stop,
    ):  # fmt: skip
        if out is None:
            k = block.shape[1] // n2 if kernel == "full" else 1
            out = torch.empty((n1 * k, n2 * k), dtype=torch.float64, device=block.device)
        r0 = start * (block.shape[0] // min(batch_size, n1 - start))
        out[r0 : r0 + block.shape[0]] = block
    assert out is not None
    return out


# ---------------------------------------------------------------------------
# Structured NTK: the kernel from per-layer factors, never from J.
#
# For a dense layer z = W a + b (W out × in) the per-sample gradient of logit c is
# ∂f_c/∂W = δ_c aᵀ and ∂f_c/∂b = δ_c, with δ_c = ∂f_c/∂z the backpropagated signal, so
# ⟨∂f_c(x_i)/∂(W, b), ∂f_d(x_j)/∂(W, b)⟩ = ⟨δ_{i,c}, δ_{j,d}⟩ · (⟨a_i, a_j⟩ + 1)
# (Novak et al. 2022, "Fast Finite Width NTK", structured derivatives): the cost scales
# with the layer's widths, not with its out·in parameters. Convolutions and BatchNorm
# (eval mode: an affine map per feature) get their per-sample gradients formed directly
# from the signal and the layer input (patches for a convolution), which is small next to
# the dense layers; every other module holding parameters sends the model to the J Jᵀ path.
# δ is obtained by adding a zero "probe" to every parameterised module's output and
# differentiating the k logits with respect to the probes (k backward passes per chunk).
# ---------------------------------------------------------------------------

KernelMethod = Literal["auto", "structured", "jacobian"]
KERNEL_METHODS: tuple[str, ...] = ("auto", "structured", "jacobian")
STRUCTURED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


class UnsupportedModelError(ValueError):
    """The structured path does not know one of the model's parameterised modules."""


def structured_modules(model: nn.Module) -> list[nn.Module]:
    """The modules holding parameters, in ``named_parameters`` order, when all are supported.

    Raises UnsupportedModelError otherwise (e.g. a custom layer, a BatchNorm without
    running statistics, a grouped or dilated-with-groups convolution).
    """
    mods: list[nn.Module] = []
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if not own:
            continue
        if not isinstance(mod, STRUCTURED_MODULES):
            raise UnsupportedModelError(f"module {name!r} ({type(mod).__name__}) holds parameters")
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d) and (mod.running_mean is None or not mod.affine):
            raise UnsupportedModelError(f"module {name!r}: BatchNorm without running statistics")
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"):
            raise UnsupportedModelError(f"module {name!r}: grouped or non-zero-padded convolution")
        mods.append(mod)
    counted = sum(p.numel() for m in mods for p in m.parameters(recurse=False))
    if counted != parameter_count(model):
        raise UnsupportedModelError("parameters shared between modules")
    return mods


def structured_supported(model: nn.Module) -> bool:
    try:
        structured_modules(model)
    except UnsupportedModelError:
        return False
    return True


@dataclass
class DenseFactor:
    """A dense layer's per-sample gradients in factored form (b samples).

    act (b, in [+1]): the layer input, with a trailing 1 when the layer has a bias;
    sig (b, k, out): the backpropagated signal of each logit at the layer's output.
    The gradient of logit c of sample i is sig[i, c] ⊗ act[i] (out × (in [+1])).
    """

    act: Tensor
    sig: Tensor


@dataclass
class ConvFactor:
    """A convolution's per-sample gradients: patches (b, L, in·kh·kw [+1]), sig (b, k, out, L).

    The gradient of logit c of sample i is sig[i, c] @ patches[i] (out × (in·kh·kw [+1])).
    """

    patches: Tensor
    sig: Tensor

    def gradients(self) -> Tensor:
        """(b, k, out·(in·kh·kw [+1])), the explicit per-sample gradients."""
        g = torch.einsum("bkol,blq->bkoq", self.sig, self.patches)
        return g.reshape(g.shape[0], g.shape[1], -1)


@dataclass
class ExplicitFactor:
    """Explicit per-sample gradients grad (b, k, q) of a small module (BatchNorm)."""

    grad: Tensor


Factor = DenseFactor | ConvFactor | ExplicitFactor


def _conv_patches(mod: nn.Conv2d, x: Tensor) -> Tensor:
    """(b, L, in·kh·kw [+1]) input patches of a 2-D convolution (zero padding)."""
    pad = mod.padding
    if isinstance(pad, str):
        raise UnsupportedModelError(f"padding {pad!r}")
    cols = torch.nn.functional.unfold(
        x, mod.kernel_size, dilation=mod.dilation, padding=pad, stride=mod.stride
    )  # (b, in·kh·kw, L)
    cols = cols.transpose(1, 2)
    if mod.bias is not None:
        cols = torch.cat([cols, torch.ones_like(cols[..., :1])], dim=2)
    return cols


def layer_factors(model: nn.Module, x: Tensor, *, dtype: torch.dtype = torch.float64) -> list[Factor]:
    """Per-module factors of the per-sample logit gradients of x (b, ...), model in eval mode.

    Factors are cast to ``dtype`` (float64 for kernel algebra) and stay on x's device.
    Raises UnsupportedModelError when the structured path does not apply.
    """
    mods = structured_modules(model)
    inputs: dict[int, Tensor] = {}
    probes: dict[int, Tensor] = {}
    calls: dict[int, int] = {}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        key = id(mod)
        calls[key] = calls.get(key, 0) + 1
        inputs[key] = inp[0].detach()
        probe = torch.zeros_like(out, requires_grad=True)
        probes[key] = probe
        return out + probe

    handles = [m.register_forward_hook(hook) for m in mods]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(x)
            if out.dim() != 2:
                raise UnsupportedModelError(f"model output of shape {tuple(out.shape)}")
            if any(calls.get(id(m), 0) != 1 for m in mods):
                raise UnsupportedModelError("a parameterised module is called more or less than once")
            order = [probes[id(m)] for m in mods]
            k = out.shape[1]
            sig_per_class: list[tuple[Tensor, ...]] = []
            for c in range(k):
                grads = torch.autograd.grad(out[:, c].sum(), order, retain_graph=c < k - 1, allow_unused=True)
                sig_per_class.append(
                    tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, order, strict=True))
                )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    factors: list[Factor] = []
    for li, mod in enumerate(mods):
        sig = torch.stack([s[li] for s in sig_per_class], dim=1).to(dtype)  # (b, k, *out_shape)
        a = inputs[id(mod)].to(dtype)
        if isinstance(mod, nn.Linear):
            if a.dim() != 2:
                raise UnsupportedModelError("a Linear layer applied to a non-flat input")
            if mod.bias is not None:
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            factors.append(DenseFactor(a, sig))
        elif isinstance(mod, nn.Conv2d):
            patches = _conv_patches(mod, a)
            factors.append(ConvFactor(patches, sig.reshape(sig.shape[0], sig.shape[1], sig.shape[2], -1)))
        else:
            assert isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d)
            assert mod.running_mean is not None and mod.running_var is not None
            shape = (1, -1) + (1,) * (a.dim() - 2)
            xhat = (a - mod.running_mean.to(dtype).reshape(shape)) / torch.sqrt(
                mod.running_var.to(dtype).reshape(shape) + mod.eps
            )
            spatial = tuple(range(3, sig.dim()))
            g_w = (sig * xhat.unsqueeze(1)).sum(dim=spatial) if spatial else sig * xhat.unsqueeze(1)
            g_b = sig.sum(dim=spatial) if spatial else sig
            factors.append(ExplicitFactor(torch.cat([g_w, g_b], dim=2)))
    return factors


def _factor_gram(f1: list[Factor], f2: list[Factor], kernel: KernelKind) -> Tensor:
    """Kernel block between two factor lists (same model), float64, shapes as in gram_from_jacobians."""
    out: Tensor | None = None
    for a, b in zip(f1, f2, strict=True):
        if isinstance(a, DenseFactor) and isinstance(b, DenseFactor):
            aa = a.act @ b.act.T  # (b1, b2)
            n1, k, o = a.sig.shape
            n2 = b.sig.shape[0]
            if kernel == "full":
                block = (a.sig.reshape(n1 * k, o) @ b.sig.reshape(n2 * k, o).T).reshape(n1, k, n2, k)
                block.mul_(aa.reshape(n1, 1, n2, 1))
                block = block.reshape(n1 * k, n2 * k)
            else:
                block = (a.sig.reshape(n1, k * o) @ b.sig.reshape(n2, k * o).T).mul_(aa)
        else:
            ga = a.gradients() if isinstance(a, ConvFactor) else a.grad  # type: ignore[union-attr]
            gb = b.gradients() if isinstance(b, ConvFactor) else b.grad  # type: ignore[union-attr]
            n1, k, q = ga.shape
            n2 = gb.shape[0]
            if kernel == "full":
                block = ga.reshape(n1 * k, q) @ gb.reshape(n2 * k, q).T
            else:
                block = ga.reshape(n1, k * q) @ gb.reshape(n2, k * q).T
        out = block if out is None else out.add_(block)
    assert out is not None
    if kernel == "averaged":
        out = out / _outputs(f1)
    return out


def _outputs(factors: list[Factor]) -> int:
    f = factors[0]
    return int(f.grad.shape[1] if isinstance(f, ExplicitFactor) else f.sig.shape[1])


def factors_of(
    model: nn.Module, x: Tensor, *, batch_size: int = 128, should_stop: StopFn | None = None
) -> list[Factor]:
    """:func:`layer_factors` of all of x, computed ``batch_size`` samples at a time (float64)."""
    chunks: list[list[Factor]] = []
    for start in range(0, x.shape[0], batch_size):
        check_stop(should_stop)
        chunks.append(layer_factors(model, x[start : start + batch_size]))
    return [_cat_factors([c[li] for c in chunks]) for li in range(len(chunks[0]))]


def _cat_factors(parts: list[Factor]) -> Factor:
    first = parts[0]
    if isinstance(first, DenseFactor):
        return DenseFactor(
            torch.cat([p.act for p in parts]),  # type: ignore[union-attr]
            torch.cat([p.sig for p in parts]),  # type: ignore[union-attr]
        )
    if isinstance(first, ConvFactor):
        return ConvFactor(
            torch.cat([p.patches for p in parts]),  # type: ignore[union-attr]
            torch.cat([p.sig for p in parts]),  # type: ignore[union-attr]
        )
    return ExplicitFactor(torch.cat([p.grad for p in parts]))  # type: ignore[union-attr]


def resolve_kernel_method(model: nn.Module, method: KernelMethod | str) -> str:
    """``auto`` -> ``structured`` when every parameterised module is supported, else ``jacobian``."""
    if method not in KERNEL_METHODS:
        raise invalid("kernel_method", "ntk_gram", f"one of {list(KERNEL_METHODS)}", method)
    if method == "auto":
        return "structured" if structured_supported(model) else "jacobian"
    if method == "structured":
        structured_modules(model)
    return str(method)


def ntk_cross_chunks(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    kernel: KernelKind = "full",
    batch_size: int = 128,
    method: KernelMethod | str = "auto",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, block)``: the kernel rows of x1[start:start+b] against all of x2.

    block (b*k, n2*k) for ``full``, (b, n2) otherwise, float64. x2's factors (or Jacobians)
    are held whole, x1 is streamed: memory is one x2 representation plus one block.
    """
    if kernel not in ("full", "averaged", "trace"):
        raise invalid("kernel", "ntk_gram", "'full', 'averaged' or 'trace'", kernel)
    if batch_size < 1:
        raise invalid("batch_size", "ntk_gram", "a positive integer", batch_size)
    n1 = x1.shape[0]
    other = x1 if x2 is None else x2
    if resolve_kernel_method(model, method) == "structured":
        f2 = factors_of(model, other, batch_size=max(batch_size, 512), should_stop=should_stop)
        for start in range(0, n1, batch_size):
            check_stop(should_stop)
            f1 = layer_factors(model, x1[start : start + batch_size])
            yield start, _factor_gram(f1, f2, kernel)
            if progress is not None:
                progress(min(start + batch_size, n1), n1)
        return
    j2 = per_sample_jacobians(model, other, batch_size=batch_size, should_stop=should_stop)
    for start, chunk in jacobian_chunks(
        model, x1, batch_size=batch_size, progress=progress, should_stop=should_stop
    ):
        yield start, gram_from_jacobians(chunk, j2, kernel=kernel)


def _slice_factor(f: Factor, lo: int) -> Factor:
    if isinstance(f, DenseFactor):
        return DenseFactor(f.act[lo:], f.sig[lo:])
    if isinstance(f, ConvFactor):
        return ConvFactor(f.patches[lo:], f.sig[lo:])
    return ExplicitFactor(f.grad[lo:])


def _symmetric_structured_gram(
    model: nn.Module,
    x: Tensor,
    kernel: KernelKind,
    batch_size: int,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> Tensor:
    """Θ(x, x) from factors, one block row at a time against the columns from the diagonal
    on (the rest is filled by symmetry): half the work of the cross kernel."""
    if kernel not in ("full", "averaged", "trace"):
        raise invalid("kernel", "ntk_gram", "'full', 'averaged' or 'trace'", kernel)
    if batch_size < 1:
        raise invalid("batch_size", "ntk_gram", "a positive integer", batch_size)
    n = x.shape[0]
    f_all = factors_of(model, x, batch_size=max(batch_size, 512), should_stop=should_stop)
    k = _outputs(f_all) if kernel == "full" else 1
    out = torch.empty((n * k, n * k), dtype=torch.float64, device=x.device)
    for start in range(0, n, batch_size):
        check_stop(should_stop)
        stop = min(start + batch_size, n)
        f1 = [_slice_factor(f, start) for f in f_all]
        f1 = [_head_factor(f, stop - start) for f in f1]
        rest = [_slice_factor(f, start) for f in f_all]
        block = _factor_gram(f1, rest, kernel)  # rows [start, stop), columns [start, n)
        out[start * k : stop * k, start * k :] = block
        out[stop * k :, start * k : stop * k] = block[:, (stop - start) * k :].T
        if progress is not None:
            progress(stop, n)
    return out


def _head_factor(f: Factor, m: int) -> Factor:
    if isinstance(f, DenseFactor):
        return DenseFactor(f.act[:m], f.sig[:m])
    if isinstance(f, ConvFactor):
        return ConvFactor(f.patches[:m], f.sig[:m])
    return ExplicitFactor(f.grad[:m])
