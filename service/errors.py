"""One error model for the gateway: every error a client can cause is RFC 9457
``application/problem+json`` with a ``detail`` that names the field, the limit or the fix."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.problems import PROBLEM_MEDIA_TYPE, problem


class ProblemError(Exception):
    """Raise anywhere in a route to answer with a problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_ = type_
        self.headers = headers
        self.extra = extra


class BodyTooLarge(Exception):
    def __init__(self, limit: int, what: str) -> None:
        super().__init__(f"body over {limit} bytes")
        self.limit = limit
        self.what = what


def problem_response(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **kw: Any,
) -> JSONResponse:
    return JSONResponse(
        problem(status, detail, instance=instance, **kw),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def error_response(exc: ProblemError, instance: str | None) -> JSONResponse:
    """The problem+json answer of a raised :class:`ProblemError`."""
    return problem_response(
        exc.status, exc.detail, instance=instance, headers=exc.headers, type_=exc.type_, **exc.extra
    )


def _loc(err: dict[str, Any]) -> str:
    # Union branch labels (pydantic's "tagged-union[...]", "constrained-str") are noise to a user.
    parts = [
        str(p)
        for p in err.get("loc", ())
        if p not in ("body", "constrained-str") and not str(p).startswith(("tagged-union[", "function-"))
    ]
    return ".".join(parts) or "body"


def _message(request: Request, err: dict[str, Any]) -> str:
    """pydantic's message, with the closest known field for an unknown one ("epoch" ->
    "did you mean 'epochs'?") and the known fields listed."""
    msg = str(err.get("msg", ""))
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if (
        err.get("type") != "extra_forbidden"
        or not loc
        or request.url.path.rstrip("/")
        not in (
            "/v1/jobs",
            "/v1/jobs:estimate",
        )
    ):
        return msg
    from contracts.jobs import JobRequest

    from .suggest import closest_name, known_fields, models_in

    known = known_fields(models_in(JobRequest), loc[:-1])
    if not known:
        return msg
    return f"Unknown field {loc[-1]!r}{closest_name(str(loc[-1]), known)}; known fields here: {known}"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": _loc(e), "msg": _message(request, e), "type": e.get("type", "")}
            for e in exc.errors()
            # A built-in dataset object with a bad field is not also "not a valid string".
            if not ("constrained-str" in e.get("loc", ()) and isinstance(e.get("input"), dict))
        ]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:10]) or "invalid request"
        return problem_response(
            422, detail, instance=request.url.path, type_="validation-error", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route for {request.method} {request.url.path}; see /docs."
        if exc.status_code == 405:
            detail = f"Method {request.method} is not allowed on {request.url.path}."
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem_response(
            413,
            f"The request body is larger than the limit of {exc.limit} bytes for {exc.what} "
            f"({'INFOSCORE_MAX_UPLOAD_BYTES' if exc.what == 'uploads' else 'INFOSCORE_MAX_REQUEST_BYTES'}).",
            instance=request.url.path,
            type_="body-too-large",
            limit=exc.limit,
        )

    @app.exception_handler(BodyTooSlow)
    async def _too_slow(request: Request, exc: BodyTooSlow) -> JSONResponse:
        return _too_slow_response(exc.min_rate, request.url.path)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(
            500,
            f"Internal error ({type(exc).__name__}); the request was not applied.",
            instance=request.url.path,
            type_="internal",
        )


AuthGate = Callable[[Scope], Awaitable["JSONResponse | None"]]


class BodyLimitMiddleware:
    """Guards request bodies before any route reads them.

    - ``auth_gate`` (with API keys required) checks the key of a request that carries a
      body before a byte of it is read: an unauthenticated 50 MB upload is refused at its
      headers, not after it was spooled to disk.
    - 413 problem+json past a size limit: at once from Content-Length, or when a streamed
      body crosses the limit. JSON bodies (small by limit) are read whole here, so a
      chunked body over the limit is a 413 too, not a parse error.
    - 408 when a body trickles: after ``min_rate_grace`` seconds it must have arrived at
      ``min_rate`` bytes/s on average (a one-byte-per-second body would hold a worker
      thread for as long as the client likes).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        upload_limit: int,
        json_limit: int,
        auth_gate: AuthGate | None = None,
        min_rate: float = 1024.0,
        min_rate_grace: float = 10.0,
    ) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.json_limit = json_limit
        self.auth_gate = auth_gate
        self.min_rate = min_rate
        self.min_rate_grace = min_rate_grace

    def _limit_for(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/datasets":
            return self.upload_limit, "uploads"
        return self.json_limit, "request bodies"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if self.auth_gate is not None and scope["path"].startswith("/v1/"):
            refused = await self.auth_gate(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        limit, what = self._limit_for(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    detail = (
                        f"The request body ({declared} bytes) is larger than the limit of {limit} bytes "
                        f"for {what}."
                    )
                    response = problem_response(
                        413, detail, instance=scope["path"], type_="body-too-large", limit=limit
                    )
                    await response(scope, receive, send)
                    return
        received = 0
        started = time.monotonic()

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, what)
                elapsed = time.monotonic() - started
                if (
                    elapsed > self.min_rate_grace
                    and received < self.min_rate * elapsed
                    and message.get("more_body", False)
                ):
                    raise BodyTooSlow(self.min_rate)
            return message

        if what == "uploads":
            await self.app(scope, counting_receive, send)
            return
        # A JSON body: read it whole (bounded by the limit) before the route sees it.
        chunks: list[bytes] = []
        try:
            while True:
                message = await counting_receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except BodyTooLarge:
            response = problem_response(
                413,
                f"The request body is larger than the limit of {limit} bytes for {what} "
                "(INFOSCORE_MAX_REQUEST_BYTES).",
                instance=scope["path"],
                type_="body-too-large",
                limit=limit,
            )
            await response(scope, receive, send)
            return
        except BodyTooSlow:
            await _too_slow_response(self.min_rate, scope["path"])(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BodyTooSlow(Exception):
    def __init__(self, min_rate: float) -> None:
        super().__init__(f"body slower than {min_rate:g} bytes/s")
        self.min_rate = min_rate


def _too_slow_response(min_rate: float, path: str) -> JSONResponse:
    return problem_response(
        408,
        f"The request body arrived slower than {min_rate:g} bytes/s on average; send it again "
        "on a faster connection.",
        instance=path,
        type_="body-too-slow",
        headers={"Connection": "close"},
    )


_HOST_ALLOWED = "infoscore.host_allowed"


class TrustedHosts:
    """Starlette's TrustedHostMiddleware (it decides), with its refusal answered as
    problem+json like every other error instead of its plain-text 400."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)
        self.guard = TrustedHostMiddleware(
            self._allowed, allowed_hosts=self.allowed_hosts, www_redirect=False
        )

    async def _allowed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_HOST_ALLOWED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def answer(message: Message) -> None:
            if scope.get(_HOST_ALLOWED):
                await send(message)
            elif message["type"] == "http.response.start":
                refusal = problem_response(
                    400,
                    f"This server does not answer for the Host header given; it serves {self.allowed_hosts} "
                    "(INFOSCORE_ALLOWED_HOSTS).",
                    instance=scope.get("path"),
                    type_="invalid-host",
                )
                await refusal(scope, receive, send)
            # (the refusal's own plain-text body is dropped)

        await self.guard(scope, receive, answer)
