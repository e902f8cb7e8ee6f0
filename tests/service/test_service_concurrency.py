"""Concurrency: the engine runs in worker threads, so requests really overlap. Distinct sessions
never mix, and one session's forward and backward never interleave (no torn state)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import (
    NPY,
    X1,
    assert_problem,
    client_for,
    expected,
    new_session,
    npy,
    run_forward,
)

from engine import EngineOptions, PoolSpec, PoolState, backward, forward, gradient
from poolgrad import protocol
from poolgrad.protocol import inference
from service.compute import EngineCalls
from service.stores import Limits, MemoryStore, Usage

pytestmark = pytest.mark.anyio

SHAPE = (4, 16, 16, 8)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def distinct_input(seed: int) -> np.ndarray:
    """Values all different, in an order that depends on ``seed`` (so winners differ)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.prod(SHAPE)).reshape(SHAPE).astype(np.float64)


async def test_parallel_pairs_on_distinct_sessions_get_their_own_results(
    client: httpx.AsyncClient,
) -> None:
    async def pair(seed: int) -> None:
        X = distinct_input(seed)
        A_expected, _ = expected(X)
        dA = np.full(A_expected.shape, float(seed + 1))
        session_id = await new_session(client)
        forward = await client.post(
            f"/v1/sessions/{session_id}/forward", content=npy(X), headers=NPY
        )
        np.testing.assert_array_equal(protocol.decode_npy(forward.content), A_expected)
        backward = await client.post(
            f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=NPY
        )
        np.testing.assert_array_equal(protocol.decode_npy(backward.content), expected(X, dA)[1])

    async with asyncio.TaskGroup() as group:
        for seed in range(24):
            group.create_task(pair(seed))


async def test_racing_forward_and_backward_on_one_session_never_tear(
    client: httpx.AsyncClient,
) -> None:
    inputs = [distinct_input(seed) for seed in range(3)]
    dA = np.linspace(-1, 1, np.prod(expected(inputs[0])[0].shape)).reshape(
        expected(inputs[0])[0].shape
    )
    dX_of = [expected(X, dA)[1] for X in inputs]
    session_id = await new_session(client)
    await client.post(f"/v1/sessions/{session_id}/forward", content=npy(inputs[0]), headers=NPY)
    step_input = {1: 0}
    seen: list[tuple[int, np.ndarray]] = []

    async def forward(index: int) -> None:
        response = await client.post(
            f"/v1/sessions/{session_id}/forward", content=npy(inputs[index]), headers=NPY
        )
        assert response.status_code == 200
        step_input[int(response.headers["etag"].strip('"'))] = index

    async def backward() -> None:
        response = await client.post(
            f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=NPY
        )
        assert response.status_code == 200
        seen.append(
            (int(response.headers["etag"].strip('"')), protocol.decode_npy(response.content))
        )

    async with asyncio.TaskGroup() as group:
        for round_ in range(30):
            group.create_task(forward(round_ % 3))
            group.create_task(backward())
            group.create_task(backward())

    assert sorted(step_input) == list(range(1, 32))  # every forward got its own step
    assert len(seen) == 60
    for step, dX in seen:
        # The dX is exactly the one of the forward that made the step the answer names.
        np.testing.assert_array_equal(dX, dX_of[step_input[step]])


@pytest.mark.parametrize("compute_threads", [1, 3])
async def test_compute_threads_bounds_the_engine_calls_at_once(
    make_app: Callable[..., FastAPI], compute_threads: int
) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def slow_forward(
        X: np.ndarray, spec: PoolSpec, options: EngineOptions
    ) -> tuple[np.ndarray, PoolState]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # long enough for every request to be waiting by now
        with lock:
            running -= 1
        return forward(X, spec, options=options)

    app = make_app(compute_threads=compute_threads)
    app.state.compute.engine = EngineCalls(forward=slow_forward)
    app.state.compute.inline_max_bytes = 0  # X1 is small: it would run on the loop
    async with client_for(app) as client:
        sessions = [await new_session(client) for _ in range(8)]
        responses = await asyncio.gather(
            *(
                client.post(f"/v1/sessions/{s}/forward", content=npy(X1), headers=NPY)
                for s in sessions
            )
        )
    assert [r.status_code for r in responses] == [200] * 8
    assert most == compute_threads


