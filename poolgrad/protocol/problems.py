"""The problem catalogue: every error the API answers with (``application/problem+json``).

The service renders its errors from it; the SDK maps answers back to exception classes from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["PROBLEMS", "Problem"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One row of the contract's error table: HTTP status, code and title."""

    status: int
    code: str
    title: str


#: Every error the API answers with, keyed by code (``../shared/CONTRACT.md``).
PROBLEMS: Final[dict[str, Problem]] = {
    p.code: p
    for p in (
        Problem(400, "malformed_tensor", "Malformed tensor"),
        Problem(400, "bad_request", "Bad request"),
        Problem(401, "unauthorized", "Unauthorized"),
        Problem(404, "session_not_found", "Session not found"),
        Problem(404, "not_found", "Not found"),
        Problem(405, "method_not_allowed", "Method not allowed"),
        Problem(406, "not_acceptable", "Not acceptable"),
        Problem(408, "request_timeout", "Request timeout"),
        Problem(409, "no_forward", "No forward pass cached"),
        Problem(412, "stale_step", "Stale step"),
        Problem(413, "payload_too_large", "Payload too large"),
        Problem(415, "unsupported_media_type", "Unsupported media type"),
        Problem(422, "invalid_spec", "Invalid layer spec"),
        Problem(422, "invalid_tensor", "Invalid tensor"),
        Problem(422, "shape_mismatch", "Shape mismatch"),
        Problem(429, "capacity_exceeded", "Capacity exceeded"),
        Problem(500, "internal_error", "Internal server error"),
        Problem(503, "store_unavailable", "Session store unavailable"),
    )
}
