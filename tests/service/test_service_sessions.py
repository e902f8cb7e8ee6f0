"""Sessions over the ASGI transport: create, get, delete, forward, backward, against the engine."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import (
    DA1,
    JSON,
    NPY,
    X1,
    client_for,
    expected,
    new_session,
    npy,
    post_backward,
    primed_session,
    run_forward,
)

from engine import PoolSpec, forward
from poolgrad import protocol
from poolgrad.protocol.spec import DEFAULTS
from service.openapi import SessionModel
from service.stores import Limits, MemoryStore, Usage

pytestmark = pytest.mark.anyio


async def test_create_answers_normalized_spec_location_and_step_zero(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/sessions", json={"mode": "avg", "pool_size": 3, "strides": 1, "ttl_seconds": 120}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "spec", "ttl_seconds", "expires_at", "step"}
    assert response.headers["location"] == f"/v1/sessions/{body['id']}"
    assert body["step"] == 0
    assert body["ttl_seconds"] == 120
    # Normalized: every field present, the rest at the schema's defaults.
    assert body["spec"] == {**DEFAULTS, "mode": "avg", "pool_size": [3, 3], "strides": [1, 1]}
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.tzinfo is not None
    assert 100 < (expires - datetime.now(UTC)).total_seconds() <= 120


async def test_create_with_empty_body_takes_every_default(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/sessions")
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["pool_size"] == [2, 2]
    assert response.json()["ttl_seconds"] == 600


async def test_session_ids_are_unguessable(client: httpx.AsyncClient) -> None:
    ids = {await new_session(client) for _ in range(20)}
    assert len(ids) == 20
    # URL-safe base64 of at least 16 bytes (128 bits): each id decodes to its random bytes.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22,}", session_id) for session_id in ids), ids
    raw = b"".join(base64.urlsafe_b64decode(session_id + "==") for session_id in ids)
    assert len(raw) >= 20 * 16
    # Random bytes, not a counter or a clock: 320+ draws cover most of the 256 byte values
    # (about 181 expected for 320 draws; a counter or timestamp prefix covers a few dozen)
    # and no two ids share their first 6 characters (36 bits).
    assert len(set(raw)) > 120, sorted(set(raw))
    assert len({session_id[:6] for session_id in ids}) == 20


async def test_get_before_forward_has_no_state(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    body = (await client.get(f"/v1/sessions/{session_id}")).json()
    assert set(body) == set(SessionModel.model_fields)  # what OpenAPI promises, no more
    assert body["step"] == 0
    assert body["input_shape"] is None
    assert body["output_shape"] is None
    assert body["dtype"] is None
    assert body["state_bytes"] == 0


@pytest.mark.parametrize("mode", ["max", "min", "avg"])
async def test_forward_and_backward_equal_the_engine(client: httpx.AsyncClient, mode: str) -> None:
    session_id = await new_session(client, mode=mode)
    response = await run_forward(client, session_id, X1)
    A, dX = expected(X1, DA1, mode=mode)
    assert response.headers["content-type"] == protocol.MEDIA_NPY
    assert response.headers["etag"] == '"1"'
    np.testing.assert_array_equal(protocol.decode_npy(response.content), A)

    for _ in range(2):  # backward is repeatable: the state stays
        back = await client.post(
            f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY
        )
        assert back.status_code == 200, back.text
        np.testing.assert_array_equal(protocol.decode_npy(back.content), dX)

    info = (await client.get(f"/v1/sessions/{session_id}")).json()
    assert info["step"] == 1
    assert info["input_shape"] == list(X1.shape)
    assert info["output_shape"] == list(A.shape)
    assert info["dtype"] == "float32"
    assert info["state_bytes"] == forward(X1, PoolSpec(mode=mode))[1].nbytes


async def test_forward_replaces_state_and_counts_steps(client: httpx.AsyncClient) -> None:
    session_id = await primed_session(client)
    X2 = np.flip(X1, axis=2).copy()
    response = await run_forward(client, session_id, X2)
    assert response.headers["etag"] == '"2"'
    back = await client.post(f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY)
    assert back.headers["etag"] == '"2"'
    np.testing.assert_array_equal(protocol.decode_npy(back.content), expected(X2, DA1)[1])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
async def test_json_tensors_round_trip_every_float_dtype(
    client: httpx.AsyncClient, dtype: str
) -> None:
    X = X1.astype(dtype)
    dA = DA1.astype(dtype)
    session_id = await new_session(client)
    response = await client.post(
        f"/v1/sessions/{session_id}/forward", content=protocol.encode_json_tensor(X), headers=JSON
    )
    assert response.headers["content-type"] == protocol.MEDIA_JSON
    A, dX = expected(X, dA)
    np.testing.assert_array_equal(protocol.decode_json_tensor(response.content), A)
    back = await client.post(
        f"/v1/sessions/{session_id}/backward", content=protocol.encode_json_tensor(dA), headers=JSON
    )
    decoded = protocol.decode_json_tensor(back.content)
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, dX)


async def test_json_carries_non_finite_values_by_name(client: httpx.AsyncClient) -> None:
    X = X1.copy()
    X[0, 0, 0, 0] = np.nan
    X[1, 0, 0, 0] = np.inf
    session_id = await new_session(client)
    response = await client.post(
        f"/v1/sessions/{session_id}/forward", content=protocol.encode_json_tensor(X), headers=JSON
    )
    assert '"NaN"' in response.text
    assert '"Infinity"' in response.text
    np.testing.assert_array_equal(protocol.decode_json_tensor(response.content), expected(X)[0])


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, protocol.MEDIA_NPY),
        ("*/*", protocol.MEDIA_NPY),
        ("application/json", protocol.MEDIA_JSON),
        ("application/*", protocol.MEDIA_NPY),
        ("application/json;q=0.5, application/x-npy;q=0.9", protocol.MEDIA_NPY),
        ("application/x-npy;q=0, */*;q=0.1", protocol.MEDIA_JSON),
        ("text/html, application/json", protocol.MEDIA_JSON),
    ],
)
async def test_accept_picks_the_encoder(
    client: httpx.AsyncClient, accept: str | None, answer: str
) -> None:
    session_id = await new_session(client)
    headers = {**NPY, **({"Accept": accept} if accept else {})}
    response = await client.post(
        f"/v1/sessions/{session_id}/forward", content=npy(X1), headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == answer
    A = protocol.decode_tensor(response.content, answer)
    np.testing.assert_array_equal(A, expected(X1)[0])


@pytest.mark.parametrize("if_match", ['"1"', 'W/"1"', "*", '"0", "1"'])
async def test_if_match_naming_the_cached_step_passes(
    client: httpx.AsyncClient, if_match: str
) -> None:
    session_id = await primed_session(client)
    response = await post_backward(client, session_id, if_match=if_match)
    assert response.status_code == 200, response.text


async def test_delete_drops_the_session_and_its_state(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    session_id = await primed_session(client)
    assert (await app.state.store.usage()).state_bytes > 0
    assert (await client.delete(f"/v1/sessions/{session_id}")).status_code == 204
    assert (await client.get(f"/v1/sessions/{session_id}")).status_code == 404
    assert (await client.delete(f"/v1/sessions/{session_id}")).status_code == 404
    assert await app.state.store.usage() == Usage(sessions=0, state_bytes=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("use", ["get", "forward", "backward"])
async def test_every_use_renews_the_ttl(make_app: Callable[..., FastAPI], use: str) -> None:
    clock = FakeClock()
    store = MemoryStore(Limits(max_sessions=10, max_state_bytes=10**6), clock=clock)
    async with client_for(make_app(store=store)) as client:
        used = await primed_session(client, ttl_seconds=30)
        idle = await primed_session(client, ttl_seconds=30)
        for _ in range(3):
            clock.now += 20  # 60 s in all: only renewals keep a 30 s session
            if use == "get":
                response = await client.get(f"/v1/sessions/{used}")
            elif use == "forward":
                response = await client.post(
                    f"/v1/sessions/{used}/forward", content=npy(X1), headers=NPY
                )
            else:
                response = await client.post(
                    f"/v1/sessions/{used}/backward", content=npy(DA1), headers=NPY
                )
            assert response.status_code == 200, response.text
        assert (await client.get(f"/v1/sessions/{used}")).status_code == 200
        assert (await client.get(f"/v1/sessions/{idle}")).status_code == 404


async def test_da_is_cast_to_the_dtype_of_x(client: httpx.AsyncClient) -> None:
    session_id = await primed_session(client)  # X1 is float32
    dA = DA1.astype(np.float64) + 1e-12  # not representable in float32
    back = await client.post(f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=NPY)
    assert back.status_code == 200, back.text
    dX = protocol.decode_npy(back.content)
    assert dX.dtype == np.float32
    np.testing.assert_array_equal(dX, expected(X1, dA.astype(np.float32))[1])


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("ties", ["all", "first", "split"])
async def test_spec_options_reach_the_engine(
    client: httpx.AsyncClient, layout: str, ties: str
) -> None:
    X = np.zeros((1, 4, 4, 2), dtype=np.float64)  # ties everywhere but one window
    X[0, 0, 0, 0] = 1.0
    spec = {"layout": layout, "ties": ties, "padding": "same", "strides": 1}
    A, _ = expected(X, **spec)
    dA = np.arange(A.size, dtype=np.float64).reshape(A.shape)
    session_id = await new_session(client, **spec)
    response = await run_forward(client, session_id, X)
    np.testing.assert_array_equal(protocol.decode_npy(response.content), A)
    back = await client.post(f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=NPY)
    np.testing.assert_array_equal(protocol.decode_npy(back.content), expected(X, dA, **spec)[1])
