"""The request middleware: request id, one log line, request metrics, and the last-resort 500.

Pure ASGI (no ``BaseHTTPMiddleware``), so bodies stream through untouched in both directions.
It is the outermost layer of our own, so everything below it, routing included, is timed,
counted and logged, and an unexpected exception becomes a 500 problem that names the request
id but none of the internals (the traceback goes to the log).

Four more things every route gets from here, so no route can forget them:

* a client that disconnects before its body has arrived is no error of ours: it is counted and
  logged as ``499`` (nginx's "client closed request"), without a traceback, and nothing is sent;
* every value a client chose (method, path, session id) goes into a log line through
  :func:`printable`, so no request can break a line or forge one;
* ``HEAD`` works on every GET route, its own and those added later: the app below sees a GET
  (``request.state.method`` keeps ``HEAD``), and the answer keeps the GET's headers,
  ``Content-Length`` included, without its body (RFC 9110, 9.3.2);
* the body bytes a request holds of the process's budget are given back when its answer starts
  or, without an answer, when it ends (:func:`service.httpio.release_body`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poolgrad import protocol
from service.httpio import release_body
from service.metrics import Metrics
from service.problems import error_content

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "KNOWN_METHODS",
    "OTHER_METHOD",
    "UNMATCHED_ROUTE",
    "RequestMiddleware",
    "printable",
    "route_template",
    "valid_request_id",
]

logger = logging.getLogger("service.access")

_REQUEST_ID_HEADER = b"x-request-id"

#: The methods of HTTP (RFC 9110, and PATCH) that label metrics as themselves. The HTTP parser
#: accepts any token as a method, so any other value is labelled ``other``: a label value chosen
#: by a client would add a time series per value, and every scrape would carry them all.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
#: The metrics label of a method outside :data:`KNOWN_METHODS`.
OTHER_METHOD = "other"
#: The metrics label of a path that no route matches.
UNMATCHED_ROUTE = "unmatched"

#: The status logged and counted for a request whose client left before sending its body (no
#: answer is sent: there is no one to read it).
CLIENT_CLOSED_REQUEST = 499

#: Most characters of one client-chosen value in a log line.
LOG_VALUE_CHARS = 200


def printable(value: str) -> str:
    """``value`` made safe for one log line: cut to :data:`LOG_VALUE_CHARS` characters, then
    every character that is not printable (``\\n``, ``\\r``, ``\\x85``, ``\\u2028`` and every
    other line break or control character) and the backslash itself written as its Python
    escape, so the log shows exactly what came and never breaks the line."""
    text = protocol.shorten(value, LOG_VALUE_CHARS)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        char if char.isprintable() and char != "\\" else char.encode("unicode_escape").decode()
        for char in text
    )


def valid_request_id(value: str) -> bool:
    """A client's ``X-Request-ID`` is kept when it is 1-128 visible ASCII characters."""
    return 1 <= len(value) <= 128 and all("!" <= char <= "~" for char in value)


class RequestMiddleware:
    """Wraps every HTTP request of the app it is given."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # A mount that serves the request moves its prefix into root_path: keep the original,
        # to match the request against the app's routes afterwards.
        root_path = scope.get("root_path", "")
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["method"] = method = scope["method"]
        if method == "HEAD":
            scope["method"] = "GET"  # until the answer starts; metrics and log say HEAD
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                # The answer is made: the request's body is no longer needed, so its bytes go
                # back to the budget now, not once a slow reader has taken the whole answer.
                release_body(scope)
                # The server reads the request's method from this scope to frame the answer:
                # HEAD again from here on, so it expects no body.
                scope["method"] = method
                status = message["status"]
                response_started = True
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != _REQUEST_ID_HEADER
                ]
                headers.append((_REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and method == "HEAD":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # Raised while reading the body: the client is gone, so there is no one to answer.
            status = CLIENT_CLOSED_REQUEST
        except Exception:
            logger.exception(
                "unhandled error in %s %s", printable(method), printable(scope["path"])
            )
            if response_started:
                raise
            status = 500
            await _send_internal_error(send_with_id, scope["path"], request_id)
        finally:
            release_body(scope)
            scope["method"] = method
            self._record(scope, root_path, status, time.perf_counter() - started, request_id)

    def _record(
        self, scope: Scope, root_path: str, status: int, seconds: float, request_id: str
    ) -> None:
        method = scope["method"]
        route = route_template(scope, root_path)
        method_label = method if method in KNOWN_METHODS else OTHER_METHOD
        self.metrics.observe_request(method_label, route, status, seconds)
        if not logger.isEnabledFor(logging.INFO):
            return
        state: dict[str, Any] = scope.get("state") or {}
        session_id = (scope.get("path_params") or {}).get("session_id") or state.get("session_id")
        # Route templates and request ids are ours or checked; method and session id are not.
        method, session_id = printable(method), session_id and printable(session_id)
        logger.info(
            "%s %s %d %.1fms session=%s request_id=%s",
            method,
            route,
            status,
            seconds * 1000,
            session_id or "-",
            request_id,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "session_id": session_id,
                "request_id": request_id,
            },
        )


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == _REQUEST_ID_HEADER:
            text: str = value.decode("latin-1")
            if valid_request_id(text):
                return text
            break
    return next(_request_ids)


def _new_request_ids() -> Iterator[str]:
    """Request ids of this process: 32 hex digits, 64 random bits drawn once per process then a
    64-bit counter. Unique across processes and replicas as uuid4's would be (ids need not be
    unguessable: they name a request in logs, never grant anything), without a system call per
    request (``os.urandom`` was 2-3% of a tiny request's time)."""
    prefix = os.urandom(8).hex()
    for number in itertools.count():
        yield f"{prefix}{number & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_request_ids = _new_request_ids()


def _reset_request_ids() -> None:
    global _request_ids
    _request_ids = _new_request_ids()


# A forked child draws its own prefix, so parent and child never repeat each other's ids.
os.register_at_fork(after_in_child=_reset_request_ids)


def route_template(scope: Scope, root_path: str) -> str:
    """The path template of the route that served ``scope`` (``/v1/sessions/{session_id}``,
    ``/openapi.json``, ``/docs/static/{path}`` for a mount), or ``unmatched``: a bounded set.
    ``root_path`` is the scope's before the app ran.

    FastAPI records the API route it dispatched to in ``scope["route"]``, however deeply its
    router is included; Starlette's plain routes (``/openapi.json``) and mounts (the docs'
    static files) record nothing, so the app's top-level ones are matched again here, as the
    router matches them (a full match, else one whose path matches with another method).
    """
    served = scope.get("route")
    if isinstance(getattr(served, "path", None), str):
        return _template_of(served)
    routes: list[BaseRoute] = getattr(scope.get("app"), "routes", [])
    request = {**scope, "root_path": root_path}
    partial: BaseRoute | None = None
    for route in routes:
        if not isinstance(route, Route | Mount):
            continue
        match, _ = route.matches(request)
        if match is Match.FULL:
            return _template_of(route)
        if match is Match.PARTIAL and partial is None:
            partial = route
    return UNMATCHED_ROUTE if partial is None else _template_of(partial)


def _template_of(route: Any) -> str:
    path: str = route.path
    return f"{path}/{{path}}" if isinstance(route, Mount) else path


async def _send_internal_error(send: Send, path: str, request_id: str) -> None:
    body, media_type = error_content(
        path,
        "internal_error",
        "the server failed to handle this request; see its log",
        request_id,
    )
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
