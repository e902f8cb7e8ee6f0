"""The Open Inference Protocol through NVIDIA's own client (``tritonclient[http]``), against a
real uvicorn server on 127.0.0.1: every result equal to the engine's, errors surfacing as
``InferenceServerException`` with this project's statuses and messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from engine import PoolSpec, backward, forward
from poolgrad.protocol import inference
from service.deps import owner_of
from service.v2 import sequence_session_id

HEADER = inference.HEADER_LENGTH
RNG = np.random.default_rng(7)
# Values spread apart so every window has one clear winner (no ties at float rounding).
X = RNG.permutation(2 * 6 * 6 * 3).reshape(2, 6, 6, 3).astype(np.float32) * 0.25 - 20.0
DA = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)


class LiveServer(Protocol):
    """The part of ``tests/conftest.py``'s live server these tests use."""

    base_url: str


def expected(X: np.ndarray, dA: np.ndarray, **spec: Any) -> tuple[np.ndarray, np.ndarray]:
    A, state = forward(X, PoolSpec(**spec))
    return A, backward(state, dA)


@pytest.fixture(scope="module")
def keyed(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(POOLGRAD_API_KEYS="alice-key,bob-key")


def _client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.base_url.removeprefix("http://"))


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    with _client(live_server) as client:
        yield client


def tensor(name: str, array: np.ndarray, *, binary: bool) -> triton.InferInput:
    value = triton.InferInput(name, list(array.shape), _DATATYPES[array.dtype.name])
    return value.set_data_from_numpy(array, binary_data=binary)


_DATATYPES = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "int32": "INT32"}


