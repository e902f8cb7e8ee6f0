"""The one renderer of errors as ``application/problem+json`` (RFC 9457), and the handlers
that route every failure to it: our :class:`~service.errors.ServiceError` tree, the protocol's
:class:`~poolgrad.protocol.ProtocolError` (by its code), FastAPI's request validation errors,
and Starlette's own 404/405. Under the Open Inference Protocol's root (``/v2``) the same
errors are rendered as that protocol's ``{"error": detail}``.

Every ``detail`` is cut to ``max_error_detail_chars`` here (messages quote each client value
with :func:`poolgrad.protocol.quote`, bounded already): no body, header or path can come back
at full size in its own refusal.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from poolgrad import protocol
from poolgrad.protocol import inference
from service.errors import BadRequest, ServiceError
from service.httpio import must_close

__all__ = [
    "allowed_methods",
    "error_content",
    "install_handlers",
    "problem_body",
    "request_id_of",
]

#: Statuses with a ``Retry-After``: the condition is expected to pass.
_RETRYABLE = frozenset({429, 503})

#: Methods a 405's ``Allow`` may list; HEAD follows GET (the request middleware serves it).
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

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
        # The one bound on what an error answer quotes, whoever wrote the message.
        detail = protocol.shorten(detail, request.app.state.settings.max_error_detail_chars)
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
        # The method as sent: the request middleware routes a HEAD as the GET it mirrors.
        method = getattr(request.state, "method", request.method)
        detail = f"{method} {protocol.quote(request.url.path)}: {exc.detail}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return render(request, code, detail, headers)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of ``app`` serves at ``scope``'s path, HEAD wherever GET is.

    Starlette's 405 names only the methods of the first route whose path matched, and FastAPI
    makes one route per operation: ``/v1/sessions/{id}`` would say ``Allow: GET`` and hide
    ``DELETE``. Each method is matched here as the router would match it."""
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in app.routes)
    ]
    return ["HEAD", *allowed] if "GET" in allowed else allowed


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    return f"{location}: {error.get('msg')} (got {protocol.quote(error.get('input'))})"
