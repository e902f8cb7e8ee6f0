"""/metrics labels: route templates and a fixed set of methods, never a client's value (issue 11:
a thousand invented methods grew every scrape to 572 MB); and an opt-in API key on /metrics."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import assert_problem, client_for

from service.metrics import LeanCounter, LeanHistogram
from service.middleware import KNOWN_METHODS, OTHER_METHOD, UNMATCHED_ROUTE

if TYPE_CHECKING:
    from tests.conftest import LiveServer

INVENTED = 200
#: Routes Starlette serves without FastAPI's API routing (no OpenAPI entry of their own).
DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/docs/static/{path}"}
LABELLED = ("poolgrad_requests", "poolgrad_request_duration_seconds")


def label_values(text: str) -> dict[str, set[str]]:
    """The values each label of the request metrics takes in a Prometheus scrape."""
    values: dict[str, set[str]] = {"method": set(), "route": set()}
    for family in text_string_to_metric_families(text):
        if family.name in LABELLED:
            for sample in family.samples:
                for label in values:
                    values[label].add(sample.labels[label])
    return values


def invent(http: httpx.Client) -> None:
    """Requests with methods and paths no client should choose the labels of."""
    for _ in range(INVENTED):
        token = secrets.token_hex(6).upper()
        http.request(f"X{token}", "/v1/sessions")
        http.request(f"X{token}", f"/v1/sessions/{token}/forward")
        http.get(f"/probe/{token}")
        http.request("get", f"/{token}")  # methods are case-sensitive: "get" is not GET


def test_invented_methods_and_paths_leave_the_label_set_bounded(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server()
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        paths = http.get("/openapi.json").json()["paths"]
        http.get("/docs")
        http.get("/docs/static/swagger-ui.css")
        http.get("/metrics")  # so that both scrapes below count scrapes
        invent(http)
        first = http.get("/metrics").text
        invent(http)
        second = http.get("/metrics").text

    values = label_values(second)
    # The server's parser refuses most invented methods before the app sees them; those it
    # lets through are labelled ``other`` (the in-process test below drives that path).
    assert values["method"] <= KNOWN_METHODS | {OTHER_METHOD}
    assert values["route"] <= set(paths) | DOCS_ROUTES | {UNMATCHED_ROUTE}
    assert {"/docs", "/openapi.json", "/docs/static/{path}", UNMATCHED_ROUTE} <= values["route"]
    # Twice the invented requests, not one series more.
    assert len(second.splitlines()) == len(first.splitlines())


@pytest.mark.anyio
async def test_methods_outside_http_are_one_label_value(client: httpx.AsyncClient) -> None:
    for _ in range(50):
        token = secrets.token_hex(6).upper()
        await client.request(f"X{token}", "/v1/sessions")
        await client.request("get", f"/v1/sessions/{token}")
    values = label_values((await client.get("/metrics")).text)
    assert values["method"] == {OTHER_METHOD, "GET"}


@pytest.mark.anyio
async def test_docs_and_openapi_are_counted_under_their_own_route(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/docs", "/openapi.json", "/docs/static/favicon.png"):
        assert (await client.get(path)).status_code == 200
    text = (await client.get("/metrics")).text
    for route in ("/docs", "/openapi.json", "/docs/static/{path}"):
        assert f'poolgrad_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in text
    assert f'route="{UNMATCHED_ROUTE}"' not in text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("settings", "headers", "status"),
    [
        ({"api_keys": "scrape-key", "metrics_require_key": True}, {}, 401),
        (
            {"api_keys": "scrape-key", "metrics_require_key": True},
            {"Authorization": "Bearer no"},
            401,
        ),
        (
            {"api_keys": "scrape-key", "metrics_require_key": True},
            {"Authorization": "Bearer scrape-key"},
            200,
        ),
        ({"api_keys": "scrape-key"}, {}, 200),  # off by default: open like /healthz
    ],
)
async def test_a_setting_puts_metrics_behind_the_api_keys(
    make_app: Callable[..., FastAPI],
    settings: dict[str, object],
    headers: dict[str, str],
    status: int,
) -> None:
    async with client_for(make_app(**settings)) as client:
        response = await client.get("/metrics", headers=headers)
        health = await client.get("/healthz")
    assert health.status_code == 200
    if status == 401:
        assert_problem(response, 401, "unauthorized", "API key")
    else:
        assert response.status_code == 200
        assert "poolgrad_requests_total" in response.text


@pytest.mark.parametrize(
    "amounts",
    [[], [0.0], [1e-05, 0.001, 0.0010001, 0.25, 7.5, 11.0, -1.0], [0.003] * 5],
    ids=["none", "zero", "every-bucket-and-beyond", "repeated"],
)
@pytest.mark.parametrize(
    ("names", "series"),
    [
        (("operation",), [("forward",), ("backward",)]),
        (("method", "route"), [("GET", "/a/{id}"), ("POST", "/a/{id}"), ("GET", "unmatched")]),
    ],
    ids=["one-label", "two-labels"],
)
def test_the_lean_histogram_reads_exactly_as_prometheus_client_s(
    amounts: list[float], names: tuple[str, ...], series: list[tuple[str, ...]]
) -> None:
    buckets = (0.001, 0.0025, 0.005, 0.01, 0.25, 10.0)
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("x_seconds", "Doc.", names, buckets=buckets, registry=theirs_registry)
    ours = LeanHistogram("x_seconds", "Doc.", names, buckets, ours_registry)
    for values in series:
        their_series, our_series = theirs.labels(*values), ours.labels(*values)
        for amount in amounts:
            their_series.observe(amount)
            our_series.observe(amount)

    assert _exposition(ours_registry) == _exposition(theirs_registry)
    assert ours.labels(*series[0]) is ours.labels(*series[0])
    with pytest.raises(ValueError, match="takes labels"):
        ours.labels(*series[0], "extra")


@pytest.mark.parametrize("increments", [[], [1], [3, 0, 2]], ids=["none", "one", "several"])
@pytest.mark.parametrize(
    "names", [("operation",), ("method", "route", "status")], ids=["one-label", "three-labels"]
)
def test_the_lean_counter_reads_exactly_as_prometheus_client_s(
    increments: list[int], names: tuple[str, ...]
) -> None:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Counter("x_seconds", "Doc.", names, registry=theirs_registry)
    ours = LeanCounter("x_seconds", "Doc.", names, ours_registry)
    for number, count in enumerate(increments):
        values = tuple(f"{name}-{number}" for name in names)
        their_series, our_series = theirs.labels(*values), ours.labels(*values)
        for _ in range(count):
            their_series.inc()
            our_series.inc()
    assert _exposition(ours_registry) == _exposition(theirs_registry)
    with pytest.raises(ValueError, match="takes labels"):
        ours.labels("a", *names)


def _exposition(registry: CollectorRegistry) -> str:
    """The registry's text exposition, creation times masked (they differ by microseconds)."""
    created = re.compile(r"^(x_seconds_created\{.*\}) \S+$", re.MULTILINE)
    return created.sub(r"\1 <time>", generate_latest(registry).decode())
