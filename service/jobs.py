"""What the job routes do, as plain functions of the gateway state: submit (the one place
a job is recorded and queued), the dry-run estimate, cancel and purge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from contracts.estimate import DatasetFacts, Estimate, Shape, builtin_shape, dataset_checks, estimate
from contracts.jobs import JOB_KINDS, JobRequest, request_fingerprint
from contracts.problems import TYPE_BASE, problem
from contracts.records import TERMINAL_STATES, JobState
from store.db import ActiveJobLimit

from . import metrics
from .checkpoints import check_checkpoint_ref
from .errors import ProblemError
from .gateway import Gateway

BROKER_UNAVAILABLE = TYPE_BASE + "broker-unavailable"


@dataclass(frozen=True)
class Submitted:
    """The job a submission answers with: a new one, or the one its Idempotency-Key names."""

    job: dict[str, Any]
    created: bool


def submit_job(gw: Gateway, job: JobRequest, tenant: str, idempotency_key: str | None = None) -> Submitted:
    """Record and queue a validated job request, the one path every submission takes.

    In order: a repeated Idempotency-Key answers its job (re-queued when the broker was
    down the first time) or 409 for another body; the dataset checks, the resource limits
    and the checkpoint reference refuse with 422; the tenant's active-job quota with 429
    (checked atomically with the insert); then the job is recorded and sent to the broker
    (503 and recorded as failed when that fails, see :func:`enqueue`)."""
    request = job.model_dump(mode="json")
    fingerprint = request_fingerprint(request)
    if idempotency_key:
        prior = gw.store.find_by_idempotency_key(idempotency_key, tenant)
        if prior is not None:
            _check_same_request(prior, request, fingerprint, "; use a new key for a new job")
            if gw.store.requeue_unsent(prior["id"], BROKER_UNAVAILABLE):
                # The first attempt was answered 503 "retry later": this is that retry.
                enqueue(gw, prior["id"], prior["request"].get("device"))
                metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
                prior = gw.store.get_job(prior["id"]) or prior
            return Submitted(prior, created=False)
    est, checks = estimate_and_checks(gw, job, tenant)
    _raise_checks(checks)
    _check_limits(gw, est)
    check_checkpoint_ref(gw, job, tenant, est)
    _check_gpu_worker(gw, job.device)
    try:
        row = gw.store.create_job(
            kind=job.kind,
            request=request,
            fingerprint=fingerprint,
            tenant=tenant,
            name=job.name,
            idempotency_key=idempotency_key,
            max_active=gw.settings.max_active_jobs,
        )
    except ActiveJobLimit as exc:
        raise ProblemError(
            429,
            f"This tenant has {exc.active} queued or running jobs, the limit is "
            f"{exc.limit} (INFOSCORE_MAX_ACTIVE_JOBS); wait for some to finish.",
            type_="too-many-active-jobs",
            headers={"Retry-After": "30"},
            limit=exc.limit,
        ) from exc
    if not row["created"]:  # a concurrent request with the same Idempotency-Key won
        _check_same_request(row, request, fingerprint, "")
        return Submitted(row, created=False)
    enqueue(gw, row["id"], job.device)
    metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
    return Submitted(row, created=True)


def gpu_worker_problem(gw: Gateway, device: str) -> dict[str, str] | None:
    """A job that asks for a GPU waits on the CUDA queue, which only GPU workers consume:
    the problem when no worker announces that queue (None when one does, or when the
    broker cannot tell)."""
    if not device.startswith("cuda") or gw.gpu_workers() != 0:
        return None
    return {
        "field": "device",
        "detail": f"device {device!r}: no worker with a GPU is connected, so the job would wait "
        "forever. Ask for device 'auto' (a GPU when the worker that takes the job has one) or "
        "'cpu', or start a GPU worker (docs/deploy.md, GPU workers).",
    }


def _check_gpu_worker(gw: Gateway, device: str) -> None:
    found = gpu_worker_problem(gw, device)
    if found is not None:
        raise ProblemError(422, found["detail"], type_="no-gpu-worker", field=found["field"])


def enqueue(gw: Gateway, job_id: str, device: str | None = None) -> None:
    """Send a recorded job to the broker. When that fails the job is recorded as failed
    with a ``broker-unavailable`` error, and a retry with the same Idempotency-Key
    re-queues it (see :meth:`JobStore.requeue_unsent`)."""
    try:
        gw.send(job_id, device)
    except Exception as exc:
        gw.store.finish(
            job_id,
            JobState.failed.value,
            error=problem(
                503,
                f"The job could not be queued: broker unreachable ({type(exc).__name__}).",
                type_=BROKER_UNAVAILABLE,
            ),
        )
        raise ProblemError(
            503,
            "The broker is unreachable, so the job was not queued (recorded as failed); retry later "
            "with the same Idempotency-Key to queue this job again.",
            type_="broker-unavailable",
            headers={"Retry-After": "5"},
        ) from exc


def _check_same_request(prior: dict[str, Any], request: dict[str, Any], fingerprint: str, fix: str) -> None:
    """409 unless a request repeats the one recorded under its Idempotency-Key: the content
    fingerprint (which leaves out name and device, so that fan-out units are shared across
    devices) plus the name and the device."""
    if not (
        prior["fingerprint"] == fingerprint
        and prior["request"].get("name") == request.get("name")
        and prior["request"].get("device") == request.get("device")
    ):
        raise ProblemError(
            409,
            f"The Idempotency-Key was already used with a different request body{fix}.",
            type_="idempotency-conflict",
        )


def dry_run(gw: Gateway, job: JobRequest, tenant: str) -> dict[str, Any]:
    """POST /v1/jobs:estimate: the estimate, every problem found, the limits, and whether
    the job fits them, without recording anything."""
    est, checks = estimate_and_checks(gw, job, tenant)
    st = gw.settings
    out = est.as_dict()
    gpu = gpu_worker_problem(gw, job.device)
    checks = [*checks, gpu] if gpu is not None else checks
    out["problems"] = [*est.problems, *checks]
    out["limits"] = {
        "parameters": st.max_parameters,
        "memory_bytes": st.max_job_memory_bytes,
        "seconds": st.job_time_limit,
    }
    out["fits"] = (
        not checks
        and est.parameters <= st.max_parameters
        and est.memory_bytes <= st.max_job_memory_bytes
        and not est.problems
        and sum(est.compute_seconds.values()) <= st.job_time_limit
    )
    return out


def estimate_and_checks(gw: Gateway, job: JobRequest, tenant: str) -> tuple[Estimate, list[dict[str, str]]]:
    """The resource estimate and the checks that need the dataset's record (see
    contracts.estimate.dataset_checks)."""
    if isinstance(job.dataset, str):
        record = gw.store.get_dataset(job.dataset, tenant)
        if record is None:
            raise ProblemError(
                422,
                f"The 'dataset' {job.dataset!r} does not exist; upload it with POST /v1/datasets "
                'or give a built-in such as {"builtin": "digits"}.',
                type_="unknown-dataset",
                field="dataset",
            )
        shape = Shape(
            record["n_train"],
            record["n_test"],
            math.prod(record["input_shape"]),
            record["n_classes"],
            record["input_shape"],
            stored_bytes=record.get("stored_bytes"),
        )
        facts = DatasetFacts(builtin=False, has_truth=bool(record.get("has_truth")))
    else:
        shape = builtin_shape(job.dataset.model_dump())
        facts = DatasetFacts(builtin=True)
    request = job.model_dump(mode="json")
    checks = dataset_checks(request, shape, facts, frozenset(job.params.model_fields_set))
    return estimate(request, shape), checks


def _raise_checks(checks: list[dict[str, str]]) -> None:
    if checks:
        raise ProblemError(
            422,
            " ".join(c["detail"] for c in checks),
            type_="invalid-for-dataset",
            field=checks[0]["field"],
            errors=[{"loc": c["field"], "msg": c["detail"], "type": "invalid-for-dataset"} for c in checks],
        )


def _check_limits(gw: Gateway, est: Estimate) -> None:
    limit_p = gw.settings.max_parameters
    if est.parameters > limit_p:
        raise ProblemError(
            422,
            f"The model has {est.parameters} parameters, over the limit of {limit_p} "
            "(INFOSCORE_MAX_PARAMETERS).",
            type_="too-many-parameters",
            limit=limit_p,
            estimate=est.as_dict(),
        )
    limit_m = gw.settings.max_job_memory_bytes
    if est.memory_bytes > limit_m:
        raise ProblemError(
            422,
            f"The job would need about {est.memory_bytes / 1024**3:.2f} GiB of worker memory, over the "
            f"budget of {limit_m / 1024**3:.2f} GiB (INFOSCORE_MAX_JOB_MEMORY_BYTES); use fewer samples, "
            "a smaller model, or the 'projected' method.",
            type_="too-much-memory",
            limit=limit_m,
            estimate=est.as_dict(),
        )
    # Kind-specific refusals and compute time (e.g. sample-information's finite-t LOO, delta_f size).
    for refusal in est.problems:
        raise ProblemError(
            422, refusal["detail"], type_=refusal["type"], field=refusal["field"], limit=refusal["limit"],
            estimate=est.as_dict(),
        )  # fmt: skip
    seconds = sum(est.compute_seconds.values())
    if seconds > gw.settings.job_time_limit:
        raise ProblemError(
            422,
            f"The job would compute for about {seconds:.0f} s ({', '.join(est.compute_seconds)}), over the "
            f"time limit of {gw.settings.job_time_limit} s (INFOSCORE_JOB_TIME_LIMIT); use t = null, fewer "
            "samples, or a worker with a GPU (device 'cuda').",
            type_="too-slow",
            limit=gw.settings.job_time_limit,
            estimate=est.as_dict(),
        )


def check_kind_filter(kind: str | None) -> None:
    """A job list's ``kind`` filter names a job kind (422 listing them otherwise)."""
    if kind is not None and kind not in JOB_KINDS:
        raise ProblemError(
            422, f"The 'kind' filter must be one of {list(JOB_KINDS)}. Got {kind!r}.", type_="bad-filter"
        )


