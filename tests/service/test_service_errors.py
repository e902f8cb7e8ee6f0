"""The contract's error rows not driven by the body: unknown sessions and routes, ordering
conditions (no forward, stale step), media types on every tensor route."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from service_helpers import (
    DA1,
    NPY,
    X1,
    assert_problem,
    client_for,
    new_session,
    npy,
    post_backward,
    primed_session,
)

pytestmark = pytest.mark.anyio

UNKNOWN = "no-such-session-0123456789"


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/forward", npy(X1)),
        ("POST", "/backward", npy(DA1)),
    ],
)
async def test_unknown_session_is_404_naming_it(
    client: httpx.AsyncClient, method: str, suffix: str, body: bytes | None
) -> None:
    response = await client.request(
        method, f"/v1/sessions/{UNKNOWN}{suffix}", content=body, headers=NPY if body else {}
    )
    assert_problem(response, 404, "session_not_found", UNKNOWN)


async def test_deleted_session_is_404(client: httpx.AsyncClient) -> None:
    session_id = await primed_session(client)
    await client.delete(f"/v1/sessions/{session_id}")
    response = await client.post(
        f"/v1/sessions/{session_id}/backward", content=npy(DA1), headers=NPY
    )
    assert_problem(response, 404, "session_not_found", session_id)


async def test_backward_before_forward_is_409(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    response = await post_backward(client, session_id)
    assert_problem(response, 409, "no_forward", session_id, "step 0")


async def test_if_match_of_a_replaced_step_is_412(client: httpx.AsyncClient) -> None:
    session_id = await primed_session(client)
    await client.post(f"/v1/sessions/{session_id}/forward", content=npy(X1), headers=NPY)
    response = await post_backward(client, session_id, if_match='"1"')
    assert_problem(response, 412, "stale_step", '"1"', "step 2")


@pytest.mark.parametrize("suffix", ["forward", "backward"])
async def test_tensor_routes_refuse_unknown_media_types(
    client: httpx.AsyncClient, suffix: str
) -> None:
    session_id = await primed_session(client)
    response = await client.post(
        f"/v1/sessions/{session_id}/{suffix}",
        content=b"1,2,3",
        headers={"Content-Type": "text/csv; charset=utf-8"},
    )
    assert_problem(response, 415, "unsupported_media_type", "text/csv")
    response = await client.post(
        f"/v1/sessions/{session_id}/{suffix}",
        content=npy(X1 if suffix == "forward" else DA1),
        headers={**NPY, "Accept": "application/xml, text/*"},
    )
    assert_problem(response, 406, "not_acceptable", "application/xml, text/*")


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v9/everything"), 404, "not_found", "/v9/everything")


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/sessions")
    assert_problem(response, 405, "method_not_allowed", "PUT", "/v1/sessions")
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize(
    ("declared", "named"),
    [
        (b"lots", "'lots'"),
        ("\N{SUPERSCRIPT TWO}".encode("latin-1"), "'\N{SUPERSCRIPT TWO}'"),
        (b"9" * 5000, "'99999"),
        (b"+384", "'+384'"),
        (b"-1", "'-1'"),
        (b"384, 384", "'384, 384'"),
    ],
    ids=["word", "superscript-digit", "5000-digits", "plus", "negative", "list"],
)
async def test_invalid_content_length_is_400(
    client: httpx.AsyncClient, declared: bytes, named: str
) -> None:
    session_id = await new_session(client)
    response = await client.post(
        f"/v1/sessions/{session_id}/forward",
        content=npy(X1),
        headers={**NPY, "Content-Length": declared},
    )
    assert_problem(response, 400, "bad_request", named)


# (id, make_app settings, method, path, body, headers, status, whether the answer closes)
# "{s}" in a path is a primed session's id.
Case = tuple[str, dict[str, str], str, str, bytes | None, dict[str, str], int, bool]
UNREAD_CASES: list[Case] = [
    ("415", {}, "POST", "/v1/sessions/{s}/forward", npy(X1), {"Content-Type": "text/csv"}, 415,
     True),
    ("406", {}, "POST", "/v1/sessions/{s}/forward", npy(X1), {**NPY, "Accept": "text/html"}, 406,
     True),
    ("401", {"api_keys": "k"}, "POST", "/v1/sessions/x/forward", npy(X1), NPY, 401, True),
    ("401-backward", {"api_keys": "k"}, "POST", "/v1/sessions/x/backward", npy(DA1), NPY, 401,
     True),
    ("query-422", {}, "POST", "/v1/gradient?colour=red", b'{"X": 1}', {"Content-Type":
     "application/json"}, 422, True),
    ("bad-content-length", {}, "POST", "/v1/sessions/{s}/forward", npy(X1),
     {**NPY, "Content-Length": "lots"}, 400, True),
    ("unknown-route", {}, "POST", "/v2/forward", npy(X1), NPY, 404, True),
    ("read-then-400", {}, "POST", "/v1/sessions/{s}/forward", npy(X1)[:-3], NPY, 400, False),
    ("read-then-404", {}, "POST", "/v1/sessions/x/forward", npy(X1), NPY, 404, False),
    ("401-no-body", {"api_keys": "k"}, "GET", "/v1/sessions/x", None, {}, 401, False),
    ("415-empty-body", {}, "POST", "/v1/sessions/{s}/forward", b"", {"Content-Type": "text/csv"},
     415, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "method", "path", "body", "headers", "status", "closes"),
    [case[1:] for case in UNREAD_CASES],
    ids=[case[0] for case in UNREAD_CASES],
)
async def test_a_refusal_that_leaves_the_body_unread_closes_the_connection(
    make_app: Callable[..., FastAPI],
    settings: dict[str, str],
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    closes: bool,
) -> None:
    async with client_for(make_app(**settings)) as client:
        session_id = "" if settings else await primed_session(client)
        response = await client.request(
            method, path.format(s=session_id), content=body, headers=headers
        )
    assert response.status_code == status, response.text
    assert (response.headers.get("connection") == "close") is closes
