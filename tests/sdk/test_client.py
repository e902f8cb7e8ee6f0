"""The clients against mocked answers: configuration, what goes on the wire, sessions."""

from __future__ import annotations

import json
from urllib.parse import quote

import anyio
import httpx
import numpy as np
import pytest
import respx
from sdk_helpers import MOCK_URL, SESSION_ID, created, info, npy, problem

import poolgrad
import poolgrad._client
from poolgrad import AsyncClient, Client, Session, protocol
from poolgrad._base import spec_to_json, spec_to_query
from poolgrad._constants import CLEANUP_TIMEOUT, DEFAULT_BASE_URL, DEFAULT_TIMEOUT

FORWARD = f"/v1/sessions/{SESSION_ID}/forward"
BACKWARD = f"/v1/sessions/{SESSION_ID}/backward"
SESSION = f"/v1/sessions/{SESSION_ID}"

# ------------------------------------------------------------------ configuration


def test_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Client().base_url == DEFAULT_BASE_URL
    assert Client().api_key is None
    monkeypatch.setenv("POOLGRAD_BASE_URL", "http://env.test:9000/")
    monkeypatch.setenv("POOLGRAD_API_KEY", "env-key")
    assert Client().base_url == "http://env.test:9000"
    assert Client().api_key == "env-key"
    explicit = Client("https://arg.test", api_key="arg-key")
    assert (explicit.base_url, explicit.api_key) == ("https://arg.test", "arg-key")
    assert Client().timeout == DEFAULT_TIMEOUT


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_bad_base_url_names_both_fixes(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "environment":
        monkeypatch.setenv("POOLGRAD_BASE_URL", "localhost:8000")
        make = Client
    else:

        def make() -> Client:
            return Client("localhost:8000")

    with pytest.raises(ValueError, match=r"base_url=.*POOLGRAD_BASE_URL") as caught:
        make()
    assert "'localhost:8000'" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_retries": -1}, "max_retries"), ({"tensor_format": "csv"}, "tensor_format")],
)
def test_bad_options_are_refused_by_name(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Client(MOCK_URL, **kwargs)  # type: ignore[arg-type]


def _timeout_sent(client: Client) -> object:
    with respx.mock(base_url=MOCK_URL) as router:
        route = router.get("/healthz").mock(return_value=httpx.Response(200))
        client.health()
    return route.calls.last.request.extensions["timeout"]


def test_a_given_http_clients_timeout_is_kept_unless_timeout_is_passed() -> None:
    with httpx.Client(timeout=300.0) as http:
        assert _timeout_sent(Client(MOCK_URL, http_client=http)) == httpx.Timeout(300.0).as_dict()
        explicit = Client(MOCK_URL, http_client=http, timeout=3.0)
        assert _timeout_sent(explicit) == httpx.Timeout(3.0).as_dict()
        forever = Client(MOCK_URL, http_client=http, timeout=None)
        assert _timeout_sent(forever) == httpx.Timeout(None).as_dict()
    with Client(MOCK_URL) as own:
        assert _timeout_sent(own) == DEFAULT_TIMEOUT.as_dict()


def test_a_client_the_sdk_made_is_closed_on_close() -> None:
    client = Client(MOCK_URL)
    with client:
        assert not client._http.is_closed
    assert client._http.is_closed


@pytest.mark.anyio
async def test_an_async_client_the_sdk_made_is_closed_on_close() -> None:
    client = AsyncClient(MOCK_URL)
    async with client:
        assert not client._http.is_closed
    assert client._http.is_closed


def test_headers_key_user_agent_and_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLGRAD_API_KEY", "s3cret")
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, headers={"X-Team": "a"}) as c:
        route = router.get("/healthz").mock(return_value=httpx.Response(200, json={"ok": 1}))
        assert c.health() == {"ok": 1}
        c.health()
    first, second = (call.request for call in route.calls)
    assert first.headers["Authorization"] == "Bearer s3cret"
    assert first.headers["User-Agent"] == f"poolgrad-python/{poolgrad.__version__}"
    assert first.headers["X-Team"] == "a"
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_no_authorization_header_without_a_key() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        route = router.get("/healthz").mock(return_value=httpx.Response(200))
        assert client.health() == {"status": "ok"}
    assert "Authorization" not in route.calls.last.request.headers


