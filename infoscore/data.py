"""Datasets: validated arrays, built-in datasets and label-noise injection.

Glossary: **n** training samples, **k** classes. Arrays are numpy; models convert them.

Built-in datasets
-----------------
``digits``
    scikit-learn's bundled 8x8 digits (1797 images, 10 classes), features scaled to
    [0, 1] as ``pixel / 16``; ``input_shape`` is ``(1, 8, 8)`` and ``x`` is flattened to
    64 columns. A stratified seeded split holds out ``test_fraction`` as a clean test set.
``gaussians``
    ``classes`` isotropic Gaussian blobs in ``dim`` dimensions with means drawn from
    N(0, separation^2 / dim * I) (expected distance between two means about
    separation * sqrt(2), whatever ``dim``), unit-variance noise,
    ``n`` training and ``n_test`` test samples.

Label noise is applied to the training split only, once, with its own seed; the test
split stays clean. ``uniform`` moves a label to a uniformly chosen *other* class with
probability ``label_noise``; ``pair`` moves class c to (c + 1) mod k with that probability.
The flipped rows are recorded in ``Dataset.noisy_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError, invalid

NOISE_KINDS = ("uniform", "pair")
MAX_CLASSES = 10_000


@dataclass
class Dataset:
    """A classification dataset: train split (with optional noise record) and test split.

    x_train (n, *input_shape) float32 · y_train (n,) int64 in 0..k-1 ·
    x_test (n_test, *input_shape) · y_test (n_test,) · ids (n,) strings or None ·
    noisy_mask (n,) bool or None (None when unknown, e.g. uploads) ·
    y_train_clean (n,) the labels before noise, or None.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    input_shape: tuple[int, ...]
    ids: np.ndarray | None = None
    noisy_mask: np.ndarray | None = None
    y_train_clean: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def inject_label_noise(
    y: np.ndarray, n_classes: int, rate: float, kind: str = "uniform", *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flip labels. y (n,) -> (noisy y (n,), flipped mask (n,) bool).

    ``uniform``: each label flips with probability ``rate`` to a uniformly chosen other
    class. ``pair``: class c flips to (c + 1) mod k with probability ``rate``.
    """
    if not (0.0 <= rate <= 1.0):
        raise invalid("label_noise", "inject_label_noise", "a float in [0, 1]", rate)
    if kind not in NOISE_KINDS:
        raise invalid("noise", "inject_label_noise", f"one of {list(NOISE_KINDS)}", kind)
    if n_classes < 2 and rate > 0:
        raise invalid("n_classes", "inject_label_noise", "at least 2 when noise is added", n_classes)
    rng = _rng(seed)
    y = np.asarray(y, dtype=np.int64)
    flip = np.asarray(rng.random(y.shape[0]) < rate, dtype=bool)
    noisy = y.copy()
    if kind == "uniform":
        # Shift by 1..k-1: uniform over the other classes.
        shift = rng.integers(1, n_classes, size=y.shape[0]) if n_classes > 1 else 0
        noisy[flip] = (y[flip] + np.asarray(shift)[flip]) % n_classes
    else:
        noisy[flip] = (y[flip] + 1) % n_classes
    return noisy, flip


def _stratified_split(
    y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = round(test_fraction * idx.size)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = np.concatenate(train_idx)
    te = np.concatenate(test_idx)
    rng.shuffle(tr)
    rng.shuffle(te)
    return tr, te


def _finish(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    input_shape: tuple[int, ...],
    label_noise: float,
    noise: str,
    seed: int,
    info: dict[str, Any],
) -> Dataset:
    noisy_mask = None
    clean = None
    if label_noise > 0:
        clean = y.copy()
        y, noisy_mask = inject_label_noise(y, n_classes, label_noise, noise, seed=seed + 1)
    else:
        noisy_mask = np.zeros(y.shape[0], dtype=bool)
    return Dataset(
        x_train=x.astype(np.float32),
        y_train=y.astype(np.int64),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        n_classes=n_classes,
        input_shape=input_shape,
        noisy_mask=noisy_mask,
        y_train_clean=clean,
        info=info,
    )


def load_digits(
    *,
    classes: list[int] | None = None,
    label_noise: float = 0.0,
    noise: str = "uniform",
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """scikit-learn's digits, pixels / 16, stratified split, optional label noise.

    ``classes`` keeps those digits and relabels them 0..k-1 in the given order.
    """
    from sklearn.datasets import load_digits as _sk_digits

    if not (0.0 < test_fraction < 1.0):
        raise invalid("test_fraction", "load_digits", "a float in (0, 1)", test_fraction)
    bunch = _sk_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    n_classes = 10
    if classes is not None:
        if len(classes) < 2 or len(set(classes)) != len(classes) or any(c not in range(10) for c in classes):
            raise invalid("classes", "load_digits", "at least 2 distinct digits in 0..9", classes)
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        remap = {c: i for i, c in enumerate(classes)}
        y = np.array([remap[int(v)] for v in y], dtype=np.int64)
        n_classes = len(classes)
    rng = _rng(seed)
    tr, te = _stratified_split(y, test_fraction, rng)
    info = {
        "builtin": "digits",
        "classes": classes,
        "label_noise": label_noise,
        "noise": noise,
        "test_fraction": test_fraction,
        "seed": seed,
        "scaling": "pixel / 16",
    }
    return _finish(x[tr], y[tr], x[te], y[te], n_classes, (1, 8, 8), label_noise, noise, seed, info)


def make_gaussians(
    *,
    n: int = 1000,
    dim: int = 20,
    classes: int = 3,
    separation: float = 3.0,
    n_test: int | None = None,
    label_noise: float = 0.0,
    noise: str = "uniform",
    seed: int = 0,
) -> Dataset:
    """Isotropic Gaussian blobs: n training samples (balanced), n_test test samples."""
    if n < classes or n < 2:
        raise invalid("n", "make_gaussians", f"an integer >= max(2, classes={classes})", n)
    if dim < 1:
        raise invalid("dim", "make_gaussians", "an integer >= 1", dim)
    if classes < 2:
        raise invalid("classes", "make_gaussians", "an integer >= 2", classes)
    n_test = n if n_test is None else n_test
    rng = _rng(seed)
    means = rng.normal(0.0, separation / np.sqrt(dim), size=(classes, dim))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(count) % classes
        rng.shuffle(y)
        x = means[y] + rng.normal(size=(count, dim))
        return x, y

    x, y = draw(n)
    xt, yt = draw(n_test)
    info = {
        "builtin": "gaussians",
        "n": n,
        "dim": dim,
        "classes": classes,
        "separation": separation,
        "n_test": n_test,
        "label_noise": label_noise,
        "noise": noise,
        "seed": seed,
    }
    return _finish(x, y, xt, yt, classes, (dim,), label_noise, noise, seed, info)


def from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    ids: np.ndarray | None = None,
    n_classes: int | None = None,
) -> Dataset:
    """Validate user arrays (as given: no normalization) and wrap them in a Dataset."""
    x = np.asarray(x)
    y = np.asarray(y)
    caller = "from_arrays"
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise invalid("x", caller, "a numeric array of shape (n, ...) with n >= 1", f"{x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise invalid("y", caller, f"a 1-d array of length {x.shape[0]}", f"shape {y.shape}")
    if not np.all(np.isfinite(x)):
        raise invalid("x", caller, "finite values (no NaN or inf)", "non-finite values")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise invalid("y", caller, "integer class labels", "non-integer values")
    elif y.dtype.kind not in "iub":
        raise invalid("y", caller, "integer class labels", str(y.dtype))
    y = y.astype(np.int64)
    has_test = x_test is not None and y_test is not None
    xt = np.asarray(x_test) if has_test else np.zeros((0, *x.shape[1:]), dtype=np.float32)
    yt = np.asarray(y_test).astype(np.int64) if has_test else np.zeros((0,), dtype=np.int64)
    if xt.shape[1:] != x.shape[1:]:
        raise invalid("x_test", caller, f"shape (m, {', '.join(map(str, x.shape[1:]))})", xt.shape)
    if yt.shape != (xt.shape[0],):
        raise invalid("y_test", caller, f"a 1-d array of length {xt.shape[0]}", yt.shape)
    if xt.size and not np.all(np.isfinite(xt)):
        raise invalid("x_test", caller, "finite values (no NaN or inf)", "non-finite values")
    k = int(max(y.max(initial=0), yt.max(initial=0)) + 1) if n_classes is None else n_classes
    if k > MAX_CLASSES:
        raise invalid("y", caller, f"labels in 0..{MAX_CLASSES - 1}", int(y.max()))
    for name, arr in (("y", y), ("y_test", yt)):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise invalid(name, caller, f"labels in 0..{k - 1}", f"range {arr.min()}..{arr.max()}")
    if k < 2:
        raise InvalidInputError("The 'y' labels must contain at least 2 classes.", param="y")
    return Dataset(
        x_train=x.astype(np.float32),
        y_train=y,
        x_test=xt.astype(np.float32),
        y_test=yt,
        n_classes=k,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        ids=None if ids is None else np.asarray(ids).astype(str),
        noisy_mask=None,
    )


def load_npz(path: str) -> Dataset:
    """Load a canonical dataset file (arrays x, y, x_test?, y_test?, ids?, n_classes?,
    y_true?, class_names?)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    if "x" not in arrays or "y" not in arrays:
        raise InvalidInputError("A dataset npz must contain arrays 'x' and 'y'.", param="file")
    k = int(arrays["n_classes"]) if "n_classes" in arrays else None
    ds = from_arrays(
        arrays["x"],
        arrays["y"],
        arrays.get("x_test"),
        arrays.get("y_test"),
        ids=arrays.get("ids"),
        n_classes=k,
    )
    if "input_shape" in arrays:
        ds.input_shape = tuple(int(s) for s in arrays["input_shape"])
    if "y_true" in arrays:
        # True labels given with the upload (its truth column): the wrong labels are then
        # known, as for a built-in with injected noise, and jobs report how well they are found.
        y_true = np.asarray(arrays["y_true"], dtype=np.int64)
        if (
            y_true.shape != ds.y_train.shape
            or y_true.min(initial=0) < 0
            or y_true.max(initial=0) >= ds.n_classes
        ):
            raise InvalidInputError(
                f"Array 'y_true' must hold labels 0..{ds.n_classes - 1} for the {ds.n_train} training rows.",
                param="y_true",
            )
        ds.y_train_clean = y_true
        ds.noisy_mask = y_true != ds.y_train
    if "class_names" in arrays:
        ds.info["class_names"] = [str(v) for v in arrays["class_names"].tolist()]
    return ds


def flat_features(x: np.ndarray) -> np.ndarray:
    """(n, *shape) -> (n, prod(shape))."""
    return x.reshape(x.shape[0], -1)
