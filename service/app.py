"""The FastAPI gateway: validate, record, enqueue by task name, serve. It never computes
(no torch, no infoscore import): workers do the science."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, File, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from contracts import tasks as names
from contracts.estimate import Estimate, Shape, builtin_shape, estimate
from contracts.jobs import JOB_KINDS, JobRequest, request_fingerprint
from contracts.label_issues import DeriveRequest
from contracts.problems import PROBLEM_MEDIA_TYPE, problem
from contracts.records import DatasetRecord, JobList, JobRecord, JobState, ResultPage
from store.artifacts import ArtifactStore, valid_artifact_name
from store.db import JobStore
from store.settings import ServiceSettings

from . import metrics
from .auth import Caller, KeyResolver, RateLimiter, authenticate
from .errors import BodyLimitMiddleware, ProblemError, install_handlers

log = logging.getLogger("infoscore.api")

MEDIA_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".png": "image/png",
    ".npy": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".safetensors": "application/octet-stream",
}


class Gateway:
    """Process-wide state of the API: settings, store, artifacts, broker client."""

    def __init__(self, settings: ServiceSettings) -> None:
        from celery import Celery

        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.resolved_database_url())
        self.artifacts = ArtifactStore(settings.data_dir)
        self.keys = KeyResolver(self.store)
        self.rate_limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.celery = Celery("infoscore-gateway", broker=settings.broker_url)
        self.celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            broker_transport_options={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def send(self, job_id: str) -> None:
        self.celery.send_task(
            names.RUN_JOB,
            args=[job_id],
            queue=names.QUEUE_JOBS,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )


# Dependencies are async (they run on the event loop): a sync dependency costs a
# thread-pool hop per request, and these only read memory (the key lookup is cached).
async def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def get_caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    gw: Gateway = request.app.state.gateway
    caller = authenticate(authorization, auth=gw.settings.auth, resolver=gw.keys)
    if caller.key_id is not None:
        gw.rate_limiter.check(caller.key_id)
    return caller


async def get_tenant(caller: Annotated[Caller, Depends(get_caller)]) -> str:
    return caller.tenant


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
TenantDep = Annotated[str, Depends(get_tenant)]


def _job_record(job: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=job["id"],
        kind=job["kind"],
        state=JobState(job["state"]),
        progress=job["progress"],
        created_at=job["created_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
        summary=job["summary"],
        error=job["error"],
        request=job["request"],
        attempts=job["attempts"],
        artifacts=job["artifacts"],
        name=job["name"],
    )


def _estimate(gw: Gateway, job: Any, tenant: str) -> Estimate:
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
        )
    else:
        shape = builtin_shape(job.dataset.model_dump())
    return estimate(job.model_dump(mode="json"), shape)


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


def _load_table(gw: Gateway, job_id: str) -> Any:
    """The per-sample table from scores.parquet, or from scores.csv if the Parquet file is
    damaged; None when the job has no table. Both unreadable: 500 problem."""
    import pandas as pd

    parquet = gw.artifacts.artifact_path(job_id, "scores.parquet")
    csv = gw.artifacts.artifact_path(job_id, "scores.csv")
    if not parquet.exists() and not csv.exists():
        return None
    errors = []
    for path, reader in ((parquet, pd.read_parquet), (csv, pd.read_csv)):
        if not path.exists():
            continue
        try:
            return reader(path)
        except Exception as exc:
            errors.append(f"{path.name}: {type(exc).__name__}")
            log.error("job %s: %s is unreadable: %s", job_id, path.name, exc)
    raise ProblemError(
        500,
        f"The stored per-sample table of job {job_id} is damaged ({'; '.join(errors)}); its other "
        "artifacts are unaffected.",
        type_="corrupt-artifact",
    )


def _storage_error(exc: OSError) -> ProblemError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ProblemError(
            507,
            "The server's artifact store is full; nothing was stored. Retry after space is freed.",
            type_="storage-full",
        )
    return ProblemError(
        503, f"The artifact store failed ({exc.strerror}); nothing was stored.", type_="storage"
    )


def _encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError
        return value
    except Exception as exc:
        raise ProblemError(
            400,
            f"The 'cursor' parameter is not a cursor this API issued. Got {cursor!r}.",
            type_="bad-cursor",
        ) from exc


def _get_job_or_404(gw: Gateway, job_id: str, tenant: str) -> dict[str, Any]:
    job = gw.store.get_job(job_id, tenant) if len(job_id) < 64 else None
    if job is None:
        raise ProblemError(404, f"No job with id {job_id!r}.", type_="not-found")
    return job


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.gateway.store.dispose()

    app = FastAPI(
        title="infoscore",
        version="0.1.0",
        description=(
            "How much each training sample matters and how well a model will generalize: "
            "smooth sample information, f-CMI bounds, LIMIT and supervision complexity as jobs."
        ),
        lifespan=lifespan,
    )
    app.state.gateway = Gateway(settings)
    install_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware, upload_limit=settings.max_upload_bytes, json_limit=settings.max_request_bytes
    )
    app.add_middleware(metrics.MetricsMiddleware)

    # ------------------------------------------------------------- health
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(gw: GatewayDep) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            gw.store.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            with gw.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        bad = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
        body = problem(503, f"Not ready: {bad}.", type_="not-ready", checks=checks)
        return JSONResponse(body, status_code=503, media_type=PROBLEM_MEDIA_TYPE)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def prometheus() -> Response:
        return metrics.render()

    # ----------------------------------------------------------- datasets
    @app.post("/v1/datasets", status_code=201, response_model=DatasetRecord, tags=["datasets"])
    async def upload_dataset(
        gw: GatewayDep,
        tenant: TenantDep,
        response: Response,
        file: Annotated[UploadFile, File(description="npz (x, y, x_test?, y_test?, ids?), CSV or Parquet")],
    ) -> DatasetRecord:
        from .uploads import UploadError, UploadLimits, UploadTooLarge, parse_upload, write_canonical_npz

        tmp_dir = gw.artifacts.tmp_dir()
        fd, tmp_name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
        tmp_path = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > gw.settings.max_upload_bytes:
                        raise ProblemError(
                            413,
                            f"The uploaded file is larger than the limit of {gw.settings.max_upload_bytes} "
                            "bytes (INFOSCORE_MAX_UPLOAD_BYTES).",
                            type_="body-too-large",
                        )
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise ProblemError(422, "The uploaded 'file' is empty.", type_="invalid-upload", field="file")
            sha = digest.hexdigest()
            dataset_id = f"ds_{sha[:32]}"
            existing = gw.store.get_dataset(dataset_id, tenant)
            if existing is not None and gw.artifacts.dataset_path(dataset_id).exists():
                response.status_code = 200
                return DatasetRecord(**existing)
            limits = UploadLimits(max_bytes=gw.settings.max_upload_bytes)
            try:
                parsed = await run_in_threadpool(parse_upload, tmp_path, file.filename, limits)
            except UploadTooLarge as exc:
                raise ProblemError(413, str(exc), type_="upload-too-large", field=exc.field) from exc
            except UploadError as exc:
                raise ProblemError(422, str(exc), type_="invalid-upload", field=exc.field) from exc
            # The canonical file first, then the row: a crash in between leaves no row
            # pointing at a missing file.
            await run_in_threadpool(write_canonical_npz, parsed, gw.artifacts.dataset_path(dataset_id))
            record = gw.store.add_dataset(
                {
                    "id": dataset_id,
                    "sha256": sha,
                    "format": parsed.format,
                    "filename": (file.filename or "")[:255] or None,
                    "n_train": int(parsed.y.shape[0]),
                    "n_test": int(0 if parsed.y_test is None else parsed.y_test.shape[0]),
                    "n_classes": int(parsed.n_classes),
                    "input_shape": [int(s) for s in parsed.input_shape],
                    "size_bytes": size,
                },
                tenant,
            )
            response.headers["Location"] = f"/v1/datasets/{dataset_id}"
            return DatasetRecord(**record)
        except OSError as exc:
            raise _storage_error(exc) from exc
        finally:
            tmp_path.unlink(missing_ok=True)

    @app.get("/v1/datasets/{dataset_id}", response_model=DatasetRecord, tags=["datasets"])
    def get_dataset(dataset_id: str, gw: GatewayDep, tenant: TenantDep) -> DatasetRecord:
        record = gw.store.get_dataset(dataset_id, tenant) if len(dataset_id) < 80 else None
        if record is None:
            raise ProblemError(404, f"No dataset with id {dataset_id!r}.", type_="not-found")
        return DatasetRecord(**record)

    @app.post("/v1/datasets:derive", status_code=201, response_model=DatasetRecord, tags=["datasets"])
    def derive_dataset(
        body: Annotated[DeriveRequest, Body()], gw: GatewayDep, tenant: TenantDep, response: Response
    ) -> DatasetRecord:
        """A new dataset from a succeeded label-issues job (docs/jobs/label-issues.md)."""
        from .derive import derive_dataset as derive

        try:
            record, created = derive(gw, body, tenant)
        except OSError as exc:
            raise _storage_error(exc) from exc
        if not created:
            response.status_code = 200
        response.headers["Location"] = f"/v1/datasets/{record['id']}"
        return DatasetRecord(**record)

    # --------------------------------------------------------------- jobs
    @app.post("/v1/jobs", status_code=202, response_model=JobRecord, tags=["jobs"])
    def submit_job(
        job: Annotated[JobRequest, Body()],
        gw: GatewayDep,
        tenant: TenantDep,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobRecord:
        request = job.model_dump(mode="json")
        fingerprint = request_fingerprint(request)
        if idempotency_key:
            prior = gw.store.find_by_idempotency_key(idempotency_key, tenant)
            if prior is not None:
                if prior["fingerprint"] != fingerprint or prior["request"].get("name") != request.get("name"):
                    raise ProblemError(
                        409,
                        "The Idempotency-Key was already used with a different request body; "
                        "use a new key for a new job.",
                        type_="idempotency-conflict",
                    )
                response.headers["Location"] = f"/v1/jobs/{prior['id']}"
                return _job_record(prior)
        _check_limits(gw, _estimate(gw, job, tenant))
        active = gw.store.count_active(tenant)
        if active >= gw.settings.max_active_jobs:
            raise ProblemError(
                429,
                f"This tenant has {active} queued or running jobs, the limit is "
                f"{gw.settings.max_active_jobs} (INFOSCORE_MAX_ACTIVE_JOBS); wait for some to finish.",
                type_="too-many-active-jobs",
                headers={"Retry-After": "30"},
                limit=gw.settings.max_active_jobs,
            )
        row = gw.store.create_job(
            kind=job.kind,
            request=request,
            fingerprint=fingerprint,
            tenant=tenant,
            name=job.name,
            idempotency_key=idempotency_key,
        )
        if not row["created"]:  # a concurrent request with the same Idempotency-Key won
            if row["fingerprint"] != fingerprint:
                raise ProblemError(
                    409,
                    "The Idempotency-Key was already used with a different request body.",
                    type_="idempotency-conflict",
                )
            response.headers["Location"] = f"/v1/jobs/{row['id']}"
            return _job_record(row)
        try:
            gw.send(row["id"])
        except Exception as exc:
            gw.store.finish(
                row["id"],
                "failed",
                error={
                    "type": "https://infoscore.dev/problems/broker-unavailable",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": f"The job could not be queued: broker unreachable ({type(exc).__name__}).",
                },
            )
            raise ProblemError(
                503,
                "The broker is unreachable, so the job was not queued (recorded as failed); retry later.",
                type_="broker-unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
        response.headers["Location"] = f"/v1/jobs/{row['id']}"
        return _job_record(row)

    @app.post("/v1/jobs:estimate", tags=["jobs"])
    def estimate_job(job: Annotated[JobRequest, Body()], gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
        """Dry run: validate the request and estimate its resources without running it."""
        est = _estimate(gw, job, tenant)
        out = est.as_dict()
        out["limits"] = {
            "parameters": gw.settings.max_parameters,
            "memory_bytes": gw.settings.max_job_memory_bytes,
        }
        out["fits"] = (
            est.parameters <= gw.settings.max_parameters
            and est.memory_bytes <= gw.settings.max_job_memory_bytes
        )
        return out

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"])
    def list_jobs(
        gw: GatewayDep,
        tenant: TenantDep,
        state: JobState | None = None,
        kind: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ) -> JobList:
        if kind is not None and kind not in JOB_KINDS:
            raise ProblemError(
                422, f"The 'kind' filter must be one of {list(JOB_KINDS)}. Got {kind!r}.", type_="bad-filter"
            )
        before = None
        if cursor:
            c = _decode_cursor(cursor)
            try:
                before = (datetime.fromisoformat(c["t"]).replace(tzinfo=None), str(c["id"]))
            except Exception as exc:
                raise ProblemError(400, "The 'cursor' parameter is malformed.", type_="bad-cursor") from exc
        rows = gw.store.list_jobs(
            tenant=tenant, state=state.value if state else None, kind=kind, limit=limit + 1, before=before
        )
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = _encode_cursor({"t": last["created_at"].isoformat(), "id": last["id"]})
        return JobList(items=[_job_record(r) for r in rows], next_cursor=next_cursor)

    @app.get("/v1/jobs/{job_id}", response_model=JobRecord, tags=["jobs"])
    async def get_job(job_id: str, gw: GatewayDep, tenant: TenantDep) -> JobRecord:
        return _job_record(_get_job_or_404(gw, job_id, tenant))

    @app.delete("/v1/jobs/{job_id}", response_model=JobRecord, status_code=202, tags=["jobs"])
    def cancel_job(job_id: str, gw: GatewayDep, tenant: TenantDep) -> JobRecord:
        job = _get_job_or_404(gw, job_id, tenant)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            raise ProblemError(
                409, f"Job {job_id} already ended ({job['state']}); nothing to cancel.", type_="job-ended"
            )
        gw.store.request_cancel(job_id)
        return _job_record(_get_job_or_404(gw, job_id, tenant))

    @app.get("/v1/jobs/{job_id}/result", response_model=ResultPage, tags=["jobs"])
    def job_result(
        job_id: str,
        gw: GatewayDep,
        tenant: TenantDep,
        sort: Annotated[str | None, Query(max_length=100, description="column to sort by")] = None,
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
        format: Literal["json", "csv"] = "json",
    ) -> Any:
        job = _get_job_or_404(gw, job_id, tenant)
        if job["state"] != "succeeded":
            raise ProblemError(
                409,
                f"Job {job_id} is {job['state']}; results exist once it has succeeded.",
                type_="job-not-finished",
                state=job["state"],
            )
        table = _load_table(gw, job_id)
        if table is None:
            return ResultPage(job_id=job_id, summary=job["summary"], columns=[], rows=[], total_rows=0)
        if sort is not None:
            if sort not in table.columns:
                raise ProblemError(
                    422,
                    f"The 'sort' parameter must be one of {list(table.columns)}. Got {sort!r}.",
                    type_="bad-sort",
                )
            table = table.sort_values(sort, ascending=(order == "asc"), kind="stable")
        offset = 0
        if cursor:
            c = _decode_cursor(cursor)
            if c.get("sort") != sort or c.get("order") != order or not isinstance(c.get("offset"), int):
                raise ProblemError(400, "The 'cursor' belongs to another sort or order.", type_="bad-cursor")
            offset = max(0, c["offset"])
        page = table.iloc[offset : offset + limit]
        next_cursor = None
        if offset + limit < len(table):
            next_cursor = _encode_cursor({"sort": sort, "order": order, "offset": offset + limit})
        if format == "csv":
            buf = io.StringIO()
            page.to_csv(buf, index=False)
            headers = {"X-Total-Rows": str(len(table))}
            if next_cursor:
                headers["X-Next-Cursor"] = next_cursor
            return PlainTextResponse(buf.getvalue(), media_type="text/csv", headers=headers)
        rows = json.loads(page.to_json(orient="records"))
        return ResultPage(
            job_id=job_id,
            summary=job["summary"],
            columns=[str(c) for c in table.columns],
            rows=rows,
            total_rows=len(table),
            next_cursor=next_cursor,
        )

    @app.get("/v1/jobs/{job_id}/artifacts", tags=["jobs"])
    def list_artifacts(job_id: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
        _get_job_or_404(gw, job_id, tenant)
        items = []
        for name in gw.artifacts.list(job_id):
            p = gw.artifacts.artifact_path(job_id, name)
            items.append(
                {"name": name, "size_bytes": p.stat().st_size, "url": f"/v1/jobs/{job_id}/artifacts/{name}"}
            )
        return {"job_id": job_id, "artifacts": items}

    @app.get("/v1/jobs/{job_id}/artifacts/{name}", tags=["jobs"])
    def get_artifact(job_id: str, name: str, gw: GatewayDep, tenant: TenantDep) -> FileResponse:
        _get_job_or_404(gw, job_id, tenant)
        if not valid_artifact_name(name):
            raise ProblemError(
                400,
                f"The artifact name {name!r} is not valid: letters, digits, '_', '-' and '.' only.",
                type_="bad-artifact-name",
            )
        path = gw.artifacts.artifact_path(job_id, name)
        if not path.is_file():
            raise ProblemError(
                404,
                f"Job {job_id} has no artifact {name!r}; GET /v1/jobs/{job_id}/artifacts lists them.",
                type_="not-found",
            )
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, filename=name)

    return app
