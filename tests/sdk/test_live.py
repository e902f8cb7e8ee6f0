"""The SDK against a real ``python -m service`` on loopback, checked with the engine in-process."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import poolgrad
from engine import PoolSpec, backward, forward
from poolgrad import AsyncClient, Client

if TYPE_CHECKING:
    from tests.conftest import LiveServer


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.base_url) as client:
        yield client


def _spread(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.float64) -> np.ndarray:
    """Distinct values, well apart: no accidental ties."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.5 - 7.0).astype(dtype)


def _ties(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, shape).astype(np.float64)


def _engine(X: np.ndarray, dA: np.ndarray | None, spec: dict[str, Any]) -> tuple[Any, Any]:
    A, state = forward(np.ascontiguousarray(X), PoolSpec(**spec))
    return A, (backward(state, dA) if dA is not None else None)


SPECS: list[Any] = [
    pytest.param({}, (2, 6, 8, 3), _spread, id="defaults"),
    pytest.param({"mode": "min"}, (2, 6, 8, 3), _spread, id="min"),
    pytest.param({"mode": "avg"}, (2, 6, 8, 3), _spread, id="avg"),
    pytest.param({"pool_size": 3}, (2, 7, 9, 2), _spread, id="pool_size-int"),
    pytest.param({"pool_size": [2, 3], "strides": [1, 2]}, (2, 6, 8, 2), _spread, id="overlap"),
    pytest.param({"pool_size": [2, 2], "strides": 1}, (1, 5, 5, 2), _spread, id="strides-int"),
    pytest.param({"pool_size": [3]}, (2, 10, 4), _spread, id="1d"),
    pytest.param({"pool_size": [2, 2, 2]}, (1, 4, 6, 4, 2), _spread, id="3d"),
    pytest.param({"padding": "same", "pool_size": 3, "strides": 2}, (2, 7, 8, 2), _spread,
                 id="padding-same"),
    pytest.param({"padding": [[1, 0], [0, 1]]}, (2, 5, 5, 2), _spread, id="padding-explicit"),
    pytest.param({"mode": "avg", "padding": "same", "pool_size": 3, "count_include_pad": True},
                 (2, 7, 7, 2), _spread, id="avg-count-include-pad"),
    pytest.param({"layout": "channels_first"}, (2, 3, 6, 8), _spread, id="channels-first"),
    pytest.param({"ties": "all"}, (2, 6, 6, 3), _ties, id="ties-all"),
    pytest.param({"ties": "first"}, (2, 6, 6, 3), _ties, id="ties-first"),
    pytest.param({"ties": "split", "mode": "min"}, (2, 6, 6, 3), _ties, id="ties-split"),
    pytest.param({"nan": "propagate"}, (2, 6, 6, 3), _spread, id="nan-propagate"),
]  # fmt: skip


@pytest.mark.parametrize("tensor_format", ["npy", "json"])
@pytest.mark.parametrize(("spec", "shape", "make"), SPECS)
def test_every_spec_field_round_trips_equal_to_the_engine(
    live_server: LiveServer,
    tensor_format: Any,
    spec: dict[str, Any],
    shape: tuple[int, ...],
    make: Callable[..., np.ndarray],
) -> None:
    X = make(shape)
    if spec.get("nan") == "propagate":
        X[0, 0, 0, 0] = np.nan
    A_ref, _ = _engine(X, None, spec)
    dA = _spread(A_ref.shape, seed=1)
    A_ref, dX_ref = _engine(X, dA, spec)
    with Client(live_server.base_url, tensor_format=tensor_format) as client:
        with client.session(**spec) as session:
            A = session.forward(X)
            dX = session.backward(dA)
            again = session.backward(dA)  # the state is kept: backward repeats
        A_stateless, dX_stateless = client.gradient(X, dA, **spec)
        A_only = client.pool(X, **spec)  # no dA: forward only
    for got, want in [(A, A_ref), (dX, dX_ref), (again, dX_ref),
                      (A_stateless, A_ref), (dX_stateless, dX_ref), (A_only, A_ref)]:  # fmt: skip
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert session.spec == PoolSpec(**spec).to_dict()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda x: x, id="C"),
        pytest.param(np.asfortranarray, id="F"),
        pytest.param(lambda x: np.swapaxes(np.swapaxes(x, 1, 2).copy(), 1, 2), id="transposed"),
        pytest.param(lambda x: np.repeat(x, 2, axis=3)[..., ::2], id="strided"),
        pytest.param(lambda x: x.astype(x.dtype.newbyteorder(">")), id="big-endian"),
    ],
)
def test_dtype_and_layout_are_preserved(
    client: Client, dtype: Any, layout: Callable[[np.ndarray], np.ndarray]
) -> None:
    X = layout(_spread((2, 6, 4, 3), dtype=dtype))
    A_ref, dX_ref = _engine(X.astype(dtype), np.ones((2, 3, 2, 3), dtype), {})
    with client.session() as session:
        A = session.forward(X)
        dX = session.backward(np.ones(A.shape, dtype))
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(dX, dX_ref)
    assert A.dtype == np.dtype(dtype)
    assert dX.dtype == np.dtype(dtype)
    assert dX.shape == X.shape
    assert A.flags.writeable


