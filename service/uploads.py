"""Parse and validate an uploaded dataset file (npz, CSV or Parquet) without trusting it.

Used by ``POST /v1/datasets`` after the request body has been streamed to a temp file. Pure:
numpy, pandas, pyarrow and the standard library; no FastAPI, no torch, no ``infoscore``.

Rules, in order of the threats they answer:

- Size first, content later. The file size, the npz central directory (declared sizes,
  compression ratio, member names) and every ``.npy`` header (dtype, shape) are checked
  before any array is decompressed, so a zip bomb or an absurd declared shape is refused
  without allocating it. CSV row reads are capped; Parquet metadata is read before data.
- Never unpickle: ``np.load(..., allow_pickle=False)`` always, and object dtypes are
  refused from the header.
- Values are used as given unless ``standardize`` is asked for; they must be finite in
  float32. Labels must be integers 0..k-1 with k = max label + 1 >= 2 and every class present
  in the training rows; text labels, and integer labels with ``remap_labels``, are mapped to
  0..k-1 in sorted order and the originals kept as ``class_names``.
- Mistakes that parse fine but give quietly wrong results are refused with the fix named:
  duplicate ids, a saved row index as a feature (a column named ``index``/``Unnamed: 0``,
  or an integer run 0..n-1), labels that skip a class. Features on very different scales
  give a ``warnings`` entry instead (the job still runs).

Every error is an :class:`UploadError` whose ``detail`` names the array or column, what
was expected and what came, e.g. ``"Array 'y' must hold integer labels 0..k-1; got -1 at
index 3."``. :class:`UploadTooLarge` (HTTP 413) is raised when a size limit is hit, and
its detail names the limit.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import math
import os
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store.artifacts import atomic_writer

from .suggest import closest_name

ACCEPTED_FORMATS = (
    "npz (numpy.savez with arrays 'x', 'y' and optional 'x_test', 'y_test', 'ids'), "
    "CSV (UTF-8, comma-separated, header row with a 'label' column) or "
    "Parquet (a 'label' column)"
)
NPZ_ARRAYS = ("x", "y", "x_test", "y_test", "ids", "y_true")
# Written by write_canonical_npz; accepted back so that a canonical file re-uploads as is.
NPZ_META_ARRAYS = ("n_classes", "input_shape", "class_names", "feature_mean", "feature_std")
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
ID_COLUMN = "id"
SPLIT_VALUES = ("train", "test")
# x is (n, *input_shape) and the model registry takes input shapes of 1 to 3 dims.
MAX_INPUT_DIMS = 3

_EXTENSIONS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_SNIFF_BYTES = 64 * 1024
# What zipfile and np.load raise on a damaged archive or member.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
)
_MiB = 1024 * 1024


class UploadError(Exception):
    """An upload the user can fix; the gateway answers 422 problem+json with ``detail``.

    ``field`` names what is wrong: ``"file"`` for the file as a whole, else the npz array
    (``"x"``, ``"y"``, ...) or the table column (``"label"``, ``"split"``, a feature name).
    """

    status_code = 422

    def __init__(self, detail: str, *, field: str = "file") -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a parse process and re-raised in the gateway: keep ``field`` across pickling.
        return (_rebuild_error, (type(self), self.detail, self.field))


class UploadTooLarge(UploadError):
    """A size limit was hit (bytes, elements, rows, features, compression ratio): HTTP 413."""

    status_code = 413


def _rebuild_error(cls: type[UploadError], detail: str, field: str) -> UploadError:
    return cls(detail, field=field)


# The name used in the design notes for the 413 family.
LimitExceeded = UploadTooLarge

# Feature standard deviations (training split) further apart than this ratio give a
# warning: gradient training then mostly sees the large-scale features.
SCALE_RATIO_WARNING = 100.0
# Standardization statistics are listed in the dataset record up to this many features
# (always kept in the dataset file).
MAX_STATS_IN_RECORD = 10_000
# Names pandas gives a saved row index.
INDEX_COLUMN_NAMES = ("index", "level_0")


@dataclass
class UploadLimits:
    """Size limits for one upload. Defaults suit one gateway process with a few GiB of memory."""

    max_bytes: int = 512 * _MiB
    """Size of the uploaded file as stored."""
    max_elements: int = 200_000_000
    """Array elements in total over all arrays (train and test features, labels, ids)."""
    max_rows: int = 2_000_000
    """Samples in total (train + test)."""
    max_features: int = 1_000_000
    """Features per sample, i.e. prod(input_shape); for tables, the feature column count."""
    max_classes: int = 10_000
    max_uncompressed_bytes: int = 2048 * _MiB
    """npz: sum of the declared uncompressed member sizes; Parquet: of the row groups."""
    max_compression_ratio: float = 200.0
    """npz: uncompressed/compressed size per member, checked for members over 1 MiB. Dense
    data compresses far less; a block of zeros deflates about 1000:1. Very sparse arrays
    can exceed it: the error then suggests an uncompressed numpy.savez. Also the ratio of
    the stored dataset (:func:`dataset_nbytes`) to the uploaded file, checked when the
    dataset is over ``EXPANSION_FLOOR`` bytes (a constant Parquet column decodes ~1000:1)."""
    max_id_length: int = 256
    """Characters per id (and per text label): ids are stored fixed-width, so one long id
    costs its length in every row."""
    max_columns: int = 20_000
    """Columns of a CSV or Parquet file (counted from the header line or the schema)."""
    max_dataset_bytes: int = 1024 * _MiB
    """The dataset as stored and as held in memory (:func:`dataset_nbytes`): float32
    features, int64 labels, fixed-width ids; computed before any array is built."""


# Setting (environment variable) behind each limit, named in every 413.
LIMIT_SETTINGS = {
    "max_bytes": "INFOSCORE_MAX_UPLOAD_BYTES",
    "max_id_length": "INFOSCORE_MAX_ID_LENGTH",
    "max_columns": "INFOSCORE_MAX_COLUMNS",
    "max_dataset_bytes": "INFOSCORE_MAX_DATASET_BYTES",
    "max_compression_ratio": "INFOSCORE_MAX_EXPANSION_RATIO",
}
# The stored/uploaded size ratio is only checked above this size: small files may expand freely.
EXPANSION_FLOOR = 64 * _MiB
# A CSV header line longer than this many bytes per allowed column is refused unread.
_HEADER_BYTES_PER_COLUMN = 256


def _limit(name: str, value: object) -> str:
    """``"name = value (INFOSCORE_NAME)"`` for a 413 detail."""
    env = LIMIT_SETTINGS.get(name)
    return f"{name} = {value}" + (f" ({env})" if env else "")


def dataset_nbytes(n_rows: int, features: int, *, id_chars: int = 0, has_truth: bool = False) -> int:
    """Bytes of a canonical dataset of ``n_rows`` samples (train + test): float32 features,
    int64 labels (and true labels), ids as fixed-width unicode of ``id_chars`` characters
    (4 bytes each). What the gateway writes and what a worker holds per copy."""
    per_row = features * 4 + 8 + (8 if has_truth else 0) + 4 * id_chars
    return int(n_rows) * per_row


def _check_budget(
    n_rows: int,
    features: int,
    limits: UploadLimits,
    file_size: int,
    *,
    id_chars: int = 0,
    has_truth: bool = False,
    what: str = "The dataset",
) -> int:
    """Refuse a dataset whose stored size is over max_dataset_bytes, or whose stored size is
    an implausible multiple of the uploaded file; returns the size."""
    need = dataset_nbytes(n_rows, features, id_chars=id_chars, has_truth=has_truth)
    shape = f"{n_rows} rows x {features} features" + (f", ids of {id_chars} characters" if id_chars else "")
    if need > limits.max_dataset_bytes:
        raise UploadTooLarge(
            f"{what} would take {need} bytes stored and in memory ({shape}: float32 features, int64 "
            f"labels, fixed-width ids); the limit is {_limit('max_dataset_bytes', limits.max_dataset_bytes)} "
            "bytes."
        )
    if need > EXPANSION_FLOOR and need > limits.max_compression_ratio * max(file_size, 1):
        raise UploadTooLarge(
            f"{what} would take {need} bytes stored ({shape}) from a {file_size}-byte upload, "
            f"{need / max(file_size, 1):.0f}:1; the limit is "
            f"{_limit('max_compression_ratio', f'{limits.max_compression_ratio:g}')}:1."
        )
    return need


def _check_text_length(length: int, what: str, field: str, limits: UploadLimits, where: str = "") -> None:
    if length > limits.max_id_length:
        raise UploadTooLarge(
            f"{what} holds a value of {length} characters{where}; the limit is "
            f"{_limit('max_id_length', limits.max_id_length)} characters (ids and text labels are "
            "stored fixed-width, so one long value costs its length in every row).",
            field=field,
        )


def _max_text_length(values: np.ndarray) -> tuple[int, int]:
    """(length of the longest str(value), its index) of an object or str array; no copy."""
    if values.size == 0:
        return 0, 0
    if values.dtype.kind in "US":
        width = values.dtype.itemsize // (4 if values.dtype.kind == "U" else 1)
        lengths = np.char.str_len(values) if width > 0 else np.zeros(values.shape, dtype=np.int64)
    else:
        lengths = np.fromiter((len(str(v)) for v in values), dtype=np.int64, count=values.size)
    i = int(np.argmax(lengths))
    return int(lengths[i]), i


@dataclass(frozen=True)
class UploadOptions:
    """How to read an upload (multipart form fields of ``POST /v1/datasets``).

    Table-only (CSV, Parquet): ``label_column``, ``id_column`` (default: ``id`` when
    present), ``feature_columns`` (exactly these features, in this order) or
    ``exclude_columns`` (every other column but these), ``truth_column`` (the true labels
    of the training rows, for evaluation only: the workers then know which labels are
    wrong, as for the built-ins' injected noise). Any format: ``standardize`` (z-score each
    feature with the training split's mean and standard deviation; the statistics are kept
    with the dataset) and ``remap_labels`` (map the distinct labels, sorted, to 0..k-1 and
    keep the originals as ``class_names``; text labels are always mapped so).
    """

    label_column: str = LABEL_COLUMN
    id_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    exclude_columns: tuple[str, ...] = ()
    truth_column: str | None = None
    standardize: bool = False
    remap_labels: bool = False

    TABLE_ONLY = ("label_column", "id_column", "feature_columns", "exclude_columns", "truth_column")

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON: every field, so that two records compare field by field."""
        return {
            "label_column": self.label_column,
            "id_column": self.id_column,
            "feature_columns": None if self.feature_columns is None else list(self.feature_columns),
            "exclude_columns": list(self.exclude_columns),
            "truth_column": self.truth_column,
            "standardize": self.standardize,
            "remap_labels": self.remap_labels,
        }

    def table_options_set(self) -> list[str]:
        default = UploadOptions()
        return [name for name in self.TABLE_ONLY if getattr(self, name) != getattr(default, name)]


