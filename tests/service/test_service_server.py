"""The server runtime against real processes on 127.0.0.1 (raw sockets where HTTP clients would
be too polite): the header bound, the header timeout, the connection cap, a graceful SIGTERM,
and several workers on one pre-bound socket."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import NPY, address_of, npy, read_response, read_until_closed

import engine
from poolgrad import protocol
from service import Settings
from service.server import BoundedHttpToolsProtocol, server_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER_BOUND = 4096
HEADER_TIMEOUT = 0.5


def forward_checked(http: httpx.Client, X: np.ndarray, content: Iterator[bytes]) -> str:
    """Create a session and forward ``content`` (X's ``.npy``, streamed) to it; check that A is
    the engine's; return the session's path."""
    session = f"/v1/sessions/{http.post('/v1/sessions', json={}).json()['id']}"
    response = http.post(f"{session}/forward", content=content, headers=NPY)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        protocol.decode_npy(response.content), engine.forward(X, engine.PoolSpec())[0]
    )
    return session


@pytest.fixture(scope="module")
def strict(start_server: Callable[..., Any]) -> Any:
    """A server with a small header bound and a short header timeout."""
    return start_server(
        POOLGRAD_MAX_HEADER_BYTES=str(HEADER_BOUND),
        POOLGRAD_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        POOLGRAD_LOG_LEVEL="warning",
    )


# The header bound


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /healthz?" + b"q" * (2 * HEADER_BOUND) + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: "
        + b"a" * (2 * HEADER_BOUND)
        + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Many: a\r\n" * HEADER_BOUND + b"\r\n",
    ],
    ids=["request-line", "one-header", "many-headers"],
)
def test_request_head_past_the_bound_is_431_and_closed(strict: Any, request_head: bytes) -> None:
    with socket.create_connection(address_of(strict)) as sock:
        sock.sendall(request_head)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert f"exceed {HEADER_BOUND} bytes".encode() in answer
    assert httpx.get(f"{strict.base_url}/healthz").status_code == 200


def test_the_bound_counts_each_request_of_a_connection_afresh(strict: Any) -> None:
    # Three requests of ~3 KiB head each: 9 KiB on one connection, each under the bound.
    padding = b"a" * (HEADER_BOUND - 1024)
    one = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: " + padding + b"\r\n\r\n"
    with socket.create_connection(address_of(strict)) as sock:
        for _ in range(3):
            sock.sendall(one)
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        # ... and the fourth, over the bound, is refused on the same connection.
        sock.sendall(one.replace(padding, padding * 2))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")


def test_a_body_is_not_counted_as_header(strict: Any) -> None:
    X = np.random.default_rng(2).standard_normal((2, 8, 8, 64)).astype(np.float32)
    assert len(npy(X)) > 8 * HEADER_BOUND
    with httpx.Client(base_url=strict.base_url, timeout=30.0) as http:
        session = http.post("/v1/sessions", json={}).json()["id"]
        response = http.post(f"/v1/sessions/{session}/forward", content=npy(X), headers=NPY)
    assert response.status_code == 200, response.text


# The body: read without a deadline only once the server holds all of it


@pytest.fixture(scope="module")
def impatient(start_server: Callable[..., Any]) -> Any:
    """A server that gives a request body 0.5 s to arrive."""
    return start_server(POOLGRAD_BODY_TIMEOUT_SECONDS="0.5", POOLGRAD_LOG_LEVEL="warning")


def _forward_head(server: Any, body_bytes: int) -> bytes:
    session = httpx.post(f"{server.base_url}/v1/sessions", json={}).json()["id"]
    return (
        f"POST /v1/sessions/{session}/forward HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: {protocol.MEDIA_NPY}\r\nContent-Length: {body_bytes}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("sent", [0, 1, 100])
def test_a_body_that_stops_short_still_gets_408(impatient: Any, sent: int) -> None:
    """The headers (and maybe part of the body) arrive, the rest never: the server has not got
    the whole body, so the app reads it under its deadline and answers 408."""
    body = npy(np.ones((1, 4, 4, 1), np.float32))
    with socket.create_connection(address_of(impatient)) as sock:
        sock.sendall(_forward_head(impatient, len(body)) + body[:sent])
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"not received within 0.5 s" in answer


def test_a_body_in_pieces_and_pipelined_requests_are_read_whole(impatient: Any) -> None:
    X = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    body = npy(X)
    expected = protocol.encode_npy(engine.forward(X, engine.PoolSpec())[0])
    head = _forward_head(impatient, len(body))
    with socket.create_connection(address_of(impatient)) as sock:
        # The body in three writes, the last after a pause well under the deadline ...
        sock.sendall(head + body[:10])
        time.sleep(0.05)
        sock.sendall(body[10:50])
        time.sleep(0.1)
        sock.sendall(body[50:])
        ((status, answer),) = _responses(sock, 1)
        assert status.startswith(b"HTTP/1.1 200 ")
        assert answer == expected
        # ... then two whole requests in one write.
        sock.sendall((head + body) * 2)
        answers = _responses(sock, 2)
    assert [answer[1] for answer in answers] == [expected, expected]
    assert all(answer[0].startswith(b"HTTP/1.1 200 ") for answer in answers)


def _responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` whole responses (head, body) read off ``sock``, however they are split."""
    sock.settimeout(15)
    reader = sock.makefile("rb")
    answers = []
    for _ in range(count):
        head = b"".join(iter(reader.readline, b"\r\n"))
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        answers.append((head, reader.read(length)))
    return answers


# The header timeout


def test_a_connection_that_sends_nothing_is_closed(strict: Any) -> None:
    with socket.create_connection(address_of(strict)) as sock:
        assert read_until_closed(sock) == b""


def test_half_a_request_line_gets_408_and_is_closed(strict: Any) -> None:
    with socket.create_connection(address_of(strict)) as sock:
        sock.sendall(b"GET /heal")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"Request headers not received within 0.5 s" in answer


def test_half_a_request_after_a_response_gets_408(strict: Any) -> None:
    with socket.create_connection(address_of(strict)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        # uvicorn's keep-alive timer stops at this first byte; the header timer does not.
        sock.sendall(b"GET /heal")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_the_header_timeout_counts_from_the_last_response(strict: Any) -> None:
    """Each wait for a request's headers gets the whole timeout, however long the connection
    has been open: requests 0.6 timeouts apart keep it open, and it closes no earlier than a
    timeout after the last answer."""
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(address_of(strict)) as sock:
        for _ in range(4):
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.6 * HEADER_TIMEOUT)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        assert read_until_closed(sock) == b""
        idle = time.monotonic() - answered
    assert idle >= 0.9 * HEADER_TIMEOUT  # never cut short; how late it closes is not checked


def trickle(sock: socket.socket, head: bytes, interval: float, most: int) -> int:
    """Send ``head``, then one header byte per ``interval`` until the server answers or closes,
    at most ``most`` bytes; return how many were sent."""
    sock.sendall(head)
    for sent in range(most):
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            return sent
        try:
            sock.send(b"X")
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return most


def test_slowloris_is_closed(strict: Any) -> None:
    with socket.create_connection(address_of(strict)) as sock:
        sent = trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\n", interval=0.1, most=300)
        answer = read_until_closed(sock)
    # Closed long before the 300 bytes (30 s) and far below the header bound: the timeout did it.
    assert sent < 300
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"<reset>", answer[:200]


def test_a_slow_body_or_computation_is_not_cut_by_the_header_timeout(strict: Any) -> None:
    X = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    body = npy(X)

    def slowly() -> Iterator[bytes]:
        for start in range(0, len(body), 256):
            time.sleep(3 * HEADER_TIMEOUT / (len(body) / 256))  # 3 header timeouts in all
            yield body[start : start + 256]

    with httpx.Client(base_url=strict.base_url, timeout=30.0) as http:
        session = forward_checked(http, X, slowly())
        # The kept-alive connection still serves a second request after the first response.
        assert http.get(session).json()["step"] == 1


# The connection cap


def test_hundreds_of_idle_sockets_do_not_stop_a_request(start_server: Callable[..., Any]) -> None:
    # A header timeout far longer than the test: only the cap can close the idle sockets.
    server = start_server(
        POOLGRAD_MAX_CONNECTIONS="50",
        POOLGRAD_HEADER_TIMEOUT_SECONDS="600",
        POOLGRAD_LOG_LEVEL="warning",
    )
    idle = [socket.create_connection(address_of(server)) for _ in range(300)]
    try:
        idle[-1].sendall(b"GET /heal")  # half a request: evicted with 408 like the rest
        with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
            for _ in range(3):
                assert http.get("/healthz").status_code == 200
        closed = 0
        with selectors.DefaultSelector() as selector:
            for sock in idle:
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + 30.0
            while closed < 300 - 50 and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=1.0):
                    with contextlib.suppress(ConnectionResetError):
                        key.fileobj.recv(65536)  # type: ignore[union-attr]
                    selector.unregister(key.fileobj)
                    closed += 1
        # At most 50 connections per worker stay open: the longest idle made room.
        assert closed >= 300 - 50, closed
    finally:
        for sock in idle:
            sock.close()


