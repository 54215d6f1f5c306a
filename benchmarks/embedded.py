"""Start and stop ``infoscore up`` for a benchmark (fresh data dir, free loopback port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def embedded_service(
    workers: int = 1, env: dict[str, str] | None = None, prefix: str = "infoscore-bench-"
) -> Iterator[str]:
    """Yields the API URL of a fresh ``infoscore up``; Ctrl-C (SIGINT) stops it afterwards."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--workers",
            str(workers),
            "--log-dir",
            str(data / "logs"),
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if "infoscore is up" not in line:
            raise RuntimeError(f"infoscore up did not start: {line!r} (logs in {data / 'logs'})")
        print("  " + line)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