class PausedEngine:
    """The app's engine forward replaced (through ``Compute.engine``) by one that stops inside
    the worker thread until the test lets it go, so the test can act while a forward is in
    flight."""

    def __init__(self, app: FastAPI) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        app.state.compute.engine = EngineCalls(forward=self._forward)
        app.state.compute.inline_max_bytes = 0  # paused on the loop, nothing else would run

    def _forward(
        self, X: np.ndarray, spec: PoolSpec, options: EngineOptions
    ) -> tuple[np.ndarray, PoolState]:
        self.started.set()
        if not self.release.wait(timeout=30):
            raise RuntimeError("the test never released the engine")
        return forward(X, spec, options=options)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 30)


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "expired-not-reaped"])
async def test_a_session_expiring_during_its_forward_stays_gone(
    make_app: Callable[..., FastAPI], reaped: bool
) -> None:
    clock = FakeClock()
    store = MemoryStore(Limits(max_sessions=10, max_state_bytes=10**6), clock=clock)
    app = make_app(store=store)
    engine = PausedEngine(app)
    async with client_for(app) as client:
        session_id = await new_session(client, ttl_seconds=5)
        path = f"/v1/sessions/{session_id}/forward"
        in_flight = asyncio.create_task(client.post(path, content=npy(X1), headers=NPY))
        await engine.wait_started()
        clock.now += 10
        if reaped:
            assert await store.reap() == 1
        engine.release.set()
        assert_problem(await in_flight, 404, "session_not_found", session_id)
        assert (await client.get(f"/v1/sessions/{session_id}")).status_code == 404
        # Released exactly once, by the reap or by the next call that counts (the contract).
        assert await store.usage() == Usage(sessions=0, state_bytes=0)
        assert store.expired_total == 1


async def test_delete_during_a_forward_is_final(client: httpx.AsyncClient, app: FastAPI) -> None:
    session_id = await new_session(client)
    engine = PausedEngine(app)
    path = f"/v1/sessions/{session_id}/forward"
    in_flight = asyncio.create_task(client.post(path, content=npy(X1), headers=NPY))
    await engine.wait_started()
    # DELETE does not wait for the forward in flight.
    assert (await client.delete(f"/v1/sessions/{session_id}")).status_code == 204
    engine.release.set()
    assert_problem(await in_flight, 404, "session_not_found", session_id)
    assert (await client.get(f"/v1/sessions/{session_id}")).status_code == 404
    assert await app.state.store.usage() == Usage(sessions=0, state_bytes=0)


def record_forward_threads(app: FastAPI) -> tuple[list[int], list[int]]:
    """The app's engine forward, recording the thread of each call and the engine threads it
    was allowed, in the two lists returned."""
    threads: list[int] = []
    engine_threads: list[int] = []

    def recording_forward(
        X: np.ndarray, spec: PoolSpec, *, options: EngineOptions
    ) -> tuple[np.ndarray, PoolState]:
        threads.append(threading.get_ident())
        engine_threads.append(options.threads)
        return forward(X, spec, options=options)

    app.state.compute.engine = EngineCalls(forward=recording_forward)
    return threads, engine_threads


@pytest.mark.parametrize(
    ("media_type", "shape", "inline"),
    [
        (protocol.MEDIA_NPY, (2, 4, 4, 3), True),
        (protocol.MEDIA_NPY, (4, 32, 32, 32), False),  # 512 KiB: over INLINE_MAX_BYTES
        (protocol.MEDIA_JSON, (2, 4, 4, 3), True),
        (protocol.MEDIA_JSON, (1, 32, 32, 8), False),  # ~100 KiB of JSON: over its bound
    ],
)
async def test_small_work_runs_on_the_loop_and_large_work_in_a_worker_thread(
    app: FastAPI, client: httpx.AsyncClient, media_type: str, shape: tuple[int, ...], inline: bool
) -> None:
    threads, engine_threads = record_forward_threads(app)
    session_id = await new_session(client)
    X = distinct_input(3)[:1].repeat(shape[0], 0) if shape == X1.shape else None
    X = np.random.default_rng(0).standard_normal(shape).astype(np.float32) if X is None else X
    response = await client.post(
        f"/v1/sessions/{session_id}/forward",
        content=protocol.encode_tensor(X, media_type),
        headers={"Content-Type": media_type},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        protocol.decode_tensor(response.content, media_type), expected(X)[0]
    )
    assert (threads == [threading.get_ident()]) is inline
    # Work on the loop is small: the engine does not split it over threads either.
    assert engine_threads == [1 if inline else app.state.compute.engine_options.threads]


