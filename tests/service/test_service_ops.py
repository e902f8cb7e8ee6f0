"""Operations: health and readiness, metrics, request ids and log lines, the OpenAPI document,
store outages (503) and unexpected failures (500 without internals)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from service_helpers import DA1, NPY, X1, assert_problem, client_for, npy, primed_session

from poolgrad import protocol
from service import Settings, create_app, middleware
from service.stores import Limits, MemoryStore, StoredSession, Usage

pytestmark = pytest.mark.anyio

LIMITS = Limits(max_sessions=100, max_state_bytes=10**8)


class UnreachableStore(MemoryStore):
    """A store whose backend cannot be reached (what a Redis outage looks like to the store)."""

    def __init__(self) -> None:
        super().__init__(LIMITS)
        self.down = False

    async def _read(self, key: str, owner: str, *, state: bool) -> StoredSession | None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused to 10.0.0.7:6379")
        return await super()._read(key, owner, state=state)

    async def _ping(self) -> None:
        if self.down:
            raise TimeoutError("no answer within 1 s")

    async def _usage(self) -> Usage:
        if self.down:
            raise ConnectionResetError("reset")
        return await super()._usage()


class BrokenStore(MemoryStore):
    """A store with a bug: an exception no one anticipated."""

    async def _read(self, key: str, owner: str, *, state: bool) -> StoredSession | None:
        raise RuntimeError(f"secret internals of {key}")


class CorruptingStore(MemoryStore):
    """Hands back sessions whose engine state has one byte flipped."""

    async def _read(self, key: str, owner: str, *, state: bool) -> StoredSession | None:
        stored = await super()._read(key, owner, state=state)
        if stored is None or stored.state is None:
            return stored
        blob = stored.state
        return stored._replace(state=blob[:-1] + bytes([blob[-1] ^ 0xFF]))


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_store_outage_is_503_with_retry_after_and_not_ready(
    make_app: Callable[..., FastAPI],
) -> None:
    store = UnreachableStore()
    async with client_for(make_app(store=store, retry_after_seconds=7)) as client:
        session_id = await primed_session(client)
        assert (await client.get("/readyz")).status_code == 200
        store.down = True
        response = await client.post(
            f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY
        )
        assert_problem(response, 503, "store_unavailable", "Connection refused")
        assert response.headers["retry-after"] == "7"
        ready = await client.get("/readyz")
        assert_problem(ready, 503, "store_unavailable", "no answer")
        assert ready.headers["retry-after"] == "7"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        store.down = False
        assert (await client.get("/readyz")).status_code == 200


async def test_unexpected_error_is_a_500_problem_without_internals(
    make_app: Callable[..., FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    async with client_for(make_app(store=BrokenStore(LIMITS))) as client:
        response = await client.get("/v1/sessions/abc", headers={"X-Request-ID": "req-500"})
        assert (await client.get("/healthz")).status_code == 200
    assert_problem(response, 500, "internal_error", "log")
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert response.json()["request_id"] == "req-500"
    assert "secret internals" in caplog.text  # the traceback went to the log


async def test_corrupt_cached_state_is_a_500(make_app: Callable[..., FastAPI]) -> None:
    async with client_for(make_app(store=CorruptingStore(LIMITS))) as client:
        session_id = await primed_session(client)
        response = await client.post(
            f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY
        )
    assert_problem(response, 500, "internal_error", "cached forward state")
    assert "CRC" not in response.text


async def test_metrics_count_requests_engine_time_sessions_and_bytes(
    client: httpx.AsyncClient,
) -> None:
    session_id = await primed_session(client)
    await client.post(f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY)
    await client.get("/v1/sessions/unknown")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'poolgrad_requests_total{method="POST",route="/v1/sessions/{session_id}/forward",'
        'status="200"} 1.0' in text
    )
    assert (
        'poolgrad_requests_total{method="GET",route="/v1/sessions/{session_id}",status="404"} 1.0'
        in text
    )
    assert 'poolgrad_request_duration_seconds_count{method="POST",route="/v1/sessions"}' in text
    assert 'poolgrad_engine_seconds_count{operation="forward"} 1.0' in text
    assert 'poolgrad_engine_seconds_count{operation="backward"} 1.0' in text
    assert "poolgrad_sessions_live 1.0" in text
    state_bytes = (await client.get(f"/v1/sessions/{session_id}")).json()["state_bytes"]
    assert f"poolgrad_state_bytes {float(state_bytes)}" in text
    assert "poolgrad_sessions_expired_total 0.0" in text


async def test_engine_time_is_one_observation_per_engine_call(client: httpx.AsyncClient) -> None:
    """The stateless gradient with dA is one engine call (forward and backward fused), observed
    as ``gradient``; without dA it is a forward."""
    named = {"X": X1, "dA": DA1}
    for tensors in (named, {"X": X1}, named):
        response = await client.post(
            "/v1/gradient",
            content=protocol.encode_safetensors(tensors),
            headers={"Content-Type": protocol.MEDIA_SAFETENSORS},
        )
        assert response.status_code == 200, response.text
    text = (await client.get("/metrics")).text
    assert 'poolgrad_engine_seconds_count{operation="gradient"} 2.0' in text
    assert 'poolgrad_engine_seconds_count{operation="forward"} 1.0' in text
    assert 'poolgrad_engine_seconds_count{operation="backward"} 0.0' in text
    assert "poolgrad_sessions_refused_total 0.0" in text


async def test_unmatched_paths_share_one_metrics_label(client: httpx.AsyncClient) -> None:
    for number in range(3):
        await client.get(f"/probe/{number}")
    text = (await client.get("/metrics")).text
    assert 'route="unmatched",status="404"} 3.0' in text
    assert "/probe/" not in text


async def test_apps_have_separate_registries() -> None:
    first, second = create_app(Settings()), create_app(Settings())
    async with client_for(first) as client:
        await client.get("/healthz")
    async with client_for(second) as client:
        text = (await client.get("/metrics")).text
    assert 'route="/healthz"' not in text


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("has space", False), ("", False)],
)
async def test_request_id_is_honoured_or_generated(
    client: httpx.AsyncClient, sent: str, kept: bool
) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert (returned == sent) is kept
    assert 1 <= len(returned) <= 128


async def test_generated_request_ids_are_unique_in_a_process_and_across_a_fork(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(re.fullmatch("[0-9a-f]{32}", value) for value in ids)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(writer, middleware._request_id({}).encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(writer)
    from_child = os.read(reader, 64).decode()
    os.close(reader)
    # Another process: another random prefix, not the next number of this one's.
    assert from_child[:16] != ids[0][:16]
    assert from_child not in ids


async def test_one_log_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    session_id = await primed_session(client)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.access"):
        await client.post(
            f"/v1/sessions/{session_id}/backward",
            content=npy(DA1),
            headers={**NPY, "X-Request-ID": "trace-42"},
        )
    lines = [record for record in caplog.records if record.name == "service.access"]
    assert len(lines) == 1
    message = lines[0].getMessage()
    for part in ("POST", "/v1/sessions/{session_id}/backward", " 200 ", session_id, "trace-42"):
        assert part in message
    assert lines[0].duration_ms >= 0  # type: ignore[attr-defined]


async def test_created_session_id_is_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        session_id = (await client.post("/v1/sessions", json={})).json()["id"]
    assert f"session={session_id}" in caplog.text


async def test_openapi_documents_every_route_body_and_error(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    expected = {
        "/v1/sessions": {"post"},
        "/v1/sessions/{session_id}": {"get", "delete"},
        "/v1/sessions/{session_id}/forward": {"post"},
        "/v1/sessions/{session_id}/backward": {"post"},
        "/v1/gradient": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    forward = paths["/v1/sessions/{session_id}/forward"]["post"]
    assert set(forward["requestBody"]["content"]) == {protocol.MEDIA_NPY, protocol.MEDIA_JSON}
    assert set(forward["responses"]["200"]["content"]) == {protocol.MEDIA_NPY, protocol.MEDIA_JSON}
    gradient = paths["/v1/gradient"]["post"]
    assert protocol.MEDIA_SAFETENSORS in gradient["requestBody"]["content"]
    assert {p["name"] for p in gradient["parameters"]} >= {"mode", "pool_size", "padding"}
    create = paths["/v1/sessions"]["post"]
    assert (
        "ttl_seconds"
        in create["requestBody"]["content"][protocol.MEDIA_JSON]["schema"]["properties"]
    )
    documented = " ".join(
        response.get("description", "")
        for item in paths.values()
        for operation in item.values()
        for response in operation["responses"].values()
    )
    for code in protocol.PROBLEMS:
        if code in ("bad_request", "not_found", "method_not_allowed", "internal_error"):
            continue
        assert f"`{code}`" in documented, code
    backward = paths["/v1/sessions/{session_id}/backward"]["post"]
    assert {"404", "409", "412", "413", "415", "422"} <= set(backward["responses"])
    problem = backward["responses"]["412"]["content"]
    assert set(problem) == {protocol.MEDIA_PROBLEM}
    assert {"status", "code", "title", "detail"} <= set(
        problem[protocol.MEDIA_PROBLEM]["schema"]["properties"]
    )
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


@pytest.mark.parametrize(
    ("choice", "kernels"), [("numpy", "numpy"), ("auto", "compiled"), ("compiled", "compiled")]
)
async def test_readyz_reports_the_engine_kernels_compiled_at_start_up(
    make_app: Callable[..., FastAPI],
    caplog: pytest.LogCaptureFixture,
    choice: str,
    kernels: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="service.app"):
        app = make_app(engine_kernels=choice, engine_threads=2)
    assert f"engine: {kernels} kernels" in caplog.text
    if kernels == "compiled":  # said before the wait too: a first start compiles for a minute
        loading = caplog.text.index("engine: loading the compiled kernels")
        assert loading < caplog.text.index("engine: compiled kernels ready in")
    assert app.state.compute.engine_options.threads == 2
    async with client_for(app) as client:
        response = await client.get("/readyz")
    assert response.json() == {"status": "ready", "engine_kernels": kernels}
