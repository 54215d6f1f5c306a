"""Training images for the gateway's job pages (``sample_images.npy``).

The gateway draws the top samples of image-like datasets as thumbnails. For uploads it
reads the stored dataset file; the pixels of a built-in dataset (digits) exist only where
scikit-learn is installed, i.e. on workers, so a worker writes them next to the job's
per-sample table: uint8 ``(n, *input_shape)``, scaled by the global min and max (digits:
86 KB). Nothing is written for other datasets or past ``MAX_BYTES``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

NAME = "sample_images.npy"
MAX_BYTES = 64 * 1024 * 1024


def sample_images(ds: Any) -> bytes | None:
    """ds: an ``infoscore.data.Dataset``. -> .npy bytes, or None when not image-like."""
    shape = tuple(int(s) for s in ds.input_shape)
    if len(shape) not in (2, 3) or ds.n_train * int(np.prod(shape)) > MAX_BYTES:
        return None
    x = np.asarray(ds.x_train, dtype=np.float32).reshape((ds.n_train, *shape))
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = (np.nan_to_num(x, nan=lo, posinf=hi, neginf=lo) - lo) / ((hi - lo) or 1.0)
    images = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    np.save(buf, images, allow_pickle=False)
    return buf.getvalue()
