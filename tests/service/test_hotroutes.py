"""The hot routes (service.hotroutes): served without FastAPI's router, they must answer every
request, good or bad, exactly as FastAPI serves them; routes they cannot serve that way are
refused when the app is built."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from service_helpers import BASE_URL, DA1, NPY, X1, client_for, npy

from poolgrad import protocol
from poolgrad.protocol import inference
from service import Settings, create_app
from service.app import HOT_ENDPOINTS
from service.deps import get_owner
from service.hotroutes import HotRoutes, UnsupportedHotRoute

pytestmark = pytest.mark.anyio

KEY = "k" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
ST = {"Content-Type": protocol.MEDIA_SAFETENSORS}
QUERY = "?mode=max&pool_size=2,2"


def _named(**tensors: np.ndarray) -> bytes:
    return protocol.encode_named(tensors, protocol.MEDIA_SAFETENSORS)


def _v2(**extra: Any) -> bytes:
    x = {"name": "X", "shape": [1, 2, 2, 1], "datatype": "FP32", "data": [1, 4, 2, 3]}
    return json.dumps({"inputs": [x], **extra}).encode()


#: (name, method, path, headers, body): ``{session}`` is a session of each app, created with
#: a 2x2 max spec and run forward once before the request.
REQUESTS: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("gradient", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST}, _named(X=X1, dA=DA1)),
    ("gradient-forward-only", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST}, _named(X=X1)),
    (
        "gradient-json-accept-npy",
        "POST",
        "/v1/gradient" + QUERY,
        {**AUTH, "Content-Type": protocol.MEDIA_JSON, "Accept": protocol.MEDIA_SAFETENSORS},
        protocol.encode_named({"X": X1}, protocol.MEDIA_JSON),
    ),
    ("gradient-no-key", "POST", "/v1/gradient" + QUERY, ST, _named(X=X1)),
    (
        "gradient-wrong-key",
        "POST",
        "/v1/gradient" + QUERY,
        {"Authorization": "Bearer x", **ST},
        b"",
    ),
    ("gradient-basic-auth", "POST", "/v1/gradient" + QUERY, {"Authorization": "Basic eDp5"}, b""),
    ("gradient-bad-spec", "POST", "/v1/gradient?mode=median", {**AUTH, **ST}, _named(X=X1)),
    ("gradient-no-spec", "POST", "/v1/gradient", {**AUTH, **ST}, _named(X=X1)),
    ("gradient-media", "POST", "/v1/gradient" + QUERY, {**AUTH, "Content-Type": "text/csv"}, b"1"),
    ("gradient-accept", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST, "Accept": "image/png"}, b""),
    ("gradient-garbage", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST}, b"\x00" * 40),
    ("gradient-too-big", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST}, b"\x00" * 5000),
    ("gradient-unknown-name", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST}, _named(Y=X1)),
    ("gradient-shape", "POST", "/v1/gradient" + QUERY, {**AUTH, **ST}, _named(X=X1, dA=X1)),
    ("gradient-slash", "POST", "/v1/gradient/" + QUERY, {**AUTH, **ST}, _named(X=X1)),
    ("gradient-get", "GET", "/v1/gradient", AUTH, b""),
    ("gradient-head", "HEAD", "/v1/gradient", AUTH, b""),
    ("gradient-put", "PUT", "/v1/gradient" + QUERY, {**AUTH, **ST}, _named(X=X1)),
    ("forward", "POST", "/v1/sessions/{session}/forward", {**AUTH, **NPY}, npy(X1)),
    (
        "forward-json",
        "POST",
        "/v1/sessions/{session}/forward",
        {**AUTH, "Content-Type": protocol.MEDIA_JSON, "Accept": protocol.MEDIA_NPY},
        protocol.encode_tensor(X1, protocol.MEDIA_JSON),
    ),
    ("forward-unknown", "POST", "/v1/sessions/nope/forward", {**AUTH, **NPY}, npy(X1)),
    ("forward-no-key", "POST", "/v1/sessions/{session}/forward", NPY, npy(X1)),
    ("forward-media", "POST", "/v1/sessions/{session}/forward", {**AUTH, **ST}, npy(X1)),
    ("forward-rank", "POST", "/v1/sessions/{session}/forward", {**AUTH, **NPY}, npy(X1[0])),
    ("forward-get", "GET", "/v1/sessions/{session}/forward", AUTH, b""),
    ("forward-deeper", "POST", "/v1/sessions/{session}/forward/x", {**AUTH, **NPY}, npy(X1)),
    ("backward", "POST", "/v1/sessions/{session}/backward", {**AUTH, **NPY}, npy(DA1)),
    (
        "backward-stale",
        "POST",
        "/v1/sessions/{session}/backward",
        {**AUTH, **NPY, "If-Match": '"9"'},
        npy(DA1),
    ),
    (
        "backward-if-match",
        "POST",
        "/v1/sessions/{session}/backward",
        {**AUTH, **NPY, "If-Match": '"1"'},
        npy(DA1),
    ),
    (
        "backward-bad-if-match",
        "POST",
        "/v1/sessions/{session}/backward",
        {**AUTH, **NPY, "If-Match": "soon"},
        npy(DA1),
    ),
    ("backward-shape", "POST", "/v1/sessions/{session}/backward", {**AUTH, **NPY}, npy(X1)),
    ("backward-unknown", "POST", "/v1/sessions/%0A/backward", {**AUTH, **NPY}, npy(DA1)),
    ("v2-infer", "POST", "/v2/models/maxpool/infer", AUTH, _v2(id="r1")),
    ("v2-infer-version", "POST", "/v2/models/minpool/versions/1/infer", AUTH, _v2()),
    ("v2-infer-bad-version", "POST", "/v2/models/maxpool/versions/7/infer", AUTH, _v2()),
    ("v2-infer-bad-model", "POST", "/v2/models/median/infer", AUTH, _v2()),
    ("v2-infer-no-key", "POST", "/v2/models/maxpool/infer", {}, _v2()),
    ("v2-infer-bad-json", "POST", "/v2/models/maxpool/infer", AUTH, b"{"),
    (
        "v2-infer-binary-lie",
        "POST",
        "/v2/models/maxpool/infer",
        {**AUTH, inference.HEADER_LENGTH: "999"},
        _v2(),
    ),
    (
        "v2-sequence",
        "POST",
        "/v2/models/maxpool/infer",
        AUTH,
        _v2(parameters={"sequence_id": 5, "sequence_start": True}),
    ),
    ("v2-infer-get", "GET", "/v2/models/maxpool/infer", AUTH, b""),
]

_REQUEST_ID = re.compile(r'"request_id":"[0-9a-f]{32}"')


async def _answers(
    app: FastAPI, root_path: str = ""
) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """Each request of :data:`REQUESTS` sent to ``app`` (served under ``root_path``): status,
    headers and body, with what is random per request or per app (request and session ids)
    replaced by placeholders."""
    answers = {}
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL + root_path) as client:
        for name, method, path, headers, body in REQUESTS:
            created = await client.post("/v1/sessions", json={"pool_size": [2, 2]}, headers=AUTH)
            session = created.json()["id"]
            forward = await client.post(
                f"/v1/sessions/{session}/forward", content=npy(X1), headers={**AUTH, **NPY}
            )
            assert forward.status_code == 200, forward.text
            response = await client.request(
                method, path.format(session=session), headers=headers, content=body
            )
            text = _REQUEST_ID.sub('"request_id":"-"', response.content.decode("latin-1"))
            kept = {
                name: value.replace(session, "{session}")
                for name, value in response.headers.items()
                if name not in ("x-request-id", "content-length")
            }
            answers[name] = (response.status_code, kept, text.replace(session, "{session}"))
    return answers


@pytest.mark.parametrize("root_path", ["", "/behind/a/proxy"])
async def test_hot_routes_answer_every_request_as_fastapi_does(root_path: str) -> None:
    settings = Settings(api_keys=[KEY], max_body_bytes=4096)
    hot = await _answers(create_app(settings), root_path)
    plain = await _answers(create_app(settings, hot_routes=False), root_path)
    assert hot.keys() == plain.keys()
    for name in hot:
        assert hot[name] == plain[name], name
    # The table covers answers and refusals of each kind.
    statuses = {status for status, _, _ in hot.values()}
    assert {200, 400, 401, 404, 405, 406, 412, 413, 415, 422} <= statuses


async def test_hot_routes_are_served_without_the_router() -> None:
    """The layer answers the hot routes itself: the app below it is never called for them,
    and is for everything else."""
    app = create_app(Settings())
    layer = _layer(app)
    below: list[str] = []

    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        below.append(scope["path"])
        await layer_app(scope, receive, send)

    layer_app, layer.app = layer.app, downstream
    async with client_for(app) as client:
        response = await client.post(
            "/v1/gradient" + QUERY, content=_named(X=X1, dA=DA1), headers=ST
        )
        assert response.status_code == 200, response.text
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/v1/gradient")).status_code == 405
    assert below == ["/healthz", "/v1/gradient"]


async def test_dependency_overrides_are_applied_by_fastapi() -> None:
    """An override of a hot route's dependency (the owner here) takes effect as FastAPI
    applies it: while any is set, hot routes go through FastAPI."""
    app = create_app(Settings(api_keys=[KEY]))

    async def anyone() -> str:
        return "anyone"

    async with client_for(app) as client:
        refused = await client.post("/v1/gradient" + QUERY, content=_named(X=X1), headers=ST)
        assert refused.status_code == 401
        app.dependency_overrides[get_owner] = anyone
        served = await client.post("/v1/gradient" + QUERY, content=_named(X=X1), headers=ST)
        assert served.status_code == 200, served.text
        app.dependency_overrides.clear()
        again = await client.post("/v1/gradient" + QUERY, content=_named(X=X1), headers=ST)
        assert again.status_code == 401


async def test_hot_routes_are_counted_and_logged_by_route_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(Settings())
    async with client_for(app) as client:
        created = await client.post("/v1/sessions", json={})
        session = created.json()["id"]
        with caplog.at_level("INFO", logger="service.access"):
            await client.post(f"/v1/sessions/{session}/forward", content=npy(X1), headers=NPY)
        metrics = (await client.get("/metrics")).text
    assert 'route="/v1/sessions/{session_id}/forward",status="200"' in metrics
    (record,) = [r for r in caplog.records if r.name == "service.access"]
    assert record.__dict__["session_id"] == session


def test_every_hot_endpoint_is_served_by_the_layer() -> None:
    layer = _layer(create_app(Settings()))
    served = {route.endpoint for route, _, _ in layer.routes}
    assert served == set(HOT_ENDPOINTS)
    # v2's infer is hot with and without a model version.
    assert len(layer.routes) == len(HOT_ENDPOINTS) + 1


def _layer(app: FastAPI) -> HotRoutes:
    """The HotRoutes instance of ``app``'s middleware stack (built on first use)."""
    stack: Any = app.build_middleware_stack()
    app.middleware_stack = stack
    while not isinstance(stack, HotRoutes):
        stack = stack.app
    return stack


