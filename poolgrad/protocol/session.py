"""The session's public shape: what ``POST /v1/sessions`` and ``GET /v1/sessions/{id}``
answer. The service builds it from its store record; the SDK reads it back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from poolgrad.protocol.errors import ProtocolError, quote
from poolgrad.protocol.jsonio import kind

__all__ = ["CREATED_FIELDS", "SessionInfo"]

#: The fields ``POST /v1/sessions`` answers with (a ``GET`` answers every field).
CREATED_FIELDS = ("id", "spec", "ttl_seconds", "expires_at", "step")


@dataclass(frozen=True)
class SessionInfo:
    """A session as the API shows it (never its state); shapes and dtype are ``None`` before
    the first forward."""

    id: str
    spec: dict[str, Any]
    ttl_seconds: float | None
    step: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    dtype: str | None
    state_bytes: int
    #: ISO 8601 UTC, renewed on every use.
    expires_at: str | None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of a ``GET`` (shapes as lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> SessionInfo:
        """Read a session answer (create or get; fields a create leaves out are ``None``
        or 0); :class:`ProtocolError` when it is not a session at all."""
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ProtocolError(
                f"a session answer must be a JSON object with an id, got {kind(body)} {quote(body)}"
            )
        ttl = body.get("ttl_seconds")
        return cls(
            id=body["id"],
            spec=dict(body.get("spec") or {}),
            ttl_seconds=float(ttl) if isinstance(ttl, int | float) else None,
            step=int(body.get("step") or 0),
            input_shape=_shape(body.get("input_shape")),
            output_shape=_shape(body.get("output_shape")),
            dtype=body.get("dtype"),
            state_bytes=int(body.get("state_bytes") or 0),
            expires_at=body.get("expires_at"),
        )


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(int(dim) for dim in value) if isinstance(value, list) else None
