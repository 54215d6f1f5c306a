"""RFC 9457 problem details as plain dicts, shared by the gateway and the workers."""

from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://infoscore.dev/problems/"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    507: "Insufficient Storage",
    503: "Service Unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    type_: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A problem+json body. ``type_`` is a short slug (e.g. 'invalid-input') or a URI."""
    if type_ is None:
        uri = "about:blank"
    elif ":" in type_:
        uri = type_
    else:
        uri = TYPE_BASE + type_
    body: dict[str, Any] = {
        "type": uri,
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body