def session_status(server: LiveServer, session_id: str, key: str = "") -> int:
    """The v1 status of a sequence's session: what the store holds for it."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{server.base_url}/v1/sessions/{session_id}"
    return httpx.get(url, headers=headers, timeout=10).status_code


# ----------------------------------------------------------------- metadata, health


def test_server_metadata_and_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "poolgrad"
    assert {"binary_tensor_data", "sequence"} <= set(metadata["extensions"])


@pytest.mark.parametrize("model", ["maxpool", "minpool", "avgpool"])
def test_model_metadata_and_readiness(client: triton.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")
    assert not client.is_model_ready(model, "2")
    metadata = client.get_model_metadata(model, "1")
    assert metadata["name"] == model
    assert metadata["versions"] == ["1"]
    assert [t["name"] for t in metadata["inputs"]] == ["X", "dA"]
    assert [t["name"] for t in metadata["outputs"]] == ["A", "dX"]
    for described in metadata["inputs"] + metadata["outputs"]:
        assert described["parameters"]["datatypes"] == ["FP16", "FP32", "FP64"]
        assert all(dim == -1 for dim in described["shape"])


def test_unknown_model_is_a_404_naming_the_models(client: triton.InferenceServerClient) -> None:
    assert not client.is_model_ready("sumpool")
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("sumpool")
    assert caught.value.status() == "404"
    assert "'sumpool'" in caught.value.message()
    assert "maxpool, minpool, avgpool" in caught.value.message()


# ------------------------------------------------------------------------ stateless


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(("model", "mode"), [("maxpool", "max"), ("avgpool", "avg")])
def test_stateless_call_equals_the_engine(
    client: triton.InferenceServerClient, binary: bool, model: str, mode: str
) -> None:
    result = client.infer(
        model,
        [tensor("X", X, binary=binary), tensor("dA", DA, binary=binary)],
        outputs=[
            triton.InferRequestedOutput("A", binary_data=binary),
            triton.InferRequestedOutput("dX", binary_data=binary),
        ],
        request_id="call-1",
    )
    A, dX = expected(X, DA, mode=mode)
    np.testing.assert_array_equal(result.as_numpy("A"), A)
    np.testing.assert_array_equal(result.as_numpy("dX"), dX)
    assert result.as_numpy("A").dtype == np.float32
    assert result.get_response()["id"] == "call-1"
    has_parameters = [
        "parameters" in output for output in result.get_response()["outputs"]
    ]  # binary outputs say their size; JSON outputs carry data
    assert has_parameters == [binary, binary]


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_spec_parameters_and_dtypes_reach_the_engine(
    client: triton.InferenceServerClient, dtype: str
) -> None:
    X_typed, dA_typed = X.astype(dtype), RNG.standard_normal((2, 4, 4, 3)).astype(dtype)
    spec = {"pool_size": [3, 3], "strides": 1, "ties": "first"}
    result = client.infer(
        "minpool",
        [tensor("X", X_typed, binary=True), tensor("dA", dA_typed, binary=False)],
        parameters={"pool_size": "3,3", "strides": 1, "ties": "first"},
    )
    A, dX = expected(X_typed, dA_typed, mode="min", **spec)
    assert result.as_numpy("A").dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result.as_numpy("A"), A)
    np.testing.assert_array_equal(result.as_numpy("dX"), dX)


# ------------------------------------------------------------------------ sequences


@pytest.mark.parametrize("sequence_id", [42, 2**64 - 1, "run-7f3a"], ids=["uint64", "max", "str"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_forward_then_backward_tied_by_a_sequence(
    client: triton.InferenceServerClient,
    live_server: LiveServer,
    sequence_id: int | str,
    binary: bool,
) -> None:
    session_id = sequence_session_id("", "avgpool", sequence_id)  # no API keys: owner ""
    spec = {"pool_size": [3, 3], "strides": [1, 1]}
    dA = RNG.standard_normal((2, 4, 4, 3)).astype(np.float32)
    A, dX = expected(X, dA, mode="avg", **spec)

    started = client.infer(
        "avgpool",
        [tensor("X", X, binary=binary)],
        sequence_id=sequence_id,
        sequence_start=True,
        parameters={"pool_size": "3,3", "strides": "1,1"},
    )
    np.testing.assert_array_equal(started.as_numpy("A"), A)
    assert [output["name"] for output in started.get_response()["outputs"]] == ["A"]
    assert session_status(live_server, session_id) == 200

    middle = client.infer("avgpool", [tensor("dA", dA, binary=binary)], sequence_id=sequence_id)
    np.testing.assert_array_equal(middle.as_numpy("dX"), dX)
    ended = client.infer(
        "avgpool", [tensor("dA", dA, binary=binary)], sequence_id=sequence_id, sequence_end=True
    )
    np.testing.assert_array_equal(ended.as_numpy("dX"), dX)
    assert session_status(live_server, session_id) == 404

    with pytest.raises(InferenceServerException) as caught:
        client.infer("avgpool", [tensor("dA", dA, binary=binary)], sequence_id=sequence_id)
    assert caught.value.status() == "404"
    assert f"sequence {sequence_id!r} of model 'avgpool' is unknown or has ended" in (
        caught.value.message()
    )


def test_uint64_and_string_ids_are_different_sequences(
    client: triton.InferenceServerClient,
) -> None:
    client.infer("maxpool", [tensor("X", X, binary=True)], sequence_id=5, sequence_start=True)
    with pytest.raises(InferenceServerException, match="sequence '5' of model 'maxpool'"):
        client.infer("maxpool", [tensor("dA", DA, binary=True)], sequence_id="5")
    result = client.infer(
        "maxpool", [tensor("dA", DA, binary=True)], sequence_id=5, sequence_end=True
    )
    np.testing.assert_array_equal(result.as_numpy("dX"), expected(X, DA)[1])


def test_start_replaces_a_sequence_with_the_spec_of_that_request(
    client: triton.InferenceServerClient,
) -> None:
    client.infer("maxpool", [tensor("X", X, binary=True)], sequence_id=9, sequence_start=True)
    X_small = X[:, :4, :4]
    restarted = client.infer(
        "maxpool",
        [tensor("X", X_small, binary=True)],
        sequence_id=9,
        sequence_start=True,
        parameters={"pool_size": "4,4"},
    )
    dA = RNG.standard_normal((2, 1, 1, 3)).astype(np.float32)
    A, dX = expected(X_small, dA, pool_size=[4, 4])
    np.testing.assert_array_equal(restarted.as_numpy("A"), A)
    result = client.infer(
        "maxpool", [tensor("dA", dA, binary=True)], sequence_id=9, sequence_end=True
    )
    np.testing.assert_array_equal(result.as_numpy("dX"), dX)


# --------------------------------------------------------------------------- errors


#: (id, inputs as (name, array, binary), infer keywords, status, text of the message)
ERRORS: list[tuple[str, list[tuple[str, np.ndarray, bool]], dict[str, Any], str, str]] = [
    ("dA-without-sequence", [("dA", DA, True)], {}, "422",
     "input dA alone needs the state of a forward pass"),
    ("integer-X", [("X", X.astype(np.int32), True)], {}, "422", "int32"),
    ("dA-shape", [("X", X, True), ("dA", X, False)], {}, "422", "(2, 6, 6, 3)"),
    ("bad-spec", [("X", X, True)], {"parameters": {"ties": "x"}}, "422", "'x'"),
    ("unparsable-spec", [("X", X, True)], {"parameters": {"pool_size": "2,two"}}, "422", "'two'"),
    ("mode-parameter", [("X", X, True)], {"parameters": {"mode": "avg"}}, "422",
     "parameters.mode"),
    ("output-not-produced", [("X", X, True)],
     {"outputs": [triton.InferRequestedOutput("dX")]}, "400", "output 'dX' is not produced"),
    ("unknown-input", [("Y", X, True)], {}, "422", "['Y']"),
    ("unknown-sequence", [("dA", DA, True)], {"sequence_id": 31337}, "404",
     "sequence 31337 of model 'maxpool' is unknown or has ended"),
    ("spec-without-start", [("X", X, True)], {"sequence_id": 77, "parameters": {"ties": "all"}},
     "422", "can only come with sequence_start"),
    ("unknown-version", [("X", X, True)], {"model_version": "3"}, "404", "model version '3'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("inputs", "keywords", "status", "named"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_errors_surface_as_inference_server_exceptions(
    client: triton.InferenceServerClient,
    inputs: list[tuple[str, np.ndarray, bool]],
    keywords: dict[str, Any],
    status: str,
    named: str,
) -> None:
    tensors = [tensor(name, array, binary=binary) for name, array, binary in inputs]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("maxpool", tensors, **keywords)
    assert caught.value.status() == status
    assert named in caught.value.message(), caught.value.message()


# ------------------------------------------------------------- hostile, over a socket


def sessions_live(server: LiveServer) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    (line,) = [line for line in metrics.splitlines() if line.startswith("poolgrad_sessions_live ")]
    return float(line.split()[1])


def test_hostile_bodies_over_a_socket_store_nothing(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server()
    header = json.dumps(
        {
            "inputs": [{"name": "X", "shape": list(X.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": X.nbytes}}],
            "parameters": {"sequence_id": 3, "sequence_start": True},
        }
    ).encode()  # fmt: skip
    url = f"{server.base_url}/v2/models/maxpool/infer"
    for body, length, named in (
        (header + X.tobytes(), len(header) + 7, "not the JSON header"),
        (header + X.tobytes()[:-1], len(header), "runs past"),
        (header + X.tobytes(), len(header) + X.nbytes + 1, "past the end"),
    ):
        response = httpx.post(url, content=body, headers={HEADER: str(length)}, timeout=10)
        assert response.status_code == 400, response.text
        assert named in response.json()["error"]
        assert sessions_live(server) == 0
    honest = httpx.post(url, content=header + X.tobytes(), headers={HEADER: str(len(header))})
    assert honest.status_code == 200, honest.text
    assert sessions_live(server) == 1


# ----------------------------------------------------------------------------- auth


def test_api_keys_guard_inference_and_sequences(keyed: LiveServer) -> None:
    alice = {"Authorization": "Bearer alice-key"}
    bob = {"Authorization": "Bearer bob-key"}
    with _client(keyed) as client:
        assert client.is_server_ready()  # health needs no key, as /readyz
        with pytest.raises(InferenceServerException) as caught:
            client.infer("maxpool", [tensor("X", X, binary=True)])
        assert caught.value.status() == "401"
        assert "API key" in caught.value.message()

        client.infer(
            "maxpool", [tensor("X", X, binary=True)], sequence_id=1, sequence_start=True,
            headers=alice,
        )  # fmt: skip
        with pytest.raises(InferenceServerException) as caught:
            client.infer("maxpool", [tensor("dA", DA, binary=True)], sequence_id=1, headers=bob)
        assert caught.value.status() == "404"
        session_id = sequence_session_id(owner_of("alice-key"), "maxpool", 1)
        assert session_status(keyed, session_id, "alice-key") == 200
        result = client.infer(
            "maxpool", [tensor("dA", DA, binary=True)], sequence_id=1, sequence_end=True,
            headers=alice,
        )  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("dX"), expected(X, DA)[1])
    assert session_status(keyed, session_id, "alice-key") == 404


# --------------------------------------------------------------------------- README


def readme_example() -> str:
    """The Python example of the README's Open Inference Protocol section."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    section = readme.read_text().split("## Open Inference Protocol", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs_and_equals_the_engine(live_server: LiveServer) -> None:
    address = live_server.base_url.removeprefix("http://")
    namespace: dict[str, Any] = {}
    exec(compile(readme_example().replace("127.0.0.1:8000", address), "README", "exec"), namespace)
    X_readme, ones = namespace["X"], np.ones((8, 16, 16, 3), np.float32)
    A, dX = expected(X_readme, ones, pool_size=[2, 2], ties="first")
    np.testing.assert_array_equal(namespace["A"], A)
    np.testing.assert_array_equal(namespace["dX"], dX)
    A_avg, dX_avg = expected(X_readme, ones, mode="avg", pool_size=[2, 2])
    np.testing.assert_array_equal(namespace["A_avg"], A_avg)
    np.testing.assert_array_equal(namespace["dX_avg"], dX_avg)
