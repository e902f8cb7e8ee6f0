"""Optional API keys: 401 without a valid bearer key, sessions private to the key that made them,
health, metrics and docs open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from service_helpers import DA1, NPY, X1, assert_problem, client_for, npy

from poolgrad import protocol
from service.deps import owner_of

pytestmark = pytest.mark.anyio

ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}


@pytest.fixture
def keyed_app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app(api_keys="alice-key,bob-key")


@pytest.fixture
async def keyed(keyed_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(keyed_app) as client:
        yield client


async def alice_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/sessions", json={}, headers=ALICE)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    forward = await client.post(
        f"/v1/sessions/{session_id}/forward", content=npy(X1), headers={**NPY, **ALICE}
    )
    assert forward.status_code == 200
    return session_id


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, ("Authorization: Bearer",)),
        ({"Authorization": "Bearer mallory-key"}, ("11 bytes",)),
        ({"Authorization": "Basic YWxpY2Uta2V5Og=="}, ("Authorization: Bearer",)),
        ({"Authorization": "Bearer alice-key2"}, ("10 bytes",)),
        ({"Authorization": "Bearer ålice".encode()}, ("bytes",)),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/x"),
        ("DELETE", "/v1/sessions/x"),
        ("POST", "/v1/sessions/x/forward"),
        ("POST", "/v1/sessions/x/backward"),
        ("POST", "/v1/gradient"),
    ],
)
async def test_missing_or_wrong_key_is_401(
    keyed: httpx.AsyncClient,
    headers: dict[str, str | bytes],
    named: tuple[str, ...],
    method: str,
    path: str,
) -> None:
    response = await keyed.request(method, path, headers=headers, json={})
    assert_problem(response, 401, "unauthorized", *named)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_session_belongs_to_its_key(keyed: httpx.AsyncClient) -> None:
    session_id = await alice_session(keyed)
    for method, suffix, body in [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/forward", npy(X1)),
        ("POST", "/backward", npy(DA1)),
    ]:
        response = await keyed.request(
            method, f"/v1/sessions/{session_id}{suffix}", content=body, headers={**NPY, **BOB}
        )
        assert_problem(response, 404, "session_not_found", session_id)
    unknown = await keyed.get("/v1/sessions/nothing-here", headers=BOB)
    assert unknown.json()["detail"] == response.json()["detail"].replace(session_id, "nothing-here")
    info = await keyed.get(f"/v1/sessions/{session_id}", headers=ALICE)
    assert info.status_code == 200
    assert info.json()["step"] == 1  # bob's forward did not land


async def test_owner_is_a_hash_never_the_key(keyed: httpx.AsyncClient, keyed_app: FastAPI) -> None:
    session_id = await alice_session(keyed)
    store = keyed_app.state.store
    record = await store.get(session_id, owner_of("alice-key"))
    assert record.owner == owner_of("alice-key")
    assert "alice-key" not in record.owner
    # Nowhere in what the store keeps: its fields (the state blob is left out of the repr).
    assert "alice-key" not in repr(record)
    assert b"alice-key" not in bytes(record.state or b"")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
async def test_operations_routes_stay_open(keyed: httpx.AsyncClient, path: str) -> None:
    assert (await keyed.get(path)).status_code == 200


async def test_gradient_with_a_valid_key(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(
        "/v1/gradient",
        content=protocol.encode_safetensors({"X": X1}),
        headers={"Content-Type": protocol.MEDIA_SAFETENSORS, **BOB},
    )
    assert response.status_code == 200, response.text