@pytest.mark.parametrize(
    ("spec", "inline"),
    [
        ({"pool_size": [4, 4], "strides": 1}, True),  # 16 elements: INLINE_MAX_WINDOW
        ({"pool_size": [5, 5], "strides": 1}, False),
        ({"pool_size": [2, 9], "strides": 1, "padding": "same"}, False),
        ({"pool_size": [17], "strides": 1}, False),
        ({"pool_size": [2, 2, 5], "strides": 1}, False),
    ],
)
async def test_small_bodies_with_large_windows_are_computed_in_a_worker_thread(
    app: FastAPI, client: httpx.AsyncClient, spec: dict[str, object], inline: bool
) -> None:
    """A small body bounds the input, not the work (output x window): every route that may
    compute on the loop sends large windows to a thread, forward, backward and stateless."""
    calls: list[tuple[str, int]] = []

    def recorded(name: str, function: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, options: EngineOptions) -> object:
            calls.append((name, threading.get_ident()))
            return function(*args, options=options)

        return call

    app.state.compute.engine = EngineCalls(
        forward=recorded("forward", forward),
        backward=recorded("backward", backward),
        gradient=recorded("gradient", gradient),
    )
    ndim = len(spec["pool_size"])  # type: ignore[arg-type]
    X = np.random.default_rng(0).standard_normal((1, *(20,) * ndim, 2)).astype(np.float32)
    session_id = await new_session(client, **spec)
    A = protocol.decode_npy((await run_forward(client, session_id, X)).content)
    response = await client.post(
        f"/v1/sessions/{session_id}/backward", content=npy(np.ones_like(A)), headers=NPY
    )
    assert response.status_code == 200, response.text
    named = protocol.encode_named({"X": X, "dA": np.ones_like(A)}, protocol.MEDIA_SAFETENSORS)
    response = await client.post(
        "/v1/gradient",
        params=protocol.spec_to_query(spec),
        content=named,
        headers={"Content-Type": protocol.MEDIA_SAFETENSORS},
    )
    assert response.status_code == 200, response.text
    assert [name for name, _ in calls] == ["forward", "backward", "gradient"]
    loop = threading.get_ident()
    assert all((thread == loop) is inline for _, thread in calls), calls


@pytest.mark.parametrize(
    ("binary", "shape", "sequence", "inline"),
    [
        (True, (2, 4, 4, 3), False, True),
        (True, (4, 32, 32, 32), False, False),  # 512 KiB: over INLINE_MAX_BYTES
        (False, (2, 4, 4, 3), True, True),
        (False, (1, 32, 32, 8), True, False),  # ~100 KiB of JSON: over its bound
    ],
)
async def test_v2_computes_small_work_on_the_loop_and_large_work_in_a_worker_thread(
    app: FastAPI,
    client: httpx.AsyncClient,
    binary: bool,
    shape: tuple[int, ...],
    sequence: bool,
    inline: bool,
) -> None:
    """/v2 takes the rule of /v1 (``Compute.runs_inline``), stateless and in a sequence."""
    threads, _ = record_forward_threads(app)
    X = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tensor: dict[str, object] = {"name": "X", "shape": list(shape), "datatype": "FP32"}
    parameters = {"sequence_id": 5, "sequence_start": True} if sequence else {}
    if binary:
        tensor["parameters"] = {"binary_data_size": X.nbytes}
        header = protocol.dumps({"inputs": [tensor], "parameters": parameters})
        body, headers = header + X.tobytes(), {inference.HEADER_LENGTH: str(len(header))}
    else:
        tensor["data"] = X.ravel().tolist()
        body, headers = protocol.dumps({"inputs": [tensor], "parameters": parameters}), {}
    response = await client.post("/v2/models/maxpool/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert (threads == [threading.get_ident()]) is inline
