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
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from fastapi import Body, Depends, FastAPI, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from contracts import tasks as names
from contracts.estimate import DatasetFacts, Estimate, Shape, builtin_shape, dataset_checks, estimate
from contracts.jobs import JOB_KINDS, JobRequest, request_fingerprint
from contracts.label_issues import DeriveRequest
from contracts.problems import PROBLEM_MEDIA_TYPE, problem
from contracts.records import DatasetList, DatasetRecord, JobList, JobRecord, JobState, ResultPage
from store.artifacts import ArtifactStore, regular_file, valid_artifact_name
from store.db import TERMINAL_STATES, ActiveJobLimit, JobStore

from . import metrics
from .auth import Caller, KeyResolver, RateLimiter, authenticate
from .checkpoints import check_checkpoint_ref
from .errors import BodyLimitMiddleware, ProblemError, install_handlers, problem_response
from .net import is_loopback, ping_redis
from .settings import ServiceSettings
from .suggest import closest_name

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
        self.auth_failures = RateLimiter(settings.auth_failure_rate, settings.auth_failure_burst)
        self._ready_lock = threading.Lock()
        self._ready: tuple[float, dict[str, str]] = (0.0, {})
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
    caller = _authenticate_or_throttle(gw, authorization, request.client.host if request.client else "?")
    if caller.key_id is not None:
        gw.rate_limiter.check(caller.key_id)
    return caller


async def get_tenant(caller: Annotated[Caller, Depends(get_caller)]) -> str:
    return caller.tenant


def _authenticate_or_throttle(gw: Gateway, authorization: str | None, client: str) -> Caller:
    """Authenticate; a client that keeps sending invalid keys is slowed to
    INFOSCORE_AUTH_FAILURE_RATE per second (429) instead of costing a lookup each."""
    try:
        return authenticate(authorization, auth=gw.settings.auth, resolver=gw.keys)
    except ProblemError as exc:
        if exc.type_ == "invalid-api-key":
            gw.auth_failures.check(
                client, what="per client address for invalid API keys", setting="INFOSCORE_AUTH_FAILURE_RATE"
            )
        raise


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
TenantDep = Annotated[str, Depends(get_tenant)]


BROKER_UNAVAILABLE = "https://infoscore.dev/problems/broker-unavailable"


def _enqueue(gw: Gateway, job_id: str) -> None:
    """Send a recorded job to the broker. When that fails the job is recorded as failed
    with a ``broker-unavailable`` error, and a retry with the same Idempotency-Key
    re-queues it (see :meth:`JobStore.requeue_unsent`)."""
    try:
        gw.send(job_id)
    except Exception as exc:
        gw.store.finish(
            job_id,
            "failed",
            error={
                "type": BROKER_UNAVAILABLE,
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"The job could not be queued: broker unreachable ({type(exc).__name__}).",
            },
        )
        raise ProblemError(
            503,
            "The broker is unreachable, so the job was not queued (recorded as failed); retry later "
            "with the same Idempotency-Key to queue this job again.",
            type_="broker-unavailable",
            headers={"Retry-After": "5"},
        ) from exc


def _check_storage_quota(gw: Gateway, tenant: str, incoming: int) -> None:
    stored = gw.store.stored_dataset_bytes(tenant)
    limit = gw.settings.max_stored_bytes
    if stored + incoming > limit:
        raise ProblemError(
            413,
            f"This upload ({incoming} bytes) would take the tenant's stored datasets to {stored + incoming} "
            f"bytes, over the quota of {limit} bytes (INFOSCORE_MAX_STORED_BYTES); "
            "DELETE /v1/datasets/{id} frees space.",
            type_="storage-quota",
            limit=limit,
            stored_bytes=stored,
        )


def _same_request(prior: dict[str, Any], request: dict[str, Any], fingerprint: str) -> bool:
    """Whether a request repeats the one recorded under its Idempotency-Key: the content
    fingerprint (which leaves out name and device, so that fan-out units are shared across
    devices) plus the name and the device."""
    return (
        prior["fingerprint"] == fingerprint
        and prior["request"].get("name") == request.get("name")
        and prior["request"].get("device") == request.get("device")
    )