@dataclass
class ParsedDataset:
    """A validated dataset, ready for write_canonical_npz.

    x (n, *input_shape) float32 · y (n,) int64 in 0..n_classes-1 · x_test (m, *input_shape)
    float32 or None · y_test (m,) int64 or None · ids (n,) str array or None.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    ids: np.ndarray | None
    n_classes: int
    input_shape: tuple[int, ...]
    format: str
    y_true: np.ndarray | None = None
    """(n,) int64: the true labels of the training rows (truth column / npz 'y_true')."""
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    feature_mean: np.ndarray | None = None
    """input_shape float64: the training means subtracted by ``standardize``."""
    feature_std: np.ndarray | None = None
    declared_classes: bool = False
    """True when the file states n_classes (a canonical npz): empty classes are then allowed."""

    def describe(self) -> dict[str, Any]:
        """The dataset record's descriptive fields (stored in the record's ``meta``)."""
        counts = np.bincount(self.y, minlength=self.n_classes).tolist()
        out: dict[str, Any] = {
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "class_counts": [int(c) for c in counts],
            "has_ids": self.ids is not None,
            "has_truth": self.y_true is not None,
            "n_mislabeled": None if self.y_true is None else int(np.sum(self.y != self.y_true)),
            "warnings": list(self.warnings),
            "standardization": None,
        }
        if self.feature_mean is not None and self.feature_std is not None:
            small = self.feature_mean.size <= MAX_STATS_IN_RECORD
            out["standardization"] = {
                "method": "z-score with the training split's mean and standard deviation (ddof 0)",
                "mean": [float(v) for v in self.feature_mean.reshape(-1)] if small else None,
                "std": [float(v) for v in self.feature_std.reshape(-1)] if small else None,
            }
        return out

    @property
    def n_train(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_test(self) -> int:
        return 0 if self.y_test is None else int(self.y_test.shape[0])


# ---------------------------------------------------------------------------------------
# Entry points


def parse_upload(
    path: Path, filename: str | None, limits: UploadLimits, options: UploadOptions | None = None
) -> ParsedDataset:
    """Detect the format of the file at ``path`` and parse it under ``limits`` and ``options``.

    The format comes from the magic bytes (zip -> npz, ``PAR1`` -> Parquet, UTF-8 text ->
    CSV); ``filename``'s extension is only a hint, and a disagreement is an error.
    Raises UploadError (or UploadTooLarge) for anything a user can cause.
    """
    options = options or UploadOptions()
    if options.feature_columns is not None and options.exclude_columns:
        raise UploadError(
            "Give 'feature_columns' or 'exclude_columns', not both: feature_columns lists the "
            "features to keep, exclude_columns the columns to drop.",
            field="feature_columns",
        )
    ds = _parse_file(path, filename, limits, options)
    _settle_labels(ds, options)
    ds.warnings.extend(_scale_warnings(ds, options))
    if options.standardize:
        _standardize(ds)
    return ds


def _parse_file(
    path: Path, filename: str | None, limits: UploadLimits, options: UploadOptions
) -> ParsedDataset:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:  # the route wrote this file; losing it is a server bug
        raise RuntimeError(f"upload temp file {path} is unreadable: {exc}") from exc
    if size == 0:
        raise UploadError(f"The uploaded file is empty; expected {ACCEPTED_FORMATS}.")
    if size > limits.max_bytes:
        raise UploadTooLarge(
            f"The uploaded file is {size} bytes; the limit is max_bytes = {limits.max_bytes} bytes."
        )
    fmt = detect_format(path, filename)
    if fmt == "npz":
        table_only = options.table_options_set()
        if table_only:
            raise UploadError(
                f"The option(s) {table_only} apply to CSV and Parquet uploads; an npz names its "
                "arrays instead (x, y, x_test, y_test, ids, y_true).",
                field=table_only[0],
            )
        return _parse_npz(path, limits)
    if fmt == "csv":
        return _parse_csv(path, limits, options)
    return _parse_parquet(path, limits, options)


def precheck(path: Path, filename: str | None, limits: UploadLimits) -> str:
    """The checks cheap enough for the gateway itself (bounded reads, no parsing): file size,
    format, and a CSV's column count from its header line. Returns the format."""
    size = Path(path).stat().st_size
    if size > limits.max_bytes:
        raise UploadTooLarge(
            f"The uploaded file is {size} bytes; the limit is {_limit('max_bytes', limits.max_bytes)} bytes."
        )
    fmt = detect_format(path, filename)
    if fmt == "csv":
        read_csv_header(path, limits)
    return fmt


def _settle_labels(ds: ParsedDataset, options: UploadOptions) -> None:
    """Map labels to 0..k-1 when asked; else refuse labels that leave a class empty."""
    if ds.class_names is not None:  # text labels: already mapped
        return
    parts = [ds.y] + ([ds.y_test] if ds.y_test is not None else [])
    if options.remap_labels:
        values = np.unique(np.concatenate(parts))
        if values.size < 2:
            raise UploadError(
                f"The labels must hold at least 2 classes; got only {values.tolist()}.", field="label"
            )
        ds.y = np.searchsorted(values, ds.y).astype(np.int64)
        if ds.y_test is not None:
            ds.y_test = np.searchsorted(values, ds.y_test).astype(np.int64)
        if ds.y_true is not None:
            unknown = ~np.isin(ds.y_true, values)
            if unknown.any():
                i = int(np.argmax(unknown))
                raise UploadError(
                    f"The true label {int(ds.y_true[i])} at training row {i} is not one of the labels "
                    f"{values.tolist()}; true labels must use the same classes.",
                    field="truth",
                )
            ds.y_true = np.searchsorted(values, ds.y_true).astype(np.int64)
        ds.class_names = [str(v) for v in values.tolist()]
        ds.n_classes = int(values.size)
        return
    if ds.declared_classes:
        return
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        seen = np.unique(np.concatenate(parts))
        shown = empty[:10].tolist() + (["..."] if empty.size > 10 else [])
        raise UploadError(
            f"The labels must be 0..k-1 with every class in the training rows; labels run "
            f"{int(seen.min())}..{int(seen.max())}, so k = {ds.n_classes} and class(es) {shown} have "
            f"no training row. Relabel to 0..{seen.size - 1}, or upload with remap_labels=true to map "
            f"the {seen.size} distinct labels, sorted, to 0..{seen.size - 1} (class_names keep the "
            "originals).",
            field="label",
        )
    if ds.y_true is not None and ds.y_true.size and int(ds.y_true.max()) >= ds.n_classes:
        i = int(np.argmax(ds.y_true >= ds.n_classes))
        raise UploadError(
            f"The true label {int(ds.y_true[i])} at training row {i} is not a class of the labels "
            f"(0..{ds.n_classes - 1}).",
            field="truth",
        )