# ------------------------------------------------------------------------- spec


def test_spec_json_drops_defaults_left_out_and_normalizes_tuples() -> None:
    assert spec_to_json({}) == {}
    assert spec_to_json(
        {"mode": "avg", "pool_size": (2, np.int64(3)), "strides": None,
         "padding": ((1, 1), (0, 1)), "count_include_pad": True}
    ) == {"mode": "avg", "pool_size": [2, 3], "padding": [[1, 1], [0, 1]],
          "count_include_pad": True}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "query"),
    [
        ({"mode": "min"}, {"mode": "min"}),
        ({"pool_size": 2}, {"pool_size": "2"}),
        ({"pool_size": (3, 2, 1)}, {"pool_size": "3,2,1"}),
        ({"pool_size": [4]}, {"pool_size": "4,"}),
        ({"strides": (3,)}, {"strides": "3,"}),
        ({"strides": (1, 1)}, {"strides": "1,1"}),
        ({"strides": 1}, {"strides": "1"}),
        ({"strides": None}, {}),
        ({"padding": "same"}, {"padding": "same"}),
        ({"padding": [(1, 1), (0, 1)]}, {"padding": "1:1,0:1"}),
        ({"count_include_pad": True}, {"count_include_pad": "true"}),
        ({"count_include_pad": False}, {"count_include_pad": "false"}),
        ({"layout": "channels_first"}, {"layout": "channels_first"}),
        ({"ties": "split"}, {"ties": "split"}),
        ({"nan": "reject"}, {"nan": "reject"}),
    ],
)
def test_spec_query_string_follows_the_decisions(
    spec: dict[str, object], query: dict[str, str]
) -> None:
    assert spec_to_query(spec) == query


def test_numpy_scalars_are_plain_values_in_the_body_and_the_query() -> None:
    spec = {
        "mode": np.str_("avg"),
        "pool_size": np.int64(2),
        "strides": np.array([1, np.int32(2)]),
        "padding": np.array([[1, 1], [0, 1]]),
        "count_include_pad": np.False_,
    }
    body = spec_to_json(spec)
    assert body == {"mode": "avg", "pool_size": 2, "strides": [1, 2],
                    "padding": [[1, 1], [0, 1]], "count_include_pad": False}  # fmt: skip
    assert json.loads(protocol.dumps(body)) == body
    assert spec_to_query(spec) == {"mode": "avg", "pool_size": "2", "strides": "1,2",
                                   "padding": "1:1,0:1", "count_include_pad": "false"}  # fmt: skip
    assert spec_to_query({"count_include_pad": np.True_}) == {"count_include_pad": "true"}


def test_unknown_spec_field_is_refused_before_sending() -> None:
    with pytest.raises(TypeError, match=r"unknown spec field\(s\) \['pool'\]"):
        spec_to_query({"pool": "max"})
    with Client(MOCK_URL) as client, pytest.raises(TypeError, match="'kernel'"):
        client.create_session(kernel=2)  # type: ignore[call-arg]


def test_gradient_sends_named_tensors_and_the_spec_in_the_query() -> None:
    X = np.random.default_rng(0).standard_normal((2, 4, 4, 3))
    dA = np.ones((2, 2, 2, 3))

    def echo(request: httpx.Request) -> httpx.Response:
        assert request.headers["Content-Type"] == protocol.MEDIA_SAFETENSORS
        assert request.headers["Accept"] == protocol.MEDIA_SAFETENSORS
        got = protocol.decode_safetensors(request.content)
        np.testing.assert_array_equal(got["X"], X)
        np.testing.assert_array_equal(got["dA"], dA)
        return httpx.Response(
            200,
            content=protocol.encode_safetensors({"A": dA * 2, "dX": X * 3}),
            headers={"Content-Type": protocol.MEDIA_SAFETENSORS},
        )

    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        route = router.post("/v1/gradient").mock(side_effect=echo)
        A, dX = client.gradient(X, dA, mode="max", pool_size=2, padding=[(0, 1), (1, 0)])
    assert dict(route.calls.last.request.url.params) == {
        "mode": "max",
        "pool_size": "2",
        "padding": "0:1,1:0",
    }
    np.testing.assert_array_equal(A, dA * 2)
    np.testing.assert_array_equal(dX, X * 3)
    assert A.flags.writeable
    assert dX.flags.writeable


