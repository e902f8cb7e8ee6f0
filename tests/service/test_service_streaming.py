"""Large answers leave as their parts (service.httpio.PartsResponse: the encoded header, then
views of the result arrays' memory, never joined into one buffer), and a body that arrives in
several messages is copied into one buffer of its declared length (service.httpio.read_body):
in-process, the ASGI messages themselves; over a real uvicorn, the bytes on the socket."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import address_of, expected, read_response, until_reserved

from engine import PoolSpec
from poolgrad import protocol
from poolgrad.protocol import inference
from service.compute import EngineCalls
from service.httpio import STREAM_MIN_BYTES, PartsResponse, encoded_response

pytestmark = pytest.mark.anyio

ST = protocol.MEDIA_SAFETENSORS
QUERY = "mode=max&pool_size=2,2"
#: Large enough that A and dX together pass STREAM_MIN_BYTES (dX alone is X's size).
X_LARGE = np.random.default_rng(7).standard_normal((2, 64, 64, 8)).astype(np.float32)
DA_LARGE = np.random.default_rng(8).standard_normal((2, 32, 32, 8)).astype(np.float32)
X_SMALL = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)


# ------------------------------------------------------------------- in-process


class Exchange:
    """One request sent straight to an ASGI app: its body in the given messages, and every
    message of the answer."""

    def __init__(self, start: dict[str, Any], bodies: list[dict[str, Any]]) -> None:
        self.start = start
        self.bodies = bodies

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(bytes(message["body"]) for message in self.bodies)


async def exchange(
    app: FastAPI,
    method: str,
    path: str,
    chunks: list[bytes],
    headers: dict[str, str] | None = None,
    *,
    declare_length: bool = True,
) -> Exchange:
    """``method path`` with the body in ``chunks`` (one ``http.request`` message each), with
    ``Content-Length`` when ``declare_length``, else chunked framing."""
    path, _, query = path.partition("?")
    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    if declare_length:
        raw.append((b"content-length", str(sum(map(len, chunks))).encode()))
    elif chunks:
        raw.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "headers": [(b"host", b"test"), *raw],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    return Exchange(sent[0], sent[1:])


def split(body: bytes, count: int) -> list[bytes]:
    step = -(-len(body) // count)
    return [body[start : start + step] for start in range(0, len(body), step)]


def gradient_of(X: np.ndarray, dA: np.ndarray) -> dict[str, np.ndarray]:
    A, dX = expected(X, dA)
    return {"A": A, "dX": dX}


async def test_a_large_answer_leaves_as_its_parts_framed_by_their_sum(app: FastAPI) -> None:
    body = protocol.encode_safetensors({"X": X_LARGE, "dA": DA_LARGE})
    answer = await exchange(app, "POST", f"/v1/gradient?{QUERY}", [body], {"content-type": ST})
    assert answer.start["status"] == 200
    # The safetensors header, then A's bytes, then dX's: three messages, the last one final.
    assert [message["more_body"] for message in answer.bodies] == [True, True, False]
    assert [type(message["body"]) for message in answer.bodies] == [bytes, memoryview, memoryview]
    assert int(answer.headers[b"content-length"]) == len(answer.body)
    assert answer.body == protocol.encode_safetensors(gradient_of(X_LARGE, DA_LARGE))


async def test_a_small_answer_leaves_in_one_message(app: FastAPI) -> None:
    dA = np.ones((1, 2, 2, 1), np.float32)
    body = protocol.encode_safetensors({"X": X_SMALL, "dA": dA})
    answer = await exchange(app, "POST", f"/v1/gradient?{QUERY}", [body], {"content-type": ST})
    assert len(answer.bodies) == 1
    assert answer.body == protocol.encode_safetensors(gradient_of(X_SMALL, dA))
    assert len(answer.body) < STREAM_MIN_BYTES


async def test_session_steps_stream_their_large_npy_answers(app: FastAPI) -> None:
    created = await exchange(
        app, "POST", "/v1/sessions", [b"{}"], {"content-type": "application/json"}
    )
    session = f"/v1/sessions/{json.loads(created.body)['id']}"
    A, dX = expected(X_LARGE, DA_LARGE)
    for step, tensor, result in (("forward", X_LARGE, A), ("backward", DA_LARGE, dX)):
        npy = {"content-type": protocol.MEDIA_NPY}
        answer = await exchange(
            app, "POST", f"{session}/{step}", [protocol.encode_npy(tensor)], npy
        )
        assert answer.start["status"] == 200
        assert answer.headers[b"etag"] == b'"1"'
        assert [message["more_body"] for message in answer.bodies] == [True, False]
        assert int(answer.headers[b"content-length"]) == len(answer.body)
        assert answer.body == protocol.encode_npy(result)


async def test_v2_binary_outputs_stream_after_their_json(app: FastAPI) -> None:
    inputs = [
        {"name": name, "shape": list(array.shape), "datatype": "FP32",
         "parameters": {"binary_data_size": array.nbytes}}
        for name, array in (("X", X_LARGE), ("dA", DA_LARGE))
    ]  # fmt: skip
    outputs = [{"name": name, "parameters": {"binary_data": True}} for name in ("A", "dX")]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    body = header + X_LARGE.tobytes() + DA_LARGE.tobytes()
    headers = {
        "content-type": "application/octet-stream",
        inference.HEADER_LENGTH: str(len(header)),
    }
    answer = await exchange(app, "POST", "/v2/models/maxpool/infer", split(body, 3), headers)
    assert answer.start["status"] == 200, answer.body[:300]
    assert [message["more_body"] for message in answer.bodies] == [True, True, False]
    json_length = int(answer.headers[inference.HEADER_LENGTH.lower().encode()])
    assert int(answer.headers[b"content-length"]) == len(answer.body)
    results = gradient_of(X_LARGE, DA_LARGE)
    A_bytes = results["A"].nbytes
    assert answer.body[json_length : json_length + A_bytes] == results["A"].tobytes()
    assert answer.body[json_length + A_bytes :] == results["dX"].tobytes()


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_body_in_many_messages_decodes_to_read_only_arrays(
    app: FastAPI, declare_length: bool
) -> None:
    """A body of declared length is copied into one buffer as it arrives (a bytearray), a
    chunked one joined: either way the arrays decoded from it are read-only, and right."""
    seen: list[np.ndarray] = []
    compute = app.state.compute

    def gradient(X: np.ndarray, dA: np.ndarray, spec: PoolSpec, **options: Any) -> Any:
        seen.extend((X, dA))
        return EngineCalls().gradient(X, dA, spec, **options)

    compute.engine = EngineCalls(gradient=gradient)
    body = protocol.encode_safetensors({"X": X_LARGE, "dA": DA_LARGE})
    chunks = split(body, 7)
    answer = await exchange(
        app, "POST", f"/v1/gradient?{QUERY}", chunks, {"content-type": ST},
        declare_length=declare_length,
    )  # fmt: skip
    assert answer.body == protocol.encode_safetensors(gradient_of(X_LARGE, DA_LARGE))
    X, dA = seen
    assert [X.flags.writeable, dA.flags.writeable] == [False, False]
    np.testing.assert_array_equal(X, X_LARGE)
    np.testing.assert_array_equal(dA, DA_LARGE)
    assert app.state.body_budget.reserved == 0  # given back when the request ended


def parts_app(app: FastAPI, parts: list[bytes | memoryview]) -> FastAPI:
    @app.get("/parts")
    async def answer_in_parts() -> PartsResponse:
        return PartsResponse(parts, media_type="application/octet-stream")

    return app


async def test_head_keeps_the_parts_length_and_sends_no_body(app: FastAPI) -> None:
    data = np.arange(40_000, dtype=np.float32)
    parts = protocol.encode_npy_parts(data)
    parts_app(app, parts)
    get = await exchange(app, "GET", "/parts", [])
    head = await exchange(app, "HEAD", "/parts", [])
    assert get.body == protocol.encode_npy(data)
    assert (
        head.headers[b"content-length"]
        == get.headers[b"content-length"]
        == str(len(get.body)).encode()
    )
    assert [message["body"] for message in head.bodies] == [b"", b""]
    assert head.bodies[-1]["more_body"] is False


async def test_no_parts_is_an_empty_answer(app: FastAPI) -> None:
    parts_app(app, [])
    answer = await exchange(app, "GET", "/parts", [])
    assert answer.headers[b"content-length"] == b"0"
    assert answer.bodies == [{"type": "http.response.body", "body": b""}]


def test_parts_are_counted_in_bytes_whatever_their_item_size() -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    response = PartsResponse([b"head", array.data])
    assert response.headers["content-length"] == str(4 + array.nbytes)
    assert [len(part) for part in response.parts] == [4, array.nbytes]


def test_encoded_response_joins_small_answers_and_streams_large_ones() -> None:
    small = encoded_response(
        [b"a", memoryview(b"b" * 10)], "application/octet-stream", {"ETag": '"3"'}
    )
    assert not isinstance(small, PartsResponse)
    assert (small.body, small.headers["etag"]) == (b"a" + b"b" * 10, '"3"')
    large = encoded_response([b"a", memoryview(b"b" * STREAM_MIN_BYTES)], "application/x-npy")
    assert isinstance(large, PartsResponse)
    assert large.headers["content-length"] == str(1 + STREAM_MIN_BYTES)
    assert large.headers["content-type"] == "application/x-npy"


# ----------------------------------------------------------------- real uvicorn


#: X and dA of a gradient whose answer (A 4 MiB, dX 16 MiB) takes many socket writes.
X_HUGE = np.random.default_rng(9).standard_normal((4, 256, 256, 16)).astype(np.float32)
DA_HUGE = np.ones((4, 128, 128, 16), np.float32)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any]) -> Any:
    return start_server(POOLGRAD_LOG_LEVEL="info")


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        yield client


def gradient_request(X: np.ndarray, dA: np.ndarray) -> bytes:
    body = protocol.encode_safetensors({"X": X, "dA": dA})
    head = (
        f"POST /v1/gradient?{QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ST}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_a_streamed_answer_arrives_whole_and_the_connection_stays_usable(server: Any) -> None:
    expected_body = protocol.encode_safetensors(gradient_of(X_LARGE, DA_LARGE))
    with socket.create_connection(address_of(server)) as sock:
        for _ in range(2):  # the same connection again: the framing ended exactly
            sock.sendall(gradient_request(X_LARGE, DA_LARGE))
            answer = read_response(sock)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"content-length: %d\r\n" % len(expected_body) in head.lower() + b"\r\n"
            assert body == expected_body


def test_a_large_answer_over_httpx_decodes_to_the_engine_s_results(http: httpx.Client) -> None:
    body = protocol.encode_safetensors({"X": X_HUGE, "dA": DA_HUGE})
    response = http.post(f"/v1/gradient?{QUERY}", content=body, headers={"Content-Type": ST})
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    decoded = protocol.decode_safetensors(response.content)
    for name, array in gradient_of(X_HUGE, DA_HUGE).items():
        np.testing.assert_array_equal(decoded[name], array)


def test_a_client_that_leaves_mid_answer_ends_it_quietly(server: Any, http: httpx.Client) -> None:
    log_before = len(server.output())
    with socket.create_connection(address_of(server)) as sock:
        sock.sendall(gradient_request(X_HUGE, DA_HUGE))
        sock.settimeout(30)
        received = sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 "), received[:200]
        # Leave abruptly (a reset, not a polite close) with megabytes still to come.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    until_reserved(http, 0)  # the request ended and gave its body bytes back
    assert http.get("/healthz").status_code == 200
    response = http.post(
        f"/v1/gradient?{QUERY}",
        content=protocol.encode_safetensors({"X": X_LARGE, "dA": DA_LARGE}),
        headers={"Content-Type": ST},
    )
    assert response.content == protocol.encode_safetensors(gradient_of(X_LARGE, DA_LARGE))
    time.sleep(0.2)  # the log line of the abandoned request is written as it ends
    log = server.output()[log_before:]
    assert "POST /v1/gradient 200" in log
    assert "Traceback" not in log
    assert "ERROR" not in log
