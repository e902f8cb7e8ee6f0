"""Fixtures for the SDK tests: anyio on asyncio, mock answers, and clients on a live server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from poolgrad import wire

MOCK_URL = "http://poolgrad.test"
SESSION_ID = "3b1f0c2a9e8d4f6b8a7c5d3e1f0a2b4c"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own configuration: the caller's POOLGRAD_* never leaks in."""
    monkeypatch.delenv("POOLGRAD_BASE_URL", raising=False)
    monkeypatch.delenv("POOLGRAD_API_KEY", raising=False)


def problem(status: int, code: str, detail: str = "bad", **headers: str) -> httpx.Response:
    """A problem+json answer as the service renders it."""
    body = {
        "type": "about:blank",
        "status": status,
        "code": code,
        "title": wire.PROBLEMS[code].title,
        "detail": detail,
        "request_id": "srv-req-1",
    }
    return httpx.Response(
        status,
        content=wire.dumps(body),
        headers={"Content-Type": wire.MEDIA_PROBLEM, "X-Request-ID": "srv-req-1", **headers},
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
        content=wire.dumps(body),
        headers={"Content-Type": wire.MEDIA_JSON, "Location": f"/v1/sessions/{session_id}"},
    )


def info(session_id: str = SESSION_ID) -> httpx.Response:
    body = {
        "id": session_id,
        "spec": {"mode": "max", "pool_size": [2, 2]},
        "step": 3,
        "input_shape": [1, 4, 4, 1],
        "output_shape": [1, 2, 2, 1],
        "dtype": "float32",
        "state_bytes": 64,
        "expires_at": "2030-01-01T00:00:00Z",
    }
    return httpx.Response(200, content=wire.dumps(body), headers={"Content-Type": wire.MEDIA_JSON})


def npy(array: np.ndarray, **headers: str) -> httpx.Response:
    return httpx.Response(
        200, content=wire.encode_npy(array), headers={"Content-Type": wire.MEDIA_NPY, **headers}
    )


def named(**tensors: np.ndarray) -> httpx.Response:
    return httpx.Response(
        200,
        content=wire.encode_safetensors(tensors),
        headers={"Content-Type": wire.MEDIA_SAFETENSORS},
    )


@pytest.fixture
def sleeps() -> list[float]:
    """Delays the client asked to sleep (sleeping itself is patched out)."""
    return []


@pytest.fixture
def max_jitter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any], None]]:
    """Make the full-jitter draw return its upper bound, so backoffs are exact."""

    def apply(client: Any) -> None:
        monkeypatch.setattr(client._random, "uniform", lambda low, high: high)

    return apply
