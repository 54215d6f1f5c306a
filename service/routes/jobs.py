"""Jobs: submit, estimate, list, get, cancel or purge, the result table and artifacts."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.responses import FileResponse, PlainTextResponse

from contracts.jobs import JobRequest
from contracts.records import JobList, JobRecord, JobState, ResultPage
from store.artifacts import regular_file, valid_artifact_name

from .. import jobs as service
from ..errors import ProblemError
from ..gateway import GatewayDep, TenantDep
from ..paging import decode_cursor, encode_cursor, time_cursor, time_page
from ..results import MEDIA_TYPES, add_label_names, check_sort, load_table, sort_table

router = APIRouter(tags=["jobs"])


@router.post("/v1/jobs", status_code=202, response_model=JobRecord)
def submit_job(
    job: Annotated[JobRequest, Body()],
    gw: GatewayDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobRecord:
    submitted = service.submit_job(gw, job, tenant, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{submitted.job['id']}"
    return JobRecord.model_validate(submitted.job)


@router.post("/v1/jobs:estimate")
def estimate_job(job: Annotated[JobRequest, Body()], gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    """Dry run: validate the request and estimate its resources without running it."""
    return service.dry_run(gw, job, tenant)


@router.get("/v1/jobs", response_model=JobList)
def list_jobs(
    gw: GatewayDep,
    tenant: TenantDep,
    state: JobState | None = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> JobList:
    service.check_kind_filter(kind)
    before = time_cursor(cursor)
    rows = gw.store.list_jobs(
        tenant=tenant, state=state.value if state else None, kind=kind, limit=limit + 1, before=before
    )
    rows, next_cursor = time_page(rows, limit)
    return JobList(items=[JobRecord.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/v1/jobs/{job_id}", response_model=JobRecord)
async def get_job(job_id: str, gw: GatewayDep, tenant: TenantDep) -> JobRecord:
    return JobRecord.model_validate(service.get_job_or_404(gw, job_id, tenant))


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobRecord,
    status_code=202,
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
    job = service.get_job_or_404(gw, job_id, tenant)
    if purge:
        service.purge_job(gw, job)
        return Response(status_code=204)
    service.cancel_job(gw, job)
    return JobRecord.model_validate(service.get_job_or_404(gw, job_id, tenant))


@router.get("/v1/jobs/{job_id}/result", response_model=ResultPage)
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
    job = service.get_job_or_404(gw, job_id, tenant)
    if job["state"] != JobState.succeeded:
        raise ProblemError(
            409,
            f"Job {job_id} is {job['state']}; results exist once it has succeeded.",
            type_="job-not-finished",
            state=job["state"],
        )
    table = load_table(gw, job_id)
    check_sort(sort, table, job["kind"])
    if table is None:
        return ResultPage(job_id=job_id, summary=job["summary"], columns=[], rows=[], total_rows=0)
    add_label_names(gw, table, job, tenant)
    table = sort_table(table, sort, order)
    offset = 0
    if cursor:
        c = decode_cursor(cursor)
        if c.get("sort") != sort or c.get("order") != order or not isinstance(c.get("offset"), int):
            raise ProblemError(400, "The 'cursor' belongs to another sort or order.", type_="bad-cursor")
        offset = max(0, c["offset"])
    page = table.iloc[offset : offset + limit]
    next_cursor = None
    if offset + limit < len(table):
        next_cursor = encode_cursor({"sort": sort, "order": order, "offset": offset + limit})
    if format == "csv":
        buf = io.StringIO()
        page.to_csv(buf, index=False)
        headers = {"X-Total-Rows": str(len(table))}
        if next_cursor:
            headers["X-Next-Cursor"] = next_cursor
        return PlainTextResponse(buf.getvalue(), media_type="text/csv", headers=headers)
    return ResultPage(
        job_id=job_id,
        summary=job["summary"],
        columns=[str(c) for c in table.columns],
        rows=json.loads(page.to_json(orient="records")),
        total_rows=len(table),
        next_cursor=next_cursor,
    )


@router.get("/v1/jobs/{job_id}/artifacts")
def list_artifacts(job_id: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    service.get_job_or_404(gw, job_id, tenant)
    items = []
    for name in gw.artifacts.list(job_id):
        p = gw.artifacts.artifact_path(job_id, name)
        items.append(
            {"name": name, "size_bytes": p.stat().st_size, "url": f"/v1/jobs/{job_id}/artifacts/{name}"}
        )
    return {"job_id": job_id, "artifacts": items}


@router.get("/v1/jobs/{job_id}/artifacts/{name}")
def get_artifact(job_id: str, name: str, gw: GatewayDep, tenant: TenantDep) -> FileResponse:
    service.get_job_or_404(gw, job_id, tenant)
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
    return FileResponse(
        path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"), filename=name
    )