def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503(
    start_server: Callable[..., Any],
) -> None:
    server = start_server(POOLGRAD_MAX_CONNECTIONS="2", POOLGRAD_LOG_LEVEL="warning")
    with httpx.Client(base_url=server.base_url) as http:
        session = http.post("/v1/sessions", json={}).json()["id"]
    head = (
        f"POST /v1/sessions/{session}/forward HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/x-npy\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    busy = [socket.create_connection(address_of(server)) for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(head + b"\x93NUMPY")  # headers complete, body in flight
        with socket.create_connection(address_of(server)) as newcomer:
            answer = read_until_closed(newcomer)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"Too many open connections" in answer
    finally:
        for sock in busy:
            sock.close()
    # The busy connections gone, the server serves again.
    statuses = []
    for _ in range(50):
        statuses.append(httpx.get(f"{server.base_url}/healthz").status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.1)
    assert statuses[-1] == 200, statuses


# Graceful shutdown


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(
    start_server: Callable[..., Any],
) -> None:
    server = start_server()
    X = np.random.default_rng(1).standard_normal((64, 32, 32, 32)).astype(np.float32)
    body = npy(X)
    refused: list[bool] = []

    def upload() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        server.process.send_signal(signal.SIGTERM)
        # Until the listening socket is closed: new connections are refused while ours lives.
        for _ in range(200):
            try:
                socket.create_connection(address_of(server), timeout=1.0).close()
            except ConnectionRefusedError:
                refused.append(True)
                break
            time.sleep(0.05)
        yield body[len(body) // 2 :]

    with httpx.Client(base_url=server.base_url, timeout=60.0) as http:
        forward_checked(http, X, upload())
    assert refused == [True]
    assert server.process.wait(timeout=30) == 0
    assert "Application shutdown complete" in server.output()


# Several workers


def test_the_server_config_pickles_into_a_worker() -> None:
    config = pickle.loads(pickle.dumps(server_config(Settings(workers=2, max_header_bytes=2048))))
    config.load()
    assert config.http_protocol_class is BoundedHttpToolsProtocol
    assert config.max_header_bytes == 2048
    assert isinstance(config.loaded_app.app, FastAPI)  # under uvicorn's proxy-headers wrapper


def test_two_workers_serve_one_pre_bound_socket_and_stop_with_0(tmp_path: Any) -> None:
    # serve() itself runs any number of workers; only the command refuses several with the
    # in-memory store, and /healthz needs no session.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = (
        "from service.server import bind, serve; from service.settings import Settings; "
        f"s = Settings(workers=2, port={port}); serve(s, bind(s.host, s.port))"
    )
    log = tmp_path / "workers.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as http:
            for _ in range(600):
                if log.read_text().count("Application startup complete") == 2:
                    break
                time.sleep(0.1)
            assert [http.get("/healthz").status_code for _ in range(10)] == [200] * 10
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert output.count("Application startup complete") == 2, output
    assert output.count("Application shutdown complete") == 2, output
    assert "with 2 workers (bounded httptools parser, uvloop event loop)" in output
