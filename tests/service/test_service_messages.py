"""Errors that say what to do (issue 13), through a real ``python -m service``: a body of
another format than its ``Content-Type`` is named as what it looks like, an empty body is
called empty, and nested JSON ``data`` is accepted when it is nested exactly as ``shape``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from service_helpers import DA1, X1, assert_problem, expected

from poolgrad import protocol

NPY, JSON, ST = protocol.MEDIA_NPY, protocol.MEDIA_JSON, protocol.MEDIA_SAFETENSORS
FORWARD, GRADIENT = "forward", "/v1/gradient"

X_NPY = protocol.encode_npy(X1)
X_JSON = protocol.encode_json_tensor(X1)
NAMED_ST = protocol.encode_safetensors({"X": X1, "dA": DA1})
NAMED_JSON = protocol.encode_named({"X": X1, "dA": DA1}, JSON)


@pytest.fixture
def http(live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.base_url, timeout=30.0) as client:
        yield client


def _post(http: httpx.Client, route: str, body: bytes, media_type: str) -> httpx.Response:
    """POST to ``route``; for ``forward``, on a new session that must stay unchanged."""
    if route != FORWARD:
        return http.post(route, content=body, headers={"Content-Type": media_type})
    session = f"/v1/sessions/{http.post('/v1/sessions').json()['id']}"
    response = http.post(f"{session}/forward", content=body, headers={"Content-Type": media_type})
    if response.status_code != 200:
        assert http.get(session).json()["step"] == 0  # refused means unchanged
    return response


# (route, body, declared type, the pieces the 400's detail must hold)
WRONG_TYPE = [
    (FORWARD, X_NPY, JSON, ["looks like a .npy file", f"send it as Content-Type: {NPY}"]),
    (FORWARD, X_JSON, NPY, ["looks like a JSON document", "application/json"]),
    (FORWARD, b"  \n" + X_JSON, NPY, ["looks like a JSON document"]),
    (FORWARD, NAMED_ST, NPY, ["looks like a safetensors file", "not accepted here"]),
    (FORWARD, NAMED_ST, JSON, ["looks like a safetensors file", "application/x-npy"]),
    (GRADIENT, X_NPY, JSON, ["looks like a .npy file", "not accepted here", ST]),
    (GRADIENT, X_NPY, ST, ["looks like a .npy file", "not application/vnd.safetensors"]),
    (GRADIENT, NAMED_ST, JSON, ["looks like a safetensors file", f"Content-Type: {ST}"]),
    (GRADIENT, NAMED_JSON, ST, ["looks like a JSON document", "Content-Type: application/json"]),
]
EMPTY = [
    (FORWARD, NPY, "the body is empty; expected a .npy file"),
    (FORWARD, JSON, "the body is empty; expected a JSON tensor"),
    (GRADIENT, ST, "the body is empty; expected a safetensors file"),
    (GRADIENT, JSON, "the body is empty; expected a JSON object of named tensors"),
]


@pytest.mark.parametrize(("route", "body", "media_type", "pieces"), WRONG_TYPE)
def test_a_body_under_the_wrong_type_is_named_as_what_it_looks_like(
    http: httpx.Client, route: str, body: bytes, media_type: str, pieces: list[str]
) -> None:
    response = _post(http, route, body, media_type)
    assert_problem(response, 400, "malformed_tensor", *pieces)
    assert "UTF-8" not in response.json()["detail"]


@pytest.mark.parametrize(("route", "media_type", "message"), EMPTY)
def test_an_empty_body_is_called_empty(
    http: httpx.Client, route: str, media_type: str, message: str
) -> None:
    assert_problem(_post(http, route, b"", media_type), 400, "malformed_tensor", message)


def _nested(array: np.ndarray) -> bytes:
    return json.dumps({"dtype": "float32", "shape": list(array.shape), "data": array.tolist()})


def test_nested_json_data_is_accepted_as_the_inference_protocol_allows(
    http: httpx.Client,
) -> None:
    A, dX = expected(X1, DA1)
    response = _post(http, FORWARD, _nested(X1).encode(), JSON)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(protocol.decode_tensor(response.content, JSON), A)
    body = f'{{"X": {_nested(X1)}, "dA": {_nested(DA1)}}}'.encode()
    response = _post(http, GRADIENT, body, JSON)
    assert response.status_code == 200, response.text
    named = protocol.decode_named(response.content, JSON)
    np.testing.assert_array_equal(named["A"], A)
    np.testing.assert_array_equal(named["dX"], dX)


# (data, shape, the pieces the 400's detail must hold)
BAD_NESTED = [
    ([[1.0, 2.0], [3.0]], [2, 2], ["a list of 1 at depth 1", "needs a list of 2"]),
    ([[1.0, 2.0], [3.0, 4.0]], [4, 1], ["a list of 2 at depth 0", "needs a list of 4"]),
    ([[1.0, 2.0], 3.0], [2, 2], ["holds float at depth 1"]),
    ([[[1.0]], [[2.0]]], [2, 1], ["nested deeper"]),
    ([1.0, 2.0, 3.0], [2, 2], ["holds 3 values", "needs 4"]),
]


@pytest.mark.parametrize(("data", "shape", "pieces"), BAD_NESTED)
def test_data_not_shaped_as_shape_says_flat_row_major(
    http: httpx.Client, data: list[Any], shape: list[int], pieces: list[str]
) -> None:
    # Decoded before the engine sees the rank: the body's refusal comes first.
    X = {"dtype": "float32", "shape": shape, "data": data}
    response = _post(http, FORWARD, json.dumps(X).encode(), JSON)
    assert_problem(response, 400, "malformed_tensor", "flat, row-major", *pieces)
