"""HTTP plumbing the routes share: bounded body reading, the process-wide budget of body bytes
held at once, and the one record of how far a request's body was read, which alone decides
whether a refusal closes the connection.

Media types, negotiation, entity tags and the spec's query string are protocol facts
(:mod:`poolgrad.protocol`); their errors carry their problem code and render as they are.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from poolgrad.protocol import DIGITS, Parts, quote, require_media_type
from service.errors import BadRequest, CapacityExceeded, PayloadTooLarge, RequestTimeout

__all__ = [
    "BODY_RECEIVED",
    "STREAM_MIN_BYTES",
    "BodyBudget",
    "BodyRead",
    "PartsResponse",
    "encoded_response",
    "must_close",
    "read_body",
    "release_body",
    "request_media_type",
]


class BodyBudget:
    """The request-body bytes one server process holds at once, bounded by ``limit``
    (``POOLGRAD_MAX_INFLIGHT_BODY_BYTES``): a body is held from its first byte until its request
    ends, waiting for a compute thread included. Without it the bound would be
    ``max_connections x max_body_bytes`` (SECURITY.md). One per app; only the event loop
    touches it, so it needs no lock; ``/metrics`` shows ``reserved``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0

    def reserve(self, nbytes: int, request_bytes: int) -> None:
        """Reserve ``nbytes`` more for a request that then holds ``request_bytes`` in all, or
        :class:`CapacityExceeded` (429, ``Retry-After``) naming the budget, nothing reserved."""
        if self.reserved + nbytes > self.limit:
            raise CapacityExceeded(
                f"a request body of {request_bytes} bytes does not fit the in-flight body budget "
                f"of {self.limit} bytes ({self.reserved} held by other requests); retry later"
            )
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes


#: The ASGI scope extension (``scope["extensions"]``) by which a server says that a request's
#: whole body has arrived before the app reads it (``service.server`` sets it when the HTTP
#: parser completes the message): reading it then cannot wait, so needs no deadline.
BODY_RECEIVED = "poolgrad.body_received"

#: The key of a request's :class:`_Reservation` in its ``request.state``.
_RESERVATION = "body_reservation"


class _Reservation:
    """The body bytes one request holds of the budget (``request.state.body_reservation``)."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.nbytes = 0

    def cover(self, nbytes: int) -> None:
        """Hold at least ``nbytes`` in all (the declared length, or the bytes received)."""
        if nbytes > self.nbytes:
            self.budget.reserve(nbytes - self.nbytes, nbytes)
            self.nbytes = nbytes

    def release(self) -> None:
        self.budget.release(self.nbytes)
        self.nbytes = 0


def _reservation(request: Request) -> _Reservation:
    """The request's reservation, made at its first body read."""
    state = request.scope.setdefault("state", {})
    reservation: _Reservation | None = state.get(_RESERVATION)
    if reservation is None:
        reservation = state[_RESERVATION] = _Reservation(request.app.state.body_budget)
    return reservation


def release_body(scope: Scope) -> None:
    """Give back the budget the request of ``scope`` holds (again: nothing). The request
    middleware calls it when the answer starts (the body has served its purpose: a slow reader
    of a large answer must not keep holding it) and when the request ends, however it ends (an
    answer, a refusal, a client gone, a cancellation), rather than a dependency with ``yield``
    on every route that reads a body, which FastAPI solves anew per request."""
    reservation: _Reservation | None = scope.get("state", {}).get(_RESERVATION)
    if reservation is not None:
        reservation.release()


class BodyRead(enum.Enum):
    """How far a route read the request's body (``request.state.body_read``)."""

    NOT_STARTED = "not started"
    STARTED = "started"
    DONE = "done"


def _set(request: Request, progress: BodyRead) -> None:
    request.state.body_read = progress


def must_close(request: Request) -> bool:
    """Whether the answer must say ``Connection: close``: the request declares a body and the
    route did not read it to the end (refused before reading it, or part-way: over the size
    limit, too slow). The server then closes instead of reading and discarding the rest (as
    uvicorn would, to keep the connection alive; docs/DECISIONS.md)."""
    headers = request.headers
    declared = headers.get("content-length", "0").strip() not in ("", "0")
    has_body = declared or "transfer-encoding" in headers
    progress = getattr(request.state, "body_read", BodyRead.NOT_STARTED)
    return has_body and progress is not BodyRead.DONE


class _Collected:
    """A request body gathered as its messages arrive. A body in one message is kept as it came
    (no copy; small bodies mostly come so). A longer one whose length is declared is copied into one
    buffer of that length as it arrives, each message dropped once copied, so it is held once
    and never joined: joining kept every message and the joined copy alive at once, each in
    freshly faulted pages (on the 2-core machine, 24 ms for 31 MB against 1 ms). Without a
    declared length (chunked) the messages are joined at the end."""

    def __init__(self, declared: int | None) -> None:
        self.declared = declared
        self.chunks: list[bytes] = []
        self.buffer: bytearray | None = None
        self.filled = 0

    def add(self, chunk: bytes, more: bool) -> None:
        if self.declared is None or (self.buffer is None and not more):
            self.chunks.append(chunk)
            return
        if self.buffer is None:
            self.buffer = bytearray(self.declared)
        # Copied in place; a slice assignment would grow the buffer rather than fail, should a
        # server hand over more than was declared (HTTP framing forbids it).
        self.buffer[self.filled : self.filled + len(chunk)] = chunk
        self.filled += len(chunk)

    @property
    def received(self) -> int:
        """The bytes gathered so far."""
        return self.filled + sum(map(len, self.chunks))

    def body(self) -> bytes | bytearray:
        """The whole body: ``bytes``, or the ``bytearray`` a long body was copied into."""
        if self.buffer is None:
            return b"".join(self.chunks)
        del self.buffer[self.filled :]  # nothing, unless fewer bytes came than declared
        return self.buffer


