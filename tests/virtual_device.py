"""A stand-in accelerator for machines without one: device-residency checks on the CPU.

CUDA refuses to mix tensors of two devices in one operation, cannot turn a device tensor
into a NumPy array, and wants a generator of the tensor's device; the CPU accepts all of
it. So code that is only ever run on the CPU can hide the bugs that crash a GPU worker
(the H200 trial of issue #10 failed that way, in ``projection.py``). ``VirtualDevice``
makes the CPU as strict as CUDA, without a GPU.

The job runs with ``device=VirtualDevice.DEVICE`` (``cpu:0``, a spelling of the CPU that
no code uses for the host). A ``TorchFunctionMode`` follows every tensor's *virtual*
device: tensors made with ``device=cpu:0``, moved with ``.to(cpu:0)`` or computed from such
tensors live on the device; tensors made without a device, with ``device='cpu'``, by
``torch.from_numpy`` or by ``.cpu()`` live on the host. ``Tensor.device`` answers ``cpu:0``
for a device tensor, so ``device=x.device`` keeps working as it does on CUDA. Moves copy,
as they do between real devices.

What it records (``violations``, each with the infoscore/workers frames that caused it):
- an operation whose tensor arguments live on both sides (0-dim host tensors are allowed,
  as CUDA allows them; so are host index tensors in ``x[i]``, and ``copy_`` across);
- ``.numpy()`` or ``np.asarray`` of a device tensor;
- a random draw whose generator lives on the other side.

And what it counts, by call site, so a test can see where a job waits on its device or
moves data: ``syncs``, every device-to-host read (``.cpu()``, ``.item()``, ``.tolist()``,
``float()``, ``int()``, ``bool()``); ``copied``, the elements those reads and ``.to()``
moves bring to the host; ``uploads``, the host-to-device moves.

Limits: code that branches on ``device.type == 'cuda'`` takes its CPU branch here, and
tensors made inside C++ (autograd's gradients, ``torch.func`` outputs, ``torch.load``)
start without a side: they mix with either side, take the side of what they meet, and
report the device as their ``.device`` (inside a job they come from device tensors).
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

DEV = "device"
HOST = "host"

_SYNC_METHODS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__complex__"}
_NUMPY_METHODS = {"numpy", "__array__"}
# Operations CUDA allows across devices: moves, copies, and host index tensors.
_CROSS_OK = {"to", "copy_", "__getitem__", "__setitem__", "index_put_", "cpu", "type"}
_OUR_CODE = ("infoscore/", "workers/", "contracts/")


class _VirtualGenerator(torch.Generator):
    """torch.Generator that remembers which side it was made for."""

    side: str

    def __init__(self, device: Any = "cpu") -> None:
        super().__init__()
        self.side = _side_of_device(device) or HOST


def _side_of_device(device: Any) -> str | None:
    if device is None:
        return None
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cpu":
        return DEV
    return DEV if dev.index == 0 else HOST


def _short(filename: str) -> str:
    for part in _OUR_CODE:
        if part in filename:
            return part + filename.rsplit(part, 1)[1]
    return filename


def _where() -> str:
    frames = [
        f"{_short(f.filename)}:{f.lineno} {f.name}"
        for f in traceback.extract_stack()
        if any(part in f.filename for part in _OUR_CODE) and "tests/" not in f.filename
    ]
    return " <- ".join(reversed(frames[-3:])) or "(outside infoscore)"


class VirtualDevice(TorchFunctionMode):
    DEVICE = torch.device("cpu", 0)

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []
        self.syncs: Counter[str] = Counter()
        self.copied: Counter[str] = Counter()  # elements moved device -> host, by call site
        self.uploads: Counter[str] = Counter()  # host -> device moves, by call site
        self._sides: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._saved: dict[str, Any] = {}

    # ------------------------------------------------------------------ bookkeeping
    def side(self, t: torch.Tensor) -> str | None:
        try:
            return self._sides.get(t)
        except TypeError:
            return None

    def _tag(self, t: torch.Tensor, side: str) -> None:
        with contextlib.suppress(TypeError):  # a tensor that takes no weak reference
            self._sides[t] = side

    def _mark(self, value: Any, side: str | None) -> None:
        if side is None:
            return
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor):
                self._tag(t, side)

    def _violate(self, what: str) -> None:
        self.violations.append(f"{what} at {_where()}")

    def __enter__(self) -> VirtualDevice:
        self._saved = {"Generator": torch.Generator, "from_numpy": torch.from_numpy}
        original_from_numpy = torch.from_numpy
        mode = self

        def from_numpy(ndarray: Any) -> torch.Tensor:
            out = original_from_numpy(ndarray)
            mode._sides[out] = HOST
            return out

        torch.Generator = _VirtualGenerator  # type: ignore[misc]
        torch.from_numpy = from_numpy
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        torch.Generator = self._saved["Generator"]  # type: ignore[misc]
        torch.from_numpy = self._saved["from_numpy"]

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        descriptor = getattr(func, "__self__", None)
        if name in ("__get__", "__set__") and descriptor is not None and hasattr(descriptor, "__name__"):
            return self._attribute(func, descriptor.__name__, name, args)

        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        # CUDA lets a 0-dim host tensor into a device operation, not the other way round.
        sides = {s for t in tensors if (s := self.side(t)) and (t.dim() > 0 or s == DEV)}
        self_side = self.side(args[0]) if args and isinstance(args[0], torch.Tensor) else None

        if name in _NUMPY_METHODS and self_side == DEV:
            self._violate(f"{name}() of a device tensor (CUDA raises)")
        if name in _SYNC_METHODS | {"cpu"} and self_side == DEV:
            where = _where()
            self.syncs[f"{name} at {where}"] += 1
            self.copied[where] += args[0].numel()

        generator = kwargs.get("generator")
        if isinstance(generator, _VirtualGenerator):
            draw_side = _side_of_device(kwargs.get("device")) if "device" in kwargs else self_side
            draw_side = draw_side or (DEV if DEV in sides else HOST)
            if draw_side != generator.side:
                self._violate(f"{name}: a {generator.side} generator for a {draw_side} tensor (CUDA raises)")

        if len(sides) > 1 and name not in _CROSS_OK:
            shapes = [(tuple(t.shape), self.side(t)) for t in tensors]
            self._violate(f"{name} mixes host and device tensors {shapes} (CUDA raises)")
        if name in ("__getitem__", "__setitem__") and self_side == HOST and DEV in sides:
            self._violate(f"{name}: a device index into a host tensor (CUDA raises)")

        if name == "to" and args and isinstance(args[0], torch.Tensor):
            return self._move(func, args, kwargs)
        if name == "cpu":
            out = func(*args, **kwargs)
            out = out.clone() if out is args[0] and self_side == DEV else out
            self._mark(out, HOST)
            return out

        if "device" in kwargs:
            out_side = _side_of_device(kwargs["device"])
            kwargs = {**kwargs, "device": _real(kwargs["device"])}
        elif not tensors:
            out_side = HOST  # a factory without a device: the default device is the host
        else:
            out_side = DEV if DEV in sides or self_side == DEV else (HOST if HOST in sides else None)
            if out_side is None:
                out_side = next((s for s in map(self.side, tensors) if s), None)
        out = func(*args, **kwargs)
        if out_side is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and (self.side(t) is None or all(t is not x for x in tensors)):
                    self._tag(t, out_side)
        return out

    def _attribute(self, func: Any, attr: str, how: str, args: tuple) -> Any:
        owner = args[0]
        if how == "__get__":
            if attr == "device" and self.side(owner) != HOST:
                # A tensor without a side was made in C++ (autograd, torch.func) from the
                # job's tensors: on CUDA it would be on the device.
                return self.DEVICE
            out = func(*args)
            views = ("data", "grad", "T", "mT", "H", "mH", "real", "imag")
            if attr in views and isinstance(out, torch.Tensor) and self.side(out) is None:
                self._mark(out, self.side(owner))
            return out
        out = func(*args)
        if attr == "data" and isinstance(args[1], torch.Tensor):
            self._mark(owner, self.side(args[1]))
        return out

    def _move(self, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        src, rest = args[0], args[1:]
        other = rest[0] if rest and isinstance(rest[0], torch.Tensor) else None
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
        if device is None:
            out = func(*args, **kwargs)
            self._mark(out, self.side(src))
            return out
        copy = bool(kwargs.get("copy", False))
        fmt = {} if memory_format is None else {"memory_format": memory_format}
        out = func(src, _real(device), dtype, non_blocking, copy, **fmt)
        target = self.side(other) if other is not None else _side_of_device(device)
        src_side = self.side(src)
        if target is not None and target != src_side:
            if src_side == HOST and target == DEV:
                self.uploads[_where()] += 1
            if src_side == DEV:
                where = _where()
                self.syncs[f"to(cpu) at {where}"] += 1
                self.copied[where] += src.numel()
            if out is src and (src_side is not None or target == DEV):
                out = out.clone()  # a move between devices copies
        self._mark(out, target)
        return out


def _real(device: Any) -> Any:
    """The CPU the tensor really lives on (cpu:0 is a virtual name)."""
    if device is None:
        return None
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return torch.device("cpu") if dev.type == "cpu" else dev


def report(mode: VirtualDevice) -> str:
    lines = [f"{len(mode.violations)} violations"] + [f"  {v}" for v in dict.fromkeys(mode.violations)]
    lines.append(f"{sum(mode.syncs.values())} device-to-host reads")
    lines += [f"  {count:5d}  {where}" for where, count in mode.syncs.most_common(12)]
    lines.append(f"{sum(mode.uploads.values())} host-to-device moves")
    lines += [f"  {count:5d}  {where}" for where, count in mode.uploads.most_common(6)]
    lines.append(f"{sum(mode.copied.values())} elements copied to the host")
    lines += [f"  {count:9d}  {where}" for where, count in mode.copied.most_common(12)]
    return "\n".join(lines)
