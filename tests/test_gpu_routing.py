"""Jobs that ask for a GPU go to a queue only GPU workers consume; without such a worker
the gateway refuses them at submit instead of letting them wait (or letting a CPU worker
take them and fail). Real broker, real worker processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from contracts.tasks import QUEUE_JOBS, QUEUE_JOBS_CUDA, WORKER_KEY_PREFIX, WORKER_KEY_TTL, job_queue
from service.gateway import Gateway
from service.settings import ServiceSettings
from tests.conftest import Environment, WorkerProcess, wait_for_state, wait_until
from workers import registry
from workers.settings import WorkerSettings

TD = {
    "kind": "training-dynamics",
    "dataset": {"builtin": "gaussians", "n": 200, "dim": 4, "classes": 2},
    "model": {"arch": "mlp", "hidden": [8]},
    "params": {"epochs": 2},
}


def test_job_queue_by_device() -> None:
    assert job_queue("cuda") == QUEUE_JOBS_CUDA
    assert job_queue("auto") == job_queue("cpu") == job_queue(None) == QUEUE_JOBS


def test_worker_queues_follow_the_worker_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def queues(device: str, gpu: bool) -> list[str]:
        return registry.worker_queues(WorkerSettings(worker_device=device), gpu=gpu)  # type: ignore[arg-type]

    assert queues("cpu", True) == [QUEUE_JOBS]
    assert queues("cuda", False) == [QUEUE_JOBS, QUEUE_JOBS_CUDA]
    assert queues("auto", True) == [QUEUE_JOBS, QUEUE_JOBS_CUDA]
    assert queues("auto", False) == [QUEUE_JOBS]
    monkeypatch.setattr(registry.shutil, "which", lambda _name: None)
    assert not registry.gpu_present(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the control device alone is not a GPU
    assert not registry.gpu_present(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert registry.gpu_present(tmp_path)


def test_gateway_counts_the_workers_that_announce_the_cuda_queue(
    environment: Environment, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(environment.broker_url)
    gw = Gateway(ServiceSettings(data_dir=tmp_path / "data", broker_url=environment.broker_url))
    try:
        assert gw.gpu_workers(max_age=0) == 0
        for name, queues in (("cpu@a", [QUEUE_JOBS]), ("gpu@b", [QUEUE_JOBS, QUEUE_JOBS_CUDA])):
            key, value = registry.announcement(name, queues, "auto")
            client.set(key, value, ex=WORKER_KEY_TTL)
        client.set(WORKER_KEY_PREFIX + "garbled", b"not json")
        assert gw.gpu_workers(max_age=0) == 1
        client.delete(registry.announcement("gpu@b", [], "auto")[0])
        assert gw.gpu_workers() == 1  # cached for a few seconds
        assert gw.gpu_workers(max_age=0) == 0
    finally:
        gw.store.dispose()
    down = Gateway(ServiceSettings(data_dir=tmp_path / "d2", broker_url="redis://127.0.0.1:9/0"))
    try:
        assert down.gpu_workers(max_age=0) is None  # unknown: nothing is refused for it
    finally:
        down.store.dispose()


def _announced(environment: Environment, queue: str) -> bool:
    client = redis.Redis.from_url(environment.broker_url)
    values = [client.get(k) for k in client.scan_iter(match=WORKER_KEY_PREFIX + "*")]
    return any(queue in json.loads(v or b"{}").get("queues", []) for v in values)


def test_cuda_jobs_wait_for_a_gpu_worker_and_cpu_workers_never_take_them(
    api: Any, worker: WorkerProcess, environment: Environment, tmp_path: Path
) -> None:
    gateway = api.app.state.gateway
    wait_until(lambda: _announced(environment, QUEUE_JOBS), 30, what="the CPU worker's announcement")
    assert not _announced(environment, QUEUE_JOBS_CUDA)  # no GPU on this machine

    refused = api.post("/v1/jobs", json={**TD, "device": "cuda"})
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["type"].endswith("no-gpu-worker") and body["field"] == "device", body
    assert "'auto'" in body["detail"] and "'cpu'" in body["detail"]
    assert api.get("/v1/jobs").json()["items"] == []  # nothing recorded
    dry = api.post("/v1/jobs:estimate", json={**TD, "device": "cuda"}).json()
    assert not dry["fits"] and dry["problems"][-1]["field"] == "device"
    assert api.post("/v1/jobs:estimate", json={**TD, "device": "auto"}).json()["fits"]

    # Pretend a GPU worker is connected: the job is accepted, and the CPU worker, which
    # does not consume the CUDA queue, leaves it queued while it runs later 'auto' jobs.
    redis.Redis.from_url(environment.broker_url).set(
        *registry.announcement("ghost@gpu", [QUEUE_JOBS, QUEUE_JOBS_CUDA], "cuda"), ex=WORKER_KEY_TTL
    )
    gateway._gpu_seen = (-1e9, None)
    queued = api.post("/v1/jobs", json={**TD, "device": "cuda"})
    assert queued.status_code == 202, queued.text
    after = api.post("/v1/jobs", json={**TD, "device": "auto", "params": {"epochs": 3}})
    assert wait_for_state(api, after.json()["id"], ("succeeded",), timeout=120)["state"] == "succeeded"
    time.sleep(1.0)
    assert api.get(f"/v1/jobs/{queued.json()['id']}").json()["state"] == "queued"

    # A worker that consumes the CUDA queue takes it. This machine has no GPU, so that
    # worker can only fail it, with the device error: proof of where the job went.
    gpu = WorkerProcess(
        environment, tmp_path / "gpu-worker.log", env={"INFOSCORE_WORKER_DEVICE": "cuda"}
    ).start()
    try:
        done = wait_for_state(api, queued.json()["id"], ("failed", "succeeded"), timeout=120)
        assert done["state"] == "failed" and "no CUDA device here" in json.dumps(done["error"])
        assert _announced(environment, QUEUE_JOBS_CUDA)
    finally:
        gpu.stop()
