"""Every error the listener's app answers is JSON: `{"error": {"type", "message"}}` (SPEC §8).

`type` is a stable snake_case word a script can branch on; `message` is one line for a
person that says what to do. Hypercorn's own answers to requests it cannot parse
(400, 431 with no body) happen before any app runs and are the one exception.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import Request
from starlette.responses import JSONResponse

TYPES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "unprocessable", 429: "rate_limited", 500: "internal_error", 503: "unavailable",
}


def error_type(status: int) -> str:
    if status in TYPES:
        return TYPES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def json_error(status: int, message: str, type: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: `{"error": {"type": ..., "message": ...}}` with this status."""
    return JSONResponse({"error": {"type": type or error_type(status), "message": message}},
                        status_code=status, headers=headers)


async def http_exception(request: Request, exc: Exception) -> JSONResponse:
    """starlette's HTTPException (routing's 404 and 405, the body limit's 413, ours) as JSON."""
    assert isinstance(exc, HTTPException)
    status, path = exc.status_code, request.url.path
    if status == 404:
        message = f"no such endpoint: {request.method} {path} (docs/http.md lists them)"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {path}" + (f"; use {allowed}" if allowed else "")
    elif status == 413:
        return too_large(request.scope)
    else:
        message = str(exc.detail)
    return json_error(status, message, headers=exc.headers)


def too_large(scope) -> JSONResponse:
    limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    return json_error(413, "the request body is too large" + (f": at most {limit} bytes here" if limit is not None else ""))


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    return json_error(500, "internal error; the daemon's log says what went wrong")
