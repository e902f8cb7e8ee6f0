"""What a hostile probe found (issue 11), one regression test per class, each with variants:
a client leaving mid-body, client values forging log lines, HEAD on GET routes, errors echoing
huge values, and session bodies parsed on the event loop."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote as url_quote

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import (
    DA1,
    JSON,
    NPY,
    X1,
    assert_problem,
    assert_state_intact,
    client_for,
    new_session,
    npy,
    primed_session,
)
from test_service_concurrency import PausedEngine

from poolgrad import protocol
from service.compute import INLINE_MAX_BYTES, INLINE_MAX_JSON_BYTES
from service.middleware import CLIENT_CLOSED_REQUEST, printable

pytestmark = pytest.mark.anyio

# ------------------------------------------------------------ a client leaves mid-body


async def _send_half_and_leave(app: FastAPI, path: str, content_type: str) -> list[Any]:
    """Drive ``app`` as a server would for a client that declares 1000 body bytes, sends 10
    and disconnects; returns what the app tried to send back."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode()), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages = iter(
        [
            {"type": "http.request", "body": b"\x93NUMPY\x01\x00\x76\x00", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("route", "content_type"),
    [
        ("forward", protocol.MEDIA_NPY),
        ("backward", protocol.MEDIA_NPY),
        ("create", protocol.MEDIA_JSON),
        ("gradient", protocol.MEDIA_SAFETENSORS),
    ],
)
async def test_a_client_leaving_mid_body_is_a_quiet_499(
    app: FastAPI,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    route: str,
    content_type: str,
) -> None:
    session_id = await primed_session(client)
    path = {
        "forward": f"/v1/sessions/{session_id}/forward",
        "backward": f"/v1/sessions/{session_id}/backward",
        "create": "/v1/sessions",
        "gradient": "/v1/gradient",
    }[route]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        sent = await _send_half_and_leave(app, path, content_type)
    assert sent == []  # no one is there to read an answer
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [record for record in caplog.records if record.exc_info]
    access = [record for record in caplog.records if record.name == "service.access"]
    assert [record.__dict__["status"] for record in access] == [CLIENT_CLOSED_REQUEST]
    metrics = (await client.get("/metrics")).text
    assert f'status="{CLIENT_CLOSED_REQUEST}"' in metrics
    assert 'status="500"' not in metrics
    await assert_state_intact(client, session_id)


def _metric(server_url: str, status: int) -> float:
    text = httpx.get(f"{server_url}/metrics", timeout=10).text
    pattern = rf'^poolgrad_requests_total{{.*status="{status}"}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, flags=re.MULTILINE))


def test_a_client_leaving_mid_body_on_a_real_server(start_server: Callable[..., Any]) -> None:
    server = start_server()
    session_id = httpx.post(f"{server.base_url}/v1/sessions", timeout=10).json()["id"]
    host, port = server.base_url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/sessions/{session_id}/forward HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/x-npy\r\nContent-Length: 100000\r\n\r\n".encode()
                + npy(X1)[:50]
            )
    deadline = time.monotonic() + 20
    while _metric(server.base_url, CLIENT_CLOSED_REQUEST) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server.base_url, CLIENT_CLOSED_REQUEST) == 3
    assert _metric(server.base_url, 500) == 0
    log = server.output()
    assert "Traceback" not in log
    assert log.count(" 499 ") == 3


# ------------------------------------------------------------------ log-line forging

#: Characters that break a line for some reader of a log (str.splitlines breaks on all of
#: them), and other control characters a terminal would act on.
FORGING = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1e",
           "\x00", "\x1b[2J", "\x7f"]  # fmt: skip


@pytest.mark.parametrize("char", FORGING, ids=[repr(char) for char in FORGING])
async def test_no_client_value_breaks_a_log_line(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, char: str
) -> None:
    forged = f"abc{char}2026-11-30 12:00:00 INFO service.access: DELETE session=abc 204"

    async def boom(value: str) -> None:
        raise RuntimeError("a bug")

    app.router.add_api_route("/boom/{value}", boom)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        await client.get(f"/v1/sessions/{url_quote(forged, safe='')}")
        await client.get(f"/boom/{url_quote(forged, safe='')}")
        await client.request(
            "HEAD", f"/v1/sessions/{url_quote(forged, safe='')}/forward", headers={}
        )
    lines = [record.getMessage() for record in caplog.records if record.name != "httpx"]
    assert len(lines) >= 4  # three access lines, one "unhandled error" (its traceback apart)
    for line in lines:
        assert line.splitlines() == [line], line
        assert char not in line
    # Escaped, not dropped: the session ids of the GET and the HEAD, the failing route's path.
    escaped = f"abc{char.encode('unicode_escape').decode()}2026-11-30"
    assert len([line for line in lines if escaped in line]) == 3, lines


def test_printable_escapes_exactly_the_unprintable() -> None:
    assert printable("plain-Id_09 é ü") == "plain-Id_09 é ü"
    assert printable("a\nb\u2028c\\d") == "a\\nb\\u2028c\\\\d"
    assert printable("x" * 10_000).endswith("... (9800 more characters)")