# ------------------------------------------------------------------------ arrays


def _echo_tensor(request: httpx.Request) -> httpx.Response:
    """Answer with the tensor received, in the media type it came in, ETag step 1."""
    media = protocol.media_type_of(request.headers["Content-Type"])
    assert request.headers["Accept"] == media
    array = protocol.decode_tensor(request.content, media)
    return httpx.Response(
        200,
        content=protocol.encode_tensor(array, media),
        headers={"Content-Type": media, "ETag": '"1"'},
    )


def _inputs() -> list[object]:
    base = np.random.default_rng(1).standard_normal((2, 6, 4, 3))
    with_nan = base.copy()
    with_nan[0, 0, 0, 0], with_nan[1, 1, 1, 1] = np.nan, np.inf
    return [
        pytest.param(base.astype(np.float32), id="float32"),
        pytest.param(base.astype(np.float16), id="float16"),
        pytest.param(base, id="float64"),
        pytest.param(np.asfortranarray(base), id="fortran"),
        pytest.param(base[:, ::2, ::-1, :], id="strided-view"),
        pytest.param(base.astype(">f8"), id="big-endian"),
        pytest.param(with_nan, id="non-finite"),
        pytest.param(base.tolist(), id="nested-list"),
    ]


@pytest.mark.parametrize("tensor_format", ["npy", "json"])
@pytest.mark.parametrize("X", _inputs())
def test_arrays_keep_values_dtype_and_shape_on_the_wire(tensor_format: str, X: object) -> None:
    expected = np.asarray(X)
    with (
        respx.mock(base_url=MOCK_URL) as router,
        Client(MOCK_URL, tensor_format=tensor_format) as c,
    ):  # type: ignore[arg-type]
        router.post("/v1/sessions").mock(return_value=created())
        router.post(FORWARD).mock(side_effect=_echo_tensor)
        router.delete(SESSION).mock(return_value=httpx.Response(204))
        with c.session() as session:
            A = session.forward(X)
    np.testing.assert_array_equal(A, expected)
    assert A.shape == expected.shape
    assert A.dtype == expected.dtype or (
        tensor_format == "json" and A.dtype == expected.dtype.newbyteorder("=")
    )
    assert A.flags.writeable
    A[...] = 0  # the caller owns it


# ----------------------------------------------------------------------- sessions


def test_backward_pins_the_step_its_forward_returned() -> None:
    X = np.zeros((1, 4, 4, 1), np.float32)
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        router.post("/v1/sessions").mock(return_value=created())
        router.post(FORWARD).mock(
            side_effect=[npy(X[:, :2, :2], ETag='"7"'), npy(X[:, :2, :2], ETag='W/"9"')]
        )
        backward = router.post(BACKWARD).mock(return_value=npy(X))
        router.delete(SESSION).mock(return_value=httpx.Response(204))
        with client.session(mode="max") as session:
            assert session.step == 0
            session.backward(X[:, :2, :2])  # no forward through this handle: nothing to pin
            session.forward(X)
            assert session.step == 7
            session.backward(X[:, :2, :2])
            session.forward(X)
            session.backward(X[:, :2, :2])
    sent = [call.request.headers.get("If-Match") for call in backward.calls]
    assert sent == [None, '"7"', '"9"']


def test_forward_without_etag_is_refused() -> None:
    X = np.zeros((1, 2, 2, 1))
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        router.post("/v1/sessions").mock(return_value=created())
        router.post(FORWARD).mock(return_value=npy(X))
        router.delete(SESSION).mock(return_value=httpx.Response(204))
        with client.session() as session, pytest.raises(poolgrad.PoolgradError, match="ETag"):
            session.forward(X)


@pytest.mark.parametrize(
    "etag", ['"\N{SUPERSCRIPT TWO}"', '"\N{ARABIC-INDIC DIGIT THREE}"', '"1", "2"', "7"]
)
def test_forward_with_an_etag_that_is_no_step_is_an_api_response_error(etag: str) -> None:
    X = np.zeros((1, 2, 2, 1))
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        router.post("/v1/sessions").mock(return_value=created())
        router.post(FORWARD).mock(return_value=npy(X, ETag=etag.encode()))
        router.delete(SESSION).mock(return_value=httpx.Response(204))
        with client.session() as session, pytest.raises(poolgrad.APIResponseError, match="ETag"):
            session.forward(X)


