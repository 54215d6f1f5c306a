"""Start and stop ``infoscore up`` for a benchmark (fresh data dir, free loopback port).

One helper for every benchmark that runs the embedded service (load, fcmi_workers,
devices, soak): ``EmbeddedService`` starts the supervisor, waits for its banner and keeps
what it prints afterwards; ``embedded_service`` wraps it as a context manager.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BANNER = "infoscore is up"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_module(tree: Path) -> str:
    """The module that runs the ``infoscore`` command in ``tree``: ``launcher.cli``, or
    ``service.cli`` in a checkout from before the launcher package (``devices.py --tree``)."""
    return "launcher.cli" if (tree / "launcher" / "cli.py").is_file() else "service.cli"


class EmbeddedService:
    """``infoscore up`` as a child process, run from ``tree`` (its code first on the path
    when it is not this checkout).

    ``start()`` returns the banner line; ``url``, ``proc`` (the supervisor) and ``data``
    (the data dir: a fresh temp dir unless given) are then set, and ``output`` collects the
    supervisor's lines (with its stderr when ``capture_stderr``) until it exits.
    ``stop()`` sends Ctrl-C (SIGINT) and waits; it is safe to call twice.
    """

    def __init__(
        self,
        workers: int = 1,
        env: dict[str, str] | None = None,
        *,
        prefix: str = "infoscore-bench-",
        data: Path | None = None,
        tree: Path = ROOT,
        capture_stderr: bool = False,
    ) -> None:
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        if tree.resolve() != ROOT:
            self.env["PYTHONPATH"] = str(tree)
        self.data = data if data is not None else Path(tempfile.mkdtemp(prefix=prefix))
        self.tree = tree
        self.capture_stderr = capture_stderr
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        argv = [sys.executable, "-m", cli_module(self.tree), "up", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data), "--workers", str(self.workers)]
        argv += ["--log-dir", str(self.data / "logs")]
        self.proc = subprocess.Popen(
            argv,
            cwd=self.tree,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if self.capture_stderr else None,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None
        while BANNER not in (line := stdout.readline()):
            if not line:
                self.stop()
                raise RuntimeError(
                    f"infoscore up did not start: {''.join(self.output)!r} (logs in {self.data / 'logs'})"
                )
            self.output.append(line)
        # Keep reading, so that a full pipe never blocks the supervisor.
        threading.Thread(target=lambda: self.output.extend(stdout), daemon=True).start()
        return line.strip()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def embedded_service(
    workers: int = 1, env: dict[str, str] | None = None, prefix: str = "infoscore-bench-"
) -> Iterator[str]:
    """Yields the API URL of a fresh ``infoscore up``; Ctrl-C (SIGINT) stops it afterwards."""
    service = EmbeddedService(workers, env, prefix=prefix)
    print("  " + service.start())
    try:
        yield service.url
    finally:
        service.stop()


def submit_and_wait(
    workers: int, request: dict[str, Any], *, prefix: str, poll: float = 0.5
) -> tuple[float, dict[str, Any]]:
    """Submit ``request`` to a fresh ``infoscore up`` with ``workers`` worker processes and
    wait; returns the seconds from submit to the final state and the job record."""
    import httpx

    from contracts.records import TERMINAL_STATES

    with embedded_service(workers, prefix=prefix) as url, httpx.Client(base_url=url, timeout=30) as client:
        t0 = time.perf_counter()
        job = client.post("/v1/jobs", json=request).json()
        while True:
            record: dict[str, Any] = client.get(f"/v1/jobs/{job['id']}").json()
            if record["state"] in TERMINAL_STATES:
                return time.perf_counter() - t0, record
            time.sleep(poll)
