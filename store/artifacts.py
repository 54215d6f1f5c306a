"""The artifact store: a folder tree under the data dir, written atomically.

Layout::

    datasets/<dataset id>.npz        canonical uploads (allow_pickle=False on read)
    jobs/<job id>/<name>             a job's artifacts (scores.csv, summary.json, ...)
    cache/units/<key>.npz            content-keyed results of fan-out units

Every write goes to a temp file in the same folder, is fsynced, then renamed, so a
reader never sees half a file and a crash leaves either the old file or the new one:
:func:`atomic_writer` is the one place that does it (uploads stream through it, artifacts
and unit results go through :func:`atomic_write_bytes`). :func:`dataset_path` is the one
place that knows where a dataset lives (the gateway and the workers both call it).
Artifact names are checked against a strict pattern before any path is built from them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # whole name: fullmatch
JOB_ID = re.compile(r"^job_[0-9a-f]{24}$")
UNIT_KEY = re.compile(r"^[0-9a-f]{16,64}$")


def valid_artifact_name(name: str) -> bool:
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    return bool(ARTIFACT_NAME.fullmatch(name)) and ".." not in name


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a ``.NAME.*.tmp`` file in the same folder,
    flushed and fsynced when the block ends, then renamed over ``path``. If the block
    raises, the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically, streaming (a large file is never held whole)."""
    with open(src, "rb") as source, atomic_writer(dest) as fh:
        shutil.copyfileobj(source, fh, 1024 * 1024)


def dataset_path(root: Path, dataset_id: str) -> Path:
    """Where an uploaded (or derived) dataset is stored in canonical npz form."""
    return Path(root) / "datasets" / f"{dataset_id}.npz"


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dataset_path(self, dataset_id: str) -> Path:
        return dataset_path(self.root, dataset_id)

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / "jobs" / job_id

    def artifact_path(self, job_id: str, name: str) -> Path:
        if not valid_artifact_name(name):
            raise ValueError(f"bad artifact name {name!r}")
        return self.job_dir(job_id) / name

    def unit_path(self, key: str) -> Path:
        if not UNIT_KEY.fullmatch(key):
            raise ValueError(f"bad unit key {key!r}")
        return self.root / "cache" / "units" / f"{key}.npz"

    def tmp_dir(self) -> Path:
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def remove_job(self, job_id: str) -> None:
        """Delete a job's artifact folder (its files, not what a link points at)."""
        d = self.job_dir(job_id)
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)

    def remove_dataset(self, dataset_id: str) -> None:
        self.dataset_path(dataset_id).unlink(missing_ok=True)

    def write(self, job_id: str, name: str, data: bytes) -> Path:
        path = self.artifact_path(job_id, name)
        atomic_write_bytes(path, data)
        return path

    def list(self, job_id: str) -> list[str]:
        d = self.job_dir(job_id)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if regular_file(p) and valid_artifact_name(p.name))


def regular_file(path: Path) -> bool:
    """A plain file, not a symlink: a link planted in a job folder is never listed or served."""
    return path.is_file() and not path.is_symlink()
