"""HTTP plumbing the routes share: bounded body reading, media negotiation, ``If-Match`` and
the stateless route's query-string spec. Each turns a bad request into a :mod:`service.errors`
error naming what was received.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import anyio
from starlette.requests import Request

from poolgrad.wire import media_type_of
from service.compute import StepCondition
from service.errors import (
    BadRequest,
    InvalidSpec,
    NotAcceptable,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from service.problems import mark_body_read

__all__ = ["negotiate", "parse_if_match", "read_body", "request_media_type", "spec_from_query"]


#: Sent with a refusal that leaves body bytes unread: the server then closes the connection
#: instead of reading and discarding the rest (uvicorn would, to keep the connection alive).
_CLOSE = {"Connection": "close"}

#: A step in an entity tag, and a Content-Length: ASCII digits only (``str.isdigit`` also
#: takes "²", which ``int`` refuses), at most 18 so ``int`` never meets Python's limit on
#: digits and the value fits a signed 64-bit integer.
_DIGITS = re.compile(r"[0-9]{1,18}")


async def read_body(request: Request, *, limit: int, timeout: float, hint: str = "") -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte is read; otherwise
    (chunked, or a client that lies) bytes are counted as they arrive and reading stops at the
    first chunk past the limit, so at most ``limit`` plus one chunk is ever buffered. The whole
    body must arrive within ``timeout`` seconds (408). ``hint`` ends the 413's detail.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if _DIGITS.fullmatch(declared) is None:
            raise BadRequest(f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"Content-Length {int(declared)} exceeds the limit of {limit} bytes{hint}",
                headers=_CLOSE,
            )
    mark_body_read(request)  # from here on, a refusal says itself whether it closes
    chunks: list[bytes] = []
    received = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(
                        f"body exceeds the limit of {limit} bytes ({received} bytes received "
                        f"so far){hint}",
                        headers=_CLOSE,
                    )
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"body not received within {timeout:g} s ({received} bytes arrived)",
            headers=_CLOSE,
        ) from exc
    return b"".join(chunks)


def request_media_type(request: Request, accepted: Sequence[str]) -> str:
    """The request's ``Content-Type`` when it is one of ``accepted``, else 415 naming it."""
    raw = request.headers.get("content-type")
    media_type = media_type_of(raw)
    if media_type not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {raw!r} is not supported here; send one of {', '.join(accepted)}"
        )
    return media_type


def negotiate(accept: str | None, offered: Sequence[str], default: str) -> str:
    """The media type to answer with: the ``Accept`` choice with the highest q among
    ``offered``, ``default`` (the request's own type) when it ties or ``Accept`` is absent or
    ``*/*``; 406 naming the header when nothing offered is acceptable."""
    if accept is None or not accept.strip():
        return default
    best: tuple[float, int, int] | None = None
    chosen = default
    for index, media_type in enumerate(offered):
        quality = _quality(accept, media_type)
        if quality <= 0:
            continue
        rank = (quality, media_type == default, -index)
        if best is None or rank > best:
            best, chosen = rank, media_type
    if best is None:
        raise NotAcceptable(f"Accept {accept!r} allows none of {', '.join(offered)}")
    return chosen


def _quality(accept: str, media_type: str) -> float:
    """q of the most specific range in ``accept`` matching ``media_type`` (RFC 9110 12.5.1)."""
    main, _, sub = media_type.partition("/")
    best_specificity, quality = -1, 0.0
    for item in accept.split(","):
        range_, *params = (part.strip() for part in item.split(";"))
        range_main, _, range_sub = range_.lower().partition("/")
        if range_main == main and range_sub == sub:
            specificity = 2
        elif range_main == main and range_sub == "*":
            specificity = 1
        elif range_main == "*" and range_sub == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, quality = specificity, _q_param(params)
    return quality


def _q_param(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                return 0.0
            # Out of [0, 1] or not a number at all (nan, inf): not a weight, so not acceptable.
            return quality if math.isfinite(quality) and 0.0 <= quality <= 1.0 else 0.0
    return 1.0


def parse_if_match(value: str | None) -> StepCondition | None:
    """``If-Match`` as a step condition: None when absent or ``*`` (any cached step matches).

    Entity tags are ``"<step>"`` or weak ``W/"<step>"`` with 1 to 18 ASCII digits; a list
    matches any of its steps. A tag that is not a step can never match, so it ends as a 412
    quoting the header.
    """
    if value is None or value.strip() == "*":
        return None
    steps = set()
    for tag in value.split(","):
        text = tag.strip().removeprefix("W/")
        if len(text) >= 2 and text[0] == text[-1] == '"' and _DIGITS.fullmatch(text[1:-1]):
            steps.add(int(text[1:-1]))
    return StepCondition(raw=value, steps=frozenset(steps))


_QUERY_FIELDS = (
    "mode", "pool_size", "strides", "padding", "count_include_pad", "layout", "ties", "nan",
)  # fmt: skip


def spec_from_query(items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Spec fields from ``/v1/gradient`` query parameters (docs/DECISIONS.md).

    ``pool_size=2`` is an int (a 2-D square), ``pool_size=3,3,3`` a list and ``pool_size=2,``
    the one-element list ``[2]``; ``strides`` likewise (an int applies to every dim);
    ``padding`` is ``valid``, ``same`` or ``before:after`` pairs per dim, comma-separated;
    ``count_include_pad`` is ``true`` or ``false``. Values are only
    parsed here; the engine validates them.
    """
    fields: dict[str, Any] = {}
    for name, value in items:
        if name not in _QUERY_FIELDS:
            raise InvalidSpec(
                f"unknown query parameter {name!r}; spec fields are {', '.join(_QUERY_FIELDS)}"
            )
        if name in fields:
            raise InvalidSpec(f"query parameter {name!r} is given more than once")
        fields[name] = _query_value(name, value)
    return fields


def _query_value(name: str, value: str) -> Any:
    if name in ("pool_size", "strides"):
        if "," not in value:
            return _query_int(name, value, value)
        # A trailing comma is the only way to write a one-element list: "2," is [2] (1-D).
        items = value.removesuffix(",").split(",")
        return [_query_int(name, item, value) for item in items]
    if name == "padding":
        if value in ("valid", "same") or ":" not in value:
            return value
        return [_query_pair(value, pair) for pair in value.split(",")]
    if name == "count_include_pad":
        if value not in ("true", "false"):
            raise InvalidSpec(f"count_include_pad must be true or false, got {value!r}")
        return value == "true"
    return value


def _query_int(name: str, text: str, value: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidSpec(
            f"{name} must be an int or comma-separated ints, got {value!r} (item {text!r})"
        ) from None


def _query_pair(value: str, pair: str) -> list[int]:
    before, sep, after = pair.partition(":")
    try:
        if sep:
            return [int(before), int(after)]
    except ValueError:
        pass
    raise InvalidSpec(
        f"padding {value!r} must be valid, same or before:after pairs, got pair {pair!r}"
    )
