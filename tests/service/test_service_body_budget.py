"""The process-wide budget of request-body bytes held at once (``POOLGRAD_MAX_INFLIGHT_BODY_BYTES``)
against a real server, with raw sockets that hold uploads half-sent: the bytes reserved
(``poolgrad_body_bytes_reserved`` on ``/metrics``) never pass the budget, a body that does not
fit is a 429 with ``Retry-After`` before it is read (or as its chunks arrive) and its connection
closes, and every way a request ends gives its bytes back: success, refusal, disconnect."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from service_helpers import (
    NPY,
    address_of,
    expected,
    npy,
    read_response,
    read_until_closed,
    reserved,
    until_reserved,
)

from poolgrad import protocol

X = np.random.default_rng(3).standard_normal((1, 100, 100, 2)).astype(np.float32)
BODY = npy(X)
#: Two whole uploads fit, and half of a third.
BUDGET = 2 * len(BODY) + len(BODY) // 2
CHUNK = 16 * 1024


def head(path: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {NPY['Content-Type']}\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def assert_refused_by_budget(answer: bytes) -> None:
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 429 Too Many Requests", answer[:400]
    headers = rest.split(b"\r\n\r\n", 1)[0].lower()
    assert b"retry-after: 1" in headers
    assert b"connection: close" in headers
    assert b"in-flight body budget of %d bytes" % BUDGET in answer


@pytest.fixture(scope="module")
def budgeted(start_server: Callable[..., Any]) -> Any:
    return start_server(
        POOLGRAD_MAX_BODY_BYTES=str(100_000),
        POOLGRAD_MAX_INFLIGHT_BODY_BYTES=str(BUDGET),
        POOLGRAD_BODY_TIMEOUT_SECONDS="30",
    )


@pytest.fixture
def http(budgeted: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=budgeted.base_url, timeout=30.0) as client:
        assert reserved(client) == 0
        yield client
        until_reserved(client, 0)  # every test leaves nothing held


def hold_uploads(server: Any, http: httpx.Client, path: str, begun: bytes) -> list[socket.socket]:
    """Two uploads of :data:`BODY` to ``path``, declared whole and left at ``begun``: they hold
    two bodies of the budget (waited for) until they finish or their sockets close."""
    held = []
    for number in (1, 2):
        sock = socket.create_connection(address_of(server))
        held.append(sock)
        sock.sendall(head(path, len(BODY)) + begun)
        until_reserved(http, number * len(BODY))
    return held


def new_session(http: httpx.Client) -> str:
    return str(http.post("/v1/sessions", json={}).json()["id"])


def test_uploads_past_the_budget_are_refused_before_they_are_read(
    budgeted: Any, http: httpx.Client
) -> None:
    path = f"/v1/sessions/{new_session(http)}/forward"
    held = hold_uploads(budgeted, http, path, BODY[:1000])
    try:
        for _ in range(4):
            with socket.create_connection(address_of(budgeted)) as newcomer:
                newcomer.sendall(head(path, len(BODY)) + BODY[:1000])
                assert_refused_by_budget(read_until_closed(newcomer))
            assert reserved(http) == 2 * len(BODY)  # refusals reserve nothing
        # A body that completes is answered and gives its bytes back...
        held[0].sendall(BODY[1000:])
        answer = read_response(held[0])
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:400]
        np.testing.assert_array_equal(
            protocol.decode_npy(answer.split(b"\r\n\r\n", 1)[1]), expected(X)[0]
        )
        until_reserved(http, len(BODY))
        # ...and so does a client that goes away mid-body.
        held[1].close()
        until_reserved(http, 0)
    finally:
        for sock in held:
            sock.close()


def send_chunked(sock: socket.socket, body: bytes) -> None:
    """``body`` in chunks of :data:`CHUNK`, a little apart; stops where the server closed."""
    try:
        for start in range(0, len(body), CHUNK):
            chunk = body[start : start + CHUNK]
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            time.sleep(0.05)
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # refused part-way: the server closed the connection
        return


def test_a_chunked_upload_is_refused_once_its_chunks_pass_the_budget(
    budgeted: Any, http: httpx.Client
) -> None:
    path = f"/v1/sessions/{new_session(http)}/forward"
    held = hold_uploads(budgeted, http, path, b"")
    try:
        with socket.create_connection(address_of(budgeted)) as chunked:
            chunked.sendall(head(path, None))
            send_chunked(chunked, BODY)
            answer = read_until_closed(chunked)
        assert_refused_by_budget(answer)  # whole, the body would have been answered 200
        assert reserved(http) == 2 * len(BODY)  # what the refused request held is back
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    ("session", "body", "status"),
    [
        ("unknown-session-id", BODY, 404),
        (None, npy(X.astype(np.int32)), 422),  # refused by the engine: int32 is no float
        (None, b"\0" * 100_001, 413),  # over the body limit: refused before it is reserved
    ],
    ids=["404", "422", "413"],
)
def test_refused_requests_give_their_bytes_back(
    http: httpx.Client, session: str | None, body: bytes, status: int
) -> None:
    path = f"/v1/sessions/{session or new_session(http)}/forward"
    response = http.post(path, content=body, headers=NPY)
    assert response.status_code == status, response.text
    assert reserved(http) == 0


def test_a_slow_reader_of_a_large_answer_holds_no_body_bytes(
    start_server: Callable[..., Any],
) -> None:
    """The budget holds request bodies, not answers: once a gradient's answer starts, its body's
    bytes are free for other requests, however slowly the client reads the answer (here not at
    all, its receive buffer tiny: A, streamed first, fills the sockets' buffers, and the server
    waits for them to drain before it sends dX)."""
    x = np.random.default_rng(5).standard_normal((1, 1024, 1024, 2)).astype(np.float32)
    da = np.ones((1, 1023, 1023, 2), np.float32)  # windows 2x2, stride 1: A is about X's size
    body = protocol.encode_named({"X": x, "dA": da}, protocol.MEDIA_SAFETENSORS)
    server = start_server(
        POOLGRAD_MAX_BODY_BYTES=str(len(body)),
        POOLGRAD_MAX_INFLIGHT_BODY_BYTES=str(len(body) + len(body) // 2),
    )
    path = "/v1/gradient?mode=max&pool_size=2,2&strides=1,1"
    media = protocol.MEDIA_SAFETENSORS
    with socket.socket() as slow, httpx.Client(base_url=server.base_url, timeout=30) as http:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(address_of(server))
        slow.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        slow.settimeout(15)
        assert slow.recv(16).startswith(b"HTTP/1.1 200")  # the answer has started
        until_reserved(http, 0)
        # The budget fits one such body: a second request is served while the first answer
        # still waits for its reader.
        again = http.post(path, content=body, headers={"Content-Type": media})
        assert again.status_code == 200, again.text[:300]
        answer_bytes = x.nbytes + da.nbytes  # dX and A
        received = 16 + len(_receive_at_most(slow, answer_bytes))
    assert received > answer_bytes  # the slow answer was whole


def _receive_at_most(sock: socket.socket, nbytes: int) -> bytes:
    """What ``sock`` receives until it has ``nbytes`` or the server stops sending."""
    chunks: list[bytes] = []
    total = 0
    while total < nbytes and (chunk := sock.recv(1 << 20)):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
