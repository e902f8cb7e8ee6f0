"""Media types and content negotiation (RFC 9110 12.5.1), shared by the service and the SDK."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from poolgrad.protocol.errors import NotAcceptable, UnsupportedMediaType, quote

__all__ = [
    "MEDIA_JSON",
    "MEDIA_NPY",
    "MEDIA_PROBLEM",
    "MEDIA_SAFETENSORS",
    "NAMED_MEDIA_TYPES",
    "TENSOR_MEDIA_TYPES",
    "media_type_of",
    "negotiate",
    "require_media_type",
]

MEDIA_NPY: Final = "application/x-npy"
MEDIA_JSON: Final = "application/json"
MEDIA_SAFETENSORS: Final = "application/vnd.safetensors"
MEDIA_PROBLEM: Final = "application/problem+json"
#: One tensor (a session's X, A, dA, dX).
TENSOR_MEDIA_TYPES: Final = (MEDIA_NPY, MEDIA_JSON)
#: Named tensors (the stateless gradient's X, dA in and A, dX out).
NAMED_MEDIA_TYPES: Final = (MEDIA_SAFETENSORS, MEDIA_JSON)


def media_type_of(content_type: str | None) -> str:
    """The bare media type of a ``Content-Type`` value (parameters dropped, lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def require_media_type(content_type: str | None, accepted: Sequence[str]) -> str:
    """The bare media type of ``content_type`` when it is one of ``accepted``, else
    :class:`UnsupportedMediaType` quoting the header."""
    media_type = media_type_of(content_type)
    if media_type not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {quote(content_type)} is not supported here; "
            f"send one of {', '.join(accepted)}"
        )
    return media_type


def negotiate(accept: str | None, offered: Sequence[str], default: str) -> str:
    """The media type to answer with: the ``Accept`` choice with the highest q among
    ``offered``, ``default`` (the request's own type) when it ties or ``Accept`` is absent or
    ``*/*``; :class:`NotAcceptable` naming the header when nothing offered is acceptable."""
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
        raise NotAcceptable(f"Accept {quote(accept)} allows none of {', '.join(offered)}")
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