def test_a_forged_session_id_makes_one_line_in_a_real_server_log(
    start_server: Callable[..., Any],
) -> None:
    server = start_server()
    for char in FORGING:
        forged = f"abc{char}FORGED {char}"
        response = httpx.get(f"{server.base_url}/v1/sessions/{url_quote(forged, safe='')}")
        assert response.status_code == 404
    deadline = time.monotonic() + 20  # the access line is written after the answer is sent
    while server.output().count("session=abc") < len(FORGING) and time.monotonic() < deadline:
        time.sleep(0.05)
    log_lines = server.output().splitlines()
    assert not [line for line in log_lines if "FORGED" in line and "service.access" not in line]
    assert len([line for line in log_lines if "abc" in line]) == len(FORGING)


# --------------------------------------------------------------------------- HEAD


async def _get_paths(app: FastAPI, client: httpx.AsyncClient) -> list[str]:
    """Every GET route of the app's own OpenAPI, path parameters filled with a live session."""
    session_id = await primed_session(client)
    paths = [
        path.replace("{session_id}", session_id)
        for path, item in app.openapi()["paths"].items()
        if "get" in item
    ]
    return [*paths, "/openapi.json", "/docs"]


async def test_head_answers_every_get_route_with_its_headers_and_no_body(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    paths = await _get_paths(app, client)
    assert len(paths) >= 6
    for path in paths:
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code, path
        if "{" not in path:  # a route whose parameters this test cannot fill answers 404
            assert get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        if path != "/metrics":  # the only answer that changes between two requests
            assert head.headers["content-length"] == get.headers["content-length"], path
            assert head.headers.get("etag") == get.headers.get("etag"), path


async def test_head_is_documented_and_refused_where_get_is(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for item in app.openapi()["paths"].values():
        assert ("get" in item) == ("head" in item), item
    missing = await client.head("/v1/sessions/unknown")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == protocol.MEDIA_PROBLEM
    assert missing.content == b""
    response = await client.head("/v1/sessions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.content == b""
    metrics = (await client.get("/metrics")).text
    assert 'method="HEAD",route="/v1/sessions",status="405"' in metrics


def test_head_on_a_real_server(live_server: Any) -> None:
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        for path in ("/healthz", "/readyz", "/openapi.json"):
            head, get = http.head(path), http.get(path)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-length"] == get.headers["content-length"]
        # The connection survives a HEAD answer (no stray body bytes on it).
        assert http.get("/healthz").json() == {"status": "ok"}


# -------------------------------------------------------------- bounded error details

BIG = 1_000_000
#: Bodies of POST /v1/sessions that quote something huge back if quoted whole.
HUGE_SESSION_BODIES: dict[str, Any] = {
    "one-huge-key": {"k" * BIG: 1},
    "many-unknown-keys": {f"key{i}": i for i in range(50_000)},
    "huge-mode": {"mode": "m" * BIG},
    "huge-pool-size": {"pool_size": list(range(200_000))},
    "huge-padding": {"padding": [[1, 1]] * 100_000},
    "huge-ttl-string": {"ttl_seconds": "9" * BIG},
    "nested-list-ttl": {"ttl_seconds": [[0] * 1000] * 200},
}


def assert_bounded(response: httpx.Response, status: int, code: str, *named: str) -> None:
    """A problem whose detail is cut to the default bound, still naming what it quotes."""
    assert_problem(response, status, code, *named)
    detail = response.json()["detail"]
    assert len(detail) <= 2000 + len("... (999999999 more characters)"), len(detail)
    assert len(response.content) < 4096


@pytest.mark.parametrize("body", HUGE_SESSION_BODIES.values(), ids=HUGE_SESSION_BODIES.keys())
async def test_huge_session_bodies_are_quoted_within_bounds(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/v1/sessions", content=protocol.dumps(body), headers=JSON)
    first = next(iter(body))
    assert_bounded(response, 422, "invalid_spec", first[:20])
    assert (await app.state.store.usage()).sessions == 0


def _safetensors_named(name: str) -> bytes:
    return protocol.encode_safetensors({name: np.zeros(1, np.float32)})


async def test_every_route_quotes_huge_values_within_bounds(client: httpx.AsyncClient) -> None:
    session_id = await primed_session(client)
    forward = f"/v1/sessions/{session_id}/forward"
    backward = f"/v1/sessions/{session_id}/backward"
    huge = "x" * 60_000  # as much as a header may carry (64 KiB)
    tensor = {"dtype": "float32", "shape": [1], "data": [1.0]}
    # (request, status, code, a piece of the quoted value the detail must still show)
    cases: list[tuple[httpx.Request, int, str, str]] = [
        (client.build_request("POST", forward, content=npy(X1), headers={"Content-Type": huge}),
         415, "unsupported_media_type", "xxxxxxxxxx"),
        (client.build_request("POST", forward, content=npy(X1), headers={**NPY, "Accept": huge}),
         406, "not_acceptable", "xxxxxxxxxx"),
        (client.build_request("POST", backward, content=npy(DA1),
                              headers={**NPY, "If-Match": f'"{huge}"'}),
         412, "stale_step", "xxxxxxxxxx"),
        (client.build_request("POST", forward, headers=JSON,
                              content=protocol.dumps({**tensor, "dtype": "d" * BIG})),
         422, "invalid_tensor", "dddddddddd"),
        (client.build_request("POST", forward, headers=JSON,
                              content=protocol.dumps({**tensor, "shape": [-1] * 200_000})),
         400, "malformed_tensor", "[-1, -1, -1"),
        (client.build_request("POST", forward, headers=JSON,
                              content=protocol.dumps({**tensor, "data": ["y" * BIG]})),
         400, "malformed_tensor", "yyyyyyyyyy"),
        (client.build_request("POST", "/v1/gradient", params={huge: "1"}, headers=JSON,
                              content=b"{}"),
         422, "invalid_spec", "xxxxxxxxxx"),
        (client.build_request("POST", "/v1/gradient", params={"pool_size": huge}, headers=JSON,
                              content=b"{}"),
         422, "invalid_spec", "xxxxxxxxxx"),
        (client.build_request("POST", "/v1/gradient",
                              headers={"Content-Type": protocol.MEDIA_SAFETENSORS},
                              content=_safetensors_named("z" * 60_000)),
         422, "invalid_tensor", "zzzzzzzzzz"),
        (client.build_request("GET", "/" + huge), 404, "not_found", "xxxxxxxxxx"),
    ]  # fmt: skip
    for request, status, code, named in cases:
        assert_bounded(await client.send(request), status, code, named)
    await assert_state_intact(client, session_id)


def test_quote_bounds_any_value() -> None:
    assert protocol.quote("short") == "'short'"
    assert protocol.quote("a" * 1000) == repr("a" * 200) + "... (800 more characters)"
    assert protocol.quote(list(range(10_000))).endswith(" more characters)")
    assert len(protocol.quote(list(range(10_000)))) < 250
    assert protocol.shorten("abc", 3) == "abc"
    assert protocol.shorten("abcd", 3) == "abc... (1 more characters)"


async def test_the_detail_bound_is_a_setting(make_app: Callable[..., FastAPI]) -> None:
    async with client_for(make_app(max_error_detail_chars=100)) as client:
        response = await client.post("/v1/sessions", json={f"k{i}": 0 for i in range(1000)})
    detail = response.json()["detail"]
    assert re.fullmatch(r".{100}\.\.\. \(\d+ more characters\)", detail), detail


# ---------------------------------------------------- session bodies off the event loop


async def test_large_session_bodies_are_parsed_in_a_worker_thread(
    make_app: Callable[..., FastAPI],
) -> None:
    """With one compute thread held by a paused forward, a large session body waits for it:
    it is parsed and checked in the worker pool, not on the event loop (where it would finish
    at once), while the loop itself keeps serving; a small one is done on the loop, as small
    tensor bodies are."""
    app = make_app(compute_threads=1)
    async with client_for(app) as client:
        session_id = await new_session(client)
        engine = PausedEngine(app)
        path = f"/v1/sessions/{session_id}/forward"
        in_flight = asyncio.create_task(client.post(path, content=npy(X1), headers=NPY))
        await engine.wait_started()
        app.state.compute.inline_max_bytes = INLINE_MAX_BYTES  # PausedEngine set 0
        small = await client.post("/v1/sessions", json={"mode": "min"})
        assert small.status_code == 201
        large = b'{"mode": "avg"' + b" " * INLINE_MAX_JSON_BYTES + b"}"
        create = asyncio.create_task(client.post("/v1/sessions", content=large, headers=JSON))
        done, _ = await asyncio.wait({create}, timeout=0.5)
        assert not done
        assert (await client.get("/healthz")).status_code == 200  # the loop is free
        engine.release.set()
        assert (await in_flight).status_code == 200
        created = await create
        assert created.status_code == 201
        assert created.json()["spec"]["mode"] == "avg"


# ------------------------------------------------- unhashable JSON where a name is looked up


@pytest.mark.parametrize(
    "datatype", [["FP32"], {"FP32": 1}, [[]]], ids=["list", "object", "nested"]
)
async def test_a_v2_datatype_that_is_no_string_is_refused(
    client: httpx.AsyncClient, datatype: Any
) -> None:
    """Found by the fuzz suite: a list as a datatype raised TypeError (unhashable) in the
    lookup, a 500."""
    body = {"inputs": [{"name": "X", "shape": [1, 2, 2, 1], "datatype": datatype,
                        "data": [1, 2, 3, 4]}]}  # fmt: skip
    response = await client.post("/v2/models/maxpool/infer", json=body)
    assert response.status_code == 422, response.text
    assert "datatype" in response.json()["error"]
