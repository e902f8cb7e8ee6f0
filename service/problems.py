"""The one renderer of errors as ``application/problem+json`` (RFC 9457), and the handlers
that route every failure to it: our :class:`~service.errors.ServiceError` tree, FastAPI's
request validation errors, and Starlette's own 404/405.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from poolgrad import wire
from service.errors import BadRequest, ServiceError

__all__ = [
    "ProblemModel",
    "body_left_unread",
    "install_handlers",
    "mark_body_read",
    "problem_body",
    "request_id_of",
]

#: Statuses with a ``Retry-After``: the condition is expected to pass.
_RETRYABLE = frozenset({429, 503})

#: Catalogue codes for the errors Starlette raises itself.
_STARLETTE_CODES = {404: "not_found", 405: "method_not_allowed"}


class ProblemModel(BaseModel):
    """An error, as every non-2xx answer carries it (``application/problem+json``)."""

    type: str = Field(default="about:blank", examples=["about:blank"])
    status: int = Field(examples=[404])
    code: str = Field(description="Stable machine-readable code.", examples=["session_not_found"])
    title: str = Field(examples=["Session not found"])
    detail: str = Field(description="What was wrong, naming the offending value.")
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request.")


def request_id_of(scope: Scope) -> str | None:
    """The request id the middleware assigned (None outside a request)."""
    state = scope.get("state") or {}
    request_id = state.get("request_id")
    return request_id if isinstance(request_id, str) else None


def mark_body_read(request: Request) -> None:
    """Record that the route has read (or started reading) the request's body."""
    request.state.body_read = True


def body_left_unread(request: Request) -> bool:
    """Whether the request declares a body that no route has started to read."""
    headers = request.headers
    declared = headers.get("content-length", "0").strip() not in ("", "0")
    has_body = declared or "transfer-encoding" in headers
    return has_body and not getattr(request.state, "body_read", False)


def problem_body(code: str, detail: str, request_id: str | None) -> bytes:
    problem = wire.PROBLEMS[code]
    return wire.dumps(
        {
            "type": "about:blank",
            "status": problem.status,
            "code": code,
            "title": problem.title,
            "detail": detail,
            "request_id": request_id,
        }
    )


def install_handlers(app: FastAPI, *, retry_after_seconds: int) -> None:
    """Register the handlers that render every expected failure as a problem."""

    def render(request: Request, code: str, detail: str, headers: dict[str, str]) -> Response:
        status = wire.PROBLEMS[code].status
        if status in _RETRYABLE:
            headers = {"Retry-After": str(retry_after_seconds), **headers}
        if body_left_unread(request):
            # Refused before its body was read (415, 406, 401, a bad query...): close rather
            # than have the server read and discard the rest, as for 413 (docs/DECISIONS.md).
            headers = {**headers, "Connection": "close"}
        return Response(
            problem_body(code, detail, request_id_of(request.scope)),
            status_code=status,
            headers=headers,
            media_type=wire.MEDIA_PROBLEM,
        )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return render(request, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(_describe(error) for error in exc.errors())
        return render(request, BadRequest.code, detail, {})

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STARLETTE_CODES.get(exc.status_code, BadRequest.code)
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        return render(request, code, detail, dict(exc.headers or {}))


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    return f"{location}: {error.get('msg')} (got {error.get('input')!r})"