# -- routes the layer refuses to serve ------------------------------------------------------


async def _async_dependency() -> str:
    return "x"


def _sync_dependency() -> str:
    return "x"


async def _generator_dependency() -> Any:
    yield "x"


def _route(path: str, endpoint: Callable[..., Any], **kwargs: Any) -> APIRoute:
    router = APIRouter()
    router.add_api_route(path, endpoint, methods=["POST"], **kwargs)
    route = router.routes[0]
    assert isinstance(route, APIRoute)
    return route


async def _query(limit: int) -> Response:
    return Response()


async def _int_path(item: int) -> Response:
    return Response()


async def _header(x_token: str | None = None, request: Request | None = None) -> Response:
    return Response()


async def _sync_dep(value: str = Depends(_sync_dependency)) -> Response:
    return Response()


async def _yield_dep(value: str = Depends(_generator_dependency)) -> Response:
    return Response()


def _sync_endpoint(request: Request) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("path", "endpoint", "message"),
    [
        ("/q", _query, "query parameters"),
        ("/i/{item}", _int_path, "'item' is not typed str"),
        ("/s", _sync_dep, "not an async function"),
        ("/y", _yield_dep, "not an async function"),
        ("/e", _sync_endpoint, "not an async function"),
    ],
)
def test_routes_the_layer_cannot_serve_as_fastapi_does_are_refused(
    path: str, endpoint: Callable[..., Any], message: str
) -> None:
    route = _route(path, endpoint)
    with pytest.raises(UnsupportedHotRoute, match=message):
        HotRoutes(_never, fastapi=FastAPI(), routes=[route], earlier=[route])


def test_a_shadowed_hot_route_is_refused() -> None:
    async def endpoint(name: str) -> Response:
        return Response()

    first = _route("/items/{name}", endpoint)
    hot = _route("/items/{name}", endpoint)
    with pytest.raises(UnsupportedHotRoute, match="shadowed"):
        HotRoutes(_never, fastapi=FastAPI(), routes=[hot], earlier=[first, hot])
    # Behind a route with another method it is not shadowed.
    other = APIRouter()
    other.add_api_route("/items/{name}", endpoint, methods=["GET"])
    HotRoutes(_never, fastapi=FastAPI(), routes=[hot], earlier=[other.routes[0], hot])


async def test_a_hot_endpoint_that_returns_no_response_is_a_programming_error() -> None:
    async def endpoint(request: Request) -> Any:
        return {"not": "a response"}

    route = _route("/r", endpoint)
    layer = HotRoutes(_never, fastapi=FastAPI(), routes=[route], earlier=[route])
    scope = {"type": "http", "method": "POST", "path": "/r", "root_path": "", "headers": []}
    with pytest.raises(TypeError, match="returned dict"):
        await layer(scope, _never, _never)


async def _never(*args: Any) -> Any:
    raise AssertionError("not to be called")
