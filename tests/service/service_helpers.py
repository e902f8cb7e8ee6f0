"""Helpers shared by the service tests: encoding, session set-up, problem and state checks."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx
import numpy as np
from fastapi import FastAPI

from engine import PoolSpec, backward, forward
from poolgrad import protocol

BASE_URL = "http://poolgrad.test"
NPY = {"Content-Type": protocol.MEDIA_NPY}
JSON = {"Content-Type": protocol.MEDIA_JSON}

# Values spread apart so every window has one clear winner.
X1 = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)[:, ::-1] * 0.5 - 7.0
DA1 = np.linspace(-1.0, 1.0, 2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)


def client_for(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client on ``app`` over the ASGI transport (the lifespan does not run)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, **kwargs)


def npy(array: np.ndarray) -> bytes:
    return protocol.encode_npy(array)


def expected(X: np.ndarray, dA: np.ndarray | None = None, **spec: Any) -> tuple[Any, Any]:
    """What the engine answers in-process: (A, dX)."""
    A, state = forward(X, PoolSpec(**spec))
    return A, None if dA is None else backward(state, dA)


async def new_session(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post("/v1/sessions", json=fields)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


async def run_forward(client: httpx.AsyncClient, session_id: str, X: np.ndarray) -> httpx.Response:
    response = await client.post(f"/v1/sessions/{session_id}/forward", content=npy(X), headers=NPY)
    assert response.status_code == 200, response.text
    return response


async def post_backward(
    client: httpx.AsyncClient, session_id: str, dA: np.ndarray = DA1, *, if_match: str | None = None
) -> httpx.Response:
    """POST ``dA`` to the session's backward, with ``If-Match: if_match`` when given; the answer
    is returned unchecked (tests of refusals use it too)."""
    headers = NPY if if_match is None else {**NPY, "If-Match": if_match}
    return await client.post(
        f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=headers
    )


async def primed_session(client: httpx.AsyncClient, **fields: Any) -> str:
    """A session that has run forward on ``X1`` (step 1)."""
    session_id = await new_session(client, **fields)
    await run_forward(client, session_id, X1)
    return session_id


def assert_problem(response: httpx.Response, status: int, code: str, *named: str) -> None:
    """A problem+json answer with this status and code whose detail names every ``named``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == protocol.MEDIA_PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"] == protocol.PROBLEMS[code].title
    assert body["type"] == "about:blank"
    assert body["request_id"] == response.headers["x-request-id"]
    for value in named:
        assert value in body["detail"], (value, body["detail"])


async def assert_state_intact(
    client: httpx.AsyncClient,
    session_id: str,
    *,
    step: int = 1,
    X: np.ndarray = X1,
    dA: np.ndarray = DA1,
    **spec: Any,
) -> None:
    """The server still answers, and the session still holds the state of ``X`` at ``step``."""
    assert (await client.get("/healthz")).status_code == 200
    info = await client.get(f"/v1/sessions/{session_id}")
    assert info.status_code == 200, info.text
    assert info.json()["step"] == step
    response = await client.post(
        f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=NPY
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == f'"{step}"'
    np.testing.assert_array_equal(protocol.decode_npy(response.content), expected(X, dA, **spec)[1])


class Refusal(NamedTuple):
    """A request a test expects refused: its body and headers, and the problem it answers with
    (status, code, and what its detail must name)."""

    body: bytes
    headers: Mapping[str, str | bytes]
    status: int
    code: str
    named: tuple[str, ...]

    def check(self, response: httpx.Response) -> None:
        assert_problem(response, self.status, self.code, *self.named)


# ------------------------------------------------- raw sockets against a live server


def reserved(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    match = re.search(r"^poolgrad_body_bytes_reserved (\S+)$", text, flags=re.MULTILINE)
    assert match is not None, text
    return int(float(match.group(1)))


def until_reserved(http: httpx.Client, nbytes: int, bound: float = 15.0) -> None:
    """Wait until the server has reserved ``nbytes`` (it reads sockets on its own time)."""
    deadline = time.monotonic() + bound
    while (now := reserved(http)) != nbytes:
        assert time.monotonic() < deadline, f"{now} bytes reserved, expected {nbytes}"
        time.sleep(0.02)


def address_of(server: Any) -> tuple[str, int]:
    return ("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))


def read_until_closed(sock: socket.socket, wait_seconds: float = 15.0) -> bytes:
    """Everything the server sends until it closes; ``<reset>`` appended on a reset. Raises
    ``TimeoutError`` if the server keeps the connection open for ``wait_seconds``."""
    sock.settimeout(wait_seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        chunks.append(b"<reset>")
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a ``Content-Length`` (the server writes head and body apart)."""
    sock.settimeout(15)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body
