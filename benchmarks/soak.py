"""Soak benchmark: mixed traffic from three tenants against ``infoscore up`` for minutes,
with the API process SIGKILLed twice; every accepted job must be accounted for and the
API's memory must stay flat.

Starts the embedded service with API keys required on a fresh data dir, creates one key
per tenant, then three client threads (one per tenant) loop until the deadline over:
uploads of small new datasets, job submissions (with an Idempotency-Key, re-sent after a
lost answer), status polls, cancels, dataset deletes and job purges. At 1/3 and 2/3 of the
run the API process is killed with SIGKILL (the supervisor restarts it). Afterwards it
waits for every accepted job to end and checks each one: it exists in a terminal state,
or it was purged by the run (then it answers 404). Prints the counts, the API's RSS at
start, its peak and at the end (sampled from /proc, outside the process).

Every request goes to 127.0.0.1; loops are bounded in time and count.

    .venv/bin/python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedded import EmbeddedService

TENANTS = ("tenant-a", "tenant-b", "tenant-c")
MAX_REQUESTS_PER_CLIENT = 200_000


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def api_pid(supervisor: int) -> int | None:
    for pid in children(supervisor):
        try:
            if b"launcher.cli\0api" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def small_npz(rng: random.Random) -> bytes:
    n = rng.randint(30, 120)
    gen = np.random.default_rng(rng.getrandbits(32))
    buf = io.BytesIO()
    np.savez(buf, x=gen.normal(size=(n, 6)).astype(np.float32), y=np.arange(n) % 3)
    return buf.getvalue()


def job_body(dataset: Any, rng: random.Random) -> dict[str, Any]:
    return {
        "kind": "training-dynamics",
        "dataset": dataset,
        "model": {"arch": "linear"},
        "params": {"epochs": rng.randint(1, 3), "el2n_epoch": 0, "batch_size": 64},
    }


class Client(threading.Thread):
    def __init__(self, tenant: str, key: str, url: str, deadline: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.tenant = tenant
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.accepted: set[str] = set()
        self.purged: set[str] = set()
        # Purges whose answer was lost (the API was killed mid-request): the job may be gone.
        self.purge_unanswered: set[str] = set()
        self.datasets: list[str] = []
        self.codes: Counter[str] = Counter()
        self.connection_errors = 0

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError:
            self.connection_errors += 1
            time.sleep(0.2)
            return None
        self.codes[f"{method} {path.split('/')[2] if path.count('/') >= 2 else path} {r.status_code}"] += 1
        return r

    def submit(self) -> None:
        dataset: Any = {
            "builtin": "gaussians",
            "n": 80,
            "dim": 6,
            "classes": 3,
            "seed": self.rng.randint(0, 9),
        }
        if self.datasets and self.rng.random() < 0.5:
            dataset = self.rng.choice(self.datasets)
        body = job_body(dataset, self.rng)
        key = uuid.uuid4().hex
        for _ in range(50):  # re-send with the same key until an answer arrives
            if time.monotonic() > self.deadline + 60:
                return
            r = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if r is None or r.status_code == 503:
                time.sleep(0.5)
                continue
            if r.status_code == 202:
                self.accepted.add(r.json()["id"])
            return

    def run(self) -> None:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() > self.deadline:
                break
            op = self.rng.random()
            jobs = sorted(self.accepted - self.purged)
            if op < 0.15:
                r = self.request("POST", "/v1/datasets", files={"file": ("d.npz", small_npz(self.rng))})
                if r is not None and r.status_code in (200, 201):
                    self.datasets.append(r.json()["id"])
            elif op < 0.40:
                self.submit()
            elif op < 0.80 and jobs:
                self.request("GET", f"/v1/jobs/{self.rng.choice(jobs)}")
            elif op < 0.87 and jobs:
                self.request("DELETE", f"/v1/jobs/{self.rng.choice(jobs)}")
            elif op < 0.93 and self.datasets:
                ds = self.rng.choice(self.datasets)
                r = self.request("DELETE", f"/v1/datasets/{ds}")
                if r is not None and r.status_code in (204, 404):
                    self.datasets.remove(ds)
            elif jobs:
                job = self.rng.choice(jobs)
                r = self.request("DELETE", f"/v1/jobs/{job}", params={"purge": "true"})
                if r is not None and r.status_code == 204:
                    self.purged.add(job)
                elif r is None:
                    self.purge_unanswered.add(job)
            else:
                self.request("GET", "/v1/jobs", params={"limit": 20})
            time.sleep(self.rng.uniform(0.0, 0.05))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs of the API during the run")
    parser.add_argument("--max-active", type=int, default=15, help="INFOSCORE_MAX_ACTIVE_JOBS")
    args = parser.parse_args()

    from store.db import JobStore

    data = Path(tempfile.mkdtemp(prefix="infoscore-soak-"))
    store = JobStore(f"sqlite:///{(data / 'infoscore.db').resolve()}")
    keys = {t: store.create_key(t)[1] for t in TENANTS}
    store.dispose()
    env = {
        "INFOSCORE_AUTH": "required",
        "INFOSCORE_MAX_ACTIVE_JOBS": str(args.max_active),
        "INFOSCORE_RATE_LIMIT": "200",
        "INFOSCORE_HEARTBEAT_INTERVAL": "1",
        "INFOSCORE_STALE_AFTER": "10",
        "INFOSCORE_REAPER_INTERVAL": "2",
    }
    service = EmbeddedService(env=env, data=data, capture_stderr=True)
    atexit.register(service.stop)  # also when the run fails: never leave a service behind
    try:
        service.start()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    assert service.proc is not None
    up = service.proc
    supervisor_out = service.output
    url = service.url
    print(f"soak: {args.minutes:g} min against {url}, data in {data}", flush=True)
    # Warm-up: one of each request, so the baseline includes what the API imports lazily
    # (the upload parsers, numpy, pandas) and the reference is the warm process.
    warm = Client(TENANTS[0], keys[TENANTS[0]], url, time.monotonic() + 3600, seed=99)
    for _ in range(3):
        r = warm.request("POST", "/v1/datasets", files={"file": ("w.npz", small_npz(warm.rng))})
        warm.submit()
        for job in warm.accepted:
            warm.request("GET", f"/v1/jobs/{job}")
            warm.request("DELETE", f"/v1/jobs/{job}")
        warm.request("GET", "/v1/jobs")
        if r is not None and r.status_code == 201:
            warm.request("DELETE", f"/v1/datasets/{r.json()['id']}")
    time.sleep(2)
    first_api = api_pid(up.pid)
    assert first_api is not None
    rss_start = rss_bytes(first_api)

    t0 = time.monotonic()
    duration = args.minutes * 60
    deadline = t0 + duration
    clients = [Client(t, keys[t], url, deadline, seed=i) for i, t in enumerate(TENANTS)]
    for c in clients:
        c.start()
    kill_at = [t0 + duration * (i + 1) / (args.kills + 1) for i in range(args.kills)]
    kills = 0
    peak = rss_start
    while time.monotonic() < deadline:
        time.sleep(1.0)
        pid = api_pid(up.pid)
        if pid is not None:
            peak = max(peak, rss_bytes(pid))
        if kill_at and time.monotonic() >= kill_at[0] and pid is not None:
            kill_at.pop(0)
            os.kill(pid, signal.SIGKILL)
            kills += 1
            print(f"  t={time.monotonic() - t0:5.0f} s: API (pid {pid}) SIGKILLed", flush=True)
    for c in clients:
        c.join(timeout=120)

    # Every accepted job must end (or have been purged by a client).
    checker = {t: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[t]}"}) for t in TENANTS}
    states: Counter[str] = Counter()
    missing: list[str] = []
    wait_until = time.monotonic() + 900
    for c in [*clients, warm]:
        for job in sorted(c.accepted):
            while True:
                try:
                    r = checker[c.tenant].get(f"/v1/jobs/{job}")
                except httpx.TransportError:
                    time.sleep(0.5)
                    continue
                if r.status_code == 404:
                    if job in c.purged:
                        states["purged"] += 1
                    elif job in c.purge_unanswered:  # purged, but the 204 was lost with the API
                        states["purged (answer lost)"] += 1
                    else:
                        states["MISSING"] += 1
                        missing.append(job)
                    break
                if r.status_code != 200:  # e.g. 429 from the per-key rate limit: slow down
                    time.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                state = r.json()["state"]
                if state in ("succeeded", "failed", "cancelled") or time.monotonic() > wait_until:
                    states[state] += 1
                    break
                time.sleep(0.5)
    end_api = api_pid(up.pid)
    rss_end = rss_bytes(end_api) if end_api else 0
    service.stop()

    codes: Counter[str] = Counter()
    for c in clients:
        codes.update(c.codes)
    accepted = sum(len(c.accepted) for c in [*clients, warm])
    print(f"\nran {time.monotonic() - t0:.0f} s, {kills} API kills, {sum(codes.values())} answered requests")
    print(f"connection errors (API down): {sum(c.connection_errors for c in clients)}")
    for name, count in sorted(codes.items()):
        print(f"  {name:<28} {count:>7}")
    print(f"accepted jobs: {accepted}; by final state: {dict(states)}; missing: {len(missing)} {missing[:5]}")
    restarts = sum("the api exited (-9); restarting" in line for line in supervisor_out)
    print(f"supervisor restarts of the API: {restarts}")
    print(
        f"API RSS: start {rss_start / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
        f"end {rss_end / 2**20:.1f} MiB (end/start {rss_end / max(rss_start, 1):.2f}x)"
    )
    ok = (
        not missing
        and states.get("queued", 0) == 0
        and states.get("running", 0) == 0
        and rss_end < 2 * rss_start
    )
    print("verdict:", "every accepted job accounted for, RSS within 2x" if ok else "FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
