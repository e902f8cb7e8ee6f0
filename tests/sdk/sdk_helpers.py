"""Mock answers shaped as the service renders them, shared by the SDK tests."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from poolgrad import protocol

MOCK_URL = "http://poolgrad.test"
SESSION_ID = "3b1f0c2a9e8d4f6b8a7c5d3e1f0a2b4c"


def problem(status: int, code: str, detail: str = "bad", **headers: str) -> httpx.Response:
    """A problem+json answer as the service renders it."""
    body = {
        "type": "about:blank",
        "status": status,
        "code": code,
        "title": protocol.PROBLEMS[code].title,
        "detail": detail,
        "request_id": "srv-req-1",
    }
    return httpx.Response(
        status,
        content=protocol.dumps(body),
        headers={"Content-Type": protocol.MEDIA_PROBLEM, "X-Request-ID": "srv-req-1", **headers},
    )


def created(session_id: str = SESSION_ID, **spec: Any) -> httpx.Response:
    body = {
        "id": session_id,
        "spec": {"mode": "max", "pool_size": [2, 2], **spec},
        "ttl_seconds": 600,
        "expires_at": "2030-01-01T00:00:00Z",
        "step": 0,
    }
    return httpx.Response(
        201,
        content=protocol.dumps(body),
        headers={"Content-Type": protocol.MEDIA_JSON, "Location": f"/v1/sessions/{session_id}"},
    )


def info(session_id: str = SESSION_ID, **fields: Any) -> httpx.Response:
    """A ``GET /v1/sessions/{id}`` answer; ``fields`` replace the defaults below."""
    body = {
        "id": session_id,
        "spec": {"mode": "max", "pool_size": [2, 2]},
        "step": 3,
        "input_shape": [1, 4, 4, 1],
        "output_shape": [1, 2, 2, 1],
        "dtype": "float32",
        "state_bytes": 64,
        "expires_at": "2030-01-01T00:00:00Z",
        **fields,
    }
    return httpx.Response(
        200, content=protocol.dumps(body), headers={"Content-Type": protocol.MEDIA_JSON}
    )


def npy(array: np.ndarray, **headers: str | bytes) -> httpx.Response:
    return httpx.Response(
        200,
        content=protocol.encode_npy(array),
        headers={"Content-Type": protocol.MEDIA_NPY, **headers},
    )


def named(**tensors: np.ndarray) -> httpx.Response:
    return httpx.Response(
        200,
        content=protocol.encode_safetensors(tensors),
        headers={"Content-Type": protocol.MEDIA_SAFETENSORS},
    )
