"""Session handles with or without ``with``, spec keywords checked at the call, ``gradient``
without ``dA``, and the README naming every public method (issue 13)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx
from sdk_helpers import MOCK_URL, SESSION_ID, created

import poolgrad
from poolgrad import AsyncClient, AsyncSession, AsyncSessionRequest, Client, Session
from poolgrad.protocol import spec as spec_schema

SESSION = f"/v1/sessions/{SESSION_ID}"
README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_session_works_without_with_and_delete_ends_it() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        create = router.post("/v1/sessions").mock(return_value=created())
        deleted = router.delete(SESSION).mock(return_value=httpx.Response(204))
        session = client.session(mode="max")
        assert isinstance(session, Session)
        assert create.call_count == 1  # created at the call, as httpx.Client is usable at once
        assert session.id == SESSION_ID
        assert deleted.call_count == 0
        session.delete()
        assert deleted.call_count == 1
        assert session.deleted
        with client.session(mode="avg") as second:
            assert deleted.call_count == 1
        assert deleted.call_count == 2
        assert second.deleted
    assert create.calls[1].request.content == b'{"mode":"avg"}'


@pytest.mark.anyio
async def test_an_async_session_is_awaited_or_entered() -> None:
    async with AsyncClient(MOCK_URL) as client:
        with respx.mock(base_url=MOCK_URL) as router:
            create = router.post("/v1/sessions").mock(return_value=created())
            deleted = router.delete(SESSION).mock(return_value=httpx.Response(204))
            pending = client.session(mode="min")
            assert isinstance(pending, AsyncSessionRequest)
            assert create.call_count == 0  # nothing sent until awaited
            session = await pending
            assert isinstance(session, AsyncSession)
            assert create.call_count == 1
            await session.delete()
            assert deleted.call_count == 1
            async with client.session() as entered:
                assert create.call_count == 2
                assert deleted.call_count == 1
            assert deleted.call_count == 2
            assert entered.deleted
            made = await client.create_session(ties="first")
            assert made.id == SESSION_ID
            assert create.call_count == 3


# (keywords, exception, the message's pieces): the field, the value and what it allows.
BAD_SPECS = [
    ({"mode": "maxx"}, ValueError, ["mode", "'maxx'", "'max', 'min', 'avg'"]),
    ({"stride": 1}, TypeError, ["'stride'", "did you mean 'strides'"]),
    ({"pool_size": "2"}, ValueError, ["pool_size", "an int or a list of ints", "'2'"]),
    ({"pool_size": [2, 2.5]}, ValueError, ["pool_size", "[2, 2.5]"]),
    ({"pool_size": True}, ValueError, ["pool_size", "True"]),
    ({"strides": "same"}, ValueError, ["strides", "or None", "'same'"]),
    ({"padding": "full"}, ValueError, ["padding", "'valid', 'same'", "'full'"]),
    ({"padding": [[1, 1, 1]]}, ValueError, ["padding", "[before, after]", "[[1, 1, 1]]"]),
    ({"count_include_pad": "yes"}, ValueError, ["count_include_pad", "True or False", "'yes'"]),
    ({"layout": "NHWC"}, ValueError, ["layout", "'channels_last', 'channels_first'", "'NHWC'"]),
    ({"ties": "last"}, ValueError, ["ties", "'all', 'first', 'split'"]),
    ({"nan": "ignore"}, ValueError, ["nan", "'propagate', 'reject'"]),
]


def _refused(call: Callable[[], object], exception: type[Exception], pieces: list[str]) -> None:
    with pytest.raises(exception) as caught:
        call()
    message = str(caught.value)
    assert all(piece in message for piece in pieces), message


@pytest.mark.parametrize(("kwargs", "exception", "pieces"), BAD_SPECS)
def test_bad_spec_keywords_raise_at_the_call_before_any_request(
    kwargs: dict[str, object], exception: type[Exception], pieces: list[str]
) -> None:
    X = np.ones((1, 2, 2, 1))
    # No route is mocked: any request would fail with respx's own error, not ours.
    with respx.mock(base_url=MOCK_URL, assert_all_called=False), Client(MOCK_URL) as client:
        calls = [
            lambda: client.session(**kwargs),
            lambda: client.create_session(**kwargs),
            lambda: client.gradient(X, X, **kwargs),
            lambda: client.pool(X, **kwargs),
        ]
        for call in calls:
            _refused(call, exception, pieces)


@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "exception", "pieces"), BAD_SPECS[:2])
async def test_async_session_checks_its_spec_at_the_call(
    kwargs: dict[str, object], exception: type[Exception], pieces: list[str]
) -> None:
    async with AsyncClient(MOCK_URL) as client:
        with respx.mock(base_url=MOCK_URL, assert_all_called=False) as router:
            route = router.post("/v1/sessions").mock(return_value=created())
            # Neither awaited nor entered: the call itself raises.
            _refused(lambda: client.session(**kwargs), exception, pieces)
            assert route.call_count == 0


def test_the_check_accepts_every_shape_the_schema_declares() -> None:
    good = [
        spec_schema.DEFAULTS,
        {"pool_size": 3, "strides": (1, 2), "padding": ((0, 1), (1, 0))},
        {"pool_size": [2], "strides": 1, "padding": "same", "count_include_pad": True},
        {"strides": None, "mode": "avg", "layout": "channels_first", "ties": "split"},
    ]
    for spec in good:
        spec_schema.check_spec(spec)
    assert set(spec_schema.FIELD_NAMES) <= {name for spec in good for name in spec}


def test_numpy_values_pass_the_check() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        route = router.post("/v1/sessions").mock(return_value=created())
        client.session(pool_size=np.array([2, 2]), strides=np.int64(2), count_include_pad=np.True_)
    assert route.calls.last.request.content == (
        b'{"pool_size":[2,2],"strides":2,"count_include_pad":true}'
    )


@pytest.mark.anyio
async def test_gradient_without_dA_points_to_pool() -> None:
    X = np.ones((1, 2, 2, 1))
    with respx.mock(base_url=MOCK_URL, assert_all_called=False) as router:
        route = router.post("/v1/gradient")
        with Client(MOCK_URL) as client, pytest.raises(ValueError, match=r"needs dA.*pool\(X"):
            client.gradient(X, None)  # type: ignore[arg-type]
        async with AsyncClient(MOCK_URL) as aclient:
            with pytest.raises(ValueError, match=r"needs dA.*pool\(X"):
                await aclient.gradient(X, None)  # type: ignore[arg-type]
        assert route.call_count == 0


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


def test_readme_documents_every_public_method() -> None:
    text = README.read_text(encoding="utf-8")
    classes = [Client, AsyncClient, Session, AsyncSession, AsyncSessionRequest]
    names = set().union(*map(_public_methods, classes))
    assert {"create_session", "get_session", "pool", "gradient", "info", "delete"} <= names
    # Called (`.pool(`, `pool(`) or named as code (`pool`), never a prefix (`poolgrad`).
    missing = sorted(name for name in names if not re.search(rf"[.`]{name}[(`]", text))
    assert not missing, f"README.md does not document {missing}"
    for cls in classes:
        assert f"`{cls.__name__}`" in text or cls.__name__ in text
    assert poolgrad.AsyncSessionRequest is AsyncSessionRequest
