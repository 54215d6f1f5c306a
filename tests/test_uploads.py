"""service.uploads: format detection, validation and the refusals that keep the gateway safe."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.uploads import (
    ParsedDataset,
    UploadError,
    UploadLimits,
    UploadTooLarge,
    parse_upload,
    write_canonical_npz,
)

LIMITS = UploadLimits()


def _parse(path: Path, filename: str | None = None, limits: UploadLimits = LIMITS) -> ParsedDataset:
    return parse_upload(path, path.name if filename is None else filename, limits)


def _refused(
    path: Path, match: str, *, filename: str | None = None, limits: UploadLimits = LIMITS
) -> UploadError:
    with pytest.raises(UploadError, match=match) as info:
        _parse(path, filename, limits)
    return info.value


def _npz(tmp_path: Path, name: str = "d.npz", compressed: bool = False, **arrays: Any) -> Path:
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _zip(tmp_path: Path, members: dict[str, bytes], name: str = "d.npz") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "f1": [0.5, 1.5, -2.0, 3.25, 4.0, 5.0],
            "f2": [0, 1, 0, 1, 1, 0],
            "label": [0, 1, 2, 0, 1, 2],
            "split": ["train", "train", "test", "train", "test", "train"],
            "id": ["a", "b", "c", "d", "e", "f"],
        }
    )


XY = {"x": np.arange(12, dtype=np.float64).reshape(6, 2) / 7.0, "y": np.array([0, 1, 2, 0, 1, 2])}


# ---------------------------------------------------------------------------------------
# Valid files round-trip


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip_with_test_split_and_ids(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 1, 3, 3))
    y = np.arange(10) % 4
    ids = np.array([f"s{i}" for i in range(10)])
    path = _npz(tmp_path, compressed=compressed, x=x, y=y, x_test=x[:3] + 1, y_test=y[:3], ids=ids)
    ds = _parse(path)
    assert ds.format == "npz"
    assert ds.x.dtype == np.float32 and ds.x.shape == (10, 1, 3, 3)
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))  # as given: no normalization
    assert ds.y.dtype == np.int64 and ds.y.tolist() == y.tolist()
    assert ds.x_test is not None and ds.y_test is not None
    np.testing.assert_array_equal(ds.x_test, (x[:3] + 1).astype(np.float32))
    assert ds.n_classes == 4 and ds.input_shape == (1, 3, 3)
    assert ds.ids is not None and ds.ids.tolist() == ids.tolist()
    assert (ds.n_train, ds.n_test) == (10, 3)


def test_npz_minimal_accepts_integral_float_labels_and_int_ids(tmp_path: Path) -> None:
    path = _npz(
        tmp_path, x=np.ones((4, 3), dtype=np.uint8), y=np.array([0.0, 1.0, 1.0, 0.0]), ids=np.arange(4)
    )
    ds = _parse(path)
    assert ds.x_test is None and ds.y_test is None and ds.n_test == 0
    assert ds.y.tolist() == [0, 1, 1, 0] and ds.n_classes == 2
    assert ds.ids is not None and ds.ids.tolist() == ["0", "1", "2", "3"]


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _table().to_csv(path, index=False)
    ds = _parse(path)
    assert ds.format == "csv" and ds.input_shape == (2,) and ds.n_classes == 3
    np.testing.assert_array_equal(ds.x, np.array([[0.5, 0], [1.5, 1], [3.25, 1], [5.0, 0]], dtype=np.float32))
    assert ds.y.tolist() == [0, 1, 0, 2]
    assert ds.x_test is not None and ds.x_test.tolist() == [[-2.0, 0.0], [4.0, 1.0]]
    assert ds.y_test is not None and ds.y_test.tolist() == [2, 1]
    assert ds.ids is not None and ds.ids.tolist() == ["a", "b", "d", "f"]


def test_parquet_round_trip_without_split(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _table().drop(columns=["split"]).to_parquet(path)
    ds = _parse(path)
    assert ds.format == "parquet" and ds.x.shape == (6, 2) and ds.x_test is None
    assert ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.ids is not None and ds.ids.tolist() == list("abcdef")


def test_parquet_with_split_matches_csv(tmp_path: Path) -> None:
    _table().to_parquet(tmp_path / "t.parquet")
    _table().to_csv(tmp_path / "t.csv", index=False)
    a, b = _parse(tmp_path / "t.parquet"), _parse(tmp_path / "t.csv")
    for name in ("x", "y", "x_test", "y_test", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_canonical_npz_is_deterministic_and_reparses(tmp_path: Path) -> None:
    path = _npz(
        tmp_path, x=XY["x"], y=XY["y"], x_test=XY["x"][:2], y_test=XY["y"][:2], ids=np.array(list("abcdef"))
    )
    ds = _parse(path)
    out1, out2 = tmp_path / "store" / "c1.npz", tmp_path / "store" / "c2.npz"
    write_canonical_npz(ds, out1)
    write_canonical_npz(ds, out2)
    assert hashlib.sha256(out1.read_bytes()).digest() == hashlib.sha256(out2.read_bytes()).digest()
    assert sorted(p.name for p in out1.parent.iterdir()) == ["c1.npz", "c2.npz"]  # no temp files left
    with np.load(out1, allow_pickle=False) as z:
        assert sorted(z.files) == ["ids", "input_shape", "n_classes", "x", "x_test", "y", "y_test"]
        assert int(z["n_classes"]) == 3 and z["input_shape"].tolist() == [2]
        assert z["x"].dtype == np.float32 and z["y"].dtype == np.int64
    again = _parse(out1)
    assert again.n_classes == ds.n_classes and again.input_shape == ds.input_shape
    np.testing.assert_array_equal(again.x, ds.x)
    assert again.ids is not None and ds.ids is not None and again.ids.tolist() == ds.ids.tolist()


def test_declared_n_classes_may_exceed_max_label_but_not_fall_below(tmp_path: Path) -> None:
    ok = _npz(tmp_path, "ok.npz", x=XY["x"], y=XY["y"], n_classes=np.int64(5))
    assert _parse(ok).n_classes == 5
    low = _npz(tmp_path, "low.npz", x=XY["x"], y=XY["y"], n_classes=np.int64(2))
    assert _refused(low, r"'n_classes' must be at least max label \+ 1 = 3; got 2").field == "n_classes"


# ---------------------------------------------------------------------------------------
# Format detection


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"")
    _refused(path, "empty")


def test_binary_garbage_names_accepted_formats(tmp_path: Path) -> None:
    path = tmp_path / "g.bin"
    path.write_bytes(bytes(range(256)) * 4)
    err = _refused(path, "not a supported format")
    assert "npz" in err.detail and "CSV" in err.detail and "Parquet" in err.detail


def test_gzip_and_single_npy_get_a_hint(tmp_path: Path) -> None:
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    _refused(gz, "gzip")
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    _refused(npy, r"numpy\.savez")


def test_utf16_csv_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,0\n2,1\n", encoding="utf-16")
    _refused(path, "save the CSV as UTF-8")


def test_extension_disagreeing_with_content(tmp_path: Path) -> None:
    path = _npz(tmp_path, "data.npz", x=XY["x"], y=XY["y"])  # numpy.savez insists on .npz
    err = _refused(path, "named like csv but its content is npz", filename="data.csv")
    assert "Accepted formats" in err.detail
    # An unknown extension is no hint: the content decides.
    assert _parse(path, filename="data.bin").format == "npz"
    assert _parse(path, filename=None).format == "npz"


def test_file_over_max_bytes_is_413(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=XY["x"], y=XY["y"])
    with pytest.raises(UploadTooLarge, match="max_bytes = 100") as info:
        _parse(path, limits=UploadLimits(max_bytes=100))
    assert info.value.status_code == 413


# ---------------------------------------------------------------------------------------
# npz refusals


def test_truncated_zip(tmp_path: Path) -> None:
    good = _npz(tmp_path, "good.npz", compressed=True, x=XY["x"], y=XY["y"])
    path = tmp_path / "cut.npz"
    path.write_bytes(good.read_bytes()[:-40])
    _refused(path, "malformed or truncated")


def test_corrupt_member_data_is_refused(tmp_path: Path) -> None:
    raw = bytearray(_npz(tmp_path, "good.npz", x=XY["x"], y=XY["y"]).read_bytes())
    at = raw.index(b"\x93NUMPY") + 200  # inside x's data, past the header
    raw[at] ^= 0xFF
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(raw))
    _refused(path, "corrupt")


def test_pickled_object_array_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "o.npz"
    np.savez(path, x=XY["x"], y=np.array([0, 1, {"evil": 1}, 0, 1, 2], dtype=object))
    err = _refused(path, "object/pickled arrays are refused")
    assert err.field == "y"


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf"), (1e300, r"1e\+300 \(beyond the float32 range\)")],
)
def test_non_finite_x(tmp_path: Path, bad: float, shown: str) -> None:
    x = XY["x"].copy()
    x[4, 1] = bad
    err = _refused(
        _npz(tmp_path, x=x, y=XY["y"]), rf"Array 'x' must hold finite numbers; got {shown}.*index \(4, 1\)"
    )
    assert err.field == "x"


def test_non_finite_x_test(tmp_path: Path) -> None:
    xt = XY["x"][:2].copy()
    xt[1, 0] = np.nan
    _refused(
        _npz(tmp_path, x=XY["x"], y=XY["y"], x_test=xt, y_test=XY["y"][:2]), "Array 'x_test' must hold finite"
    )


@pytest.mark.parametrize(
    ("y", "match"),
    [
        ([0, 1, 2, -1, 1, 2], r"Array 'y' must hold integer labels 0\.\.k-1; got -1 at index 3\."),
        ([0, 1.5, 2, 0, 1, 2], r"got 1\.5 at index 1"),
        ([0, 1, np.nan, 0, 1, 2], r"got NaN at index 2"),
        ([0, 1, 2, 0, 1, 10_000], r"max_classes = 10000; got 10000 at index 5"),
        ([0, 0, 0, 0, 0, 0], r"at least 2 classes"),
        (["a", "b", "a", "b", "a", "b"], r"got dtype <U1"),
    ],
)
def test_bad_labels(tmp_path: Path, y: list[Any], match: str) -> None:
    assert _refused(_npz(tmp_path, x=XY["x"], y=np.array(y)), match).field == "y"


def test_bad_y_test_labels(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=XY["x"], y=XY["y"], x_test=XY["x"][:2], y_test=np.array([0, -3]))
    _refused(path, r"Array 'y_test' must hold integer labels 0\.\.k-1; got -3 at index 1")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x": XY["x"], "y": XY["y"][:5]},
            r"Array 'y' must have shape \(6,\) to match 'x'; got shape \(5,\)",
        ),
        ({"x": XY["x"]}, r"must contain arrays 'x' and 'y'"),
        ({"x": XY["x"][:, 0], "y": XY["y"]}, r"x\.reshape\(-1, 1\)"),
        ({"x": np.zeros((6, 1, 1, 1, 1)), "y": XY["y"]}, r"got shape \(6, 1, 1, 1, 1\)"),
        ({"x": XY["x"].astype(np.complex64), "y": XY["y"]}, r"Array 'x' must be numeric.*complex64"),
        ({"x": XY["x"], "y": XY["y"], "x_test": XY["x"]}, r"'x_test' was given without 'y_test'"),
        (
            {"x": XY["x"], "y": XY["y"], "x_test": np.zeros((2, 3)), "y_test": np.zeros(2)},
            r"Array 'x_test' must have shape \(m, 2\)",
        ),
        (
            {"x": XY["x"], "y": XY["y"], "x_test": np.zeros((2, 2)), "y_test": np.zeros(3)},
            r"Array 'y_test' must have shape \(2,\)",
        ),
        ({"x": XY["x"], "y": XY["y"], "ids": np.arange(5)}, r"Array 'ids' must have shape \(6,\)"),
        ({"x": XY["x"], "y": XY["y"], "ids": np.zeros(6)}, r"Array 'ids' must hold strings or integers"),
        ({"x": XY["x"], "y": XY["y"], "weights": np.ones(6)}, r"unknown array 'weights'"),
        ({"x": XY["x"], "y": XY["y"], "input_shape": np.array([3])}, r"'input_shape' must equal"),
    ],
)
def test_bad_npz_arrays(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    _refused(path, match)


def test_path_traversal_member_name(tmp_path: Path) -> None:
    members = {"x.npy": _npy_bytes(XY["x"]), "y.npy": _npy_bytes(XY["y"]), "../../etc/x.npy": b"evil"}
    _refused(_zip(tmp_path, members), r"unsafe path '\.\./\.\./etc/x\.npy'")
    _refused(_zip(tmp_path, {"/abs.npy": b"", "x.npy": b""}, "abs.npz"), "unsafe path")


def test_non_npy_member_is_refused(tmp_path: Path) -> None:
    members = {"x.npy": _npy_bytes(XY["x"]), "y.npy": _npy_bytes(XY["y"]), "readme.txt": b"hi"}
    _refused(_zip(tmp_path, members), r"unexpected member 'readme\.txt'")


def test_absurd_declared_shape_is_refused_before_reading(tmp_path: Path) -> None:
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12, 10**6)}
    np.lib.format.write_array_header_1_0(buf, header)
    members = {"x.npy": buf.getvalue() + b"\x00" * 64, "y.npy": _npy_bytes(XY["y"])}
    err = _refused(_zip(tmp_path, members), r"max_elements = 200000000")
    assert isinstance(err, UploadTooLarge) and err.field == "x"


def test_shape_larger_than_member_data_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (1000, 10)})
    members = {"x.npy": buf.getvalue() + b"\x00" * 80, "y.npy": _npy_bytes(np.zeros(1000, dtype=np.int64))}
    _refused(_zip(tmp_path, members), "truncated or forged")


def test_zip_bomb_is_refused_without_allocating_it(tmp_path: Path) -> None:
    # 64 MiB of zeros (within max_elements) that deflate to about 64 KiB; written in
    # chunks so that the test does not allocate it either.
    n = 16 * 1024 * 1024
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, 1)})
            chunk = bytes(1024 * 1024)
            for _ in range(64):
                f.write(chunk)
        zf.writestr("y.npy", _npy_bytes(np.zeros(n, dtype=np.int8)), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(UploadTooLarge, match=r"max_compression_ratio = 200:1") as info:
            _parse(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.field == "x"
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes: the array was decompressed"


def test_declared_size_over_limit_is_413(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.zeros((100, 100)), y=np.arange(100) % 2)
    with pytest.raises(UploadTooLarge, match="max_uncompressed_bytes = 1000"):
        _parse(path, limits=UploadLimits(max_uncompressed_bytes=1000))
    with pytest.raises(UploadTooLarge, match="max_features = 10"):
        _parse(path, limits=UploadLimits(max_features=10))
    with pytest.raises(UploadTooLarge, match="max_rows = 50"):
        _parse(path, limits=UploadLimits(max_rows=50))


# ---------------------------------------------------------------------------------------
# CSV and Parquet refusals


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_missing_label_column(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt}"
    df = _table().rename(columns={"label": "target"})
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    err = _refused(path, r"must have a 'label' column.*got columns \['f1', 'f2', 'target', 'split', 'id'\]")
    assert err.field == "label"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_bad_split_value_names_value_and_row(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt}"
    df = _table()
    df.loc[3, "split"] = "validation"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    err = _refused(path, r"Column 'split' must hold 'train' or 'test'; got 'validation' at row 3")
    assert err.field == "split"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("f1", np.inf, r"Column 'f1' must hold finite numbers; got inf at row 2"),
        ("f1", np.nan, r"Column 'f1' must hold finite numbers; got (NaN|null) at row 2"),
        ("label", -1, r"Column 'label' must hold integer labels 0\.\.k-1; got -1 at row 2"),
        ("label", 0.5, r"Column 'label' must hold integer labels 0\.\.k-1; got 0\.5 at row 2"),
    ],
)
def test_table_bad_values(tmp_path: Path, fmt: str, column: str, value: float, match: str) -> None:
    path = tmp_path / f"t.{fmt}"
    df = _table()
    df[column] = df[column].astype(float)
    df.loc[2, column] = value
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    assert _refused(path, match).field == column


def test_csv_non_numeric_feature_names_column_value_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,oops,1\n")
    err = _refused(path, r"Column 'b' must hold numbers; got 'oops' at row 1 \(line 3 of the file\)")
    assert err.field == "b"


def test_parquet_string_feature_is_refused_from_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _table().assign(f2=["x"] * 6).to_parquet(path)
    _refused(path, r"Column 'f2' must hold numbers.*got Parquet type")


def test_csv_saved_with_pandas_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _table().to_csv(path)
    _refused(path, r"index=False")


def test_csv_ragged_rows_and_wrong_delimiter(tmp_path: Path) -> None:
    ragged = tmp_path / "r.csv"
    ragged.write_text("a,label\n1,0\n2,1,7\n")
    _refused(ragged, "could not be parsed")
    semi = tmp_path / "s.csv"
    semi.write_text("a;label\n1;0\n")
    _refused(semi, "comma-separated")


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a,label\n")
    _refused(path, "no data rows")


def test_table_row_limits_are_413(tmp_path: Path) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    _table().to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        with pytest.raises(UploadTooLarge, match="max_rows = 4"):
            _parse(tmp_path / name, limits=UploadLimits(max_rows=4))
        with pytest.raises(UploadTooLarge, match="max_features = 1"):
            _parse(tmp_path / name, limits=UploadLimits(max_features=1))
    with pytest.raises(UploadTooLarge, match="max_elements = 10"):
        _parse(tmp_path / "t.csv", limits=UploadLimits(max_elements=10))


def test_parquet_invalid_utf8_strings(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    split = pa.array([b"train", b"tr\xffin"], pa.binary()).view(pa.string())  # unvalidated bytes
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"f": [1.0, 2.0], "label": [0, 1], "split": split}), path)
    assert _refused(path, r"Column 'split' could not be read").field == "split"


def test_corrupt_parquet(tmp_path: Path) -> None:
    good = tmp_path / "g.parquet"
    _table().to_parquet(good)
    path = tmp_path / "t.parquet"
    path.write_bytes(good.read_bytes()[:-30])
    _refused(path, "Parquet")


# ---------------------------------------------------------------------------------------
# Property tests: any input parses or raises UploadError, never another exception.

_PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_PROPERTY
@given(
    data=st.binary(max_size=2048),
    prefix=st.sampled_from([b"", b"PK\x03\x04", b"PAR1", b"x,label\n", b"\x93NUMPY"]),
    name=st.sampled_from(["f.npz", "f.csv", "f.parquet", "f", "f.txt"]),
)
def test_random_bytes_never_crash(tmp_path: Path, data: bytes, prefix: bytes, name: str) -> None:
    path = tmp_path / "upload"
    path.write_bytes(prefix + data)
    try:
        ds = parse_upload(path, name, LIMITS)
    except UploadError as exc:
        assert exc.detail and isinstance(exc.field, str)
    else:
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64


@_PROPERTY
@given(text=st.text(alphabet=st.sampled_from(list('0123456789.,-e\n labelsplitrainsd"xnfi')), max_size=300))
def test_random_csv_text_never_crashes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text("f,label,split\n" + text)
    try:
        ds = parse_upload(path, "t.csv", LIMITS)
    except UploadError as exc:
        assert exc.detail
    else:
        assert ds.n_classes >= 2 and ds.x.shape[1] == 1


_DTYPES = ["<f8", "<f4", "<f2", "<i8", "<i4", "|u1", "<u8", "|b1", "<c8", "<U3", "|S2", "<M8[s]"]


@st.composite
def _arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    n = draw(st.integers(0, 5))
    for key in draw(
        st.lists(st.sampled_from(["x", "y", "x_test", "y_test", "ids", "n_classes"]), unique=True)
    ):
        shape = draw(
            st.one_of(
                st.just((n,)),
                st.just((n, 2)),
                st.lists(st.integers(0, 4), max_size=4).map(tuple),
            )
        )
        dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
        size = int(np.prod(shape))
        if dtype.kind in "fiub":
            values = draw(
                st.lists(
                    st.sampled_from([0, 1, 2, -1, 0.5, np.nan, np.inf, 1e300, 255]),
                    min_size=size,
                    max_size=size,
                )
            )
            with np.errstate(all="ignore"):
                arr = np.array(values, dtype=np.float64).astype(dtype)
        else:
            arr = np.zeros(size, dtype=dtype)
        out[key] = arr.reshape(shape)
    return out


@_PROPERTY
@given(arrays=_arrays(), compressed=st.booleans())
def test_random_small_npz_never_crash(
    tmp_path: Path, arrays: dict[str, np.ndarray], compressed: bool
) -> None:
    path = tmp_path / "r.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)  # type: ignore[arg-type]
    try:
        ds = parse_upload(path, "r.npz", LIMITS)
    except UploadError as exc:
        assert exc.detail
    else:
        assert ds.x.dtype == np.float32 and np.isfinite(ds.x).all()
        assert ds.y.min() >= 0 and ds.y.max() < ds.n_classes and ds.n_classes >= 2
        out = tmp_path / "canon.npz"
        write_canonical_npz(ds, out)
        again = parse_upload(out, "canon.npz", LIMITS)
        np.testing.assert_array_equal(again.x, ds.x)
        assert again.n_classes == ds.n_classes


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), np.arange(12) % 3
    df = pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "label": y, "split": ["train", "test"] * 6})
    files: dict[str, bytes] = {"t.csv": df.to_csv(index=False).encode()}
    for name, save in (("s.npz", np.savez), ("c.npz", np.savez_compressed)):
        buf = io.BytesIO()
        save(buf, x=x, y=y, x_test=x[:3], y_test=y[:3], ids=np.array([f"s{i}" for i in range(12)]))
        files[name] = buf.getvalue()
    buf = io.BytesIO()
    df.to_parquet(buf)
    files["t.parquet"] = buf.getvalue()
    return files


_SEEDS = _seed_files()


@_PROPERTY
@given(
    name=st.sampled_from(sorted(_SEEDS)),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["set", "cut", "ins"])),
        max_size=6,
    ),
)
def test_damaged_valid_files_never_crash(
    tmp_path: Path, name: str, edits: list[tuple[int, int, str]]
) -> None:
    data = bytearray(_SEEDS[name])
    for where, byte, op in edits:
        i = where % max(len(data), 1)
        if op == "set" and data:
            data[i] = byte
        elif op == "cut":
            del data[i : i + byte]
        else:
            data[i:i] = bytes([byte]) * 3
    path = tmp_path / name
    path.write_bytes(bytes(data))
    try:
        ds = parse_upload(path, name, LIMITS)
    except UploadError as exc:
        assert exc.detail
    else:
        assert ds.x.dtype == np.float32 and np.isfinite(ds.x).all() and ds.n_classes >= 2


# ---------------------------------------------------------------------------------------
# Mistakes that parse fine but would give quietly wrong results, and the upload options


def _opts(**kw: Any) -> Any:
    from service.uploads import UploadOptions

    return UploadOptions(**kw)


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "t.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _features(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})


def test_duplicate_ids_are_refused_with_the_fix(tmp_path: Path) -> None:
    df = _features(6).assign(label=[0, 1] * 3, id=["a", "b", "c", "a", "e", "f"])
    err = _refused(
        _csv(tmp_path, df), r"unique ids; 'a' appears 2 times \(rows \[0, 3\]\).*exclude_columns=id"
    )
    assert err.field == "id"
    ds = parse_upload(_csv(tmp_path, df), "t.csv", LIMITS, _opts(exclude_columns=("id",)))
    assert ds.ids is None and ds.input_shape == (2,)
    npz = _npz(tmp_path, x=np.ones((3, 2)), y=np.array([0, 1, 0]), ids=np.array(["p", "q", "p"]))
    assert _refused(npz, "'p' appears 2 times").field == "ids"


def test_labels_that_skip_a_class_are_refused_unless_remapped(tmp_path: Path) -> None:
    df = _features(6).assign(label=[1, 2, 1, 2, 1, 2])
    err = _refused(
        _csv(tmp_path, df), r"labels run 1\.\.2, so k = 3 and class\(es\) \[0\].*remap_labels=true"
    )
    assert err.field == "label"
    ds = parse_upload(_csv(tmp_path, df), "t.csv", LIMITS, _opts(remap_labels=True))
    assert ds.n_classes == 2 and ds.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert ds.class_names == ["1", "2"] and ds.describe()["class_counts"] == [3, 3]


def test_text_labels_map_to_sorted_codes_with_class_names(tmp_path: Path) -> None:
    df = _features(5).assign(label=["dog", "cat", "dog", "eel", "cat"], split="train")
    df.loc[4, "split"] = "test"
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"t.{fmt}"
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
        ds = _parse(path)
        assert ds.class_names == ["cat", "dog", "eel"] and ds.n_classes == 3
        assert ds.y.tolist() == [1, 0, 1, 2] and ds.y_test is not None and ds.y_test.tolist() == [0]


@pytest.mark.parametrize(
    "make",
    [
        lambda df: df.reset_index(),  # an 'index' column
        lambda df: df.assign(row=np.arange(len(df))),  # a 0..n-1 run under another name
        lambda df: df.assign(row=np.arange(1, len(df) + 1)),  # 1..n
    ],
)
def test_index_like_columns_are_refused_unless_an_option_says_what_to_do(tmp_path: Path, make: Any) -> None:
    df = make(_features(8).assign(label=[0, 1] * 4))
    path = _csv(tmp_path, df)
    name = "index" if "index" in df.columns else "row"
    err = _refused(path, rf"{name}'.*row index.*index=False.*exclude_columns={name}")
    assert err.field == name
    dropped = parse_upload(path, "t.csv", LIMITS, _opts(exclude_columns=(name,)))
    assert dropped.input_shape == (2,) and dropped.feature_names == ["a", "b"]
    kept = parse_upload(path, "t.csv", LIMITS, _opts(feature_columns=(name, "a")))
    assert kept.feature_names == [name, "a"] and kept.input_shape == (2,)


def test_pandas_index_column_can_be_excluded_by_its_pandas_name(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _features(4).assign(label=[0, 1, 0, 1]).to_csv(path)  # index=True: an unnamed first column
    _refused(path, r"'Unnamed: 0'.*index=False")
    ds = parse_upload(path, "t.csv", LIMITS, _opts(exclude_columns=("Unnamed: 0",)))
    assert ds.feature_names == ["a", "b"]


def test_column_options_name_unknown_columns_with_a_suggestion(tmp_path: Path) -> None:
    path = _csv(tmp_path, _features(4).assign(target=[0, 1, 0, 1]))
    _refused(path, r"must have a 'label' column.*\(did you mean|label_column option")
    ds = parse_upload(path, "t.csv", LIMITS, _opts(label_column="target"))
    assert ds.y.tolist() == [0, 1, 0, 1]
    with pytest.raises(UploadError, match=r"'exclude_columns' option names column 'bb'.*did you mean 'b'"):
        parse_upload(path, "t.csv", LIMITS, _opts(label_column="target", exclude_columns=("bb",)))
    with pytest.raises(UploadError, match="not both"):
        parse_upload(path, "t.csv", LIMITS, _opts(feature_columns=("a",), exclude_columns=("b",)))
    npz = _npz(tmp_path, x=XY["x"], y=XY["y"])
    with pytest.raises(UploadError, match=r"\['label_column'\] apply to CSV and Parquet"):
        parse_upload(npz, "d.npz", LIMITS, _opts(label_column="y"))


def test_truth_column_is_kept_for_the_training_rows(tmp_path: Path) -> None:
    df = _features(6).assign(
        label=["a", "b", "a", "b", "a", "b"], clean=["a", "b", "b", "b", "a", "a"], split="train"
    )
    df.loc[5, "split"] = "test"
    ds = parse_upload(_csv(tmp_path, df), "t.csv", LIMITS, _opts(truth_column="clean"))
    assert ds.y_true is not None and ds.y_true.tolist() == [0, 1, 1, 1, 0]
    assert ds.feature_names == ["a", "b"]  # the truth column is not a feature
    assert ds.describe()["n_mislabeled"] == 1 and ds.describe()["has_truth"]
    bad = df.assign(clean=["a", "b", "zebra", "b", "a", "a"])
    with pytest.raises(UploadError, match=r"'zebra'.*not one of the labels"):
        parse_upload(_csv(tmp_path, bad), "t.csv", LIMITS, _opts(truth_column="clean"))


def test_scale_warning_and_standardize_with_training_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {"small": rng.normal(0, 0.01, 40), "big": rng.normal(500, 300, 40), "label": [0, 1] * 20}
    ).assign(split=["train"] * 30 + ["test"] * 10)
    path = _csv(tmp_path, df)
    plain = _parse(path)
    assert len(plain.warnings) == 1 and "standardize=true" in plain.warnings[0] and "big" in plain.warnings[0]
    ds = parse_upload(path, "t.csv", LIMITS, _opts(standardize=True))
    assert ds.warnings == []
    train = df[df.split == "train"][["small", "big"]].to_numpy(dtype=np.float32).astype(np.float64)
    mean, std = train.mean(0), train.std(0)
    np.testing.assert_allclose(ds.x, (train - mean) / std, rtol=1e-5, atol=1e-5)
    test = df[df.split == "test"][["small", "big"]].to_numpy(dtype=np.float32).astype(np.float64)
    assert ds.x_test is not None
    np.testing.assert_allclose(ds.x_test, (test - mean) / std, rtol=1e-5, atol=1e-5)
    stats = ds.describe()["standardization"]
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-9)
    assert _parse(_csv(tmp_path, _table().drop(columns=["id"]), "ok.csv")).warnings == []


def test_canonical_file_keeps_truth_class_names_and_statistics(tmp_path: Path) -> None:
    from infoscore.data import load_npz

    df = _features(8).assign(label=["x", "y"] * 4, truth=["x", "y", "y", "y", "x", "y", "x", "y"])
    ds = parse_upload(_csv(tmp_path, df), "t.csv", LIMITS, _opts(truth_column="truth", standardize=True))
    out = tmp_path / "c.npz"
    write_canonical_npz(ds, out)
    loaded = load_npz(str(out))
    assert loaded.noisy_mask is not None and loaded.noisy_mask.tolist() == [False, False, True] + [False] * 5
    assert loaded.y_train_clean is not None and loaded.info["class_names"] == ["x", "y"]
    again = _parse(out)  # the canonical file re-uploads as is
    assert again.class_names == ["x", "y"] and again.y_true is not None
    np.testing.assert_array_equal(again.x, ds.x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    label=st.sampled_from(["label", "y", "f1", "nope"]),
    id_col=st.sampled_from([None, "id", "f2", "label"]),
    features=st.one_of(st.none(), st.lists(st.sampled_from(["f1", "f2", "id", "y", "zz"]), max_size=3)),
    exclude=st.lists(st.sampled_from(["f1", "f2", "id", "split", "zz", "Unnamed: 0"]), max_size=2),
    truth=st.sampled_from([None, "y", "label", "f2"]),
    standardize=st.booleans(),
    remap=st.booleans(),
)
def test_random_options_pass_or_raise_an_upload_error(
    tmp_path: Path,
    label: str,
    id_col: str | None,
    features: list[str] | None,
    exclude: list[str],
    truth: str | None,
    standardize: bool,
    remap: bool,
) -> None:
    path = tmp_path / "opts.csv"
    _table().assign(y=["a", "b", "a", "b", "b", "a"]).to_csv(path, index=False)
    options = _opts(
        label_column=label,
        id_column=id_col,
        feature_columns=None if features is None else tuple(features),
        exclude_columns=tuple(exclude),
        truth_column=truth,
        standardize=standardize,
        remap_labels=remap,
    )
    try:
        ds = parse_upload(path, "opts.csv", LIMITS, options)
    except UploadError as exc:
        assert exc.detail and isinstance(exc.field, str)
        return
    assert ds.x.shape[0] == ds.y.shape[0] and ds.n_classes >= 2
    assert ds.feature_names is not None and len(ds.feature_names) == ds.x.shape[1]
    assert int(ds.y.max()) < ds.n_classes and np.isfinite(ds.x).all()