def test_context_manager_deletes_its_session_on_success_and_on_error(client: Client) -> None:
    with client.session() as session:
        session.forward(_spread((1, 4, 4, 1)))
        assert session.info().step == 1
    with pytest.raises(poolgrad.SessionNotFoundError):
        client.get_session(session.id)

    def train_and_fail() -> str:
        with client.session() as failing:
            failing.forward(_spread((1, 4, 4, 1)))
            raise RuntimeError(f"training blew up in {failing.id}")

    with pytest.raises(RuntimeError, match="training blew up") as blew:
        train_and_fail()
    failing_id = str(blew.value).rsplit(" ", 1)[-1]
    with pytest.raises(poolgrad.SessionNotFoundError) as caught:
        client.get_session(failing_id)
    assert caught.value.status == 404
    assert caught.value.request_id


def test_session_info_describes_the_cached_forward(client: Client) -> None:
    with client.session(mode="max", pool_size=(2, 2), ttl_seconds=120) as session:
        assert session.step == 0
        assert session.ttl_seconds == 120
        session.forward(_spread((3, 4, 6, 2), dtype=np.float32))
        described = session.info()
    assert described.id == session.id
    assert described.step == session.step == 1
    assert described.input_shape == (3, 4, 6, 2)
    assert described.output_shape == (3, 2, 3, 2)
    assert described.dtype == "float32"
    assert described.state_bytes > 0


def test_a_backward_is_never_applied_to_another_forward(client: Client) -> None:
    X1, X2 = _spread((1, 4, 4, 1), seed=1), _spread((1, 4, 4, 1), seed=2)
    dA = np.ones((1, 2, 2, 1))
    with client.session() as mine:
        mine.forward(X1)
        other = client.get_session(mine.id)  # e.g. a second worker on the same session
        other.forward(X2)
        with pytest.raises(poolgrad.StaleStepError) as caught:
            mine.backward(dA)
        assert caught.value.code == "stale_step"
        np.testing.assert_array_equal(other.backward(dA), _engine(X2, dA, {})[1])


def test_contract_errors_arrive_as_their_classes(client: Client) -> None:
    with client.session() as session:
        with pytest.raises(poolgrad.NoForwardError):
            session.backward(np.ones((1, 2, 2, 1)))
        X = _spread((1, 4, 4, 1))
        session.forward(X)
        with pytest.raises(poolgrad.ShapeMismatchError, match=r"\(1, 3, 2, 1\)|\[1, 3, 2, 1\]"):
            session.backward(np.ones((1, 3, 2, 1)))
        with pytest.raises(poolgrad.InvalidTensorError, match="int64"):
            session.forward(np.ones((1, 4, 4, 1), dtype=np.int64))
        # Nothing half-applied: the refused forward left the previous state usable.
        dA = _spread((1, 2, 2, 1), seed=5)
        np.testing.assert_array_equal(session.backward(dA), _engine(X, dA, {})[1])
        assert session.info().step == 1
    with pytest.raises(ValueError, match="median"):  # the schema's check, before any request
        client.create_session(mode="median")  # type: ignore[typeddict-item]
    with pytest.raises(poolgrad.InvalidSpecError, match="pool_size"):  # the server's
        client.create_session(pool_size=[2, 2, 2, 2])
    with pytest.raises(poolgrad.InvalidSpecError, match="pool_size"):
        client.gradient(np.ones((1, 4, 4, 1)), np.ones((1, 2, 2, 1)), pool_size=0)
    with pytest.raises(poolgrad.InvalidTensorError):
        client.gradient(np.full((1, 4, 4, 1), np.nan), np.ones((1, 2, 2, 1)), nan="reject")


