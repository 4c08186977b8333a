"""API errors and their JSON rendering: ``{"code": "<stable code>", "detail": <message or list>}``.

``detail`` keeps FastAPI's shape (a list of field errors for 422), so generic clients still work; the
``code`` is what the widget and tests branch on.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    """The body of every error response."""

    code: str
    detail: str | list[Any]


class ApiError(Exception):
    """An error with an HTTP status and a stable code; subclasses fix both."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, detail: str, headers: dict[str, str] | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        if code is not None:
            self.code = code


class UnauthenticatedError(ApiError):
    """No API key, or one we do not know or that was revoked."""

    status_code = 401
    code = "unauthenticated"


class ForbiddenRoleError(ApiError):
    """The key's role may not use this endpoint."""

    status_code = 403
    code = "forbidden"


class NotFoundError(ApiError):
    """The resource does not exist or is not visible to this key."""

    status_code = 404
    code = "not_found"


class ConflictError(ApiError):
    """The resource's state forbids the request (e.g. a closed conversation)."""

    status_code = 409
    code = "conflict"


class IdempotencyMismatchError(ApiError):
    """An ``Idempotency-Key`` was reused for a different request."""

    status_code = 422
    code = "idempotency_key_reused"


class IdempotencyInProgressError(ApiError):
    """The first request with this ``Idempotency-Key`` is still running."""

    status_code = 409
    code = "idempotency_in_progress"


class RateLimitedError(ApiError):
    """The key sent more requests than its rate limit allows."""

    status_code = 429
    code = "rate_limited"


class UnprocessableError(ApiError):
    """A well-formed request whose content we cannot accept."""

    status_code = 422
    code = "unprocessable"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(
    status: int, code: str, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response in the one shape every endpoint uses."""
    return JSONResponse(
        {"code": code, "detail": jsonable_encoder(detail)}, status_code=status, headers=headers
    )


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.detail, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 400 and isinstance(exc.__cause__, (UnicodeDecodeError, ValueError)):
        # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): invalid JSON, like the rest.
        return error_response(422, "invalid_json", "the request body is not valid UTF-8 JSON")
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), exc.detail, headers)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette answers with the methods of the first route on the path only; list them all.
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Echoing rejected input back (a 4000-character message, a control character) helps nobody.
    errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
    invalid_json = any(e.get("type") == "json_invalid" for e in errors)
    return error_response(422, "invalid_json" if invalid_json else "validation_error", errors)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        503, "storage_unavailable", "the database is unavailable; retry later", {"Retry-After": "5"}
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error in the one JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
