"""Fuzzing the spec parsers through the app: random and mutated session bodies (JSON) and
``/v1/gradient`` query strings either work or end in a documented 4xx problem, never a 5xx,
and a refused session body creates nothing. The decoders' own fuzzing is in
tests/protocol/test_protocol_fuzz.py; the bodies here reuse its strategies."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fuzz_strategies import CLAIMS, FIELD_NAMES, JSON_VALUES, QUERY_VALUES, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import JSON, client_for

from poolgrad import protocol
from service import Settings, create_app

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SPEC_VALUES = st.one_of(
    JSON_VALUES,
    CLAIMS,
    st.lists(CLAIMS, max_size=4),
    st.lists(st.lists(CLAIMS, max_size=3), max_size=3),
    st.sampled_from([*(c for f in protocol.FIELDS for c in f.choices), "", "MAX"]),
)
SESSION_BODIES = st.dictionaries(
    st.sampled_from([*FIELD_NAMES, "ttl_seconds"]) | st.text(max_size=6), SPEC_VALUES, max_size=5
)

X = np.linspace(-1.0, 1.0, 2 * 4 * 4 * 2, dtype=np.float32).reshape(2, 4, 4, 2)
NAMED = protocol.encode_named(
    {"X": X, "dA": np.ones((2, 2, 2, 2), np.float32)}, JSON["Content-Type"]
)


def assert_documented(response: httpx.Response) -> None:
    """A success, or a problem with a documented 4xx status and code; never a 5xx."""
    if response.status_code < 400:
        return
    assert response.status_code < 500, response.text
    problem = response.json()
    assert protocol.PROBLEMS[problem["code"]].status == response.status_code


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def fuzz_app() -> FastAPI:
    return create_app(Settings(max_sessions=100_000))


@FUZZ
@given(fields=SESSION_BODIES, data=st.data())
async def test_session_bodies_create_or_refuse(
    fuzz_app: FastAPI, fields: dict[str, Any], data: st.DataObject
) -> None:
    body = json.dumps(fields).encode()
    if data.draw(st.booleans()):
        body = mutate(body, data)
    before = (await fuzz_app.state.store.usage()).sessions
    async with client_for(fuzz_app) as client:
        response = await client.post("/v1/sessions", content=body, headers=JSON)
    assert_documented(response)
    after = (await fuzz_app.state.store.usage()).sessions
    assert after == before + (response.status_code == 201)


@FUZZ
@given(
    items=st.lists(
        st.tuples(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), QUERY_VALUES), max_size=5
    )
)
async def test_gradient_query_strings_compute_or_refuse(
    fuzz_app: FastAPI, items: list[tuple[str, str]]
) -> None:
    async with client_for(fuzz_app) as client:
        response = await client.post("/v1/gradient", params=items, content=NAMED, headers=JSON)
    assert_documented(response)
    if response.status_code == 200:
        assert set(protocol.decode_named(response.content, protocol.MEDIA_JSON)) == {"A", "dX"}
