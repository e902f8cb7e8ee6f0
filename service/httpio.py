"""HTTP plumbing the routes share: bounded body reading and the one record of how far a
request's body was read, which alone decides whether a refusal closes the connection.

Media types, negotiation, entity tags and the spec's query string are protocol facts
(:mod:`poolgrad.protocol`); their errors carry their problem code and render as they are.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence

from starlette.requests import Request

from poolgrad.protocol import DIGITS, quote, require_media_type
from service.errors import BadRequest, PayloadTooLarge, RequestTimeout

__all__ = ["BodyRead", "must_close", "read_body", "request_media_type"]


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


async def read_body(request: Request, *, limit: int, timeout: float, hint: str = "") -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte is read; otherwise
    (chunked, or a client that lies) bytes are counted as they arrive and reading stops at the
    first chunk past the limit, so at most ``limit`` plus one chunk is ever buffered. The whole
    body must arrive within ``timeout`` seconds (408). ``hint`` ends the 413's detail.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if DIGITS.fullmatch(declared) is None:
            raise BadRequest(f"Content-Length {quote(declared)} is not a byte count")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"Content-Length {int(declared)} exceeds the limit of {limit} bytes{hint}"
            )
    _set(request, BodyRead.STARTED)
    chunks: list[bytes] = []
    received = 0
    try:
        # asyncio's own deadline: anyio's cancel scope cost about 15 us per request, as much
        # as the rest of reading a small body (the server runs on asyncio only).
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(
                        f"body exceeds the limit of {limit} bytes ({received} bytes received "
                        f"so far){hint}"
                    )
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"body not received within {timeout:g} s ({received} bytes arrived)"
        ) from exc
    _set(request, BodyRead.DONE)
    return b"".join(chunks)


def request_media_type(request: Request, accepted: Sequence[str]) -> str:
    """The request's ``Content-Type`` when it is one of ``accepted``, else 415 naming it."""
    return require_media_type(request.headers.get("content-type"), accepted)
