"""One vocabulary: kinds, states, the JSON cleaner, the atomic writer and the dataset path
are each defined once, and every kind has what it needs (runner, estimator, docs)."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contracts.estimate import ESTIMATORS
from contracts.jobs import FANOUT_KINDS, JOB_KINDS, JOB_MODELS, params_model
from contracts.jsonsafe import json_safe
from contracts.records import ACTIVE_STATES, TERMINAL_STATES, JobState
from workers.runners import RUNNERS, Runner, runner_class

ROOT = Path(__file__).resolve().parents[1]


# --- kinds --------------------------------------------------------------------------------


def test_kinds_are_the_job_union() -> None:
    assert len(JOB_KINDS) == len(set(JOB_KINDS)) == len(JOB_MODELS) >= 7
    for kind, model in JOB_MODELS.items():
        assert model.model_fields["kind"].annotation is not None
        assert parse_kind(kind) == kind
    assert set(JOB_KINDS) >= FANOUT_KINDS and "fcmi-bound" in FANOUT_KINDS


def parse_kind(kind: str) -> str:
    from contracts.jobs import parse_job_request

    teacher = {"teacher": {"arch": "linear"}} if "teacher" in params_model(kind).model_fields else {}
    body = {"kind": kind, "dataset": {"builtin": "digits"}, "model": {"arch": "linear"}, "params": teacher}
    return parse_job_request(body).kind


def test_every_kind_has_a_runner_of_that_kind() -> None:
    assert set(RUNNERS) == set(JOB_KINDS)
    for kind in JOB_KINDS:
        cls = runner_class(kind)
        assert issubclass(cls, Runner)
        assert cls.kind == kind, f"{cls.__name__}.kind is {cls.kind!r}, registered as {kind!r}"
        fans_out = kind in FANOUT_KINDS
        for method in ("plan", "run_unit", "reduce"):
            overridden = getattr(cls, method) is not getattr(Runner, method)
            assert overridden == fans_out, f"{cls.__name__}.{method}: fan-out is {fans_out}"
        if not fans_out:
            assert cls.run is not Runner.run, f"{cls.__name__} does not implement run"


def test_every_kind_has_an_estimator_on_its_params_model() -> None:
    assert set(ESTIMATORS) == set(JOB_KINDS)
    for kind in JOB_KINDS:
        assert ESTIMATORS[kind].params is params_model(kind)


def test_every_kind_has_its_docs_page() -> None:
    missing = [kind for kind in JOB_KINDS if not (ROOT / "docs" / "jobs" / f"{kind}.md").is_file()]
    assert missing == []
    index = (ROOT / "docs" / "jobs" / "README.md").read_text()
    assert [kind for kind in JOB_KINDS if f"{kind}.md" not in index] == []


# --- states -------------------------------------------------------------------------------


def test_states_partition_the_state_enum() -> None:
    assert set(JobState) == TERMINAL_STATES | ACTIVE_STATES
    assert not TERMINAL_STATES & ACTIVE_STATES
    assert "failed" in TERMINAL_STATES and "queued" in ACTIVE_STATES  # rows hold plain strings


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_store_and_workers_do_not_spell_out_sets_of_states() -> None:
    """Sets of states come from contracts.records (the gateway's service/ is checked once the
    routes refactor lands; it is listed in docs/architecture.md)."""
    states = {s.value for s in JobState}
    found = []
    for path in _python_files("store", "workers", "contracts"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if len(values) >= 2 and all(v in states for v in values):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


# --- the JSON cleaner ---------------------------------------------------------------------


def test_json_safe_cleans_nan_inf_and_numpy_recursively() -> None:
    value = {
        "a": float("nan"),
        "b": [1.0, float("inf"), (float("-inf"), 2)],
        "c": np.float64("nan"),
        "d": np.float32(0.5),
        "e": np.int64(7),
        "f": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "g": np.bool_(True),
        np.int64(3): "numpy key",
        "h": Path("/x/y"),
        "i": None,
        "j": "text",
        "k": True,
    }
    out = json_safe(value)
    assert out == {
        "a": None,
        "b": [1.0, None, [None, 2]],
        "c": None,
        "d": 0.5,
        "e": 7,
        "f": [[1.0, None], [None, 2.0]],
        "g": True,
        3: "numpy key",
        "h": "/x/y",
        "i": None,
        "j": "text",
        "k": True,
    }
    assert type(out["d"]) is float and type(out["e"]) is int and type(out["g"]) is bool
    assert json.loads(json.dumps(out, allow_nan=False)) == json.loads(json.dumps(out))


def test_json_safe_is_the_one_cleaner() -> None:
    from workers.runners import base

    assert base.json_safe is json_safe
    assert math.isnan(float("nan")) and json_safe(float("nan")) is None
    text = (ROOT / "workers" / "execution.py").read_text()
    assert "_json_default" not in text and "json_safe(summary)" in text


# --- the atomic writer and the dataset path -----------------------------------------------


def test_atomic_writer_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from store.artifacts import atomic_copy, atomic_write_bytes, atomic_writer

    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temp file left
    with atomic_writer(target) as fh:
        fh.write(b"new ")
        fh.write(b"bytes")
    assert target.read_bytes() == b"new bytes"
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    atomic_copy(big, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()


def test_only_store_renames_files_into_place() -> None:
    """The upload writer streams through store.artifacts.atomic_writer; no other module in
    store/, workers/ or the upload parser renames a temp file over a target itself."""
    files = [*_python_files("store", "workers"), ROOT / "service" / "uploads.py"]
    users = [str(p.relative_to(ROOT)) for p in files if "os.replace(" in p.read_text()]
    assert users == ["store/artifacts.py"]


def test_one_dataset_path(tmp_path: Path) -> None:
    from store import artifacts
    from workers import datasets

    assert datasets.dataset_path is artifacts.dataset_path
    store = artifacts.ArtifactStore(tmp_path)
    assert store.dataset_path("ds_" + "0" * 32) == artifacts.dataset_path(tmp_path, "ds_" + "0" * 32)


def test_contracts_stay_torch_and_numpy_free() -> None:
    """contracts.estimate imports the library's cost model (infoscore.costs): that import must
    not load torch or numpy into the gateway."""
    code = (
        "import sys, contracts.estimate, contracts.jobs, contracts.jsonsafe, contracts.records; "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
