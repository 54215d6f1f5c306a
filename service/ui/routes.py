"""Browser pages under /ui: the tenant's jobs, and one page per job with its plots.

Server-rendered with Jinja2 (autoescape on: every user string is escaped), one small
same-origin script that polls the job's state while it runs, and a Content-Security-Policy
of ``default-src 'self'`` on every answer, so a page never loads anything from elsewhere.
Auth is the API's: ``Authorization: Bearer <key>``, or the same key in an HttpOnly,
SameSite=Strict cookie set by the login form. Another tenant's job is 404, as in the API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Cookie, Form, Header, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from contracts.jobs import JOB_KINDS
from contracts.records import TERMINAL_STATES, JobState

from ..auth import KEY_COOKIE, authenticate_page
from ..errors import ProblemError
from ..jobs import check_kind_filter, get_job_or_404
from ..paging import encode_cursor, time_cursor, time_page
from ..results import MEDIA_TYPES, check_sort, load_table, sort_table
from . import images, plots, views

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
PAGE_ROWS = 20

templates = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    autoescape=select_autoescape(["html"], default_for_string=True),
)
templates.filters["fmt"] = views.fmt_value

pages = APIRouter(prefix="/ui", include_in_schema=False)

CookieKey = Annotated[str | None, Cookie(alias=KEY_COOKIE)]
AuthHeader = Annotated[str | None, Header()]


def _gateway(request: Request) -> Any:
    return request.app.state.gateway


def _tenant(request: Request, authorization: str | None, cookie_key: str | None) -> str:
    gw = _gateway(request)
    caller = authenticate_page(authorization, cookie_key, auth=gw.settings.auth, resolver=gw.keys)
    if caller.key_id is not None:
        gw.rate_limiter.check(caller.key_id)
    return caller.tenant


def _html(template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    body = templates.get_template(template).render(**context)
    return HTMLResponse(body, status_code=http_status, headers=SECURITY_HEADERS)


def _error_page(request: Request, exc: ProblemError) -> Response:
    if exc.status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"/ui/login?{urlencode({'next': target})}", status_code=303, headers=SECURITY_HEADERS
        )
    return _html("error.html", exc.status, status=exc.status, detail=exc.detail, auth=_auth_mode(request))


def _auth_mode(request: Request) -> str:
    return str(_gateway(request).settings.auth)


def _job(request: Request, job_id: str, tenant: str) -> dict[str, Any]:
    return get_job_or_404(_gateway(request), job_id, tenant)


def _table(request: Request, job: dict[str, Any]) -> Any:
    if job["state"] != JobState.succeeded:
        return None
    return load_table(_gateway(request), job["id"])


def _image_shape(request: Request, job: dict[str, Any], tenant: str) -> list[int] | None:
    """The training inputs' shape when the job's dataset is image-like, else None."""
    ref = job["request"].get("dataset")
    if isinstance(ref, dict):  # a built-in: image-like when the worker wrote its pixels
        artifact = _gateway(request).artifacts.artifact_path(job["id"], "sample_images.npy")
        if artifact.is_file():
            shape = [int(s) for s in np.load(artifact, mmap_mode="r", allow_pickle=False).shape[1:]]
            return shape if images.is_image_shape(shape) else None
        return None
    if isinstance(ref, str):
        record = _gateway(request).store.get_dataset(ref, tenant)
        if record is not None and images.is_image_shape(record["input_shape"]):
            return [int(s) for s in record["input_shape"]]
    return None


def _has_pixels(request: Request, job: dict[str, Any], tenant: str) -> bool:
    """Image-like, and the pixels are at hand (a job of a built-in dataset run before
    workers wrote ``sample_images.npy`` has none): only then does the page draw samples."""
    if _image_shape(request, job, tenant) is None:
        return False
    gw = _gateway(request)
    ref = job["request"]["dataset"]
    if gw.artifacts.artifact_path(job["id"], "sample_images.npy").is_file():
        return True
    return isinstance(ref, str) and gw.artifacts.dataset_path(ref).is_file()


def _images(request: Request, job: dict[str, Any], tenant: str) -> Any:
    shape = _image_shape(request, job, tenant)
    if shape is None:
        return None
    gw = _gateway(request)
    ref = job["request"]["dataset"]
    artifact = gw.artifacts.artifact_path(job["id"], "sample_images.npy")
    dataset_file = gw.artifacts.dataset_path(ref) if isinstance(ref, str) else None
    return images.load_images(artifact, dataset_file, shape)


# ------------------------------------------------------------------ login


@pages.get("", include_in_schema=False)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


def _safe_next(target: str | None) -> str:
    # Only our own pages: never an absolute URL or a scheme-relative one (open redirect).
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/jobs"


@pages.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Annotated[str | None, Query(max_length=500)] = None) -> HTMLResponse:
    return _html("login.html", next=_safe_next(next), auth=_auth_mode(request), error=None)


@pages.post("/login")
def login(
    request: Request,
    api_key: Annotated[str, Form(max_length=300)],
    next: Annotated[str | None, Form(max_length=500)] = None,
) -> Response:
    gw = _gateway(request)
    target = _safe_next(next)
    key = api_key.strip()
    if gw.settings.auth == "required" and gw.keys.resolve(key) is None:
        # Guessing keys through the form is throttled like guessing them on the API (429).
        gw.auth_failures.check(
            request.client.host if request.client else "?",
            what="per client address for invalid API keys",
            setting="INFOSCORE_AUTH_FAILURE_RATE",
        )
        return _html(
            "login.html",
            401,
            next=target,
            auth=_auth_mode(request),
            error="That API key is not valid (unknown or revoked).",
        )
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        KEY_COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
        max_age=7 * 24 * 3600,
    )
    return response


@pages.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(KEY_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


@pages.get("/static/{name}")
def static(name: str) -> Response:
    path = STATIC / name
    if name not in {p.name for p in STATIC.iterdir()} or path.suffix not in STATIC_TYPES:
        raise ProblemError(404, f"No static file {name!r}.", type_="not-found")
    return FileResponse(
        path,
        media_type=STATIC_TYPES[path.suffix],
        headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"},
    )


# ------------------------------------------------------------------- jobs


@pages.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    authorization: AuthHeader = None,
    cookie_key: CookieKey = None,
    state: Annotated[str | None, Query(max_length=20)] = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    try:
        tenant = _tenant(request, authorization, cookie_key)
        state = state or None
        kind = kind or None
        if state is not None and state not in {s.value for s in JobState}:
            raise ProblemError(
                422, f"The 'state' filter must be one of {[s.value for s in JobState]}. Got {state!r}."
            )
        check_kind_filter(kind)
        # The name filter is applied to the fetched page (the store filters by state and kind).
        rows = _gateway(request).store.list_jobs(
            tenant=tenant, state=state, kind=kind, limit=limit + 1, before=time_cursor(cursor)
        )
        rows, next_cursor = time_page(rows, limit)
        next_url = None
        if next_cursor is not None:
            params = {
                k: v for k, v in {"state": state, "kind": kind, "name": name, "limit": limit}.items() if v
            }
            params["cursor"] = next_cursor
            next_url = f"/ui/jobs?{urlencode(params)}"
        if name:
            rows = [r for r in rows if name.lower() in (r["name"] or "").lower()]
        items = [
            {
                "id": r["id"],
                "name": r["name"],
                "kind": r["kind"],
                "state": r["state"],
                "done": r["progress"]["done"],
                "total": r["progress"]["total"],
                "age": views.age(r["created_at"]),
                "created_at": r["created_at"],
            }
            for r in rows
        ]
        return _html(
            "jobs.html",
            items=items,
            states=[s.value for s in JobState],
            kinds=list(JOB_KINDS),
            state=state,
            kind=kind,
            name=name,
            next_url=next_url,
            auth=_auth_mode(request),
            tenant=tenant,
        )
    except ProblemError as exc:
        return _error_page(request, exc)


def _result_url(job_id: str, sort: str | None, order: str, limit: int, offset: int) -> str:
    """The API call (GET /v1/jobs/{id}/result) that answers the same rows as the page."""
    params: dict[str, Any] = {"order": order, "limit": limit}
    if sort:
        params["sort"] = sort
    if offset:
        params["cursor"] = encode_cursor({"sort": sort, "order": order, "offset": offset})
    return f"/v1/jobs/{job_id}/result?{urlencode(params)}"


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: str,
    authorization: AuthHeader = None,
    cookie_key: CookieKey = None,
    sort: Annotated[str | None, Query(max_length=100)] = None,
    order: Annotated[str | None, Query(pattern="^(asc|desc)$")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    rows: Annotated[int, Query(ge=1, le=200)] = PAGE_ROWS,
) -> Response:
    try:
        tenant = _tenant(request, authorization, cookie_key)
        job = _job(request, job_id, tenant)
        table = _table(request, job)
        summary = job["summary"]
        charts = plots.job_charts(job["kind"], summary, table)
        artifacts = list(job["artifacts"] or [])
        pngs = [a for a in artifacts if a.endswith(".png")]
        page: dict[str, Any] | None = None
        shown_galleries: list[dict[str, Any]] = []
        image_like = _has_pixels(request, job, tenant)
        if table is not None and len(table.columns):
            columns = [str(c) for c in table.columns]
            check_sort(sort, table, job["kind"])
            sort_by, default_order = (sort, "desc") if sort else views.default_sort(job["kind"], columns)
            order = order or default_order
            ordered = sort_table(table, sort_by, order)
            chunk = ordered.iloc[offset : offset + rows]
            body = json.loads(chunk.to_json(orient="records"))

            def link(**changes: Any) -> str:
                params = {"sort": sort_by, "order": order, "offset": offset, "rows": rows, **changes}
                return (
                    f"/ui/jobs/{job_id}?{urlencode({k: v for k, v in params.items() if v is not None})}#rows"
                )

            page = {
                "columns": columns,
                "rows": [[views.fmt_value(r.get(c)) for c in columns] for r in body],
                "indices": [int(r["index"]) for r in body] if "index" in columns else [],
                "sort": sort_by,
                "order": order,
                "offset": offset,
                "total": len(table),
                "first": offset + 1 if body else 0,
                "last": offset + len(body),
                "next_url": link(offset=offset + rows) if offset + rows < len(table) else None,
                "prev_url": link(offset=max(0, offset - rows)) if offset > 0 else None,
                "sort_urls": {
                    c: link(sort=c, order="asc" if c == sort_by and order == "desc" else "desc", offset=0)
                    for c in columns
                },
                "api_url": _result_url(job_id, sort_by, order, rows, offset),
            }
            if image_like and "index" in columns:
                shown_galleries = views.galleries(table)
        request_json = json.dumps(job["request"], indent=2)
        return _html(
            "job.html",
            job=job,
            terminal=JobState(job["state"]) in TERMINAL_STATES,
            age=views.age(job["created_at"]),
            sections=views.summary_sections(summary),
            charts=charts,
            pngs=pngs,
            artifacts=artifacts,
            page=page,
            galleries=shown_galleries,
            image_like=image_like,
            request_json=request_json,
            auth=_auth_mode(request),
            tenant=tenant,
        )
    except ProblemError as exc:
        return _error_page(request, exc)


@pages.get("/jobs/{job_id}/status")
def job_status(
    request: Request, job_id: str, authorization: AuthHeader = None, cookie_key: CookieKey = None
) -> JSONResponse:
    """What the page's script polls: state and progress (JSON, same auth as the page)."""
    tenant = _tenant(request, authorization, cookie_key)
    job = _job(request, job_id, tenant)
    return JSONResponse(
        {
            "id": job["id"],
            "state": job["state"],
            "progress": job["progress"],
            "terminal": JobState(job["state"]) in TERMINAL_STATES,
        },
        headers=SECURITY_HEADERS,
    )