READY_CACHE_SECONDS = 1.0


def _ping_broker(gw: Gateway, timeout: float = 2.0) -> None:
    """A Redis PING (after AUTH when the URL has a password) on a fresh socket: cheap,
    bounded by ``timeout``, and independent of the Celery client's connection state."""
    url = urlsplit(gw.settings.broker_url)
    if url.scheme != "redis":  # rediss (TLS) or another broker: ask through Celery
        with gw.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return
    password = None
    if url.password:
        user = f"{unquote(url.username)} " if url.username else ""
        password = f"{user}{unquote(url.password)}"
    ping_redis(url.hostname or "127.0.0.1", url.port or 6379, password, timeout=timeout)


def _readiness(gw: Gateway) -> dict[str, str]:
    """Database and broker checks, at most one at a time: with the broker down a check
    takes up to its timeout, and pollers must not each hold a thread for it (they get the
    last answer while one check runs). A good answer is reused for a second; a bad one
    only while the next check is running, so recovery shows at once."""
    checked_at, checks = gw._ready
    healthy = bool(checks) and all(v == "ok" for v in checks.values())
    if healthy and time.monotonic() - checked_at < READY_CACHE_SECONDS:
        return checks
    if not gw._ready_lock.acquire(blocking=not checks):
        return checks
    try:
        checks = {}
        try:
            gw.store.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            _ping_broker(gw)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
        gw._ready = (time.monotonic(), checks)
        return checks
    finally:
        gw._ready_lock.release()


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
    return _estimate_and_checks(gw, job, tenant)[0]


def _estimate_and_checks(gw: Gateway, job: Any, tenant: str) -> tuple[Estimate, list[dict[str, str]]]:
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


def _class_names(gw: Gateway, job: dict[str, Any], tenant: str) -> list[str] | None:
    ref = (job.get("request") or {}).get("dataset")
    if not isinstance(ref, str):
        return None
    record = gw.store.get_dataset(ref, tenant)
    names = None if record is None else record.get("class_names")
    return names if isinstance(names, list) else None


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


DOCS_ASSETS = "/docs-assets"