def get_job_or_404(gw: Gateway, job_id: str, tenant: str) -> dict[str, Any]:
    job = gw.store.get_job(job_id, tenant) if len(job_id) < 64 else None
    if job is None:
        raise ProblemError(404, f"No job with id {job_id!r}.", type_="not-found")
    return job


def cancel_job(gw: Gateway, job: dict[str, Any]) -> None:
    """Ask a queued or running job to stop (409 when it already ended)."""
    if job["state"] in TERMINAL_STATES:
        raise ProblemError(
            409,
            f"Job {job['id']} already ended ({job['state']}); nothing to cancel "
            "(DELETE with ?purge=true deletes it and its artifacts).",
            type_="job-ended",
        )
    gw.store.request_cancel(job["id"])


def purge_job(gw: Gateway, job: dict[str, Any]) -> None:
    """Delete a job, its artifacts and its units, cancelling it first; a job still running
    after the cancel request is 409 (repeat once it has stopped)."""
    job_id = job["id"]
    state = job["state"]
    if state not in TERMINAL_STATES:
        state = gw.store.request_cancel(job_id)
    if state not in TERMINAL_STATES:
        raise ProblemError(
            409,
            f"Job {job_id} is running; cancellation was requested. Repeat this DELETE once it "
            "has stopped (GET shows its state).",
            type_="job-still-running",
            headers={"Retry-After": "5"},
        )
    if gw.store.delete_job(job_id):
        gw.artifacts.remove_job(job_id)
