"""RemotePooling is a drop-in for EpyNN's Pooling: same layer results, same training run.

EpyNN (GPL-3.0) is only called here, never copied. It is a dev dependency, not poolgrad's.
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pytest

import poolgrad
from poolgrad import Client
from poolgrad.epynn import RemotePooling

if TYPE_CHECKING:
    from tests.conftest import LiveServer

matplotlib.use("Agg")  # EpyNN imports pyplot; never open a window

from epynn.commons.maths import relu, softmax
from epynn.convolution.models import Convolution
from epynn.dense.models import Dense
from epynn.embedding.models import Embedding
from epynn.flatten.models import Flatten
from epynn.network.models import EpyNN
from epynn.pooling.models import Pooling
from epynn.settings import se_hPars

SEED = 7
EPOCHS = 5
LEARNING_RATE = 0.2


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.base_url) as client:
        yield client


# --------------------------------------------------------------------- no server


def test_pool_functions_map_to_modes_and_others_are_refused() -> None:
    assert RemotePooling(pool=np.max).mode == "max"
    assert RemotePooling(pool=np.min).mode == "min"
    assert RemotePooling(pool=np.amin).mode == "min"
    with pytest.raises(ValueError, match=r"np.max or np.min .* got mean"):
        RemotePooling(pool=np.mean)


def test_constructor_mirrors_epynn() -> None:
    for args in [{}, {"pool_size": 3}, {"pool_size": (2, 3), "strides": (1, 2)}]:
        ours, theirs = RemotePooling(**args), Pooling(**args)
        assert ours.d == theirs.d
        assert ours.activation == theirs.activation
        assert ours.trainable is theirs.trainable
        assert (ours.p, ours.g, ours.se_hPars) == (theirs.p, theirs.g, theirs.se_hPars)


def test_int_strides_are_ignored_like_epynn_but_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"strides=1 is not a tuple: ignored"):
        layer = RemotePooling(pool_size=(2, 2), strides=1)
    assert (layer.d["sh"], layer.d["sw"]) == (Pooling(pool_size=(2, 2), strides=1).d["sh"], 2)


def test_shapes_are_computed_locally_as_epynn_does() -> None:
    X = np.zeros((3, 7, 9, 2))
    ours, theirs = RemotePooling((3, 2), (2, 3)), Pooling((3, 2), (2, 3))
    ours.compute_shapes(X)
    theirs.compute_shapes(X)
    assert ours.d == theirs.d
    assert ours.fs == theirs.fs


def test_a_pickled_layer_drops_its_connection() -> None:
    layer = RemotePooling(client=Client("http://127.0.0.1:1"))
    clone = pickle.loads(pickle.dumps(layer))
    assert clone.d == layer.d
    assert clone._client is None
    assert clone._owns_client


# ---------------------------------------------------------------- against EpyNN


def _images(seed: int, shape: tuple[int, ...], *, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many windows hold several maxima
        return rng.integers(0, 3, shape).astype(np.float64)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("pool", [np.max, np.min])
@pytest.mark.parametrize(
    ("pool_size", "strides", "overlapping"),
    [((2, 2), None, False), (3, None, False), ((2, 3), (2, 3), False), ((3, 3), (1, 2), True)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_layer_equals_epynn_pooling(
    client: Client,
    pool: Callable[..., Any],
    pool_size: Any,
    strides: Any,
    overlapping: bool,
    ties: bool,
) -> None:
    X = _images(1, (4, 7, 8, 3), ties=ties)
    reference = Pooling(pool_size, strides, pool)
    with RemotePooling(pool_size, strides, pool, client=client) as remote:
        A = remote.forward(X)
        expected_A = reference.forward(X)
        dA = _images(2, A.shape, ties=False)
        dX = remote.backward(dA)
        expected_dX = reference.backward(dA)
        np.testing.assert_array_equal(A, expected_A)
        if overlapping:  # gradients from several windows add up in another order
            np.testing.assert_allclose(dX, expected_dX, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(dX, expected_dX)
        assert remote.d == reference.d
        assert set(remote.bs) == set(reference.bs)
        assert {k: remote.fs[k] for k in ("X", "A", "Z")} == {
            k: reference.fs[k] for k in ("X", "A", "Z")
        }
        session = remote._session
        assert session is not None
    assert session.deleted


def test_a_lost_session_is_recreated(client: Client) -> None:
    X = _images(3, (2, 4, 4, 1), ties=False)
    with RemotePooling(client=client) as layer:
        A = layer.forward(X)
        first = layer._session
        assert first is not None
        first.delete()  # as if it had expired on the server
        dX = layer.backward(np.ones_like(A))
        assert layer._session is not None
        assert layer._session.id != first.id
    reference = Pooling()
    reference.forward(X)
    np.testing.assert_array_equal(dX, reference.backward(np.ones_like(A)))


def test_a_session_lost_before_a_forward_is_recreated(client: Client) -> None:
    X = _images(4, (2, 6, 6, 2), ties=False)
    with RemotePooling(client=client) as layer:
        layer.forward(X)
        first = layer._session
        assert first is not None
        first.delete()  # as if it had expired on the server
        A = layer.forward(X)
        assert layer._session is not None
        assert layer._session.id != first.id
        dX = layer.backward(np.ones_like(A))
    reference = Pooling()
    np.testing.assert_array_equal(A, reference.forward(X))
    np.testing.assert_array_equal(dX, reference.backward(np.ones_like(A)))


# ----------------------------------------------------------------- cleanup


@pytest.fixture
def one_session_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server that holds one session at most: a second is refused until the first is freed."""
    return start_server(POOLGRAD_MAX_SESSIONS="1")


