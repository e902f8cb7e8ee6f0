"""The one renderer of errors as ``application/problem+json`` (RFC 9457), and the handlers
that route every failure to it: our :class:`~service.errors.ServiceError` tree, the protocol's
:class:`~poolgrad.protocol.ProtocolError` (by its code), FastAPI's request validation errors,
and Starlette's own 404/405. Under the Open Inference Protocol's root (``/v2``) the same
errors are rendered as that protocol's ``{"error": detail}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from poolgrad import protocol
from poolgrad.protocol import inference
from service.errors import BadRequest, ServiceError
from service.httpio import must_close

__all__ = [
    "error_content",
    "install_handlers",
    "problem_body",
    "request_id_of",
]

#: Statuses with a ``Retry-After``: the condition is expected to pass.
_RETRYABLE = frozenset({429, 503})

#: Catalogue codes for the errors Starlette raises itself.
_STARLETTE_CODES = {404: "not_found", 405: "method_not_allowed"}


def request_id_of(scope: Scope) -> str | None:
    """The request id the middleware assigned (None outside a request)."""
    state = scope.get("state") or {}
    request_id = state.get("request_id")
    return request_id if isinstance(request_id, str) else None


def error_content(path: str, code: str, detail: str, request_id: str | None) -> tuple[bytes, str]:
    """An error's body and media type: the Open Inference Protocol's ``{"error": detail}``
    under its root (``/v2``), a problem everywhere else."""
    if inference.is_protocol_path(path):
        return inference.error_body(detail), protocol.MEDIA_JSON
    return problem_body(code, detail, request_id), protocol.MEDIA_PROBLEM


def problem_body(code: str, detail: str, request_id: str | None) -> bytes:
    problem = protocol.PROBLEMS[code]
    return protocol.dumps(
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
        status = protocol.PROBLEMS[code].status
        if status in _RETRYABLE:
            headers = {"Retry-After": str(retry_after_seconds), **headers}
        if must_close(request):
            headers = {**headers, "Connection": "close"}
        content, media_type = error_content(
            request.url.path, code, detail, request_id_of(request.scope)
        )
        return Response(content, status_code=status, headers=headers, media_type=media_type)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return render(request, exc.code, exc.detail, exc.headers)

    @app.exception_handler(protocol.ProtocolError)
    async def protocol_error(request: Request, exc: protocol.ProtocolError) -> Response:
        return render(request, exc.code, str(exc), {})

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