def _feature_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (ddof 0) of (n, *shape) x, in float64,
    accumulated over row blocks so that no float64 copy of x is made."""
    flat = x.reshape(x.shape[0], -1)
    total = np.zeros(flat.shape[1])
    for start in range(0, flat.shape[0], 4096):
        total += flat[start : start + 4096].sum(0, dtype=np.float64)
    mean = total / max(flat.shape[0], 1)
    sq = np.zeros(flat.shape[1])
    for start in range(0, flat.shape[0], 4096):
        block = flat[start : start + 4096].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", block, block)
    std = np.sqrt(sq / max(flat.shape[0], 1))
    return mean, std


def _scale_warnings(ds: ParsedDataset, options: UploadOptions) -> list[str]:
    if options.standardize or ds.x.shape[0] < 2:
        return []
    _, std = _feature_moments(ds.x)
    varying = std[std > 0]
    if varying.size < 2 or varying.max() / varying.min() <= SCALE_RATIO_WARNING:
        return []
    names = ds.feature_names or [f"feature {j}" for j in range(std.size)]
    hi, lo = int(np.argmax(np.where(std > 0, std, -np.inf))), int(np.argmin(np.where(std > 0, std, np.inf)))
    return [
        f"Features are on very different scales: standard deviations (training rows) run from "
        f"{std[lo]:.3g} ({names[lo]}) to {std[hi]:.3g} ({names[hi]}), a ratio of "
        f"{std[hi] / std[lo]:.3g}. Gradient-trained models then mostly see the large features, "
        "which can hurt accuracy and every score; upload with standardize=true to z-score them."
    ]


def _standardize(ds: ParsedDataset) -> None:
    """z-score with the training split's statistics (applied to the test split too);
    constant features are centered only."""
    mean, std = _feature_moments(ds.x)
    scale = np.where(std > 0, std, 1.0)
    shape = ds.x.shape[1:]

    def apply(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        out = np.empty(flat.shape, dtype=np.float32)
        for start in range(0, flat.shape[0], 4096):
            out[start : start + 4096] = (flat[start : start + 4096] - mean) / scale
        return out.reshape(x.shape)

    ds.x = apply(ds.x)
    if ds.x_test is not None:
        ds.x_test = apply(ds.x_test)
    ds.feature_mean = mean.reshape(shape)
    ds.feature_std = scale.reshape(shape)


def detect_format(path: Path, filename: str | None) -> str:
    """'npz' | 'csv' | 'parquet' from the magic bytes, checked against the name's extension."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        at_end = not f.read(1)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        sniffed: str | None = "npz"
    elif head[:4] == b"PAR1":
        sniffed = "parquet"
    elif _looks_like_text(head, final=at_end):
        sniffed = "csv"
    else:
        sniffed = None

    ext = Path(filename).suffix.lower() if filename else ""
    hinted = _EXTENSIONS.get(ext)
    shown = repr(filename) if filename else "The uploaded file"
    if sniffed is None:
        what = _describe_binary(head)
        if ext == ".npy":
            what += "; a single .npy array is not a dataset, save x and y with numpy.savez"
        raise UploadError(f"{shown} is not a supported format ({what}); expected {ACCEPTED_FORMATS}.")
    if hinted is not None and hinted != sniffed:
        raise UploadError(
            f"{shown} is named like {hinted} but its content is {sniffed}; rename it or "
            f"upload the intended file. Accepted formats: {ACCEPTED_FORMATS}."
        )
    return sniffed


def write_canonical_npz(ds: ParsedDataset, path: Path) -> None:
    """Write ``ds`` as the canonical dataset file that workers load (``infoscore.data.load_npz``).

    Arrays: x, y, x_test?, y_test?, ids?, y_true?, class_names?, feature_mean?, feature_std?,
    n_classes (0-d int64), input_shape (1-d int64).
    Uncompressed (workers load it often), with fixed zip timestamps so that the same dataset
    always gives the same bytes. Written to a temp name in the same directory, fsynced, then
    renamed over ``path``: readers never see a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "x": np.ascontiguousarray(ds.x, dtype=np.float32),
        "y": np.ascontiguousarray(ds.y, dtype=np.int64),
    }
    if ds.x_test is not None and ds.y_test is not None:
        arrays["x_test"] = np.ascontiguousarray(ds.x_test, dtype=np.float32)
        arrays["y_test"] = np.ascontiguousarray(ds.y_test, dtype=np.int64)
    if ds.ids is not None:
        ids = np.asarray(ds.ids)
        arrays["ids"] = ids if ids.dtype.kind == "U" else ids.astype(str)
    if ds.y_true is not None:
        arrays["y_true"] = np.ascontiguousarray(ds.y_true, dtype=np.int64)
    if ds.class_names is not None:
        arrays["class_names"] = np.asarray(ds.class_names, dtype=str)
    if ds.feature_mean is not None and ds.feature_std is not None:
        arrays["feature_mean"] = np.asarray(ds.feature_mean, dtype=np.float64)
        arrays["feature_std"] = np.asarray(ds.feature_std, dtype=np.float64)
    arrays["n_classes"] = np.asarray(ds.n_classes, dtype=np.int64)
    arrays["input_shape"] = np.asarray(ds.input_shape, dtype=np.int64).reshape(-1)

    with atomic_writer(path) as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


# ---------------------------------------------------------------------------------------
# Format sniffing


def _looks_like_text(head: bytes, *, final: bool) -> bool:
    if b"\x00" in head:
        return False
    try:
        # Incremental: a multi-byte character cut at the sniff boundary is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=final)
    except UnicodeDecodeError:
        return False
    return True


def _describe_binary(head: bytes) -> str:
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16 text; save the CSV as UTF-8"
    if head[:2] == b"\x1f\x8b":
        return "gzip-compressed data; upload the uncompressed file"
    if head[:6] == b"\x93NUMPY":
        return "a single .npy array; save x and y together with numpy.savez"
    if head[:4] == b"\x89HDF":
        return "HDF5 data"
    if head[:2] == b"\x80\x04" or head[:2] == b"\x80\x05":
        return "a Python pickle, which is never loaded"
    return f"binary data starting with {head[:8]!r}"


# ---------------------------------------------------------------------------------------
# Shared validation


Locator = Callable[[int], str]


def _at_index(i: int) -> str:
    return f"index {i}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return repr(v)


def _fmt_label(v: Any) -> str:
    """Like _fmt_value, but an integral float label shows as the integer it stands for."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return str(int(v))
    return _fmt_value(v)


def _labels_to_int64(values: np.ndarray, what: str, loc: Locator, field: str, max_classes: int) -> np.ndarray:
    """Check class labels (integers, or floats with integral values) and return them as int64.

    ``what`` is e.g. "Array 'y'" or "Column 'label'"; ``loc(i)`` says where element i is.
    """
    expected = f"{what} must hold integer labels 0..k-1"
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.int64)
    if kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise UploadError(f"{expected}; got {_fmt_label(values[i])} at {loc(i)}.", field=field)
        frac = values != np.floor(values)
        if frac.any():
            i = int(np.argmax(frac))
            raise UploadError(f"{expected}; got {_fmt_label(values[i])} at {loc(i)}.", field=field)
    elif kind not in "iu":
        raise UploadError(f"{expected}; got dtype {values.dtype}.", field=field)
    if values.size:
        neg = values < 0
        if neg.any():
            i = int(np.argmax(neg))
            raise UploadError(f"{expected}; got {_fmt_label(values[i])} at {loc(i)}.", field=field)
        big = values >= max_classes
        if big.any():
            i = int(np.argmax(big))
            raise UploadError(
                f"{expected} with k <= max_classes = {max_classes}; got {_fmt_label(values[i])} at {loc(i)}.",
                field=field,
            )
    return values.astype(np.int64)