def test_session_body_carries_spec_and_ttl() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        route = router.post("/v1/sessions").mock(return_value=created(ties="first"))
        router.get(SESSION).mock(return_value=info(step=2, state_bytes=10, expires_at="x"))
        session = client.create_session(ttl_seconds=30, mode="max", pool_size=(2, 2), ties="first")
        described = session.info()
    assert json.loads(route.calls.last.request.content) == {
        "mode": "max",
        "pool_size": [2, 2],
        "ties": "first",
        "ttl_seconds": 30,
    }
    assert session.id == SESSION_ID
    assert session.spec["ties"] == "first"
    assert session.ttl_seconds == 600
    assert described.input_shape == (1, 4, 4, 1)
    assert described.output_shape == (1, 2, 2, 1)
    assert (described.step, described.dtype, described.state_bytes) == (2, "float32", 10)


def test_context_manager_deletes_on_success_and_on_error() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        router.post("/v1/sessions").mock(return_value=created())
        deleted = router.delete(SESSION).mock(return_value=httpx.Response(204))
        with client.session() as session:
            pass
        assert session.deleted
        assert deleted.call_count == 1
        with pytest.raises(KeyError, match="boom"), client.session():
            raise KeyError("boom")
        assert deleted.call_count == 2


def test_failed_delete_on_error_keeps_the_original_exception_with_a_note() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, max_retries=0) as client:
        router.post("/v1/sessions").mock(return_value=created())
        router.delete(SESSION).mock(return_value=problem(503, "store_unavailable"))
        with pytest.raises(KeyError, match="boom") as caught, client.session():
            raise KeyError("boom")
        assert any(SESSION_ID in note for note in caught.value.__notes__)
        # Without an error in the block, the failed delete is the error.
        with pytest.raises(poolgrad.StoreUnavailableError), client.session():
            pass


@pytest.mark.parametrize("session_id", ["abc/forward", "../../healthz", "x?y=1#z", "a b%2F"])
def test_session_ids_are_one_percent_encoded_path_segment(session_id: str) -> None:
    paths: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path)
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.method == "GET":
            return info(session_id)
        return npy(np.zeros((1, 1, 1, 1)), ETag='"1"')

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with Client(MOCK_URL, http_client=http) as client:
        session = client.get_session(session_id)
        session.forward(np.zeros((1, 2, 2, 1)))
        session.backward(np.zeros((1, 1, 1, 1)))
        session.info()
        session.delete()
    base = f"/v1/sessions/{quote(session_id, safe='')}".encode()
    assert paths == [base, base + b"/forward", base + b"/backward", base, base]
    assert all(path.count(b"/") in (3, 4) and b"?" not in path for path in paths)


def test_leaving_the_block_deletes_in_one_short_attempt() -> None:
    # The server's DELETE times out: with retries and the full timeout this took minutes.
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, max_retries=2) as client:
        client._sleep = lambda seconds: pytest.fail("cleanup must not retry")  # type: ignore[method-assign]
        router.post("/v1/sessions").mock(return_value=created())
        deleted = router.delete(SESSION).mock(side_effect=httpx.ReadTimeout)
        with pytest.raises(poolgrad.APITimeoutError), client.session():
            pass  # on success, the failed cleanup is the error
        with pytest.raises(KeyError, match="boom") as caught, client.session():
            raise KeyError("boom")
    assert any(SESSION_ID in note for note in caught.value.__notes__)
    assert deleted.call_count == 2  # one per block
    cleanup = httpx.Timeout(CLEANUP_TIMEOUT).as_dict()
    assert [call.request.extensions["timeout"] for call in deleted.calls] == [cleanup, cleanup]


