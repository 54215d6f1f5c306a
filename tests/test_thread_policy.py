"""The embedded launcher's thread policy: jobs get every core, at a lower CPU priority."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import supervisor
from launcher.supervisor import Supervisor


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int, cores: int) -> dict[str, str]:
    monkeypatch.delenv("INFOSCORE_TORCH_THREADS", raising=False)
    monkeypatch.setattr(supervisor.os, "cpu_count", lambda: cores)
    sup = Supervisor(host="127.0.0.1", port=8000, data_dir=tmp_path, workers=workers, auth="none")
    return sup._env(6379, "pw")


def test_jobs_get_every_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = _env(monkeypatch, tmp_path, workers=1, cores=2)
    assert env["INFOSCORE_TORCH_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert _env(monkeypatch, tmp_path, workers=2, cores=8)["INFOSCORE_TORCH_THREADS"] == "4"
    assert _env(monkeypatch, tmp_path, workers=4, cores=2)["INFOSCORE_TORCH_THREADS"] == "1"
    monkeypatch.setenv("INFOSCORE_TORCH_THREADS", "3")
    sup = Supervisor(host="127.0.0.1", port=8000, data_dir=tmp_path, workers=1, auth="none")
    assert sup._env(6379, "pw")["INFOSCORE_TORCH_THREADS"] == "3"  # an explicit setting wins


def test_worker_niceness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFOSCORE_WORKER_NICE", raising=False)
    assert supervisor.worker_niceness() == supervisor.WORKER_NICE == 10
    monkeypatch.setenv("INFOSCORE_WORKER_NICE", "0")
    assert supervisor.worker_niceness() == 0
    monkeypatch.setenv("INFOSCORE_WORKER_NICE", "40")
    assert supervisor.worker_niceness() == 19
    monkeypatch.setenv("INFOSCORE_WORKER_NICE", "high")
    with pytest.raises(SystemExit, match="INFOSCORE_WORKER_NICE must be an integer"):
        supervisor.worker_niceness()


def test_child_starts_at_the_given_niceness(tmp_path: Path) -> None:
    import os
    import sys

    out = tmp_path / "nice.txt"
    child = supervisor.Child(
        "probe",
        [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(str(os.nice(0)))"],
        dict(os.environ),
        niceness=5,
    )
    child.start()
    assert child.proc is not None and child.proc.wait(timeout=30) == 0
    assert int(out.read_text()) == os.nice(0) + 5