def _features_to_float32(values: np.ndarray, what: str, loc: Locator, field: str) -> np.ndarray:
    """Cast numeric features to float32 and check every value is finite there.

    The check runs after the cast so that float64 values beyond float32's range (which
    become inf) are refused too. It runs in chunks to keep the temporary masks small.
    """
    kind = values.dtype.kind
    if kind not in "biuf":
        raise UploadError(
            f"{what} must be numeric (bool, int, uint or float); got dtype {values.dtype}.", field=field
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
        out = np.ascontiguousarray(values, dtype=np.float32)
    if kind == "f":
        flat = out.reshape(-1)  # a view: out is C-contiguous
        step = 1 << 22
        for start in range(0, flat.size, step):
            bad = ~np.isfinite(flat[start : start + step])
            if bad.any():
                pos = tuple(int(w) for w in np.unravel_index(start + int(np.argmax(bad)), out.shape))
                orig = values[pos]
                shown = _fmt_value(orig)
                if np.isfinite(orig):
                    shown += " (beyond the float32 range)"
                where = loc(pos[0]) if len(pos) == 1 else f"index {pos}"
                raise UploadError(f"{what} must hold finite numbers; got {shown} at {where}.", field=field)
    return out


def _finish(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    ids: np.ndarray | None,
    fmt: str,
    limits: UploadLimits,
    *,
    label_what: str,
    label_field: str,
    declared_classes: int | None = None,
) -> ParsedDataset:
    """Count classes and wrap validated arrays; labels are already int64 in 0..max_classes-1."""
    k = int(y.max()) + 1 if y.size else 0
    if y_test is not None and y_test.size:
        k = max(k, int(y_test.max()) + 1)
    if declared_classes is not None:
        if declared_classes < k:
            raise UploadError(
                f"Array 'n_classes' must be at least max label + 1 = {k}; got {declared_classes}.",
                field="n_classes",
            )
        k = declared_classes
    if k < 2:
        raise UploadError(
            f"{label_what} must hold at least 2 classes (labels 0..k-1 with k >= 2); "
            f"got only label {k - 1 if k else 'none'}.",
            field=label_field,
        )
    if k > limits.max_classes:
        raise UploadError(
            f"{label_what} declares k = {k} classes; the limit is max_classes = {limits.max_classes}.",
            field=label_field,
        )
    return ParsedDataset(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        ids=ids,
        n_classes=k,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        format=fmt,
    )


# ---------------------------------------------------------------------------------------
# npz


@dataclass
class _NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    nbytes: int


def _check_member_name(name: str) -> str:
    """Return the array key of an npz member, or raise for unsafe or unknown names."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name or "\x00" in name:
        raise UploadError(f"The npz holds a member with an unsafe path {name!r}; it is refused.")
    if len(parts) > 1 or not name.endswith(".npy"):
        raise UploadError(
            f"The npz holds an unexpected member {name!r}; only the arrays "
            f"{', '.join(NPZ_ARRAYS)} (as written by numpy.savez) are accepted."
        )
    key = name[: -len(".npy")]
    if key not in NPZ_ARRAYS and key not in NPZ_META_ARRAYS:
        raise UploadError(
            f"The npz holds an unknown array {key!r}; accepted arrays are {', '.join(NPZ_ARRAYS)} "
            "(remove the others before uploading).",
            field=key,
        )
    return key


def _read_npy_header(f: BinaryIO, key: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise UploadError(
                f"Array {key!r} uses .npy format version {version}; only 1.0 and 2.0 are accepted."
            )
        offset = f.tell()
    except UploadError:
        raise
    except (zipfile.BadZipFile, zlib.error) as exc:  # a small member is read whole: CRC checked here
        raise UploadError(f"Array {key!r} is corrupt ({exc}).", field=key) from exc
    except (ValueError, TypeError, SyntaxError, EOFError, OSError) as exc:
        raise UploadError(f"Array {key!r} has no valid .npy header ({exc}).", field=key) from exc
    return tuple(int(s) for s in shape), np.dtype(dtype), int(offset)


def _inspect_npz(path: Path, limits: UploadLimits) -> dict[str, _NpyHeader]:
    """Check the zip directory and every .npy header without decompressing any array data."""
    headers: dict[str, _NpyHeader] = {}
    total_uncompressed = 0
    total_elements = 0
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > 16:
                raise UploadError(
                    f"The npz holds {len(infos)} members; a dataset has at most {len(NPZ_ARRAYS) + 2}."
                )
            for info in infos:
                key = _check_member_name(info.filename)
                if key in headers:
                    raise UploadError(f"The npz holds array {key!r} more than once.", field=key)
                if info.flag_bits & 0x1:
                    raise UploadError(f"Array {key!r} is encrypted; upload an unencrypted npz.", field=key)
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise UploadError(
                        f"Array {key!r} uses zip compression method {info.compress_type}; only stored "
                        "and deflate (numpy.savez, numpy.savez_compressed) are accepted.",
                        field=key,
                    )
                total_uncompressed += info.file_size
                if total_uncompressed > limits.max_uncompressed_bytes:
                    raise UploadTooLarge(
                        f"The npz declares {total_uncompressed} or more uncompressed bytes; the limit is "
                        f"max_uncompressed_bytes = {limits.max_uncompressed_bytes}.",
                        field=key,
                    )
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > _MiB and ratio > limits.max_compression_ratio:
                    raise UploadTooLarge(
                        f"Array {key!r} expands {ratio:.0f}:1 when decompressed ({info.compress_size} -> "
                        f"{info.file_size} bytes); the limit is max_compression_ratio = "
                        f"{limits.max_compression_ratio:g}:1. If this is real, very sparse data, "
                        "upload it saved with numpy.savez (uncompressed).",
                        field=key,
                    )
                # zipfile never yields more than info.file_size bytes, so the checks below,
                # made against the declared size, bound what np.load will allocate.
                with zf.open(info) as member:
                    shape, dtype, offset = _read_npy_header(member, key)  # type: ignore[arg-type]
                if dtype.hasobject:
                    raise UploadError(
                        f"Array {key!r} has dtype {dtype} with Python objects; object/pickled arrays are "
                        "refused. Store numbers, or strings as a fixed-width unicode array.",
                        field=key,
                    )
                elements = math.prod(shape)
                total_elements += elements
                if total_elements > limits.max_elements:
                    raise UploadTooLarge(
                        f"Array {key!r} declares shape {shape} ({elements} elements), bringing the total "
                        f"to {total_elements}; the limit is max_elements = {limits.max_elements}.",
                        field=key,
                    )
                nbytes = elements * dtype.itemsize
                if offset + nbytes > info.file_size:
                    raise UploadError(
                        f"Array {key!r} declares shape {shape} of {dtype} ({nbytes} bytes) but its member "
                        f"holds only {info.file_size - offset} bytes of data; the file is truncated or forged.",
                        field=key,
                    )
                headers[key] = _NpyHeader(shape, dtype, nbytes)
    except UploadError:
        raise
    except _ZIP_ERRORS as exc:
        raise UploadError(f"The npz (zip) archive is malformed or truncated ({exc}).") from exc
    return headers


def _check_npz_headers(h: dict[str, _NpyHeader], limits: UploadLimits) -> None:
    """Shape and dtype rules, from the headers alone."""
    for key in ("x", "y"):
        if key not in h:
            raise UploadError(
                f"The npz must contain arrays 'x' and 'y'; got {sorted(h) or 'no arrays'}.", field=key
            )
    if ("x_test" in h) != ("y_test" in h):
        have, miss = ("x_test", "y_test") if "x_test" in h else ("y_test", "x_test")
        raise UploadError(f"Array {have!r} was given without {miss!r}; give both or neither.", field=miss)

    x = h["x"]
    if not 2 <= len(x.shape) <= MAX_INPUT_DIMS + 1:
        raise UploadError(
            f"Array 'x' must have shape (n, d), (n, h, w) or (n, c, h, w); got shape {x.shape}"
            + (" (for one feature use x.reshape(-1, 1))." if len(x.shape) == 1 else "."),
            field="x",
        )
    n = x.shape[0]
    if n < 1:
        raise UploadError(f"Array 'x' must hold at least 1 sample; got shape {x.shape}.", field="x")
    features = math.prod(x.shape[1:])
    if features < 1:
        raise UploadError(
            f"Array 'x' must have at least 1 feature per sample; got shape {x.shape}.", field="x"
        )
    if features > limits.max_features:
        raise UploadTooLarge(
            f"Array 'x' has {features} features per sample (shape {x.shape}); the limit is "
            f"max_features = {limits.max_features}.",
            field="x",
        )
    rows = n + (h["x_test"].shape[0] if "x_test" in h and h["x_test"].shape else 0)
    if rows > limits.max_rows:
        raise UploadTooLarge(
            f"The dataset has {rows} samples (train + test); the limit is max_rows = {limits.max_rows}.",
            field="x",
        )
    for key in ("x", "x_test"):
        if key in h and h[key].dtype.kind not in "biuf":
            raise UploadError(
                f"Array {key!r} must be numeric (bool, int, uint or float); got dtype {h[key].dtype}.",
                field=key,
            )
    for key in ("y", "y_test"):
        if key in h and h[key].dtype.kind not in "biuf":
            raise UploadError(
                f"Array {key!r} must hold integer labels 0..k-1; got dtype {h[key].dtype}.", field=key
            )
    if h["y"].shape != (n,):
        raise UploadError(
            f"Array 'y' must have shape ({n},) to match 'x'; got shape {h['y'].shape}.", field="y"
        )
    if "x_test" in h:
        xt, yt = h["x_test"].shape, h["y_test"].shape
        if len(xt) != len(x.shape) or xt[1:] != x.shape[1:]:
            want = ", ".join(["m", *map(str, x.shape[1:])])
            raise UploadError(
                f"Array 'x_test' must have shape ({want}) to match 'x'; got shape {xt}.", field="x_test"
            )
        if yt != (xt[0],):
            raise UploadError(
                f"Array 'y_test' must have shape ({xt[0]},) to match 'x_test'; got shape {yt}.",
                field="y_test",
            )
    if "ids" in h:
        ids = h["ids"]
        if ids.shape != (n,):
            raise UploadError(
                f"Array 'ids' must have shape ({n},) to match 'x'; got shape {ids.shape}.", field="ids"
            )
        if ids.dtype.kind not in "iuUS":
            raise UploadError(
                f"Array 'ids' must hold strings or integers; got dtype {ids.dtype}.", field="ids"
            )
        _check_text_length(_npy_chars(ids.dtype), "Array 'ids'", "ids", limits, f" (dtype {ids.dtype})")
    if "y_true" in h:
        if h["y_true"].shape != (n,):
            raise UploadError(
                f"Array 'y_true' must have shape ({n},) to match 'x'; got shape {h['y_true'].shape}.",
                field="y_true",
            )
        if h["y_true"].dtype.kind not in "biuf":
            raise UploadError(
                f"Array 'y_true' must hold integer labels 0..k-1; got dtype {h['y_true'].dtype}.",
                field="y_true",
            )
    if "class_names" in h and (len(h["class_names"].shape) != 1 or h["class_names"].dtype.kind != "U"):
        raise UploadError(
            f"Array 'class_names' must be a 1-d unicode array; got {h['class_names'].dtype} of shape "
            f"{h['class_names'].shape}.",
            field="class_names",
        )
    if "class_names" in h:
        _check_text_length(
            _npy_chars(h["class_names"].dtype),
            "Array 'class_names'",
            "class_names",
            limits,
            f" (dtype {h['class_names'].dtype})",
        )
    if "n_classes" in h and (h["n_classes"].shape not in ((), (1,)) or h["n_classes"].dtype.kind not in "iu"):
        raise UploadError(
            f"Array 'n_classes' must be one integer; got {h['n_classes'].dtype} of shape {h['n_classes'].shape}.",
            field="n_classes",
        )
    if "input_shape" in h and (len(h["input_shape"].shape) != 1 or h["input_shape"].dtype.kind not in "iu"):
        raise UploadError(
            f"Array 'input_shape' must be a 1-d integer array; got {h['input_shape'].dtype} "
            f"of shape {h['input_shape'].shape}.",
            field="input_shape",
        )


def _npy_chars(dtype: np.dtype[Any]) -> int:
    """Characters of one element as stored fixed-width (str of an integer: at most 20)."""
    if dtype.kind == "U":
        return dtype.itemsize // 4
    if dtype.kind == "S":
        return dtype.itemsize
    return 20


def _parse_npz(path: Path, limits: UploadLimits) -> ParsedDataset:
    headers = _inspect_npz(path, limits)
    _check_npz_headers(headers, limits)
    x_shape = headers["x"].shape
    rows = x_shape[0] + (headers["x_test"].shape[0] if "x_test" in headers else 0)
    _check_budget(
        rows,
        math.prod(x_shape[1:]),
        limits,
        path.stat().st_size,
        id_chars=_npy_chars(headers["ids"].dtype) if "ids" in headers else 0,
        has_truth="y_true" in headers,
        what="The npz",
    )
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in headers:
                arrays[key] = z[key]
    except _ZIP_ERRORS as exc:
        # Headers and sizes were checked, so this is corrupt data (e.g. a bad CRC).
        raise UploadError(f"The npz could not be read ({exc}); it is corrupt or truncated.") from exc

    x = _features_to_float32(arrays["x"], "Array 'x'", _at_index, "x")
    y = _labels_to_int64(arrays["y"], "Array 'y'", _at_index, "y", limits.max_classes)
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _features_to_float32(arrays["x_test"], "Array 'x_test'", _at_index, "x_test")
        y_test = _labels_to_int64(arrays["y_test"], "Array 'y_test'", _at_index, "y_test", limits.max_classes)
    y_true = None
    if "y_true" in arrays:
        y_true = _labels_to_int64(arrays["y_true"], "Array 'y_true'", _at_index, "y_true", limits.max_classes)
    ids = None
    if "ids" in arrays:
        raw = arrays["ids"]
        if raw.dtype.kind == "S":
            try:
                ids = np.char.decode(raw, "utf-8")
            except UnicodeDecodeError as exc:
                raise UploadError(
                    f"Array 'ids' holds bytes that are not UTF-8 ({exc}).", field="ids"
                ) from exc
        else:
            ids = raw.astype(str)
        _check_unique_ids(ids, "Array 'ids'", "ids", "make the ids unique, or leave out the 'ids' array")
    declared = None
    if "n_classes" in arrays:
        declared = int(arrays["n_classes"].reshape(-1)[0])
    if "input_shape" in arrays:
        given = tuple(int(s) for s in arrays["input_shape"])
        if given != tuple(x.shape[1:]):
            raise UploadError(
                f"Array 'input_shape' must equal x.shape[1:] = {tuple(x.shape[1:])}; got {given}.",
                field="input_shape",
            )
    ds = _finish(
        x,
        y,
        x_test,
        y_test,
        ids,
        "npz",
        limits,
        label_what="Array 'y'",
        label_field="y",
        declared_classes=declared,
    )
    ds.y_true = y_true
    ds.declared_classes = declared is not None
    if "class_names" in arrays:
        names = [str(v) for v in arrays["class_names"].tolist()]
        if len(names) != ds.n_classes:
            raise UploadError(
                f"Array 'class_names' must hold one name per class ({ds.n_classes}); got {len(names)}.",
                field="class_names",
            )
        ds.class_names = names
    return ds


def _check_unique_ids(ids: np.ndarray, what: str, field: str, fix: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if values.size == ids.size:
        return
    dup = int(np.argmax(counts > 1))
    rows = np.flatnonzero(ids == values[dup])[:5].tolist()
    n_dup = int(np.sum(counts > 1))
    raise UploadError(
        f"{what} must hold unique ids; {str(values[dup])!r} appears {int(counts[dup])} times (rows {rows})"
        f" and {n_dup} id(s) repeat in all. Fix: {fix}.",
        field=field,
    )


# ---------------------------------------------------------------------------------------
# Tables (CSV and Parquet share the column rules)


@dataclass
class _Roles:
    """What each table column is for."""

    label: str
    features: list[str]
    explicit: frozenset[str]
    """features the user listed in feature_columns: kept even if they look like an index."""
    id: str | None
    split: str | None
    truth: str | None

    @property
    def text(self) -> frozenset[str]:
        """Columns that may hold text."""
        return frozenset(c for c in (self.label, self.id, self.split, self.truth) if c is not None)


def _check_columns(names: list[str], limits: UploadLimits, kind: str, options: UploadOptions) -> _Roles:
    """Column rules; returns each column's role (features in file or feature_columns order).

    ``names`` may be edited in place: an empty header name becomes ``Unnamed: j`` (as pandas
    names it) so that exclude_columns can name it.
    """
    seen: set[str] = set()
    for j, name in enumerate(names):
        if name == "":
            names[j] = name = f"Unnamed: {j}"
        if name in seen:
            raise UploadError(
                f"{kind} column {name!r} appears more than once; column names must be unique.", field=name
            )
        seen.add(name)

    def must_exist(option: str, name: str) -> None:
        if name not in seen:
            shown = names[:20] + (["..."] if len(names) > 20 else [])
            raise UploadError(
                f"The {option!r} option names column {name!r}, which the {kind} does not have"
                f"{closest_name(name, names)}; its columns are {shown}.",
                field=option,
            )

    label = options.label_column
    if label not in seen:
        shown = names[:20] + (["..."] if len(names) > 20 else [])
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            hint = " The file must be comma-separated."
        elif label == LABEL_COLUMN:
            hint = " Name another column with the label_column option."
        raise UploadError(
            f"The {kind} must have a {label!r} column holding the class labels; got columns {shown}"
            f"{closest_name(label, names)}.{hint}",
            field=label,
        )
    excluded = set(options.exclude_columns)
    for name in options.exclude_columns:
        must_exist("exclude_columns", name)
    if options.id_column is not None:
        must_exist("id_column", options.id_column)
        id_col: str | None = options.id_column
    else:
        id_col = ID_COLUMN if ID_COLUMN in seen and ID_COLUMN not in excluded else None
    if options.truth_column is not None:
        must_exist("truth_column", options.truth_column)
    split = SPLIT_COLUMN if SPLIT_COLUMN in seen and SPLIT_COLUMN not in excluded else None
    roles = {label: "label", id_col: "id", split: "split", options.truth_column: "truth"}
    roles.pop(None, None)
    if len({c for c in (label, id_col, split, options.truth_column) if c is not None}) != len(roles):
        raise UploadError(
            f"The label, id, split and truth columns must be different columns; got label={label!r}, "
            f"id={id_col!r}, split={split!r}, truth={options.truth_column!r}.",
            field="truth_column",
        )
    if options.feature_columns is not None:
        for name in options.feature_columns:
            must_exist("feature_columns", name)
            if name in roles:
                raise UploadError(
                    f"The 'feature_columns' option lists {name!r}, which is the {roles[name]} column.",
                    field="feature_columns",
                )
        if len(set(options.feature_columns)) != len(options.feature_columns):
            raise UploadError("The 'feature_columns' option lists a column twice.", field="feature_columns")
        features = list(options.feature_columns)
        explicit = frozenset(features)
    else:
        features = [c for c in names if c not in roles and c not in excluded]
        explicit = frozenset()
    for name in features:
        if name not in explicit and (name in INDEX_COLUMN_NAMES or name.startswith("Unnamed: ")):
            raise UploadError(
                f"{kind} column {name!r} looks like a saved row index (pandas writes one with "
                "to_csv(index=True) or after reset_index()), which would become a feature. Write the "
                f"file with index=False, or upload with exclude_columns={name} to drop it (or list it "
                "in feature_columns to keep it as a feature).",
                field=name,
            )
    if not features:
        raise UploadError(
            f"The {kind} must have at least one feature column besides the label, id, split and "
            f"truth columns; got columns {names}.",
            field="file",
        )
    if len(features) > limits.max_features:
        raise UploadTooLarge(
            f"The {kind} has {len(features)} feature columns; the limit is max_features = {limits.max_features}.",
            field="file",
        )
    return _Roles(label, features, explicit, id_col, split, options.truth_column)


def _split_mask(values: np.ndarray, loc: Locator) -> np.ndarray:
    """split column (str values, None/NaN for missing) -> bool mask of test rows."""
    is_train = values == "train"
    is_test = values == "test"
    bad = ~(is_train | is_test)
    if bad.any():
        i = int(np.argmax(bad))
        raise UploadError(
            f"Column {SPLIT_COLUMN!r} must hold 'train' or 'test'; got {_fmt_value(values[i])} at {loc(i)}.",
            field=SPLIT_COLUMN,
        )
    if not is_train.any():
        raise UploadError(
            f"Column {SPLIT_COLUMN!r} marks no row as 'train'; at least 1 training row is needed.",
            field=SPLIT_COLUMN,
        )
    return np.asarray(is_test, dtype=bool)


def _is_text(values: np.ndarray) -> bool:
    return values.dtype.kind in "OUS"


def _text_labels(
    label: np.ndarray, truth: np.ndarray | None, roles: _Roles, loc: Locator, limits: UploadLimits
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Text labels -> (int64 codes in sorted-name order, truth codes, class names)."""
    for name, values in ((roles.label, label), (roles.truth, truth)):
        if values is None:
            continue
        missing = pd.isna(values)
        if missing.any():
            i = int(np.argmax(missing))
            raise UploadError(
                f"Column {name!r} must hold a label in every row; got an empty cell at {loc(i)}.",
                field=str(name),
            )
    for name, values in ((roles.label, label), (roles.truth, truth)):
        if values is not None:
            longest, at = _max_text_length(values)
            _check_text_length(longest, f"Column {name!r}", str(name), limits, f" at {loc(at)}")
    text = label.astype(str)
    classes = np.unique(text)
    if classes.size > limits.max_classes:
        raise UploadError(
            f"Column {roles.label!r} holds {classes.size} distinct labels; the limit is max_classes = "
            f"{limits.max_classes}.",
            field=roles.label,
        )
    codes = np.searchsorted(classes, text).astype(np.int64)
    truth_codes = None
    if truth is not None:
        truth_text = truth.astype(str)
        unknown = ~np.isin(truth_text, classes)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise UploadError(
                f"Column {roles.truth!r} holds {truth_text[i]!r} at {loc(i)}, which is not one of the "
                f"labels in {roles.label!r}; true labels must use the same classes.",
                field=str(roles.truth),
            )
        truth_codes = np.searchsorted(classes, truth_text).astype(np.int64)
    return codes, truth_codes, [str(c) for c in classes]


def _looks_like_row_index(values: np.ndarray) -> bool:
    """An integer run 0..n-1 or 1..n in file order (a saved row index)."""
    n = values.shape[0]
    if n < 3 or values.dtype.kind not in "iuf":
        return False
    first = values[0]
    if first not in (0, 1):
        return False
    return bool(np.array_equal(values, np.arange(first, first + n)))


def _assemble_table(
    columns: Callable[[str], np.ndarray],
    roles: _Roles,
    n_rows: int,
    fmt: str,
    loc: Locator,
    limits: UploadLimits,
    file_size: int = 0,
) -> ParsedDataset:
    """Build the dataset from per-column numpy arrays (``columns(name)``); names rows via ``loc``."""
    if n_rows < 1:
        raise UploadError(f"The {fmt} has no data rows; at least 1 is needed.")
    features = roles.features
    x = np.empty((n_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        values = columns(name)
        if name not in roles.explicit and _looks_like_row_index(values):
            raise UploadError(
                f"Column {name!r} holds the integer run {int(values[0])}..{int(values[0]) + n_rows - 1} "
                "in file order, like a saved row index (df.reset_index() or to_csv(index=True)), which "
                f"would become a feature. Write the file with index=False, or upload with "
                f"exclude_columns={name} to drop it (or list it in feature_columns to keep it).",
                field=name,
            )
        x[:, j] = _features_to_float32(values, f"Column {name!r}", loc, name)
    raw_label = columns(roles.label)
    raw_truth = columns(roles.truth) if roles.truth is not None else None
    class_names = None
    y_true = None
    if _is_text(raw_label) or (raw_truth is not None and _is_text(raw_truth)):
        y, y_true, class_names = _text_labels(raw_label, raw_truth, roles, loc, limits)
    else:
        y = _labels_to_int64(raw_label, f"Column {roles.label!r}", loc, roles.label, limits.max_classes)
        if raw_truth is not None and roles.truth is not None:
            y_true = _labels_to_int64(
                raw_truth, f"Column {roles.truth!r}", loc, roles.truth, limits.max_classes
            )
    ids = None
    if roles.id is not None:
        ids = columns(roles.id)
        missing = pd.isna(ids)
        if missing.any():
            i = int(np.argmax(missing))
            raise UploadError(
                f"Column {roles.id!r} must hold a string or integer id in every row; got an empty cell at {loc(i)}.",
                field=roles.id,
            )
        if ids.dtype.kind == "f":
            if not np.all(ids == np.floor(ids)):
                raise UploadError(
                    f"Column {roles.id!r} must hold string or integer ids; got fractions.", field=roles.id
                )
            ids = ids.astype(np.int64)
        # Length first, then the fixed-width copy: one long id would widen every row.
        longest, at = _max_text_length(ids)
        _check_text_length(longest, f"Column {roles.id!r}", roles.id, limits, f" at {loc(at)}")
        _check_budget(
            n_rows,
            len(features),
            limits,
            file_size,
            id_chars=longest,
            has_truth=roles.truth is not None,
            what=f"The {fmt} with its ids",
        )
        ids = ids.astype(f"U{max(longest, 1)}")
        _check_unique_ids(
            ids,
            f"Column {roles.id!r}",
            roles.id,
            f"make the ids unique, name a unique column with id_column, or upload with "
            f"exclude_columns={roles.id} to go without ids",
        )
    x_test = y_test = None
    if roles.split is not None:
        test = _split_mask(columns(roles.split), loc)
        if test.any():
            x_test, y_test = x[test], y[test]
            x, y = x[~test], y[~test]
            if ids is not None:
                ids = ids[~test]
            if y_true is not None:
                y_true = y_true[~test]
    ds = _finish(
        x,
        y,
        x_test,
        y_test,
        ids,
        fmt,
        limits,
        label_what=f"Column {roles.label!r}",
        label_field=roles.label,
        declared_classes=None if class_names is None else len(class_names),
    )
    ds.y_true = y_true
    ds.class_names = class_names
    ds.feature_names = list(features)
    return ds


def _csv_loc(i: int) -> str:
    return f"row {i} (line {i + 2} of the file)"


def read_csv_header(path: Path, limits: UploadLimits) -> list[str]:
    """The CSV's column names, read from a bounded prefix of the file: a header of more than
    ``max_columns`` columns (or longer than 256 bytes per allowed column) is refused without
    reading the rest. Cheap enough to run in the gateway before any parsing."""
    cap = limits.max_columns * _HEADER_BYTES_PER_COLUMN + _SNIFF_BYTES
    with open(path, "rb") as f:
        head = f.read(cap + 1)
    # Count separators in the prefix first: a million-column header is refused in microseconds.
    first_line = head.split(b"\n", 1)[0]
    if first_line.count(b",") + 1 > limits.max_columns and b'"' not in first_line:
        raise UploadTooLarge(
            f"The CSV header names {first_line.count(b',') + 1}"
            f"{' or more' if len(first_line) >= cap else ''} columns; the limit is "
            f"{_limit('max_columns', limits.max_columns)} columns. Upload wide data as an npz."
        )
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head[:cap], final=len(head) <= cap)
        buf = io.StringIO(text, newline="")
        header = next(csv.reader(buf), None)
        # The header record must end inside the prefix unless the prefix is the whole file.
        complete = len(head) <= cap or buf.tell() < len(text)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UploadError(
            f"The CSV header row could not be read ({exc}); expected UTF-8 comma-separated text."
        ) from exc
    if not header:
        raise UploadError(
            "The CSV has no header row; the first line must name the columns, including the label column."
        )
    if len(header) > limits.max_columns or not complete:
        raise UploadTooLarge(
            f"The CSV header names {len(header)}{'' if complete else ' or more'} columns in its first "
            f"{min(len(head), cap)} bytes; the limit is {_limit('max_columns', limits.max_columns)} "
            f"columns of at most {_HEADER_BYTES_PER_COLUMN} bytes each. Upload wide data as an npz."
        )
    return [h.strip() for h in header]


def _count_lines(path: Path) -> int:
    """Newlines in the file, plus one for a last line without one: an upper bound on the rows
    (a quoted newline inside a cell counts too). One streaming pass, 1 MiB at a time."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(_MiB):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _parse_csv(path: Path, limits: UploadLimits, options: UploadOptions) -> ParsedDataset:
    names = read_csv_header(path, limits)
    if len(names) > limits.max_features + 4:
        raise UploadTooLarge(
            f"The CSV has {len(names)} columns; the limit is max_features = {limits.max_features} feature columns.",
        )
    roles = _check_columns(names, limits, "CSV", options)
    # Budget from a first pass (line count) before pandas allocates anything: ids are
    # checked and counted once their column is read, before their fixed-width copy is made.
    rows_bound = max(_count_lines(path) - 1, 0)
    _check_budget(
        rows_bound,
        len(roles.features),
        limits,
        path.stat().st_size,
        has_truth=roles.truth is not None,
        what=f"The CSV ({rows_bound} lines after the header)",
    )
    # Never parse more rows than the limits allow: one past the cap proves the file exceeds it.
    by_elements = limits.max_elements // max(len(names), 1)
    row_cap = min(limits.max_rows, by_elements)
    dtypes = {c: str for c in (roles.split, roles.id) if c is not None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = pd.read_csv(
                path,
                engine="c",
                encoding="utf-8-sig",
                header=0,
                names=names,
                dtype=dtypes,  # type: ignore[arg-type]
                nrows=row_cap + 1,
                skipinitialspace=True,
            )
    except (
        ValueError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OverflowError,
    ) as exc:
        raise UploadError(f"The CSV could not be parsed ({str(exc).strip()}).") from exc
    if len(df) > row_cap:
        which = (
            f"max_rows = {limits.max_rows}"
            if row_cap == limits.max_rows
            else f"max_elements = {limits.max_elements} over {len(names)} columns, i.e. {row_cap} rows"
        )
        raise UploadTooLarge(f"The CSV has more than {row_cap} data rows; the limit is {which}.")

    def column(name: str) -> np.ndarray:
        series = df[name]
        if name in (roles.split, roles.id):
            return series.to_numpy(dtype=object)
        if series.dtype.kind == "O":
            numeric = pd.to_numeric(series, errors="coerce")
            bad = numeric.isna().to_numpy() & series.notna().to_numpy()
            if not bad.any():  # mixed chunks of numbers, all convertible
                return numeric.to_numpy()
            if name in (roles.label, roles.truth):  # text labels: mapped to 0..k-1
                return series.to_numpy(dtype=object)
            i = int(np.argmax(bad))
            raise UploadError(
                f"Column {name!r} must hold numbers; got {series.iloc[i]!r} at {_csv_loc(i)}.",
                field=name,
            )
        return series.to_numpy()

    return _assemble_table(column, roles, len(df), "csv", _csv_loc, limits, path.stat().st_size)


def _parquet_loc(i: int) -> str:
    return f"row {i}"


def _parse_parquet(path: Path, limits: UploadLimits, options: UploadOptions) -> ParsedDataset:
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UploadError(f"The Parquet file could not be read ({exc}); it is corrupt or truncated.") from exc
    names = [n for n in schema.names if not (n.startswith("__index_level_") and n.endswith("__"))]
    if len(names) > limits.max_columns:
        raise UploadTooLarge(
            f"The Parquet file has {len(names)} columns; the limit is "
            f"{_limit('max_columns', limits.max_columns)} columns. Upload wide data as an npz."
        )
    if len(names) > limits.max_features + 4:
        raise UploadTooLarge(
            f"The Parquet file has {len(names)} columns; the limit is max_features = {limits.max_features} "
            "feature columns."
        )
    file_names = list(names)
    roles = _check_columns(names, limits, "Parquet file", options)
    n_rows = int(meta.num_rows)
    if n_rows > limits.max_rows:
        raise UploadTooLarge(
            f"The Parquet file has {n_rows} rows; the limit is max_rows = {limits.max_rows}."
        )
    if n_rows * len(names) > limits.max_elements:
        raise UploadTooLarge(
            f"The Parquet file has {n_rows} rows x {len(names)} columns = {n_rows * len(names)} values; "
            f"the limit is max_elements = {limits.max_elements}."
        )
    declared = sum(int(meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups))
    if declared > limits.max_uncompressed_bytes:
        raise UploadTooLarge(
            f"The Parquet file declares {declared} uncompressed bytes; the limit is "
            f"max_uncompressed_bytes = {limits.max_uncompressed_bytes}."
        )

    def is_numeric(t: pa.DataType) -> bool:
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))

    def is_text(t: pa.DataType) -> bool:
        if pa.types.is_dictionary(t):
            t = t.value_type
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))

    used = [*roles.features, *sorted(roles.text)]
    by_file = dict(zip(names, file_names, strict=True))
    for name in used:
        t = schema.field(by_file[name]).type
        if name == roles.split:
            ok, want = is_text(t), "strings 'train'/'test'"
        elif name == roles.id:
            ok, want = is_text(t) or pa.types.is_integer(t), "string or integer ids"
        elif name in (roles.label, roles.truth):
            ok, want = is_numeric(t) or is_text(t), "class labels (integers or text)"
        else:
            ok, want = is_numeric(t), "numbers (bool, int or float)"
        if not ok:
            raise UploadError(f"Column {name!r} must hold {want}; got Parquet type {t}.", field=name)

    # The declared sizes above can be tiny for constant columns (a run-length or dictionary
    # page decodes to rows x width), so budget what the columns decode to: the stored dataset
    # from rows x features, and read one column at a time (text columns as dictionaries, their
    # values checked before any per-row copy) so that at most one decoded column is held
    # beside the float32 features.
    file_size = path.stat().st_size
    _check_budget(
        n_rows,
        len(roles.features),
        limits,
        file_size,
        has_truth=roles.truth is not None,
        what=f"The Parquet file ({n_rows} rows)",
    )

    text_columns = [by_file[c] for c in sorted(roles.text) if is_text(schema.field(by_file[c]).type)]
    try:
        reader = pq.ParquetFile(path, read_dictionary=text_columns) if text_columns else pf
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UploadError(f"The Parquet file could not be read ({exc}); it is corrupt or truncated.") from exc

    def column(name: str) -> np.ndarray:
        try:
            text_role = name in roles.text
            col = reader.read(columns=[by_file[name]], use_threads=False).column(0)
            if col.length() != n_rows:
                raise UploadError(
                    f"The Parquet file declares {n_rows} rows but column {name!r} holds {col.length()}; "
                    "it is corrupt.",
                    field=name,
                )
            if text_role:
                _check_parquet_text(col, name, limits)
            return _parquet_column(col, name, roles)
        except (pa.ArrowException, ValueError, UnicodeDecodeError, OSError) as exc:
            raise UploadError(
                f"Column {name!r} could not be read ({exc}); the file is corrupt.", field=name
            ) from exc

    return _assemble_table(column, roles, n_rows, "parquet", _parquet_loc, limits, file_size)


def _check_parquet_text(col: pa.ChunkedArray, name: str, limits: UploadLimits) -> None:
    """Refuse text values longer than max_id_length from the (dictionary) values, before a
    per-row copy is made."""
    for chunk in col.chunks:
        values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            continue
        if len(values) == 0:
            continue
        lengths = pc.utf8_length(values)
        longest = pc.max(lengths).as_py() or 0
        _check_text_length(int(longest), f"Column {name!r}", name, limits)


def _dictionary_to_objects(col: pa.ChunkedArray) -> np.ndarray:
    """A dictionary-encoded text column as an object array whose rows share the dictionary's
    str objects (no per-row string copies); nulls become None."""
    parts = []
    for chunk in col.chunks:
        values = np.asarray(chunk.dictionary.to_numpy(zero_copy_only=False), dtype=object)
        values = np.append(values, np.array([None], dtype=object))
        indices = chunk.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
        parts.append(values[indices.astype(np.int64)])
    return np.concatenate(parts) if parts else np.empty(0, dtype=object)


def _parquet_column(col: pa.ChunkedArray, name: str, roles: _Roles) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        value_type = col.type.value_type
        if name in roles.text and (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
            return _dictionary_to_objects(col)
        col = col.cast(value_type)
    text = (
        pa.types.is_string(col.type)
        or pa.types.is_large_string(col.type)
        or pa.types.is_string_view(col.type)
    )
    if name in (roles.split, roles.id) or (text and name in roles.text):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    if col.null_count:
        i = int(np.argmax(pc.is_null(col).to_numpy(zero_copy_only=False)))
        what = "integer labels 0..k-1" if name in (roles.label, roles.truth) else "finite numbers"
        raise UploadError(f"Column {name!r} must hold {what}; got null at row {i}.", field=name)
    return np.asarray(col.to_numpy(zero_copy_only=False))


# ---------------------------------------------------------------------------------------
# Parsing in a memory-limited process pool


def parse_and_store(
    path: Path, filename: str | None, limits: UploadLimits, options: UploadOptions, dest: Path
) -> dict[str, Any]:
    """Parse the upload at ``path`` and write its canonical npz to ``dest``; returns what the
    dataset record needs (the arrays never leave this process). Runs in a parse process."""
    try:
        ds = parse_upload(path, filename, limits, options)
        write_canonical_npz(ds, dest)
    except (MemoryError, pa.ArrowMemoryError) as exc:
        with contextlib.suppress(OSError):
            Path(dest).unlink()
        raise UploadTooLarge(_out_of_memory_detail(_PROCESS_MEMORY_LIMIT)) from exc
    stored = sum(int(a.nbytes) for a in (ds.x, ds.y, ds.x_test, ds.y_test, ds.y_true) if a is not None)
    if ds.ids is not None:
        ids = np.asarray(ds.ids)
        stored += int((ids if ids.dtype.kind == "U" else ids.astype(str)).nbytes)
    return {
        "format": ds.format,
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "n_classes": int(ds.n_classes),
        "input_shape": [int(s) for s in ds.input_shape],
        "stored_bytes": stored,
        **ds.describe(),
    }


_PROCESS_MEMORY_LIMIT: int | None = None


def _out_of_memory_detail(limit: int | None) -> str:
    shown = "its memory limit" if limit is None else f"its memory limit of {limit} bytes"
    return (
        f"Parsing the upload ran out of memory: the parse process hit {shown} "
        "(INFOSCORE_UPLOAD_PARSE_MEMORY_BYTES). Upload a smaller file, or an npz of float32 "
        "arrays (the cheapest to parse)."
    )


def _limit_process_memory(limit: int) -> None:
    """Pool initializer: cap the parse process's address space, so that a parse that needs
    more fails with MemoryError here instead of growing the gateway or the machine."""
    import resource

    global _PROCESS_MEMORY_LIMIT
    _PROCESS_MEMORY_LIMIT = limit
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A gateway killed with -9 cannot shut the pool down: leave with it.
    import threading

    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()


def _warm() -> int:
    return os.getpid()


class ParsePool:
    """At most ``processes`` uploads parse at once, each in a process whose address space is
    capped at ``memory_bytes`` (RLIMIT_AS); more wait their turn. A parse that runs out of
    memory answers 413; a process that dies (killed, crashed) breaks the pool, which is then
    replaced, and the upload that was running is retried once on the new pool before it is
    refused, so that uploads queued beside a bad one are not lost."""

    def __init__(self, processes: int, memory_bytes: int) -> None:
        import threading

        self.processes = processes
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._executor: Any = None

    def _get(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes,
                    # spawn: the gateway is multi-threaded, and fork would copy its memory.
                    mp_context=get_context("spawn"),
                    initializer=_limit_process_memory,
                    initargs=(self.memory_bytes,),
                )
            return self._executor

    def _discard(self, executor: Any) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=False)

    async def run(
        self, path: Path, filename: str | None, limits: UploadLimits, options: UploadOptions, dest: Path
    ) -> dict[str, Any]:
        import asyncio
        from concurrent.futures.process import BrokenProcessPool

        for attempt in range(2):
            executor = self._get()
            try:
                future = executor.submit(parse_and_store, path, filename, limits, options, dest)
                return await asyncio.wrap_future(future)  # type: ignore[no-any-return]
            except BrokenProcessPool:
                self._discard(executor)
                if attempt == 1:
                    with contextlib.suppress(OSError):
                        Path(dest).unlink()
                    raise UploadTooLarge(
                        _out_of_memory_detail(self.memory_bytes)
                        + " The parse process was killed twice on this upload."
                    ) from None
        raise AssertionError("unreachable")

    def warm(self) -> None:
        """Start the processes now (a first upload would otherwise wait for their imports)."""
        executor = self._get()
        for future in [executor.submit(_warm) for _ in range(self.processes)]:
            future.result()

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


_POOLS: dict[tuple[int, int], ParsePool] = {}


def parse_pool(processes: int, memory_bytes: int) -> ParsePool:
    """The process's pool for these settings (shared by every app built in the process)."""
    key = (processes, memory_bytes)
    pool = _POOLS.get(key)
    if pool is None:
        if not _POOLS:
            import atexit

            atexit.register(_shutdown_pools)
        pool = _POOLS.setdefault(key, ParsePool(processes, memory_bytes))
    return pool


def _shutdown_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.shutdown()
