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
- Values are used as given (no normalization); they must be finite in float32, and labels
  must be integers 0..k-1 with k = max label + 1 >= 2.

Every error is an :class:`UploadError` whose ``detail`` names the array or column, what
was expected and what came, e.g. ``"Array 'y' must hold integer labels 0..k-1; got -1 at
index 3."``. :class:`UploadTooLarge` (HTTP 413) is raised when a size limit is hit, and
its detail names the limit.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import math
import os
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ACCEPTED_FORMATS = (
    "npz (numpy.savez with arrays 'x', 'y' and optional 'x_test', 'y_test', 'ids'), "
    "CSV (UTF-8, comma-separated, header row with a 'label' column) or "
    "Parquet (a 'label' column)"
)
NPZ_ARRAYS = ("x", "y", "x_test", "y_test", "ids")
# Written by write_canonical_npz; accepted back so that a canonical file re-uploads as is.
NPZ_META_ARRAYS = ("n_classes", "input_shape")
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


class UploadTooLarge(UploadError):
    """A size limit was hit (bytes, elements, rows, features, compression ratio): HTTP 413."""

    status_code = 413


# The name used in the design notes for the 413 family.
LimitExceeded = UploadTooLarge


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
    can exceed it: the error then suggests an uncompressed numpy.savez."""


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

    @property
    def n_train(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_test(self) -> int:
        return 0 if self.y_test is None else int(self.y_test.shape[0])


# ---------------------------------------------------------------------------------------
# Entry points


def parse_upload(path: Path, filename: str | None, limits: UploadLimits) -> ParsedDataset:
    """Detect the format of the file at ``path`` and parse it under ``limits``.

    The format comes from the magic bytes (zip -> npz, ``PAR1`` -> Parquet, UTF-8 text ->
    CSV); ``filename``'s extension is only a hint, and a disagreement is an error.
    Raises UploadError (or UploadTooLarge) for anything a user can cause.
    """
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
        return _parse_npz(path, limits)
    if fmt == "csv":
        return _parse_csv(path, limits)
    return _parse_parquet(path, limits)


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

    Arrays: x, y, x_test?, y_test?, ids?, n_classes (0-d int64), input_shape (1-d int64).
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
        arrays["ids"] = np.asarray(ds.ids).astype(str)
    arrays["n_classes"] = np.asarray(ds.n_classes, dtype=np.int64)
    arrays["input_shape"] = np.asarray(ds.input_shape, dtype=np.int64).reshape(-1)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
            zf.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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


def _parse_npz(path: Path, limits: UploadLimits) -> ParsedDataset:
    headers = _inspect_npz(path, limits)
    _check_npz_headers(headers, limits)
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
    return _finish(
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


# ---------------------------------------------------------------------------------------
# Tables (CSV and Parquet share the column rules)


def _check_columns(names: list[str], limits: UploadLimits, kind: str) -> list[str]:
    """Column rules; returns the feature columns in file order."""
    seen: set[str] = set()
    for j, name in enumerate(names):
        if name == "" or name.startswith("Unnamed: "):
            raise UploadError(
                f"{kind} column {j} has no name; every column needs a header name "
                "(a saved pandas index? write the file with index=False).",
                field=f"column {j}",
            )
        if name in seen:
            raise UploadError(
                f"{kind} column {name!r} appears more than once; column names must be unique.", field=name
            )
        seen.add(name)
    if LABEL_COLUMN not in seen:
        shown = names[:20] + (["..."] if len(names) > 20 else [])
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            hint = " The file must be comma-separated."
        raise UploadError(
            f"The {kind} must have a {LABEL_COLUMN!r} column holding integer labels 0..k-1; got columns {shown}.{hint}",
            field=LABEL_COLUMN,
        )
    features = [c for c in names if c not in (LABEL_COLUMN, SPLIT_COLUMN, ID_COLUMN)]
    if not features:
        raise UploadError(
            f"The {kind} must have at least one feature column besides "
            f"{LABEL_COLUMN!r}, {SPLIT_COLUMN!r} and {ID_COLUMN!r}; got columns {names}.",
            field="file",
        )
    if len(features) > limits.max_features:
        raise UploadTooLarge(
            f"The {kind} has {len(features)} feature columns; the limit is max_features = {limits.max_features}.",
            field="file",
        )
    return features


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


def _assemble_table(
    columns: Callable[[str], np.ndarray],
    features: list[str],
    n_rows: int,
    has_split: bool,
    has_id: bool,
    fmt: str,
    loc: Locator,
    limits: UploadLimits,
) -> ParsedDataset:
    """Build the dataset from per-column numpy arrays (``columns(name)``); names rows via ``loc``."""
    if n_rows < 1:
        raise UploadError(f"The {fmt} has no data rows; at least 1 is needed.")
    x = np.empty((n_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = _features_to_float32(columns(name), f"Column {name!r}", loc, name)
    y = _labels_to_int64(
        columns(LABEL_COLUMN), f"Column {LABEL_COLUMN!r}", loc, LABEL_COLUMN, limits.max_classes
    )
    ids = None
    if has_id:
        ids = columns(ID_COLUMN)
        missing = pd.isna(ids)
        if missing.any():
            i = int(np.argmax(missing))
            raise UploadError(
                f"Column {ID_COLUMN!r} must hold a string or integer id in every row; got an empty cell at {loc(i)}.",
                field=ID_COLUMN,
            )
        ids = ids.astype(str)
    x_test = y_test = None
    if has_split:
        test = _split_mask(columns(SPLIT_COLUMN), loc)
        if test.any():
            x_test, y_test = x[test], y[test]
            x, y = x[~test], y[~test]
            if ids is not None:
                ids = ids[~test]
    return _finish(
        x,
        y,
        x_test,
        y_test,
        ids,
        fmt,
        limits,
        label_what=f"Column {LABEL_COLUMN!r}",
        label_field=LABEL_COLUMN,
    )


def _csv_loc(i: int) -> str:
    return f"row {i} (line {i + 2} of the file)"


def _parse_csv(path: Path, limits: UploadLimits) -> ParsedDataset:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UploadError(
            f"The CSV header row could not be read ({exc}); expected UTF-8 comma-separated text."
        ) from exc
    if not header:
        raise UploadError(
            "The CSV has no header row; the first line must name the columns, including 'label'."
        )
    names = [h.strip() for h in header]
    if len(names) > limits.max_features + 3:
        raise UploadTooLarge(
            f"The CSV has {len(names)} columns; the limit is max_features = {limits.max_features} feature columns.",
        )
    features = _check_columns(names, limits, "CSV")
    # Never parse more rows than the limits allow: one past the cap proves the file exceeds it.
    by_elements = limits.max_elements // max(len(names), 1)
    row_cap = min(limits.max_rows, by_elements)
    dtypes = {c: str for c in (SPLIT_COLUMN, ID_COLUMN) if c in names}
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
        if name in (SPLIT_COLUMN, ID_COLUMN):
            return series.to_numpy(dtype=object)
        if series.dtype.kind == "O":
            numeric = pd.to_numeric(series, errors="coerce")
            bad = numeric.isna().to_numpy() & series.notna().to_numpy()
            if not bad.any():  # mixed chunks of numbers, all convertible
                return numeric.to_numpy()
            i = int(np.argmax(bad))
            label = name == LABEL_COLUMN
            raise UploadError(
                f"Column {name!r} must hold {'integer labels 0..k-1' if label else 'numbers'}; "
                f"got {series.iloc[i]!r} at {_csv_loc(i)}.",
                field=name,
            )
        return series.to_numpy()

    return _assemble_table(
        column, features, len(df), SPLIT_COLUMN in names, ID_COLUMN in names, "csv", _csv_loc, limits
    )


def _parquet_loc(i: int) -> str:
    return f"row {i}"


def _parse_parquet(path: Path, limits: UploadLimits) -> ParsedDataset:
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UploadError(f"The Parquet file could not be read ({exc}); it is corrupt or truncated.") from exc
    names = [n for n in schema.names if not (n.startswith("__index_level_") and n.endswith("__"))]
    if len(names) > limits.max_features + 3:
        raise UploadTooLarge(
            f"The Parquet file has {len(names)} columns; the limit is max_features = {limits.max_features} "
            "feature columns."
        )
    features = _check_columns(names, limits, "Parquet file")
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

    for name in names:
        t = schema.field(name).type
        if name == SPLIT_COLUMN:
            ok, want = is_text(t), "strings 'train'/'test'"
        elif name == ID_COLUMN:
            ok, want = is_text(t) or pa.types.is_integer(t), "string or integer ids"
        elif name == LABEL_COLUMN:
            ok, want = is_numeric(t), "integer labels 0..k-1"
        else:
            ok, want = is_numeric(t), "numbers (bool, int or float)"
        if not ok:
            raise UploadError(f"Column {name!r} must hold {want}; got Parquet type {t}.", field=name)

    try:
        table = pf.read(columns=names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UploadError(f"The Parquet data could not be read ({exc}); it is corrupt or truncated.") from exc
    if table.num_rows != n_rows:
        raise UploadError(
            f"The Parquet file declares {n_rows} rows but holds {table.num_rows}; it is corrupt."
        )

    def column(name: str) -> np.ndarray:
        try:
            return _parquet_column(table.column(name), name)
        except (pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
            raise UploadError(
                f"Column {name!r} could not be read ({exc}); the file is corrupt.", field=name
            ) from exc

    return _assemble_table(
        column, features, n_rows, SPLIT_COLUMN in names, ID_COLUMN in names, "parquet", _parquet_loc, limits
    )


def _parquet_column(col: pa.ChunkedArray, name: str) -> np.ndarray:
    if name in (SPLIT_COLUMN, ID_COLUMN):
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    if col.null_count:
        i = int(np.argmax(pc.is_null(col).to_numpy(zero_copy_only=False)))
        what = "integer labels 0..k-1" if name == LABEL_COLUMN else "finite numbers"
        raise UploadError(f"Column {name!r} must hold {what}; got null at row {i}.", field=name)
    return np.asarray(col.to_numpy(zero_copy_only=False))
