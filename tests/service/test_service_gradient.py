"""The stateless ``POST /v1/gradient``: named tensors, spec in the query string."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from service_helpers import DA1, X1, Refusal, assert_problem, expected

from poolgrad import protocol

pytestmark = pytest.mark.anyio

SAFETENSORS = {"Content-Type": protocol.MEDIA_SAFETENSORS}
JSON = {"Content-Type": protocol.MEDIA_JSON}


@pytest.mark.parametrize("media", [protocol.MEDIA_SAFETENSORS, protocol.MEDIA_JSON])
async def test_gradient_equals_the_engine(client: httpx.AsyncClient, media: str) -> None:
    response = await client.post(
        "/v1/gradient",
        params={"mode": "max", "pool_size": "2,2", "ties": "split"},
        content=protocol.encode_named({"X": X_TIED, "dA": DA1}, media),
        headers={"Content-Type": media},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media
    tensors = protocol.decode_named(response.content, media)
    A, dX = expected(X_TIED, DA1, mode="max", pool_size=(2, 2), ties="split")
    assert not np.array_equal(dX, expected(X_TIED, DA1)[1])  # "split" matters for this X
    assert set(tensors) == {"A", "dX"}
    np.testing.assert_array_equal(tensors["A"], A)
    np.testing.assert_array_equal(tensors["dX"], dX)


async def test_gradient_without_da_answers_a_only(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/gradient",
        params={"mode": "avg"},
        content=protocol.encode_safetensors({"X": X1}),
        headers={**SAFETENSORS, "Accept": protocol.MEDIA_JSON},
    )
    assert response.headers["content-type"] == protocol.MEDIA_JSON
    tensors = protocol.decode_named(response.content, protocol.MEDIA_JSON)
    assert set(tensors) == {"A"}
    np.testing.assert_array_equal(tensors["A"], expected(X1, mode="avg")[0])


#: Ties in every 2x2 window (so ``ties`` decides who gets the gradient).
X_TIED = np.floor(X1 / 4.0)
#: 5x5 spatial: ``padding=same`` pads a row and a column (so ``count_include_pad`` counts).
X_ODD = np.linspace(-3, 3, 2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)


@pytest.mark.parametrize(
    ("query", "spec", "X"),
    [
        ("pool_size=2", {"pool_size": 2}, X1),
        ("pool_size=3,3&strides=1", {"pool_size": (3, 3), "strides": 1}, X1),
        ("pool_size=2,&layout=channels_first", {"pool_size": (2,), "layout": "channels_first"},
         X1.reshape(2, 4, 12)),
        ("pool_size=2,3&strides=1,2&padding=1:0,0:2", {"pool_size": (2, 3), "strides": (1, 2),
                                                      "padding": ((1, 0), (0, 2))}, X1),
        ("mode=avg&padding=same&count_include_pad=true",
         {"mode": "avg", "padding": "same", "count_include_pad": True}, X_ODD),
        ("mode=min&ties=first&nan=reject", {"mode": "min", "ties": "first", "nan": "reject"},
         X_TIED),
    ],
)  # fmt: skip
async def test_query_spec_reaches_the_engine(
    client: httpx.AsyncClient, query: str, spec: dict[str, object], X: np.ndarray
) -> None:
    dA_shape = expected(X, **spec)[0].shape
    dA = np.linspace(-2, 2, int(np.prod(dA_shape)), dtype=np.float32).reshape(dA_shape)
    response = await client.post(
        f"/v1/gradient?{query}",
        content=protocol.encode_safetensors({"X": X, "dA": dA}),
        headers=SAFETENSORS,
    )
    assert response.status_code == 200, response.text
    tensors = protocol.decode_safetensors(response.content)
    A, dX = expected(X, dA, **spec)
    np.testing.assert_array_equal(tensors["A"], A)
    np.testing.assert_array_equal(tensors["dX"], dX)
    # Each field under test changes the answer for this input (``nan`` aside: X has no NaN,
    # its refusal is a 422 below), so a parser that dropped it would fail here.
    for field in set(spec) - {"pool_size", "nan", "layout"}:
        without = {name: value for name, value in spec.items() if name != field}
        if expected(X, **without)[0].shape != A.shape:
            continue  # the shape of A alone tells the field was applied
        A_without, dX_without = expected(X, dA, **without)
        assert not (np.array_equal(A_without, A) and np.array_equal(dX_without, dX)), field


async def test_query_nan_reject_refuses_a_nan(client: httpx.AsyncClient) -> None:
    X = X1.copy()
    X[0, 0, 0, 0] = np.nan
    response = await client.post(
        "/v1/gradient?nan=reject",
        content=protocol.encode_safetensors({"X": X}),
        headers=SAFETENSORS,
    )
    assert_problem(response, 422, "invalid_tensor", "NaN")
    response = await client.post(
        "/v1/gradient", content=protocol.encode_safetensors({"X": X}), headers=SAFETENSORS
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("kernel=3", ("'kernel'",)),
        ("pool_size=two", ("'two'",)),
        ("pool_size=2,,2", ("'2,,2'",)),
        ("pool_size=0", ("pool_size", "0")),
        ("strides=-1", ("strides", "-1")),
        ("padding=1-1,0:0", ("'1-1'",)),
        ("count_include_pad=yes", ("'yes'",)),
        ("mode=median", ("'median'",)),
        ("mode=max&mode=avg", ("'mode'", "more than once")),
    ],
)
async def test_bad_query_spec_is_422(
    client: httpx.AsyncClient, query: str, named: tuple[str, ...]
) -> None:
    response = await client.post(
        f"/v1/gradient?{query}", content=protocol.encode_safetensors({"X": X1}), headers=SAFETENSORS
    )
    assert_problem(response, 422, "invalid_spec", *named)


@pytest.mark.parametrize(
    ("tensors", "status", "code", "named"),
    [
        ({"X": X1, "dZ": DA1}, 422, "invalid_tensor", ("'dZ'",)),
        ({"dA": DA1}, 422, "invalid_tensor", ("'X'", "'dA'")),
        ({"X": X1, "dA": DA1[:, :1]}, 422, "shape_mismatch", ("(2, 1, 2, 3)",)),
        ({"X": X1.astype(np.int16)}, 422, "invalid_tensor", ("int16",)),
    ],
)
async def test_bad_named_tensors_are_refused(
    client: httpx.AsyncClient,
    tensors: dict[str, np.ndarray],
    status: int,
    code: str,
    named: tuple[str, ...],
) -> None:
    response = await client.post(
        "/v1/gradient", content=protocol.encode_safetensors(tensors), headers=SAFETENSORS
    )
    assert_problem(response, status, code, *named)


@pytest.mark.parametrize(
    "refusal",
    [
        Refusal(b"\x08\x00\x00\x00\x00\x00\x00\x00{}", SAFETENSORS, 400, "malformed_tensor",
                ("10 bytes", "truncated")),
        Refusal(b'{"X": [1, 2]}', JSON, 400, "malformed_tensor", ("X",)),
        Refusal(b"X=1", {"Content-Type": protocol.MEDIA_NPY}, 415, "unsupported_media_type",
                ("x-npy",)),
        Refusal(protocol.encode_safetensors({"X": X1}),
                {**SAFETENSORS, "Accept": protocol.MEDIA_NPY}, 406, "not_acceptable", ("x-npy",)),
    ],
)  # fmt: skip
async def test_gradient_body_errors(client: httpx.AsyncClient, refusal: Refusal) -> None:
    refusal.check(await client.post("/v1/gradient", content=refusal.body, headers=refusal.headers))