@pages.get("/jobs/{job_id}/plots/{name}")
def job_plot(
    request: Request, job_id: str, name: str, authorization: AuthHeader = None, cookie_key: CookieKey = None
) -> Response:
    tenant = _tenant(request, authorization, cookie_key)
    job = _job(request, job_id, tenant)
    for chart in plots.job_charts(job["kind"], job["summary"], _table(request, job)):
        if chart.name == name:
            return Response(chart.svg, media_type="image/svg+xml", headers=SECURITY_HEADERS)
    raise ProblemError(404, f"Job {job_id} has no plot {name!r}.", type_="not-found")


@pages.get("/jobs/{job_id}/samples/{index}.png")
def job_sample(
    request: Request, job_id: str, index: int, authorization: AuthHeader = None, cookie_key: CookieKey = None
) -> Response:
    tenant = _tenant(request, authorization, cookie_key)
    job = _job(request, job_id, tenant)
    pixels = _images(request, job, tenant)
    if pixels is None:
        raise ProblemError(404, f"Job {job_id}'s dataset has no images to show.", type_="not-found")
    if not 0 <= index < pixels.shape[0]:
        raise ProblemError(
            404, f"No training sample {index} (the dataset has {pixels.shape[0]}).", type_="not-found"
        )
    return Response(images.thumbnail_png(pixels[index]), media_type="image/png", headers=SECURITY_HEADERS)


@pages.get("/jobs/{job_id}/files/{name}")
def job_file(
    request: Request, job_id: str, name: str, authorization: AuthHeader = None, cookie_key: CookieKey = None
) -> Response:
    tenant = _tenant(request, authorization, cookie_key)
    _job(request, job_id, tenant)
    gw = _gateway(request)
    try:
        path = gw.artifacts.artifact_path(job_id, name)
    except ValueError as exc:
        raise ProblemError(
            400, f"The artifact name {name!r} is not valid.", type_="bad-artifact-name"
        ) from exc
    if not path.is_file():
        raise ProblemError(404, f"Job {job_id} has no artifact {name!r}.", type_="not-found")
    media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    inline = path.suffix in (".png", ".json", ".csv")
    return FileResponse(
        path,
        media_type=media,
        filename=name,
        content_disposition_type="inline" if inline else "attachment",
        headers=SECURITY_HEADERS,
    )


router = APIRouter(include_in_schema=False)


@router.get("/")
def site_root() -> RedirectResponse:
    """The server's address, opened in a browser, shows the jobs."""
    return RedirectResponse("/ui/jobs", status_code=307)


router.include_router(pages)
