"""The retry policy as one table, run against the sync client and its async twin (respx).

Sleeping is patched out and the jitter draw returns its upper bound, so every delay the
client asks for is exact: ``0.5 * 2**attempt`` capped at 8 s, or the server's ``Retry-After``
when it is within ``(0, 60]`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from sdk_helpers import MOCK_URL, SESSION_ID, created, info, named, npy, problem

import poolgrad
from poolgrad import AsyncClient, AsyncSession, Client, Session
from poolgrad._base import parse_retry_after
from poolgrad._constants import MAX_RETRY_AFTER, MAX_RETRY_DELAY

X = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
A = np.array([[[[5.0], [7.0]], [[13.0], [15.0]]]], dtype=np.float32)

ROUTES: dict[str, tuple[str, str, Callable[[], httpx.Response]]] = {
    "create": ("POST", "/v1/sessions", created),
    "forward": ("POST", f"/v1/sessions/{SESSION_ID}/forward", lambda: npy(A, ETag='"1"')),
    "backward": ("POST", f"/v1/sessions/{SESSION_ID}/backward", lambda: npy(X)),
    "info": ("GET", f"/v1/sessions/{SESSION_ID}", info),
    "delete": ("DELETE", f"/v1/sessions/{SESSION_ID}", lambda: httpx.Response(204)),
    "gradient": ("POST", "/v1/gradient", lambda: named(A=A, dX=X)),
    "health": ("GET", "/healthz", lambda: httpx.Response(200, json={"status": "ok"})),
}
OPS = tuple(ROUTES)
SESSION_BODY = {"id": SESSION_ID, "spec": {"mode": "max"}, "step": 0}


def call(client: Client, op: str) -> object:
    session = Session(client, SESSION_BODY)
    if op == "create":
        return client.create_session(mode="max", pool_size=(2, 2))
    if op == "forward":
        return session.forward(X)
    if op == "backward":
        return session.backward(A)
    if op == "info":
        return session.info()
    if op == "delete":
        return session.delete()
    if op == "gradient":
        return client.gradient(X, A, mode="max", pool_size=2)
    return client.health()


async def acall(client: AsyncClient, op: str) -> object:
    session = AsyncSession(client, SESSION_BODY)
    if op == "create":
        return await client.create_session(mode="max", pool_size=(2, 2))
    if op == "forward":
        return await session.forward(X)
    if op == "backward":
        return await session.backward(A)
    if op == "info":
        return await session.info()
    if op == "delete":
        return await session.delete()
    if op == "gradient":
        return await client.gradient(X, A, mode="max", pool_size=2)
    return await client.health()


Failure = Callable[[], Any]  # an httpx.Response, or an exception class respx raises
Expected = list[float] | type[poolgrad.PoolgradError]


def answer(status: int, retry_after: str | None = None) -> Failure:
    code = {429: "capacity_exceeded", 503: "store_unavailable"}.get(status)
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    if code is not None:
        return lambda: problem(status, code, "full", **headers)
    return lambda: httpx.Response(status, text="boom", headers=headers)


def rows() -> list[Any]:
    """(op, failure, expected): sleeps before the retry that succeeds, or the class raised."""
    table: list[Any] = []
    for op in OPS:
        # Answered before anything is applied: every request retries.
        table.append(pytest.param(op, answer(429), [0.5], id=f"{op}-429"))
        table.append(pytest.param(op, answer(503, "2"), [2.0], id=f"{op}-503-retry-after-2"))
        # Never sent: every request retries.
        table.append(pytest.param(op, lambda: httpx.ConnectError, [0.5], id=f"{op}-connect"))
        table.append(pytest.param(op, lambda: httpx.ConnectTimeout, [0.5], id=f"{op}-ctimeout"))
        table.append(pytest.param(op, lambda: httpx.PoolTimeout, [0.5], id=f"{op}-ptimeout"))
        # Maybe applied: only requests safe to repeat retry; creating a session does not.
        timeout: Expected = poolgrad.APITimeoutError if op == "create" else [0.5]
        dropped: Expected = poolgrad.APIConnectionError if op == "create" else [0.5]
        table.append(pytest.param(op, lambda: httpx.ReadTimeout, timeout, id=f"{op}-rtimeout"))
        table.append(pytest.param(op, lambda: httpx.WriteTimeout, timeout, id=f"{op}-wtimeout"))
        table.append(
            pytest.param(op, lambda: httpx.RemoteProtocolError, dropped, id=f"{op}-dropped")
        )
        # Final answers: raised at once.
        table.append(pytest.param(op, answer(500), poolgrad.InternalServerError, id=f"{op}-500"))
    final = [
        ("forward", 400, "malformed_tensor", poolgrad.MalformedTensorError),
        ("info", 404, "session_not_found", poolgrad.SessionNotFoundError),
        ("backward", 409, "no_forward", poolgrad.NoForwardError),
        ("backward", 412, "stale_step", poolgrad.StaleStepError),
        ("create", 422, "invalid_spec", poolgrad.InvalidSpecError),
        ("gradient", 401, "unauthorized", poolgrad.UnauthorizedError),
    ]
    for op, status, code, cls in final:
        table.append(
            pytest.param(op, lambda s=status, c=code: problem(s, c), cls, id=f"{op}-{status}")
        )
    # Retry-After is honoured within (0, MAX_RETRY_AFTER]; any other falls back to the backoff.
    for value, expected in [
        ("1.5", [1.5]),
        (str(int(MAX_RETRY_AFTER)), [MAX_RETRY_AFTER]),
        ("0", [0.5]),
        ("3600", [0.5]),
        ("Wed, 21 Oct 2015 07:28:00 GMT", [0.5]),
        ("soon", [0.5]),
        ("-3", [0.5]),
    ]:
        table.append(pytest.param("info", answer(503, value), expected, id=f"retry-after={value}"))
    return table


def mount(router: respx.Router, op: str, failure: Failure) -> respx.Route:
    method, path, success = ROUTES[op]
    return router.route(method=method, path=path).mock(side_effect=[failure(), success()])


def check(route: respx.Route, expected: Expected, sleeps: list[float]) -> None:
    if isinstance(expected, list):
        assert sleeps == expected
        assert route.call_count == 2
        ids = {call.request.headers["X-Request-ID"] for call in route.calls}
        assert len(ids) == 1, "a retry must keep the request id of its logical request"
    else:
        assert sleeps == []
        assert route.call_count == 1


@pytest.mark.parametrize(("op", "failure", "expected"), rows())
def test_retry_policy_sync(
    op: str, failure: Failure, expected: Expected, max_jitter: Any, sleeps: list[float]
) -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        max_jitter(client)
        client._sleep = sleeps.append  # type: ignore[method-assign]
        route = mount(router, op, failure)
        if isinstance(expected, list):
            call(client, op)
        else:
            with pytest.raises(expected):
                call(client, op)
        check(route, expected, sleeps)


@pytest.mark.anyio
@pytest.mark.parametrize(("op", "failure", "expected"), rows())
async def test_retry_policy_async(
    op: str, failure: Failure, expected: Expected, max_jitter: Any, sleeps: list[float]
) -> None:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(MOCK_URL) as client:
        max_jitter(client)
        client._sleep = sleep  # type: ignore[method-assign]
        with respx.mock(base_url=MOCK_URL) as router:
            route = mount(router, op, failure)
            if isinstance(expected, list):
                await acall(client, op)
            else:
                with pytest.raises(expected):
                    await acall(client, op)
        check(route, expected, sleeps)


@pytest.mark.parametrize("op", OPS)
def test_the_configured_timeout_reaches_every_request(op: str) -> None:
    timeout = httpx.Timeout(7.0, connect=2.0)
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, timeout=timeout) as client:
        method, path, success = ROUTES[op]
        route = router.route(method=method, path=path).mock(return_value=success())
        call(client, op)
    assert route.calls.last.request.extensions["timeout"] == timeout.as_dict()


@pytest.mark.anyio
@pytest.mark.parametrize("op", OPS)
async def test_the_configured_timeout_reaches_every_async_request(op: str) -> None:
    async with AsyncClient(MOCK_URL, timeout=9.0) as client:
        with respx.mock(base_url=MOCK_URL) as router:
            method, path, success = ROUTES[op]
            route = router.route(method=method, path=path).mock(return_value=success())
            await acall(client, op)
    assert route.calls.last.request.extensions["timeout"] == httpx.Timeout(9.0).as_dict()


@pytest.mark.parametrize(
    ("max_retries", "expected"),
    [
        (0, []),
        (2, [0.5, 1.0]),
        (6, [0.5, 1.0, 2.0, 4.0, MAX_RETRY_DELAY, MAX_RETRY_DELAY]),
    ],
)
def test_backoff_doubles_up_to_its_cap_then_gives_up(
    max_retries: int, expected: list[float], max_jitter: Any, sleeps: list[float]
) -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, max_retries=max_retries) as c:
        max_jitter(c)
        c._sleep = sleeps.append  # type: ignore[method-assign]
        route = router.get("/healthz").mock(return_value=problem(503, "store_unavailable"))
        with pytest.raises(poolgrad.StoreUnavailableError) as caught:
            c.health()
    assert sleeps == expected
    assert route.call_count == max_retries + 1
    assert caught.value.status == 503


@pytest.mark.anyio
async def test_async_backoff_gives_up_after_max_retries(
    max_jitter: Any, sleeps: list[float]
) -> None:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(MOCK_URL, max_retries=3) as client:
        max_jitter(client)
        client._sleep = sleep  # type: ignore[method-assign]
        with respx.mock(base_url=MOCK_URL) as router:
            route = router.post("/v1/sessions").mock(side_effect=httpx.ConnectError)
            with pytest.raises(poolgrad.APIConnectionError):
                await client.create_session()
    assert sleeps == [0.5, 1.0, 2.0]
    assert route.call_count == 4


def test_jitter_is_full_and_bounded() -> None:
    client = Client(MOCK_URL)
    draws = [client._backoff(attempt) for attempt in range(12) for _ in range(20)]
    assert all(0.0 <= draw <= MAX_RETRY_DELAY for draw in draws)
    assert len(set(draws)) > 1, "full jitter draws, it does not return the bound"
    assert all(client._backoff(1) <= 1.0 for _ in range(50))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("0.25", 0.25),
        ("Thu, 01 Jan 2032 00:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2032 00:00:00 GMT", 0.0),
        ("Wed, 31 Dec 2031 23:00:00 GMT", 0.0),
        ("", None),
        (None, None),
        ("-1", None),
        ("nan", None),
        ("tomorrow", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = 1956528000.0  # 2032-01-01T00:00:00Z
    assert parse_retry_after(value, now=now) == seconds