def _docs_assets_dir() -> Path:
    """Swagger UI and ReDoc's files, as shipped by the fastapi-offline wheel (found without
    importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the fastapi-offline package (Swagger UI and ReDoc files) is not installed")
    return Path(spec.origin).parent / "static"


def _offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with every asset served by this service."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=_docs_assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # no badge that would ask validator.swagger.io about the spec
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Response:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    if settings.auth != "required" and not is_loopback(settings.host):
        # The same guard as the CLI's, for an app built directly (e.g. by another server).
        raise ValueError(
            f"refusing to serve {settings.host} without API keys: set INFOSCORE_AUTH=required or bind 127.0.0.1"
        )

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
        docs_url=None,  # served below from files in the package: no CDN, works offline
        redoc_url=None,
    )
    _offline_docs(app)
    app.state.gateway = Gateway(settings)
    install_handlers(app)

    async def auth_gate(scope: Any) -> JSONResponse | None:
        headers = dict(scope.get("headers", []))
        raw = headers.get(b"authorization")
        client = scope.get("client") or ("?", 0)
        try:
            await run_in_threadpool(
                _authenticate_or_throttle,
                app.state.gateway,
                None if raw is None else raw.decode("latin-1"),
                client[0],
            )
        except ProblemError as exc:
            return problem_response(
                exc.status,
                exc.detail,
                instance=scope["path"],
                headers=exc.headers,
                type_=exc.type_,
                **exc.extra,
            )
        return None

    app.add_middleware(
        BodyLimitMiddleware,
        upload_limit=settings.max_upload_bytes,
        json_limit=settings.max_request_bytes,
        auth_gate=auth_gate if settings.auth == "required" else None,
    )
    hosts = settings.allowed_hosts
    if hosts is None:
        hosts = ["*"] if settings.auth == "required" else ["127.0.0.1", "localhost", "::1", "[::1]"]
    if hosts != ["*"]:
        # Without keys the API trusts whoever reaches it on loopback; refusing foreign Host
        # headers keeps a web page's DNS-rebinding trick from reaching it through a browser.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(metrics.MetricsMiddleware)

    # ------------------------------------------------------------- health
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(gw: GatewayDep) -> JSONResponse:
        checks = _readiness(gw)
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        bad = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
        body = problem(503, f"Not ready: {bad}.", type_="not-ready", checks=checks)
        return JSONResponse(body, status_code=503, media_type=PROBLEM_MEDIA_TYPE)

    from .ui import router as ui_router  # browser pages (/ui): docs/ui.md

    app.include_router(ui_router)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def prometheus(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
        gw: Gateway = request.app.state.gateway
        if not gw.settings.metrics_public:
            _authenticate_or_throttle(gw, authorization, request.client.host if request.client else "?")
        return metrics.render()

    # ----------------------------------------------------------- datasets
    @app.post("/v1/datasets", status_code=201, response_model=DatasetRecord, tags=["datasets"])
    async def upload_dataset(
        gw: GatewayDep,
        tenant: TenantDep,
        response: Response,
        file: Annotated[
            UploadFile, File(description="npz (x, y, x_test?, y_test?, ids?, y_true?), CSV or Parquet")
        ],
        label_column: Annotated[str | None, Form(max_length=200, description="default 'label'")] = None,
        id_column: Annotated[str | None, Form(max_length=200, description="default 'id' if present")] = None,
        feature_columns: Annotated[
            list[str] | None, Form(description="comma-separated (or repeated): exactly these features")
        ] = None,
        exclude_columns: Annotated[
            list[str] | None, Form(description="comma-separated (or repeated): columns to drop")
        ] = None,
        truth_column: Annotated[
            str | None, Form(max_length=200, description="true labels of the training rows, for evaluation")
        ] = None,
        standardize: Annotated[
            bool, Form(description="z-score features with the training split's statistics")
        ] = False,
        remap_labels: Annotated[
            bool, Form(description="map the distinct labels, sorted, to 0..k-1 (class_names keep them)")
        ] = False,
    ) -> DatasetRecord:
        from .uploads import (
            UploadError,
            UploadLimits,
            UploadOptions,
            UploadTooLarge,
            parse_pool,
            precheck,
        )

        def column_list(values: list[str] | None) -> tuple[str, ...] | None:
            if values is None:
                return None
            names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
            if len(names) > 100_000:
                raise ProblemError(422, "Column lists are limited to 100000 names.", type_="invalid-upload")
            return names

        options = UploadOptions(
            label_column=label_column or "label",
            id_column=id_column or None,
            feature_columns=column_list(feature_columns),
            exclude_columns=column_list(exclude_columns) or (),
            truth_column=truth_column or None,
            standardize=standardize,
            remap_labels=remap_labels,
        )

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
            # The id is the content hash, and the options' hash too when any is set: one file
            # read two ways is two datasets.
            if options == UploadOptions():
                dataset_id = f"ds_{sha[:32]}"
            else:
                keyed = json.dumps({"sha256": sha, "options": options.as_dict()}, sort_keys=True)
                dataset_id = f"ds_{hashlib.sha256(keyed.encode()).hexdigest()[:32]}"
            existing = gw.store.get_dataset(dataset_id, tenant)
            if existing is not None and gw.artifacts.dataset_path(dataset_id).exists():
                response.status_code = 200
                return DatasetRecord(**existing)
            _check_storage_quota(gw, tenant, size)
            st = gw.settings
            limits = UploadLimits(
                max_bytes=st.max_upload_bytes,
                max_id_length=st.max_id_length,
                max_columns=st.max_columns,
                max_dataset_bytes=st.max_dataset_bytes,
                max_compression_ratio=st.max_expansion_ratio,
            )
            # Parsing runs in a small pool of memory-limited processes (at most
            # upload_parse_processes at once), which also write the canonical file: the
            # arrays never enter the gateway. The cheap header checks run here first.
            try:
                await run_in_threadpool(precheck, tmp_path, file.filename, limits)
                parsed = await parse_pool(st.upload_parse_processes, st.upload_parse_memory_bytes).run(
                    tmp_path, file.filename, limits, options, gw.artifacts.dataset_path(dataset_id)
                )
            except UploadTooLarge as exc:
                raise ProblemError(413, str(exc), type_="upload-too-large", field=exc.field) from exc
            except UploadError as exc:
                raise ProblemError(422, str(exc), type_="invalid-upload", field=exc.field) from exc
            # The canonical file first, then the row: a crash in between leaves no row
            # pointing at a missing file.
            record = gw.store.add_dataset(
                {
                    "id": dataset_id,
                    "sha256": sha,
                    "filename": (file.filename or "")[:255] or None,
                    "size_bytes": size,
                    **parsed,
                    "options": options.as_dict(),
                },
                tenant,
            )
            response.headers["Location"] = f"/v1/datasets/{dataset_id}"
            return DatasetRecord(**record)
        except OSError as exc:
            raise _storage_error(exc) from exc
        finally:
            tmp_path.unlink(missing_ok=True)

    @app.get("/v1/datasets", response_model=DatasetList, tags=["datasets"])
    def list_datasets(
        gw: GatewayDep,
        tenant: TenantDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ) -> DatasetList:
        """This tenant's datasets, newest first, paged by ``limit`` and ``cursor``."""
        before = None
        if cursor:
            c = _decode_cursor(cursor)
            try:
                before = (datetime.fromisoformat(c["t"]).replace(tzinfo=None), str(c["id"]))
            except Exception as exc:
                raise ProblemError(400, "The 'cursor' parameter is malformed.", type_="bad-cursor") from exc
        rows = gw.store.list_datasets(tenant=tenant, limit=limit + 1, before=before)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = _encode_cursor({"t": last["created_at"].isoformat(), "id": last["id"]})
        return DatasetList(items=[DatasetRecord(**r) for r in rows], next_cursor=next_cursor)

    @app.get("/v1/datasets/{dataset_id}", response_model=DatasetRecord, tags=["datasets"])
    def get_dataset(dataset_id: str, gw: GatewayDep, tenant: TenantDep) -> DatasetRecord:
        record = gw.store.get_dataset(dataset_id, tenant) if len(dataset_id) < 80 else None
        if record is None:
            raise ProblemError(404, f"No dataset with id {dataset_id!r}.", type_="not-found")
        return DatasetRecord(**record)

    @app.delete("/v1/datasets/{dataset_id}", status_code=204, tags=["datasets"])
    def delete_dataset(dataset_id: str, gw: GatewayDep, tenant: TenantDep) -> Response:
        record = gw.store.get_dataset(dataset_id, tenant) if len(dataset_id) < 80 else None
        if record is None:
            raise ProblemError(404, f"No dataset with id {dataset_id!r}.", type_="not-found")
        if gw.store.dataset_in_use(dataset_id, tenant):
            raise ProblemError(
                409,
                f"Dataset {dataset_id} is used by a queued or running job; cancel it or wait for it to end.",
                type_="dataset-in-use",
            )
        if gw.store.delete_dataset(dataset_id, tenant) == 0:  # no other tenant holds the same content
            gw.artifacts.remove_dataset(dataset_id)
        return Response(status_code=204)

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
                if not _same_request(prior, request, fingerprint):
                    raise ProblemError(
                        409,
                        "The Idempotency-Key was already used with a different request body; "
                        "use a new key for a new job.",
                        type_="idempotency-conflict",
                    )
                response.headers["Location"] = f"/v1/jobs/{prior['id']}"
                if gw.store.requeue_unsent(prior["id"], BROKER_UNAVAILABLE):
                    # The first attempt was answered 503 "retry later": this is that retry.
                    _enqueue(gw, prior["id"])
                    metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
                    prior = gw.store.get_job(prior["id"]) or prior
                return _job_record(prior)
        est, checks = _estimate_and_checks(gw, job, tenant)
        _raise_checks(checks)
        _check_limits(gw, est)
        check_checkpoint_ref(gw, job, tenant, est)
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
            if not _same_request(row, request, fingerprint):
                raise ProblemError(
                    409,
                    "The Idempotency-Key was already used with a different request body.",
                    type_="idempotency-conflict",
                )
            response.headers["Location"] = f"/v1/jobs/{row['id']}"
            return _job_record(row)
        _enqueue(gw, row["id"])
        metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
        response.headers["Location"] = f"/v1/jobs/{row['id']}"
        return _job_record(row)

    @app.post("/v1/jobs:estimate", tags=["jobs"])
    def estimate_job(job: Annotated[JobRequest, Body()], gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
        """Dry run: validate the request and estimate its resources without running it."""
        est, checks = _estimate_and_checks(gw, job, tenant)
        out = est.as_dict()
        out["problems"] = [*est.problems, *checks]
        out["limits"] = {
            "parameters": gw.settings.max_parameters,
            "memory_bytes": gw.settings.max_job_memory_bytes,
        }
        out["limits"]["seconds"] = gw.settings.job_time_limit
        out["fits"] = (
            not checks
            and est.parameters <= gw.settings.max_parameters
            and est.memory_bytes <= gw.settings.max_job_memory_bytes
            and not est.problems
            and sum(est.compute_seconds.values()) <= gw.settings.job_time_limit
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

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobRecord,
        status_code=202,
        tags=["jobs"],
        responses={204: {"description": "purge=true: the job, its artifacts and its units are deleted"}},
    )
    def cancel_job(
        job_id: str,
        gw: GatewayDep,
        tenant: TenantDep,
        purge: Annotated[
            bool, Query(description="delete the job and its artifacts (cancelling it first)")
        ] = False,
    ) -> Any:
        job = _get_job_or_404(gw, job_id, tenant)
        if purge:
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
            return Response(status_code=204)
        if job["state"] in TERMINAL_STATES:
            raise ProblemError(
                409,
                f"Job {job_id} already ended ({job['state']}); nothing to cancel "
                "(DELETE with ?purge=true deletes it and its artifacts).",
                type_="job-ended",
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
        # One sort rule for every kind: a column of this job's table, or a 422 naming them
        # (a kind without a per-sample table has none to sort by).
        columns = [] if table is None else [str(c) for c in table.columns]
        if sort is not None and sort not in columns:
            hint = (
                f"; a {job['kind']} job has no per-sample table, so no sort applies"
                if table is None
                else closest_name(sort, columns)
            )
            raise ProblemError(
                422,
                f"The 'sort' parameter must be one of {columns}. Got {sort!r}{hint}.",
                type_="bad-sort",
                field="sort",
            )
        if table is None:
            return ResultPage(job_id=job_id, summary=job["summary"], columns=[], rows=[], total_rows=0)
        class_names = _class_names(gw, job, tenant)
        if class_names is not None and "label" in table.columns and "label_name" not in table.columns:
            # Uploads with text labels (or remap_labels): show the original names beside the codes.
            codes = table["label"].to_numpy()
            names_arr = [class_names[int(c)] if 0 <= int(c) < len(class_names) else None for c in codes]
            table.insert(int(table.columns.get_loc("label")) + 1, "label_name", names_arr)
        if sort is not None:
            keys = [sort]
            if sort == "forgetting_events" and "never_learned" in table.columns:
                keys = ["never_learned", sort]  # the documented ranking: never-learned rows first
            table = table.sort_values(keys, ascending=(order == "asc"), kind="stable")
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
        if not regular_file(path):
            raise ProblemError(
                404,
                f"Job {job_id} has no artifact {name!r}; GET /v1/jobs/{job_id}/artifacts lists them.",
                type_="not-found",
            )
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, filename=name)

    return app