def test_health(client: Client) -> None:
    assert client.health() == {"status": "ok"}


def test_api_keys_are_sent_from_the_environment(
    start_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(POOLGRAD_API_KEYS="key-one,key-two")
    with Client(server.base_url) as anonymous, pytest.raises(poolgrad.UnauthorizedError) as caught:
        anonymous.create_session()
    assert "POOLGRAD_API_KEY" in str(caught.value)
    monkeypatch.setenv("POOLGRAD_API_KEY", "key-one")
    with (
        Client(server.base_url) as one,
        Client(server.base_url, api_key="key-two") as two,
        one.session() as session,
    ):
        A = session.forward(_spread((1, 4, 4, 1)))
        assert A.shape == (1, 2, 2, 1)
        with pytest.raises(poolgrad.SessionNotFoundError):
            two.get_session(session.id)  # another key's session does not exist for it


def test_capacity_is_retried_with_retry_after_then_raised(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(POOLGRAD_MAX_SESSIONS="1", POOLGRAD_RETRY_AFTER_SECONDS="3")
    sleeps: list[float] = []
    with Client(server.base_url) as client, client.session():
        client._sleep = sleeps.append  # type: ignore[method-assign]
        with pytest.raises(poolgrad.CapacityError) as caught:
            client.create_session()
    assert sleeps == [3.0, 3.0]
    assert caught.value.code == "capacity_exceeded"


def test_connection_refused_is_retried_then_raised(sleeps: list[float]) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as client:
        client._sleep = sleeps.append  # type: ignore[method-assign]
        with pytest.raises(poolgrad.APIConnectionError, match="POOLGRAD_BASE_URL"):
            client.health()
    assert len(sleeps) == client.max_retries


@pytest.mark.anyio
async def test_async_client_round_trips_and_cleans_up(live_server: LiveServer) -> None:
    X = _spread((2, 6, 6, 2), dtype=np.float32)
    dA = _spread((2, 3, 3, 2), seed=3, dtype=np.float32)
    A_ref, dX_ref = _engine(X, dA, {"mode": "min"})
    async with AsyncClient(live_server.base_url) as client:
        async with client.session(mode="min") as session:
            np.testing.assert_array_equal(await session.forward(X), A_ref)
            np.testing.assert_array_equal(await session.backward(dA), dX_ref)
        with pytest.raises(poolgrad.SessionNotFoundError):
            await client.get_session(session.id)
        with pytest.raises(KeyError):
            async with client.session() as failing:
                raise KeyError("boom")
        with pytest.raises(poolgrad.SessionNotFoundError):
            await session.info()
        with pytest.raises(poolgrad.SessionNotFoundError):
            await client.get_session(failing.id)
        A, dX = await client.gradient(X, dA, mode="min")
        np.testing.assert_array_equal(A, A_ref)
        np.testing.assert_array_equal(dX, dX_ref)
        np.testing.assert_array_equal(await client.pool(X, mode="min"), A_ref)
        assert await client.health() == {"status": "ok"}


@pytest.mark.anyio
async def test_async_client_sessions_by_id_and_json_format(live_server: LiveServer) -> None:
    X = _spread((1, 4, 6, 2), dtype=np.float32)
    dA = _spread((1, 2, 3, 2), seed=4, dtype=np.float32)
    A_ref, dX_ref = _engine(X, dA, {"mode": "avg"})
    async with AsyncClient(live_server.base_url, tensor_format="json") as client:
        created = await client.create_session(mode="avg", ttl_seconds=60)
        described = await created.info()
        assert (described.id, described.step, described.input_shape) == (created.id, 0, None)
        assert described.spec["mode"] == "avg"
        np.testing.assert_array_equal(await created.forward(X), A_ref)
        again = await client.get_session(created.id)
        assert again.id == created.id
        np.testing.assert_array_equal(await again.backward(dA), dX_ref)
        described = await again.info()
        assert (described.step, described.input_shape, described.dtype) == (
            1,
            (1, 4, 6, 2),
            "float32",
        )
        A, dX = await client.gradient(X, dA, mode="avg")
        np.testing.assert_array_equal(A, A_ref)
        np.testing.assert_array_equal(dX, dX_ref)
        await created.delete()
        with pytest.raises(poolgrad.SessionNotFoundError):
            await client.get_session(created.id)