def test_an_explicit_delete_keeps_the_retry_policy() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, max_retries=2) as client:
        client._sleep = lambda seconds: None  # type: ignore[method-assign]
        deleted = router.delete(SESSION).mock(side_effect=httpx.ReadTimeout)
        with pytest.raises(poolgrad.APITimeoutError):
            Session(client, {"id": SESSION_ID}).delete()
    assert deleted.call_count == 3
    assert deleted.calls.last.request.extensions["timeout"] == DEFAULT_TIMEOUT.as_dict()


def _hanging_delete(
    deletes: list[httpx.Request], released: anyio.Event
) -> httpx.AsyncBaseTransport:
    """Sessions are created; a DELETE hangs until ``released`` (never, in these tests)."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return created()
        deletes.append(request)
        # A safety net so that an unbounded cleanup fails the test instead of hanging it.
        with anyio.move_on_after(30):
            await released.wait()
        raise httpx.ReadTimeout("no answer", request=request)

    return httpx.MockTransport(answer)


@pytest.mark.anyio
async def test_a_cancelled_block_waits_for_one_bounded_delete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poolgrad._client, "CLEANUP_TIMEOUT", 0.05)
    deletes: list[httpx.Request] = []
    released = anyio.Event()
    http = httpx.AsyncClient(transport=_hanging_delete(deletes, released))
    async with AsyncClient(MOCK_URL, http_client=http, max_retries=2) as client, http:
        with anyio.CancelScope() as outer:
            async with client.session() as session:
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught
        with pytest.raises(poolgrad.APITimeoutError, match=r"took over 0\.05 s"):
            async with client.session():
                pass
    assert not released.is_set()
    assert len(deletes) == 2  # one attempt per block, no retries
    assert not session.deleted
    cleanup = httpx.Timeout(CLEANUP_TIMEOUT).as_dict()
    assert [request.extensions["timeout"] for request in deletes] == [cleanup, cleanup]


@pytest.mark.anyio
async def test_a_failed_async_cleanup_is_a_note_on_the_blocks_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poolgrad._client, "CLEANUP_TIMEOUT", 0.05)
    http = httpx.AsyncClient(transport=_hanging_delete([], anyio.Event()))
    async with AsyncClient(MOCK_URL, http_client=http) as client, http:
        with pytest.raises(KeyError, match="boom") as caught:
            async with client.session():
                raise KeyError("boom")
    assert any(SESSION_ID in note and "0.05 s" in note for note in caught.value.__notes__)


def test_deleting_a_session_already_gone_is_not_an_error() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        router.post("/v1/sessions").mock(return_value=created())
        router.delete(SESSION).mock(return_value=problem(404, "session_not_found"))
        with client.session() as session:
            session.delete()
        assert session.deleted


def test_a_session_that_fails_to_be_created_is_not_deleted() -> None:
    with respx.mock(base_url=MOCK_URL, assert_all_called=False) as router, Client(MOCK_URL) as c:
        router.post("/v1/sessions").mock(return_value=problem(422, "invalid_spec", "mode"))
        deleted = router.delete(SESSION).mock(return_value=httpx.Response(204))
        # pool_size=0 has the schema's shape: only the server's normalization refuses it.
        with pytest.raises(poolgrad.InvalidSpecError), c.session(pool_size=0):
            pass
        assert deleted.call_count == 0


def test_a_client_it_was_given_is_not_closed() -> None:
    http = httpx.Client()
    with Client(MOCK_URL, http_client=http):
        pass
    assert not http.is_closed
    http.close()


@pytest.mark.anyio
async def test_async_session_round_trip_and_cleanup() -> None:
    X = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    async with AsyncClient(MOCK_URL) as client:
        with respx.mock(base_url=MOCK_URL) as router:
            router.post("/v1/sessions").mock(return_value=created())
            router.post(FORWARD).mock(side_effect=_echo_tensor)
            backward = router.post(BACKWARD).mock(side_effect=_echo_tensor)
            deleted = router.delete(SESSION).mock(return_value=httpx.Response(204))
            async with client.session(mode="max") as session:
                np.testing.assert_array_equal(await session.forward(X), X)
                np.testing.assert_array_equal(await session.backward(X), X)
            assert deleted.call_count == 1
            with pytest.raises(KeyError):
                async with client.session():
                    raise KeyError("boom")
            assert deleted.call_count == 2
    assert backward.calls.last.request.headers["If-Match"] == '"1"'
