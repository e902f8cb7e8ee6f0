"""End to end against a real ``python -m service`` (uvicorn) on a free loopback port: the full
flow, body limits on real sockets (chunked and declared), and start-up refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pytest
from service_helpers import DA1, NPY, X1, expected, npy

from poolgrad import protocol

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1024 * 1024


class Server(Protocol):
    base_url: str

    def output(self) -> str: ...


@pytest.fixture(scope="module")
def limited(start_server: Callable[..., Any]) -> Server:
    """A server with a 1 MiB body limit."""
    server: Server = start_server(POOLGRAD_MAX_BODY_BYTES=str(LIMIT))
    return server


@pytest.fixture
def http(limited: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.base_url, timeout=30.0) as client:
        yield client


def primed(http: httpx.Client) -> str:
    session_id: str = http.post("/v1/sessions", json={"mode": "max"}).json()["id"]
    response = http.post(f"/v1/sessions/{session_id}/forward", content=npy(X1), headers=NPY)
    assert response.status_code == 200, response.text
    return session_id


def assert_intact(http: httpx.Client, session_id: str) -> None:
    assert http.get("/healthz").status_code == 200
    response = http.post(f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"1"'
    np.testing.assert_array_equal(protocol.decode_npy(response.content), expected(X1, DA1)[1])


def test_full_flow_over_a_real_socket(http: httpx.Client, limited: Server) -> None:
    created = http.post("/v1/sessions", json={"mode": "avg", "ttl_seconds": 60})
    assert created.status_code == 201
    session_id = created.json()["id"]
    forward = http.post(
        f"/v1/sessions/{session_id}/forward",
        content=npy(X1),
        headers={**NPY, "X-Request-ID": "live-flow-1"},
    )
    assert forward.headers["x-request-id"] == "live-flow-1"
    assert forward.headers["etag"] == '"1"'
    A, dX = expected(X1, DA1, mode="avg")
    np.testing.assert_array_equal(protocol.decode_npy(forward.content), A)
    backward = http.post(
        f"/v1/sessions/{session_id}/backward",
        content=protocol.encode_json_tensor(DA1),
        headers={"Content-Type": protocol.MEDIA_JSON, "If-Match": '"1"'},
    )
    np.testing.assert_array_equal(protocol.decode_json_tensor(backward.content), dX)
    assert http.get(f"/v1/sessions/{session_id}").json()["input_shape"] == list(X1.shape)
    assert http.delete(f"/v1/sessions/{session_id}").status_code == 204
    assert http.get(f"/v1/sessions/{session_id}").status_code == 404
    assert "live-flow-1" in limited.output()  # the request's log line
    assert http.get("/readyz").status_code == 200
    assert "poolgrad_requests_total" in http.get("/metrics").text


def test_chunked_oversized_body_is_refused_before_it_is_all_sent(http: httpx.Client) -> None:
    session_id = primed(http)
    chunk = b"\0" * 65536
    total_chunks = 1024  # 64 MiB offered, 64 times the limit
    pulled = 0

    def body() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(total_chunks):
            pulled += 1
            yield chunk

    response = http.post(f"/v1/sessions/{session_id}/forward", content=body(), headers=NPY)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert str(LIMIT) in response.json()["detail"]
    assert pulled < total_chunks
    assert_intact(http, session_id)


def test_declared_oversized_body_is_refused(http: httpx.Client) -> None:
    session_id = primed(http)
    response = http.post(
        f"/v1/sessions/{session_id}/forward", content=b"\0" * (4 * LIMIT), headers=NPY
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert str(4 * LIMIT) in response.json()["detail"]
    assert_intact(http, session_id)


def test_hostile_npy_over_a_real_socket(http: httpx.Client) -> None:
    session_id = primed(http)
    response = http.post(f"/v1/sessions/{session_id}/forward", content=npy(X1)[:-3], headers=NPY)
    assert response.status_code == 400
    assert_intact(http, session_id)


def run_module(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("POOLGRAD_")}
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={**clean, "POOLGRAD_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"POOLGRAD_WORKERS": "2"}, ("POOLGRAD_WORKERS=2", "Redis", "memory://")),
        ({"POOLGRAD_STORE_URL": "memcached://cache:11211"}, ("memcached://cache:11211",)),
        ({"POOLGRAD_PORT": "eighty"}, ("POOLGRAD_PORT", "eighty")),
        ({"POOLGRAD_API_KEYS": "fine,s\N{LATIN SMALL LETTER E WITH ACUTE}cret"},
         ("POOLGRAD_API_KEYS", "API key 2 of 2", "position 1")),
    ],
)  # fmt: skip
def test_start_up_refuses_unusable_settings(env: dict[str, str], named: tuple[str, ...]) -> None:
    result = run_module(**env)
    assert result.returncode != 0
    for word in named:
        assert word in result.stderr, result.stderr
    for key in env.get("POOLGRAD_API_KEYS", "").split(","):
        assert not key or key not in result.stderr, result.stderr