def _session_count_is_free(base_url: str) -> bool:
    with Client(base_url, max_retries=0) as probe:
        try:
            probe.create_session().delete()
        except poolgrad.CapacityError:
            return False
    return True


def test_a_dropped_layer_frees_its_session_and_its_client(
    one_session_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLGRAD_BASE_URL", one_session_server.base_url)
    layer = RemotePooling()  # EpyNN never calls close(): the layer owns a client it made
    layer.forward(_images(5, (1, 4, 4, 1), ties=False))
    client = layer._client
    assert client is not None
    assert not _session_count_is_free(one_session_server.base_url)
    del layer
    gc.collect()
    assert _session_count_is_free(one_session_server.base_url)
    assert client._http.is_closed


def test_a_dropped_layer_leaves_a_client_it_was_given_open(
    one_session_server: LiveServer,
) -> None:
    with Client(one_session_server.base_url) as given:
        layer = RemotePooling(client=given)
        layer.forward(_images(6, (1, 4, 4, 1), ties=False))
        del layer
        gc.collect()
        assert _session_count_is_free(one_session_server.base_url)
        assert not given._http.is_closed


def test_close_frees_the_session_once_and_the_layer_is_usable_again(
    one_session_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLGRAD_BASE_URL", one_session_server.base_url)
    X = _images(7, (1, 4, 4, 1), ties=False)
    layer = RemotePooling()
    layer.forward(X)
    client = layer._client
    assert client is not None
    layer.close()
    assert client._http.is_closed
    assert _session_count_is_free(one_session_server.base_url)
    layer.close()  # a second close has nothing left to do
    np.testing.assert_array_equal(layer.forward(X), Pooling().forward(X))
    layer.close()
    assert _session_count_is_free(one_session_server.base_url)


# ------------------------------------------------------------------- training


def _dataset() -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 8x8 one-channel noisy images: a bright row (0) or a bright column (1)."""
    rng = np.random.default_rng(SEED)
    count = 96
    labels = rng.integers(0, 2, count)
    images = rng.uniform(0.0, 0.3, (count, 8, 8, 1))
    for image, label in zip(images, labels, strict=True):
        line = rng.integers(1, 7)
        if label:
            image[:, line, 0] += 1.0
        else:
            image[line, :, 0] += 1.0
    return images, labels


def _train(pooling: Any) -> dict[str, list[list[float]]]:
    """Train the same small CNN from the same seeds; the per-epoch metrics EpyNN recorded."""
    np.random.seed(SEED)  # EpyNN's Embedding splits the data with the global generator
    X, y = _dataset()
    embedding = Embedding(X_data=X, Y_data=y, Y_encode=True, batch_size=16, relative_size=(2, 1, 0))
    convolution = Convolution(unit_filters=4, filter_size=(3, 3), activate=relu)
    layers = [embedding, convolution, pooling, Flatten(), Dense(2, softmax)]
    model = EpyNN(layers=layers, name="poolgrad-drop-in")
    hyper = dict(
        se_hPars, learning_rate=LEARNING_RATE
    )  # EpyNN writes into it: a fresh copy per run
    model.initialize(loss="MSE", seed=SEED, metrics=["accuracy"], se_hPars=hyper, end="\r")
    model.train(epochs=EPOCHS, init_logs=False)
    return {name: [[float(v) for v in per_set] for per_set in values]
            for name, values in model.metrics.items()}  # fmt: skip


def test_training_with_remote_pooling_equals_epynn_pooling(
    client: Client,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # EpyNN may create folders in the working directory
    local = _train(Pooling(pool_size=(2, 2), pool=np.max))
    with RemotePooling(pool_size=(2, 2), pool=np.max, client=client) as remote:
        served = _train(remote)
    capsys.readouterr()  # EpyNN reports every epoch on stdout
    assert set(local) == {"accuracy", "MSE"}
    assert len(local["MSE"][0]) == EPOCHS
    assert served == local, f"EpyNN Pooling: {local}\nRemotePooling: {served}"
    # The run learned something, so equal histories are not trivially equal.
    assert local["MSE"][0][-1] < local["MSE"][0][0]
    assert local["accuracy"][0][-1] > local["accuracy"][0][0]
