"""Sample thumbnails for image-like datasets, drawn as PNG in the gateway with numpy alone.

Where the pixels come from:

* a job's ``sample_images.npy`` artifact (uint8, ``(n, *input_shape)``), which workers
  write for image-like built-in datasets (digits), whose pixels the gateway cannot load
  itself (that needs scikit-learn, a worker dependency);
* otherwise the uploaded dataset file (``datasets/<id>.npz``, ``allow_pickle=False``),
  scaled to 0..255 by the training inputs' global min and max.

A dataset is image-like when its ``input_shape`` has two (H, W) or three dimensions
(C, H, W with C in 1 or 3, else H, W, C).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

THUMB_PIXELS = 64  # thumbnails are upscaled (nearest neighbour) to at least this size


def is_image_shape(shape: list[int] | tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) in (2, 3) and all(int(s) >= 2 for s in _hw(shape))


def _hw(shape: list[int] | tuple[int, ...]) -> tuple[int, int]:
    s = [int(v) for v in shape]
    if len(s) == 2:
        return s[0], s[1]
    if s[0] in (1, 3):
        return s[1], s[2]
    return s[0], s[1]


def to_display(image: np.ndarray) -> np.ndarray:
    """One sample (input_shape) -> (H, W) or (H, W, 3) uint8."""
    a = np.asarray(image)
    if a.ndim == 3:
        if a.shape[0] in (1, 3):
            a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 1:
            a = a[..., 0]
        elif a.shape[-1] >= 3:
            a = a[..., :3]
        else:
            a = a[..., 0]
    return np.ascontiguousarray(a.astype(np.uint8))


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W) grey or (H, W, 3) RGB uint8 -> PNG bytes (8-bit, no filter)."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = a.shape[:2]
    color = 2 if a.ndim == 3 else 0
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def thumbnail_png(image: np.ndarray) -> bytes:
    pixels = to_display(image)
    scale = max(1, -(-THUMB_PIXELS // max(pixels.shape[0], pixels.shape[1])))
    pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    return encode_png(pixels)


def quantize(x: np.ndarray) -> np.ndarray:
    """float inputs -> uint8 by the global min and max (a constant array maps to 0)."""
    x = np.asarray(x, dtype=np.float32)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros(x.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(x, nan=lo, posinf=hi, neginf=lo) - lo) / ((hi - lo) or 1.0)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


class ImageCache:
    """The last few datasets' training images, as uint8 (n, *input_shape)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: object) -> np.ndarray:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value: np.ndarray = load()  # type: ignore[operator]
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


CACHE = ImageCache()


def load_images(
    artifact: Path | None, dataset_file: Path | None, input_shape: list[int]
) -> np.ndarray | None:
    """uint8 training images, from the job's artifact or the uploaded dataset; None if neither."""
    if artifact is not None and artifact.is_file():
        key = f"artifact:{artifact}:{artifact.stat().st_mtime_ns}"
        return CACHE.get(key, lambda: np.load(artifact, allow_pickle=False))
    if dataset_file is not None and dataset_file.is_file():

        def load() -> np.ndarray:
            with np.load(dataset_file, allow_pickle=False) as npz:
                x = npz["x"]
            return quantize(x.reshape((x.shape[0], *input_shape)))

        return CACHE.get(f"dataset:{dataset_file}", load)
    return None
