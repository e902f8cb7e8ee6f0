"""Limits through the app: body size (with and without Content-Length), slow bodies, idle TTL
with the background reaper, session count and state-byte budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import (
    DA1,
    NPY,
    X1,
    assert_problem,
    assert_state_intact,
    client_for,
    new_session,
    npy,
    primed_session,
)

from poolgrad import protocol
from service.app import _reap_forever
from service.stores import Limits, MemoryStore

pytestmark = pytest.mark.anyio

LIMIT = 4096


class Chunks:
    """A chunked body (no Content-Length) that counts how much of it was pulled."""

    def __init__(self, chunk: bytes, count: int, pause: float = 0.0) -> None:
        self.chunk, self.count, self.pause = chunk, count, pause
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            if self.pause:
                await asyncio.sleep(self.pause)
            self.sent += 1
            yield self.chunk


async def test_declared_oversized_body_is_413_unread(make_app: Callable[..., FastAPI]) -> None:
    async with client_for(make_app(max_body_bytes=LIMIT)) as client:
        session_id = await primed_session(client)
        body = Chunks(b"\0" * 1024, 64)
        response = await client.post(
            f"/v1/sessions/{session_id}/forward",
            content=body,
            headers={**NPY, "Content-Length": str(64 * 1024)},
        )
        assert_problem(response, 413, "payload_too_large", "65536", str(LIMIT))
        assert body.sent == 0
        assert response.headers["connection"] == "close"  # the rest is never read
        await assert_state_intact(client, session_id)


async def test_chunked_oversized_body_is_413_as_soon_as_it_passes(
    make_app: Callable[..., FastAPI],
) -> None:
    async with client_for(make_app(max_body_bytes=LIMIT)) as client:
        session_id = await primed_session(client)
        body = Chunks(b"\0" * 1000, 1000)
        response = await client.post(
            f"/v1/sessions/{session_id}/forward", content=body, headers=NPY
        )
        assert_problem(response, 413, "payload_too_large", str(LIMIT), "5000")
        assert body.sent == 5  # reading stopped at the first chunk past the limit
        await assert_state_intact(client, session_id)


async def test_body_at_the_limit_is_read(make_app: Callable[..., FastAPI]) -> None:
    X = np.ones((1, 4, 4, 2), dtype=np.float32)
    async with client_for(make_app(max_body_bytes=len(npy(X)))) as client:
        session_id = await new_session(client)
        response = await client.post(
            f"/v1/sessions/{session_id}/forward", content=npy(X), headers=NPY
        )
        assert response.status_code == 200


@pytest.mark.parametrize("route", ["/v1/sessions", "/v1/gradient"])
async def test_other_routes_enforce_the_limit(make_app: Callable[..., FastAPI], route: str) -> None:
    async with client_for(make_app(max_body_bytes=LIMIT)) as client:
        content_type = (
            protocol.MEDIA_JSON if route == "/v1/sessions" else protocol.MEDIA_SAFETENSORS
        )
        response = await client.post(
            route, content=Chunks(b" " * 1000, 10), headers={"Content-Type": content_type}
        )
        assert_problem(response, 413, "payload_too_large", str(LIMIT))


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/forward", protocol.MEDIA_JSON), ("/forward", protocol.MEDIA_NPY), ("", None)],
    ids=["json-tensor", "npy-tensor", "named-json"],
)
async def test_json_bodies_have_their_own_smaller_limit(
    make_app: Callable[..., FastAPI], path: str, media_type: str | None
) -> None:
    X = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    json_body = protocol.encode_json_tensor(X)
    app = make_app(max_body_bytes=64 * 1024, max_json_body_bytes=len(json_body) - 1)
    async with client_for(app) as client:
        session_id = await primed_session(client)
        if media_type is None:  # the stateless route's named JSON tensors
            url = "/v1/gradient?pool_size=2"
            body, media_type = (
                protocol.encode_named({"X": X}, protocol.MEDIA_JSON),
                protocol.MEDIA_JSON,
            )
        else:
            url = f"/v1/sessions/{session_id}{path}"
            body = json_body if media_type == protocol.MEDIA_JSON else npy(X)
        response = await client.post(url, content=body, headers={"Content-Type": media_type})
        if media_type == protocol.MEDIA_NPY:
            assert response.status_code == 200, response.text  # binary: the 64 KiB limit
        else:
            assert_problem(
                response, 413, "payload_too_large", str(len(json_body) - 1), "for JSON", "x-npy"
            )
            await assert_state_intact(client, session_id)


async def test_slow_body_times_out_with_408(make_app: Callable[..., FastAPI]) -> None:
    async with client_for(make_app(body_timeout_seconds=0.2)) as client:
        session_id = await primed_session(client)
        body = Chunks(b"\0" * 10, 1000, pause=0.05)
        response = await client.post(
            f"/v1/sessions/{session_id}/forward", content=body, headers=NPY
        )
        assert_problem(response, 408, "request_timeout", "0.2 s")
        assert body.sent < 1000
        await assert_state_intact(client, session_id)


async def test_session_count_limit_is_429_with_retry_after(
    make_app: Callable[..., FastAPI],
) -> None:
    async with client_for(make_app(max_sessions=2, retry_after_seconds=3)) as client:
        first = await primed_session(client)
        await new_session(client)
        response = await client.post("/v1/sessions", json={})
        assert_problem(response, 429, "capacity_exceeded", "max_sessions=2")
        assert response.headers["retry-after"] == "3"
        await assert_state_intact(client, first)
        await client.delete(f"/v1/sessions/{first}")
        assert (await client.post("/v1/sessions", json={})).status_code == 201


async def test_state_budget_refusal_leaves_the_previous_state(
    make_app: Callable[..., FastAPI],
) -> None:
    async with client_for(make_app()) as probe:
        session_id = await primed_session(probe)
        one_state = (await probe.get(f"/v1/sessions/{session_id}")).json()["state_bytes"]
    assert one_state > 0
    async with client_for(make_app(max_state_bytes=one_state + 1)) as client:
        first = await primed_session(client)
        second = await new_session(client)
        response = await client.post(f"/v1/sessions/{second}/forward", content=npy(X1), headers=NPY)
        assert_problem(
            response, 429, "capacity_exceeded", second, f"max_state_bytes={one_state + 1}"
        )
        assert response.headers["retry-after"] == "1"
        # A larger X on the first session would also pass the budget: refused, old state kept.
        bigger = np.concatenate([X1, X1], axis=0)
        response = await client.post(
            f"/v1/sessions/{first}/forward", content=npy(bigger), headers=NPY
        )
        assert_problem(response, 429, "capacity_exceeded", first)
        await assert_state_intact(client, first)
        info = (await client.get(f"/v1/sessions/{second}")).json()
        assert (info["step"], info["state_bytes"]) == (0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_idle_sessions_expire_and_use_renews(make_app: Callable[..., FastAPI]) -> None:
    clock = Clock()
    store = MemoryStore(Limits(max_sessions=10, max_state_bytes=10**6), clock=clock)
    async with client_for(make_app(store=store, session_ttl_seconds=30)) as client:
        kept = await primed_session(client)
        dropped = await primed_session(client)
        for _ in range(4):
            clock.now += 20
            back = await client.post(f"/v1/sessions/{kept}/backward", content=npy(DA1), headers=NPY)
            assert back.status_code == 200
        assert_problem(
            await client.get(f"/v1/sessions/{dropped}"), 404, "session_not_found", dropped
        )
        await assert_state_intact(client, kept)


async def test_expired_sessions_are_reclaimed_before_refusing(
    make_app: Callable[..., FastAPI],
) -> None:
    clock = Clock()
    store = MemoryStore(Limits(max_sessions=2, max_state_bytes=10**6), clock=clock)
    async with client_for(make_app(store=store)) as client:
        await new_session(client, ttl_seconds=5)
        await new_session(client, ttl_seconds=500)
        clock.now += 6
        assert (await client.post("/v1/sessions", json={})).status_code == 201
        metrics = (await client.get("/metrics")).text
        assert "poolgrad_sessions_expired_total 1.0" in metrics
        assert "poolgrad_sessions_refused_total 0.0" in metrics


async def test_background_reaper_reclaims_expired_sessions(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(session_ttl_seconds=0.1, reap_interval_seconds=0.05)
    async with app.router.lifespan_context(app), client_for(app) as client:
        await primed_session(client)
        # Polls the counter only: usage() would release the expired session itself.
        for _ in range(200):  # up to ~10 s; normally done in a few rounds
            if app.state.store.expired_total:
                break
            await asyncio.sleep(0.05)
        assert app.state.store.expired_total == 1
        assert (await app.state.store.usage()).sessions == 0


class FailingOnceStore(MemoryStore):
    """Its first reap fails with a bug, its second with an outage; the third is signalled."""

    def __init__(self) -> None:
        super().__init__(Limits(max_sessions=10, max_state_bytes=10**6))
        self.calls = 0
        self.reaped_after_failure = asyncio.Event()

    async def _reap(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("reaper bug")
        if self.calls == 2:
            raise OSError("store went away")
        self.reaped_after_failure.set()
        return await super()._reap()


async def test_the_reaper_survives_a_failed_round(caplog: pytest.LogCaptureFixture) -> None:
    store = FailingOnceStore()
    reaper = asyncio.create_task(_reap_forever(store, 0.01))
    try:
        with caplog.at_level(logging.WARNING, logger="service.app"):
            await asyncio.wait_for(store.reaped_after_failure.wait(), timeout=30)
    finally:
        reaper.cancel()
    failed = [record for record in caplog.records if "round failed" in record.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert "reaper bug" in caplog.text  # with its traceback
    assert "store went away" in caplog.text
