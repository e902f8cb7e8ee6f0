"""Hostile and mistaken input: each refused with its problem, then the server still answers and
an existing session's state and step are exactly as before."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from service_helpers import DA1, JSON, NPY, X1, Refusal, assert_state_intact, npy

from poolgrad import protocol

pytestmark = pytest.mark.anyio


def _pickled() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"boom": 1}, None], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _huge_header() -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000, 100_000, 3)}
    )
    return buffer.getvalue() + b"\0" * 16


def _zero_size_huge_npy() -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (0, 2**62, 2**62, 1)}
    )
    return buffer.getvalue()


def _json_tensor(**fields: Any) -> bytes:
    return protocol.dumps(
        {"dtype": "float32", "shape": [1, 2, 2, 1], "data": [1, 2, 3, 4], **fields}
    )


def _nan_x() -> bytes:
    X = X1.copy()
    X[0, 1, 1, 1] = np.nan
    return npy(X)


# (id, route, body, headers, status, code, words the detail must contain)
# route: "forward" / "backward" on the primed session, "nan-forward" on a nan="reject" one.
CASES: list[tuple[str, str, bytes, dict[str, str | bytes], int, str, tuple[str, ...]]] = [
    ("pickled-npy", "forward", _pickled(), NPY, 400, "malformed_tensor", ("object",)),
    ("truncated-npy", "forward", npy(X1)[:-7], NPY, 400, "malformed_tensor", ("truncated", "384")),
    ("not-npy", "forward", b"hello there", NPY, 400, "malformed_tensor", ("b'hello '",)),
    ("huge-shape-tiny-body", "forward", _huge_header(), NPY, 400, "malformed_tensor",
     ("100000", "holds 16")),
    ("malformed-json", "forward", b'{"dtype": "float32", "shape": [1', JSON, 400,
     "malformed_tensor", ("not valid JSON",)),
    ("json-data-count", "forward", _json_tensor(data=[1, 2]), JSON, 400, "malformed_tensor",
     ("2 values", "[1, 2, 2, 1]")),
    ("json-bad-value", "forward", _json_tensor(data=[1, "two", 3, 4]), JSON, 400,
     "malformed_tensor", ("'two'",)),
    ("zero-size-huge-npy", "forward", _zero_size_huge_npy(), NPY, 400, "malformed_tensor",
     ("4611686018427387904",)),
    ("zero-size-huge-json", "forward", _json_tensor(shape=[2**31] * 3 + [0], data=[]), JSON, 400,
     "malformed_tensor", ("[2147483648, 2147483648, 2147483648, 0]",)),
    ("65-dims-json", "forward", _json_tensor(shape=[1] * 65, data=[1]), JSON, 400,
     "malformed_tensor", ("65 dims",)),
    ("json-float16-overflow", "forward", _json_tensor(dtype="float16", data=[1, 1e10, 3, 4]), JSON,
     400, "malformed_tensor", ("data[1]", "overflows dtype float16")),
    ("json-unknown-dtype", "forward", _json_tensor(dtype="complex64"), JSON, 422,
     "invalid_tensor", ("complex64",)),
    ("wrong-content-type", "forward", npy(X1), {"Content-Type": "text/csv"}, 415,
     "unsupported_media_type", ("text/csv",)),
    ("no-content-type", "forward", npy(X1), {}, 415, "unsupported_media_type", ("None",)),
    ("not-acceptable", "forward", npy(X1), {**NPY, "Accept": "text/html"}, 406,
     "not_acceptable", ("text/html",)),
    ("int64-x", "forward", npy(np.ones((2, 4, 4, 3), dtype=np.int64)), NPY, 422,
     "invalid_tensor", ("int64",)),
    ("uint8-x", "forward", npy(np.ones((2, 4, 4, 3), dtype=np.uint8)), NPY, 422,
     "invalid_tensor", ("uint8",)),
    ("bool-x", "forward", npy(np.ones((2, 4, 4, 3), dtype=bool)), NPY, 422, "invalid_tensor",
     ("bool",)),
    ("complex-x", "forward", npy(np.ones((2, 4, 4, 3), dtype=np.complex64)), NPY, 422,
     "invalid_tensor", ("complex64",)),
    ("rank-3-x", "forward", npy(np.ones((4, 4, 3), dtype=np.float32)), NPY, 422,
     "invalid_tensor", ("rank 3", "(4, 4, 3)")),
    ("rank-5-x", "forward", npy(np.ones((1, 2, 4, 4, 3), dtype=np.float32)), NPY, 422,
     "invalid_tensor", ("rank 5",)),
    ("zero-size-x", "forward", npy(np.ones((0, 4, 4, 3), dtype=np.float32)), NPY, 422,
     "invalid_tensor", ("(0, 4, 4, 3)",)),
    ("window-larger-than-x", "forward", npy(np.ones((1, 1, 1, 3), dtype=np.float32)), NPY, 422,
     "invalid_tensor", ("(1, 1, 1, 3)",)),
    ("nan-rejected", "nan-forward", _nan_x(), NPY, 422, "invalid_tensor", ("NaN",)),
    ("wrong-da-shape", "backward", npy(np.ones((2, 3, 2, 3), dtype=np.float32)), NPY, 422,
     "shape_mismatch", ("(2, 3, 2, 3)", "(2, 2, 2, 3)")),
    ("truncated-da", "backward", npy(DA1)[:-1], NPY, 400, "malformed_tensor", ("truncated",)),
    ("pickled-da", "backward", _pickled(), NPY, 400, "malformed_tensor", ("object",)),
    ("stale-if-match", "backward", npy(DA1), {**NPY, "If-Match": '"7"'}, 412, "stale_step",
     ('"7"', "step 1")),
    ("garbage-if-match", "backward", npy(DA1), {**NPY, "If-Match": "yesterday"}, 412,
     "stale_step", ("yesterday",)),
    ("superscript-if-match", "backward", npy(DA1), {**NPY, "If-Match": '"\xb2"'.encode("latin-1")},
     412, "stale_step", ('\'"\N{SUPERSCRIPT TWO}"\'', "step 1")),
    ("5000-digit-if-match", "backward", npy(DA1), {**NPY, "If-Match": '"' + "9" * 5000 + '"'},
     412, "stale_step", ('"99999', "step 1")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "refusal"),
    [(case[1], Refusal(*case[2:])) for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_tensor_input_is_refused_and_nothing_changes(
    client: httpx.AsyncClient, route: str, refusal: Refusal
) -> None:
    spec = {"nan": "reject"} if route == "nan-forward" else {}
    created = await client.post("/v1/sessions", json=spec)
    session_id = created.json()["id"]
    forward = await client.post(f"/v1/sessions/{session_id}/forward", content=npy(X1), headers=NPY)
    assert forward.status_code == 200

    path = "backward" if route == "backward" else "forward"
    response = await client.post(
        f"/v1/sessions/{session_id}/{path}", content=refusal.body, headers=refusal.headers
    )
    refusal.check(response)
    await assert_state_intact(client, session_id, **spec)


# Session bodies: (id, body, headers, status, code, named)
SPEC_CASES: list[tuple[str, bytes, dict[str, str], int, str, tuple[str, ...]]] = [
    ("malformed-json", b'{"mode": "max"', JSON, 400, "bad_request", ("not valid JSON",)),
    ("not-an-object", b"[2, 2]", JSON, 422, "invalid_spec", ("list",)),
    ("wrong-content-type", b"mode=max", {"Content-Type": "application/x-www-form-urlencoded"},
     415, "unsupported_media_type", ("x-www-form-urlencoded",)),
    ("unknown-field", b'{"mode": "max", "kernel": 3}', JSON, 422, "invalid_spec", ("kernel",)),
    ("bad-mode", b'{"mode": "median"}', JSON, 422, "invalid_spec", ("median",)),
    ("zero-pool", b'{"pool_size": 0}', JSON, 422, "invalid_spec", ("pool_size", "0")),
    ("negative-pool", b'{"pool_size": [2, -1]}', JSON, 422, "invalid_spec", ("-1",)),
    ("four-dim-pool", b'{"pool_size": [2, 2, 2, 2]}', JSON, 422, "invalid_spec",
     ("pool_size", "4")),
    ("float-pool", b'{"pool_size": [2.5, 2]}', JSON, 422, "invalid_spec", ("2.5",)),
    ("zero-stride", b'{"strides": 0}', JSON, 422, "invalid_spec", ("strides", "0")),
    ("bad-padding", b'{"padding": "full"}', JSON, 422, "invalid_spec", ("full",)),
    ("bad-ties", b'{"ties": "last"}', JSON, 422, "invalid_spec", ("last",)),
    ("bad-nan", b'{"nan": "ignore"}', JSON, 422, "invalid_spec", ("ignore",)),
    ("bad-layout", b'{"layout": "NHWC"}', JSON, 422, "invalid_spec", ("NHWC",)),
    ("string-cip", b'{"count_include_pad": "yes"}', JSON, 422, "invalid_spec", ("yes",)),
    ("negative-ttl", b'{"ttl_seconds": -5}', JSON, 422, "invalid_spec", ("ttl_seconds", "-5")),
    ("huge-ttl", b'{"ttl_seconds": 1e9}', JSON, 422, "invalid_spec", ("1000000000",)),
    ("string-ttl", b'{"ttl_seconds": "600"}', JSON, 422, "invalid_spec", ("'600'",)),
    ("bool-ttl", b'{"ttl_seconds": true}', JSON, 422, "invalid_spec", ("True",)),
]  # fmt: skip


@pytest.mark.parametrize(
    "refusal", [Refusal(*case[1:]) for case in SPEC_CASES], ids=[case[0] for case in SPEC_CASES]
)
async def test_bad_session_body_is_refused_and_nothing_changes(
    client: httpx.AsyncClient, app: FastAPI, refusal: Refusal
) -> None:
    created = await client.post("/v1/sessions")
    session_id = created.json()["id"]
    await client.post(f"/v1/sessions/{session_id}/forward", content=npy(X1), headers=NPY)

    response = await client.post("/v1/sessions", content=refusal.body, headers=refusal.headers)
    refusal.check(response)
    assert (await app.state.store.usage()).sessions == 1
    await assert_state_intact(client, session_id)