async def read_body(
    request: Request, *, limit: int, timeout: float, hint: str = ""
) -> bytes | bytearray:
    """The whole body, refused with 413 as soon as it is known to pass ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte is read; otherwise
    (chunked, or a client that lies) bytes are counted as they arrive and reading stops at the
    first chunk past the limit, so at most ``limit`` plus one chunk is ever buffered. The whole
    body must arrive within ``timeout`` seconds (408). ``hint`` ends the 413's detail.

    A body that arrives in several messages with a declared length comes back as the
    ``bytearray`` it was copied into (see :class:`_Collected`), any other as ``bytes``; the
    decoders take both and give read-only arrays either way.

    The bytes are reserved from the process's :class:`BodyBudget` (the request middleware
    releases them when the request ends, :func:`release_body`): a declared length before
    a byte is read, a chunked body as its chunks arrive; 429 ``capacity_exceeded`` when the
    budget is full, so the answer closes the connection (:func:`must_close`).
    """
    reservation = _reservation(request)
    declared = request.headers.get("content-length")
    if declared is not None:
        if DIGITS.fullmatch(declared) is None:
            raise BadRequest(f"Content-Length {quote(declared)} is not a byte count")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"Content-Length {int(declared)} exceeds the limit of {limit} bytes{hint}"
            )
        reservation.cover(int(declared))
    _set(request, BodyRead.STARTED)
    collected = _Collected(None if declared is None else int(declared))
    try:
        if BODY_RECEIVED in request.scope.get("extensions", ()):
            # The server holds the whole body already: every receive returns at once, so no
            # deadline is armed (a timer set and cancelled per request was 7% of a tiny one).
            await _receive_all(request.receive, collected, limit, reservation, hint)
        else:
            # asyncio's own deadline: anyio's cancel scope cost about 15 us per request (the
            # server runs on asyncio only).
            async with asyncio.timeout(timeout):
                await _receive_all(request.receive, collected, limit, reservation, hint)
    except TimeoutError as exc:
        received = collected.received
        raise RequestTimeout(
            f"body not received within {timeout:g} s ({received} bytes arrived)"
        ) from exc
    _set(request, BodyRead.DONE)
    return collected.body()


async def _receive_all(
    receive: Receive, collected: _Collected, limit: int, reservation: _Reservation, hint: str
) -> None:
    """Add the body's chunks to ``collected`` until its last, counting them against ``limit``
    (413) and the body budget (429). The messages are read here rather than through
    ``request.stream()``, an async generator whose steps cost a small request more than this."""
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client left
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(
                f"body exceeds the limit of {limit} bytes ({received} bytes received so far){hint}"
            )
        reservation.cover(received)
        collected.add(chunk, more)


def request_media_type(request: Request, accepted: Sequence[str]) -> str:
    """The request's ``Content-Type`` when it is one of ``accepted``, else 415 naming it."""
    return require_media_type(request.headers.get("content-type"), accepted)


#: Encoded answers of at least this many bytes are written as their parts
#: (:class:`PartsResponse`), smaller ones joined into one ``bytes``: joining a few KiB costs
#: less than the messages each part takes through every middleware, and the server merges
#: the small writes of one loop turn anyway (``service.server.CORK_MAX_BYTES``, the same
#: 64 KiB, past which a write goes straight to the socket).
STREAM_MIN_BYTES = 64 * 1024


class PartsResponse(Response):
    """An answer whose body is sent as its parts (:data:`~poolgrad.protocol.Parts`), each its
    own ``http.response.body`` message (``more_body`` on all but the last), never joined.

    A large tensor goes from its array's memory to the socket with no copy on the way: the
    server writes each memoryview as it is (uvloop keeps a view of what the socket does not
    take at once) and waits for its buffer to drain before taking the next part.
    ``Content-Length`` is the parts' sum, so the answer is framed like any other (and a
    ``HEAD`` answer keeps it, bodiless, as the request middleware makes every answer). A
    client that leaves mid-answer ends it quietly: the server drops what is sent after.
    ``body`` stays empty: the parts are the body.
    """

    def __init__(
        self,
        parts: Parts,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        # Byte views, so that a part's len() is its byte count (what the server frames by).
        self.parts = [part if isinstance(part, bytes) else part.cast("B") for part in parts]
        length = sum(len(part) for part in self.parts)
        headers = {**(headers or {}), "content-length": str(length)}
        super().__init__(None, status_code, headers, media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.parts) - 1
        for index, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})
        if not self.parts:
            await send({"type": "http.response.body", "body": b""})


def encoded_response(
    parts: Parts, media_type: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The answer of an encoded body: its parts sent one by one (:class:`PartsResponse`) when
    they hold at least :data:`STREAM_MIN_BYTES`, else one ``bytes`` (a small copy, one
    message)."""
    if sum(map(len, parts)) >= STREAM_MIN_BYTES:
        return PartsResponse(parts, headers=headers, media_type=media_type)
    return Response(b"".join(parts), headers=headers, media_type=media_type)
