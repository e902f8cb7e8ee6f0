"""Compact JSON in and out: orjson when it is installed (a server dependency), else the
standard library, so the SDK stays light."""

from __future__ import annotations

import json
from typing import Any

from poolgrad.protocol.errors import MalformedTensor

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without the server extra
    _orjson = None  # type: ignore[assignment]

__all__ = ["dumps", "kind", "loads"]


def dumps(obj: Any) -> bytes:
    """Serialize ``obj`` to compact JSON bytes."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def loads(body: bytes | bytearray | str) -> Any:
    """Parse JSON; :class:`~poolgrad.protocol.errors.MalformedTensor` naming the fault."""
    try:
        if _orjson is not None:
            return _orjson.loads(body)
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedTensor(f"body is not valid JSON: {exc}") from exc


def kind(value: Any) -> str:
    """The JSON kind of ``value`` for an error message (``null``, ``list``, ``str``...)."""
    return "null" if value is None else type(value).__name__
