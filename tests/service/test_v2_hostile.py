"""Hostile and malformed Open Inference Protocol requests: each ends in a 4xx whose
``{"error": ..}`` names the offending value, and the store is exactly as it was (nothing
created, an existing sequence's state intact). In-process over the ASGI transport, with the
app's own store to look into."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import DA1, X1, assert_state_intact, client_for, expected

from poolgrad.protocol import inference
from service.v2 import sequence_session_id

INFER = "/v2/models/maxpool/infer"
HEADER = inference.HEADER_LENGTH
START = {"sequence_id": 11, "sequence_start": True}

pytestmark = pytest.mark.anyio


def x_input(**overrides: Any) -> dict[str, Any]:
    """The JSON of input X as binary data (X1's bytes follow the header)."""
    return {
        "name": "X",
        "shape": list(X1.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": X1.nbytes},
        **overrides,
    }


def binary_body(
    inputs: list[dict[str, Any]], tail: bytes, parameters: dict[str, Any] | None = None, **rest: Any
) -> tuple[bytes, dict[str, str]]:
    """A request whose JSON header is followed by ``tail``; the header length is honest."""
    header = json.dumps({"inputs": inputs, "parameters": parameters or START, **rest}).encode()
    return header + tail, {HEADER: str(len(header))}


def json_body(inputs: list[dict[str, Any]], **rest: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": inputs, "parameters": START, **rest}).encode(), {}


def json_x(data: Any, shape: list[int] | None = None, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "X",
        "shape": shape or [1, 2, 2, 1],
        "datatype": "FP32",
        "data": data,
        **overrides,
    }


def lying(delta: int) -> tuple[bytes, dict[str, str]]:
    body, headers = binary_body([x_input()], X1.tobytes())
    return body, {HEADER: str(int(headers[HEADER]) + delta)}


NESTED_OK = [[[[1.0], [2.0]], [[3.0], [4.0]]]]

#: (id, request, status, text the error must contain). All but the ``late-`` ones are refused
#: before the store is touched; those (a value that is no number, an engine refusal) after
#: ``sequence_start`` created the session, which is then deleted again.
HOSTILE: list[tuple[str, Callable[[], tuple[bytes, dict[str, str]]], int, str]] = [
    ("header-length-past-body", lambda: lying(X1.nbytes + 1), 400, "past the end"),
    ("header-length-short", lambda: lying(-5), 400, "are not the JSON header"),
    ("header-length-long", lambda: lying(+3), 400, "are not the JSON header"),
    ("header-length-not-digits", lambda: (b"{}", {HEADER: "12abc"}), 400, "'12abc'"),
    (
        "binary-size-past-body",
        lambda: binary_body([x_input()], X1.tobytes()[:-4]),
        400,
        f"binary_data_size {X1.nbytes} at offset 0 runs past",
    ),
    (
        "binary-size-disagrees-with-shape",
        lambda: binary_body([x_input(shape=[2, 4, 4, 2])], X1.tobytes()),
        400,
        "[2, 4, 4, 2] of FP32 needs 256 bytes, binary_data_size says 384",
    ),
    (
        "extra-bytes-after-binary",
        lambda: binary_body([x_input()], X1.tobytes() + b"\0" * 8),
        400,
        "are not the 384 bytes",
    ),
    (
        "binary-without-header-length",
        lambda: (json_body([x_input()])[0], {}),
        400,
        "no Inference-Header-Content-Length",
    ),
    (
        "data-and-binary",
        lambda: binary_body([x_input(data=[1.0])], X1.tobytes()),
        400,
        "both data and parameters.binary_data_size",
    ),
    (
        "shape-disagrees-with-flat-data",
        lambda: json_body([json_x([1.0, 2.0, 3.0])]),
        400,
        "3 values",
    ),
    (
        "nested-row-too-short",
        lambda: json_body([json_x([[[[1.0], [2.0]], [[3.0]]]])]),
        400,
        "data[0][1] has 1 items; shape [1, 2, 2, 1] needs 2 in dim 2",
    ),
    (
        "nested-too-deep",
        lambda: json_body([json_x([[[[[1.0]], [2.0]], [[3.0], [4.0]]]])]),
        400,
        "nested deeper than shape",
    ),
    (
        "nested-too-shallow",
        lambda: json_body([json_x([[1.0, 2.0], [3.0, 4.0]])]),
        400,
        "needs 1 in dim 0",
    ),
    ("unknown-datatype", lambda: json_body([json_x(NESTED_OK, datatype="FP8")]), 422, "'FP8'"),
    ("bytes-datatype", lambda: json_body([json_x(NESTED_OK, datatype="BYTES")]), 422, "'BYTES'"),
    (
        "duplicate-input",
        lambda: json_body([json_x(NESTED_OK), json_x(NESTED_OK)]),
        400,
        "input 'X' is given more than once",
    ),
    ("negative-dim", lambda: json_body([json_x([], shape=[1, -2, 2, 1])]), 400, "[1, -2, 2, 1]"),
    ("huge-dims", lambda: json_body([json_x([], shape=[0, 2**62, 2**62])]), 400, "spans"),
    ("late-value-not-a-number", lambda: json_body([json_x(["1", 2.0, 3.0, 4.0])]), 400, "'1'"),
    ("not-json", lambda: (b"{inputs: nope", {}), 400, "not valid JSON"),
    ("not-an-object", lambda: (b"[1, 2]", {}), 400, "got list"),
    ("no-inputs", lambda: json_body([]), 400, "inputs must be a non-empty list"),
    ("unknown-field", lambda: json_body([json_x(NESTED_OK)], tensors=[]), 400, "['tensors']"),
    (
        "shared-memory",
        lambda: json_body([json_x(NESTED_OK, parameters={"shared_memory_region": "r"})]),
        400,
        "['shared_memory_region']",
    ),
    (
        "unknown-output",
        lambda: json_body([json_x(NESTED_OK)], outputs=[{"name": "B"}]),
        400,
        "output 'B' is not produced",
    ),
    (
        "output-binary-not-bool",
        lambda: json_body(
            [json_x(NESTED_OK)], outputs=[{"name": "A", "parameters": {"binary_data": 1}}]
        ),
        400,
        "binary_data must be a bool, got 1",
    ),
    (
        "sequence-id-negative",
        lambda: binary_body([x_input()], X1.tobytes(), {"sequence_id": -1}),
        400,
        "sequence_id -1 is not a uint64",
    ),
    (
        "sequence-id-bool",
        lambda: binary_body([x_input()], X1.tobytes(), {"sequence_id": True}),
        400,
        "got True",
    ),
    (
        "start-without-id",
        lambda: binary_body([x_input()], X1.tobytes(), {"sequence_start": True}),
        400,
        "sequence_start is true but sequence_id is 0",
    ),
    (
        "flag-not-bool",
        lambda: binary_body([x_input()], X1.tobytes(), {**START, "sequence_end": "yes"}),
        400,
        "sequence_end must be true or false, got 'yes'",
    ),
    (
        "unknown-parameter",
        lambda: binary_body([x_input()], X1.tobytes(), {**START, "window": "2,2"}),
        422,
        "unknown request parameter 'window'",
    ),
    (
        "parameter-of-wrong-type",
        lambda: binary_body([x_input()], X1.tobytes(), {**START, "pool_size": [2, 2]}),
        400,
        "parameters.pool_size must be a string, an int or a bool",
    ),
    (
        "bad-spec",
        lambda: binary_body([x_input()], X1.tobytes(), {**START, "pool_size": "0,2"}),
        422,
        "pool_size",
    ),
    (
        "late-engine-refuses-rank",
        lambda: json_body([json_x([1.0, 2.0], shape=[2])]),
        422,
        "(2,)",
    ),
    (
        "late-engine-refuses-dtype",
        lambda: json_body([json_x([1, 2, 3, 4], datatype="INT32")]),
        422,
        "int32",
    ),
    (
        "late-engine-refuses-window",
        lambda: json_body([json_x([1.0], shape=[1, 1, 1, 1])]),
        422,
        "pool_size",
    ),
    (
        "gzip",
        lambda: (json_body([json_x(NESTED_OK)])[0], {"Content-Encoding": "gzip"}),
        415,
        "'gzip'",
    ),
]


async def refused(
    client: httpx.AsyncClient, request: tuple[bytes, dict[str, str]], status: int, named: str
) -> None:
    body, headers = request
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert set(error) == {"error"}
    assert named in error["error"], (named, error["error"])


@pytest.mark.parametrize(
    ("make", "status", "named"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
@pytest.mark.parametrize("on_loop", [True, False], ids=["loop", "thread"])
async def test_hostile_bodies_are_refused_and_nothing_is_stored(
    app: FastAPI,
    client: httpx.AsyncClient,
    make: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    named: str,
    on_loop: bool,
) -> None:
    """Parsed on the event loop or, as large JSON is, in a worker thread: the same answers."""
    if not on_loop:
        app.state.compute.inline_max_bytes = 0
    await refused(client, make(), status, named)
    usage = await app.state.store.usage()
    assert (usage.sessions, usage.state_bytes) == (0, 0)


@pytest.mark.parametrize(
    ("make", "status", "named"),
    [case[1:] for case in HOSTILE if not case[0].startswith("late-")],
    ids=[case[0] for case in HOSTILE if not case[0].startswith("late-")],
)
async def test_hostile_restart_leaves_the_running_sequence_intact(
    client: httpx.AsyncClient,
    make: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    named: str,
) -> None:
    """Refused before the store is touched: sequence 11 keeps its state at step 1."""
    body, headers = binary_body([x_input()], X1.tobytes())
    assert (await client.post(INFER, content=body, headers=headers)).status_code == 200
    await refused(client, make(), status, named)
    await assert_state_intact(client, sequence_session_id("", "maxpool", 11))


async def test_refused_step_in_a_sequence_keeps_its_state(client: httpx.AsyncClient) -> None:
    body, headers = binary_body([x_input()], X1.tobytes())
    assert (await client.post(INFER, content=body, headers=headers)).status_code == 200
    wrong = np.zeros((2, 3, 3, 3), np.float32).ravel().tolist()
    for inputs, named in (
        ([{"name": "X", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}], "(3,)"),
        (
            [{"name": "dA", "shape": [2, 3, 3, 3], "datatype": "FP32", "data": wrong}],
            "(2, 3, 3, 3)",
        ),
    ):
        request = json.dumps({"inputs": inputs, "parameters": {"sequence_id": 11}}).encode()
        await refused(client, (request, {}), 422, named)
    await assert_state_intact(client, sequence_session_id("", "maxpool", 11))


async def test_refused_json_body_over_the_json_limit(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(max_json_body_bytes=1000)
    async with client_for(app) as client:
        data = [1.0] * 400
        await refused(client, json_body([json_x(data, shape=[1, 20, 20, 1])]), 413, "1000 bytes")
        header = json.dumps({"inputs": [x_input()], "pad": "x" * 2000}).encode()
        request = (header + X1.tobytes(), {HEADER: str(len(header))})
        await refused(client, request, 413, f"{HEADER} {len(header)} exceeds the limit of 1000")
        # Binary tensors are not JSON: only the header counts against the JSON limit.
        body, headers = binary_body([x_input()], X1.tobytes())
        assert (await client.post(INFER, content=body, headers=headers)).status_code == 200
        assert (await app.state.store.usage()).sessions == 1


# ------------------------------------------------------------ well-formed variants


async def test_nested_and_flat_data_are_the_same_tensor(client: httpx.AsyncClient) -> None:
    X = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)[:, ::-1]
    answers = []
    for data in (X.tolist(), X.ravel().tolist()):
        request = {
            "inputs": [{"name": "X", "shape": [1, 4, 4, 1], "datatype": "FP64", "data": data}]
        }
        response = await client.post(INFER, json=request)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        answers.append(response.json())
    assert answers[0] == answers[1]
    (output,) = answers[0]["outputs"]
    assert output == {
        "name": "A",
        "datatype": "FP64",
        "shape": [1, 2, 2, 1],
        "data": expected(X)[0].ravel().tolist(),
    }


async def test_binary_response_layout(client: httpx.AsyncClient) -> None:
    """JSON header, then the binary outputs in the order asked, sized by their parameters."""
    dA = DA1.astype(np.float32)
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [
                x_input(),
                {
                    "name": "dA",
                    "shape": list(dA.shape),
                    "datatype": "FP32",
                    "data": dA.ravel().tolist(),
                },
            ],
            "outputs": [{"name": "dX", "parameters": {"binary_data": True}}, {"name": "A"}],
        }
    ).encode()
    response = await client.post(
        "/v2/models/maxpool/versions/1/infer",
        content=header + X1.tobytes(),
        headers={HEADER: str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == inference.BINARY_MEDIA_TYPE
    length = int(response.headers[HEADER])
    head = json.loads(response.content[:length])
    A, dX = expected(X1, dA)
    assert head["id"] == "r1"
    assert [output["name"] for output in head["outputs"]] == ["dX", "A"]
    assert head["outputs"][0]["parameters"] == {"binary_data_size": dX.nbytes}
    np.testing.assert_array_equal(
        np.frombuffer(response.content[length:], "<f4").reshape(dX.shape), dX
    )
    np.testing.assert_array_equal(np.array(head["outputs"][1]["data"], np.float32), A.ravel())


async def test_non_finite_values_travel_as_names_in_json(client: httpx.AsyncClient) -> None:
    request = {
        "inputs": [
            {"name": "X", "shape": [1, 2, 2, 1], "datatype": "FP32",
             "data": ["NaN", 1.0, 2.0, 3.0]},
        ],
        "parameters": {"pool_size": "1,1"},
    }  # fmt: skip
    response = await client.post("/v2/models/minpool/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["NaN", 1.0, 2.0, 3.0]


async def test_x_and_da_in_a_sequence_run_forward_then_backward(
    client: httpx.AsyncClient,
) -> None:
    body, headers = binary_body(
        [x_input(), {"name": "dA", "shape": list(DA1.shape), "datatype": "FP32",
                     "data": DA1.ravel().tolist()}],
        X1.tobytes(),
        {**START, "binary_data_output": True},
    )  # fmt: skip
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    await assert_state_intact(client, sequence_session_id("", "maxpool", 11))


async def test_an_empty_output_list_asks_for_every_output(client: httpx.AsyncClient) -> None:
    dA = {"name": "dA", "shape": list(DA1.shape), "datatype": "FP32", "data": DA1.ravel().tolist()}
    body, headers = binary_body([x_input(), dA], X1.tobytes(), {"priority": 1}, outputs=[])
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert [output["name"] for output in response.json()["outputs"]] == ["A", "dX"]


async def test_an_unexpected_failure_is_a_500_in_the_protocol_s_form(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(app.state.compute, "gradient", broken)
    body, headers = binary_body([x_input()], X1.tobytes(), {"priority": 1})
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 500
    assert response.json() == {"error": "the server failed to handle this request; see its log"}


async def test_other_v2_paths_answer_errors_in_the_protocol_s_form(
    client: httpx.AsyncClient,
) -> None:
    for method, path, status in (
        ("GET", "/v2/nothing", 404),
        ("GET", "/v2/models/maxpool/infer", 405),
        ("GET", "/v2/models/sumpool/ready", 404),
        ("GET", "/v2/models/maxpool/versions/0", 404),
    ):
        response = await client.request(method, path)
        assert response.status_code == status, (path, response.text)
        assert list(response.json()) == ["error"]
        assert response.headers["x-request-id"]


async def test_v2_requests_are_counted_by_route(client: httpx.AsyncClient) -> None:
    body, headers = binary_body([x_input()], X1.tobytes(), {})
    assert (await client.post(INFER, content=body, headers=headers)).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'route="/v2/models/{model_name}/infer",status="200"' in metrics
    assert 'poolgrad_engine_seconds_count{operation="forward"} 1.0' in metrics


def test_openapi_documents_the_v2_routes(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}",
        "/v2/models/{model_name}/versions/{model_version}/ready",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    parameters = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "pool_size" in json.dumps(parameters["parameters"])
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["required"] == [
        "error"
    ]
