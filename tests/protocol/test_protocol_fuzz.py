"""Fuzzing the protocol's decoders and its query-string spec parser with hypothesis: random
bodies and mutations of valid ones never crash, never hang, and never allocate far beyond the
body's size; each either decodes or ends in a ProtocolError whose code is a documented 4xx.

Allocation is measured with tracemalloc (NumPy reports its buffers to it), peak against the
body's size with a generous factor: what it catches is a decoder that believes a header's
claimed shape (``(10**12,)`` in a 100-byte body) and allocates for it. Hangs are caught by the
test timeout; there is no timing assert. Examples are bounded per test to keep the suite fast.

``DECODERS`` has one row per format, the Open Inference Protocol's request codec
(``poolgrad.protocol.inference``) included; a new format is one more row.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fuzz_strategies import (
    CLAIMS,
    FIELD_NAMES,
    HEADER_TOKENS,
    JSON_VALUES,
    QUERY_VALUES,
    arrays,
    mutate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolgrad import protocol
from poolgrad.protocol import inference

pytestmark = pytest.mark.timeout(120)

#: Peak bytes a decode may allocate: this many times the body, plus a fixed allowance for
#: interpreter and NumPy bookkeeping. Decoding JSON builds a Python object per number (some
#: 10 to 30 times the text), so the factor is generous; believing a claimed shape is not.
ALLOC_FACTOR = 64
ALLOC_BASE = 1 << 20

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def npy_bodies(data: st.DataObject) -> bytes:
    """A valid .npy body, one mutated at the byte level, or one whose header text is a
    recombination of header tokens or claims a hostile shape, in format 1.0, 2.0 or 3.0."""
    valid = protocol.encode_npy(data.draw(arrays()))
    kind = data.draw(st.sampled_from(["valid", "bytes", "tokens", "claim"]))
    if kind == "valid":
        return valid
    if kind == "bytes":
        return mutate(valid, data)
    if kind == "tokens":
        text = "".join(data.draw(st.lists(HEADER_TOKENS, max_size=40)))
    else:
        shape = data.draw(st.lists(CLAIMS, max_size=5))
        text = str({"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    version = data.draw(st.sampled_from([1, 2, 3]))
    raw = text.encode("utf-8" if version == 3 else "latin-1", errors="replace") + b"\n"
    length = struct.pack("<H" if version == 1 else "<I", len(raw))
    tail = data.draw(st.binary(max_size=64))
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw + tail


def json_tensor_objects(data: st.DataObject) -> Any:
    """A valid JSON tensor object, one with a field replaced by any JSON value or a claimed
    shape, or any JSON value at all."""
    obj = protocol.tensor_to_obj(data.draw(arrays().filter(lambda a: a.dtype.name != "float64")))
    kind = data.draw(st.sampled_from(["valid", "field", "claim", "any"]))
    if kind == "field":
        obj[data.draw(st.sampled_from(["dtype", "shape", "data", "extra"]))] = data.draw(
            JSON_VALUES
        )
    elif kind == "claim":
        obj["shape"] = data.draw(st.lists(CLAIMS, max_size=5))
    elif kind == "any":
        return data.draw(JSON_VALUES)
    return obj


def json_tensor_bodies(data: st.DataObject) -> bytes:
    body = json.dumps(json_tensor_objects(data)).encode()
    return mutate(body, data) if data.draw(st.booleans()) else body


def named_json_bodies(data: st.DataObject) -> bytes:
    names = st.sampled_from(["X", "dA", "A", "", "__metadata__"]) | st.text(max_size=5)
    obj = data.draw(st.dictionaries(names, st.builds(lambda: None), max_size=3))
    body = json.dumps({name: json_tensor_objects(data) for name in obj}).encode()
    return mutate(body, data) if data.draw(st.booleans()) else body


def safetensors_bodies(data: st.DataObject) -> bytes:
    """A valid safetensors body, byte-mutated, or with its header's entries rewritten (fields
    replaced by any JSON, hostile shapes and offsets)."""
    tensors = data.draw(st.dictionaries(st.sampled_from(["X", "dA", "q"]), arrays(), max_size=2))
    valid = protocol.encode_safetensors(tensors)
    kind = data.draw(st.sampled_from(["valid", "bytes", "header"]))
    if kind == "valid":
        return valid
    if kind == "bytes":
        return mutate(valid, data)
    (length,) = struct.unpack_from("<Q", valid)
    header = json.loads(valid[8 : 8 + length])
    for entry in header.values():
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        entry[field] = data.draw(JSON_VALUES | st.lists(CLAIMS, max_size=4))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + valid[8 + length :]


def v2_bodies(data: st.DataObject) -> bytes:
    """An Open Inference Protocol request, prefixed by the header length it declares (8 bytes,
    -1 for none): inputs as JSON data or binary tensors after the JSON, valid, byte-mutated,
    with a field replaced by any JSON, a hostile shape, or a header length that lies."""
    inputs: list[dict[str, Any]] = []
    tail = b""
    for name in data.draw(st.lists(st.sampled_from(["X", "dA", "X"]), min_size=1, max_size=2)):
        array = data.draw(arrays())
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": inference.datatype_of(array.dtype),
        }
        if data.draw(st.booleans()):
            raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail += raw
        else:
            entry["data"] = protocol.tensor_to_obj(array)["data"]
        inputs.append(entry)
    request: dict[str, Any] = {"inputs": inputs, "parameters": {"sequence_id": 7}}
    kind = data.draw(st.sampled_from(["valid", "bytes", "field", "claim", "length"]))
    if kind == "field":
        target = data.draw(st.sampled_from([request, *inputs]))
        target[data.draw(st.sampled_from([*target, "outputs", "id"]))] = data.draw(JSON_VALUES)
    elif kind == "claim":
        data.draw(st.sampled_from(inputs))["shape"] = data.draw(st.lists(CLAIMS, max_size=4))
    header = json.dumps(request).encode()
    length = len(header) if tail else -1
    if kind == "length":
        length = data.draw(CLAIMS.filter(lambda claim: -1 <= claim < 2**63))
    body = header + tail
    if kind == "bytes":
        body = mutate(body, data)
    return struct.pack("<q", length) + body


def decode_v2(prefixed: bytes) -> Any:
    """Everything the server reads from a v2 request: inputs, sequence, spec parameters."""
    (length,) = struct.unpack_from("<q", prefixed)
    request = inference.parse_request(prefixed[8:], None if length < 0 else length)
    request.sequence()
    request.model_parameters()
    return request.decode_inputs()


#: name -> (decoder, body strategy).
DECODERS: dict[str, tuple[Callable[[bytes], Any], Callable[[st.DataObject], bytes]]] = {
    "npy": (protocol.decode_npy, npy_bodies),
    "json-tensor": (protocol.decode_json_tensor, json_tensor_bodies),
    "safetensors": (protocol.decode_safetensors, safetensors_bodies),
    "named-json": (
        lambda body: protocol.decode_named(body, protocol.MEDIA_JSON),
        named_json_bodies,
    ),
    "v2-inference": (decode_v2, v2_bodies),
}


def assert_documented(exc: protocol.ProtocolError) -> None:
    """A refusal the API documents: a 4xx problem of the catalogue, with a bounded message."""
    assert 400 <= protocol.PROBLEMS[exc.code].status < 500, exc.code
    assert str(exc)
    assert len(str(exc)) < 2000, str(exc)


def decode_measured(decode: Callable[[bytes], Any], body: bytes) -> int:
    """Peak bytes allocated while decoding ``body`` (refusals included)."""
    tracemalloc.start()
    try:
        try:
            decode(body)
        except protocol.ProtocolError as exc:
            assert_documented(exc)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(data=st.data())
def test_decoders_decode_or_refuse_within_bounds(name: str, data: st.DataObject) -> None:
    decode, bodies = DECODERS[name]
    body = bodies(data)
    peak = decode_measured(decode, body)
    assert peak <= ALLOC_FACTOR * len(body) + ALLOC_BASE, (peak, len(body))


def test_the_allocation_check_can_fail() -> None:
    """A decoder that believes the header's shape is caught by the same measure."""
    body = npy_with_claim(10**7)

    def believing(body: bytes) -> None:
        np.zeros(10**7, dtype=np.float32)
        protocol.decode_npy(body)

    assert decode_measured(believing, body) > ALLOC_FACTOR * len(body) + ALLOC_BASE
    assert decode_measured(protocol.decode_npy, body) < ALLOC_BASE


def npy_with_claim(count: int) -> bytes:
    text = str({"descr": "<f4", "fortran_order": False, "shape": (count,)}) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\0" * 16


# ------------------------------------------------------------------ the query parser


@FUZZ
@given(
    items=st.lists(
        st.tuples(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), QUERY_VALUES), max_size=6
    )
)
def test_the_query_parser_parses_or_refuses(items: list[tuple[str, str]]) -> None:
    try:
        fields = protocol.spec_from_query(items)
    except protocol.InvalidSpec as exc:
        assert_documented(exc)
        return
    assert set(fields) <= set(FIELD_NAMES)
    # What parses writes back to the same fields (the SDK's encoder is its inverse).
    assert protocol.spec_from_query(list(protocol.spec_to_query(fields).items())) == fields
