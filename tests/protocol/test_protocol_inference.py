"""poolgrad.protocol.inference: the Open Inference Protocol codec, without a server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from poolgrad.protocol import MalformedTensor
from poolgrad.protocol.inference import (
    DATATYPES,
    BadInferenceRequest,
    InferRequest,
    SequenceRef,
    encode_output,
    is_protocol_path,
    parse_header_length,
    parse_request,
    response_body,
    response_parts,
)


def request(**fields: Any) -> InferRequest:
    x = {"name": "X", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}
    return parse_request(json.dumps({"inputs": [x], **fields}).encode(), None)


def test_binary_inputs_are_views_of_the_body_in_input_order() -> None:
    first = np.arange(6, dtype="<f4").reshape(2, 3)
    second = np.array([[1.5, -2.5]], dtype="<f8")
    header = json.dumps(
        {
            "inputs": [
                {"name": "X", "shape": [2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": first.nbytes}},
                {"name": "dA", "shape": [1, 2], "datatype": "FP64",
                 "parameters": {"binary_data_size": second.nbytes}},
            ]
        }
    ).encode()  # fmt: skip
    parsed = parse_request(header + first.tobytes() + second.tobytes(), len(header))
    tensors = parsed.decode_inputs()
    np.testing.assert_array_equal(tensors["X"], first)
    np.testing.assert_array_equal(tensors["dA"], second)
    assert not tensors["X"].flags.writeable  # a view of the body: no copy was made
    assert list(parsed.inputs) == ["X", "dA"]


def test_nested_and_flat_data_decode_alike_and_scalars_do_not_nest() -> None:
    nested = {"name": "X", "shape": [2, 2], "datatype": "FP16", "data": [[1, 2], [3, 4]]}
    flat = {**nested, "data": [1, 2, 3, 4]}
    decoded = [
        parse_request(json.dumps({"inputs": [tensor]}).encode(), None).decode_inputs()["X"]
        for tensor in (nested, flat)
    ]
    np.testing.assert_array_equal(decoded[0], decoded[1])
    assert decoded[0].dtype == np.float16
    scalar = {"name": "X", "shape": [], "datatype": "FP32", "data": [[1.0]]}
    with pytest.raises(MalformedTensor, match=r"data is a list, nested deeper than shape \[\]"):
        parse_request(json.dumps({"inputs": [scalar]}).encode(), None)


@pytest.mark.parametrize(
    ("parameters", "sequence"),
    [
        ({}, None),
        ({"sequence_id": 0}, None),
        ({"sequence_id": ""}, None),
        ({"sequence_id": 7, "sequence_start": True}, SequenceRef(7, True, False)),
        ({"sequence_id": "a", "sequence_end": True}, SequenceRef("a", False, True)),
        ({"sequence_id": 2**64 - 1}, SequenceRef(2**64 - 1, False, False)),
    ],
)
def test_sequence_of_a_request(parameters: dict[str, Any], sequence: SequenceRef | None) -> None:
    assert request(parameters=parameters).sequence() == sequence


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_id": -1}, "sequence_id -1 is not a uint64"),
        ({"sequence_id": 2**64}, "must be a uint64 or a string"),  # JSON parses it as a float
        ({"sequence_id": 1.5}, "must be a uint64 or a string, got 1.5"),
        ({"sequence_id": "x" * 257}, "257 characters"),
        ({"sequence_end": True}, "sequence_end is true but sequence_id is 0"),
    ],
)
def test_bad_sequences_are_refused_by_value(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInferenceRequest, match=message):
        request(parameters=parameters).sequence()


def test_model_parameters_are_query_text_without_the_protocol_s_own() -> None:
    parsed = request(
        parameters={
            "pool_size": "3,3",
            "strides": 2,
            "count_include_pad": True,
            "sequence_id": 4,
            "binary_data_output": True,
            "priority": 1,
        }
    )
    assert parsed.model_parameters() == [
        ("pool_size", "3,3"),
        ("strides", "2"),
        ("count_include_pad", "true"),
    ]


def test_an_output_s_binary_data_overrides_binary_data_output() -> None:
    parsed = request(
        parameters={"binary_data_output": True},
        outputs=[{"name": "A", "parameters": {"binary_data": False}}, {"name": "dX"}],
    )
    assert (parsed.binary_output("A"), parsed.binary_output("dX")) == (False, True)
    assert not request().binary_output("A")


def test_response_body_splices_json_and_appends_binary_outputs() -> None:
    A = np.array([[1.0, np.nan]], dtype=np.float32)
    dX = np.arange(3, dtype=np.float64)
    outputs = [encode_output("A", A, binary=False), encode_output("dX", dX, binary=True)]
    body, length = response_body("maxpool", "1", "req-9", outputs)
    assert length is not None
    head = json.loads(body[:length])
    assert head == {
        "model_name": "maxpool",
        "model_version": "1",
        "id": "req-9",
        "outputs": [
            {"name": "A", "datatype": "FP32", "shape": [1, 2], "data": [1.0, "NaN"]},
            {
                "name": "dX",
                "datatype": "FP64",
                "shape": [3],
                "parameters": {"binary_data_size": 24},
            },
        ],
    }
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f8"), dX)
    json_only, none = response_body("maxpool", "1", None, outputs[:1])
    assert none is None
    assert "id" not in json.loads(json_only)


def test_response_parts_join_to_the_body_and_view_the_outputs_memory() -> None:
    little = np.arange(6, dtype="<f4").reshape(2, 3)
    big = np.arange(3, dtype=">f8")
    outputs = [
        encode_output("A", little, binary=True),
        encode_output("dX", big, binary=True),
        encode_output("B", little, binary=False),
    ]
    parts, length = response_parts("maxpool", "1", "req-1", outputs)
    assert (b"".join(parts), length) == response_body("maxpool", "1", "req-1", outputs)
    header, as_stored, swapped = parts
    assert length == len(header)
    assert np.shares_memory(np.frombuffer(as_stored, np.uint8), little)  # no copy
    assert not np.shares_memory(np.frombuffer(swapped, np.uint8), big)  # byte-swapped
    np.testing.assert_array_equal(np.frombuffer(swapped, "<f8"), big)
    json_only, none = response_parts("maxpool", "1", None, outputs[2:])
    assert none is None
    assert json_only == [response_body("maxpool", "1", None, outputs[2:])[0]]


def test_binary_inputs_of_a_bytearray_body_are_read_only_views_of_it() -> None:
    X = np.arange(4, dtype="<f4")
    header = json.dumps(
        {"inputs": [{"name": "X", "shape": [4], "datatype": "FP32",
                     "parameters": {"binary_data_size": X.nbytes}}]}
    ).encode()  # fmt: skip
    body = bytearray(header + X.tobytes())
    decoded = parse_request(body, len(header)).decode_inputs()["X"]
    np.testing.assert_array_equal(decoded, X)
    assert np.shares_memory(decoded, np.frombuffer(body, np.uint8))
    assert not decoded.flags.writeable


def test_datatypes_and_paths() -> None:
    assert DATATYPES["FP16"] == "float16"
    assert DATATYPES["UINT64"] == "uint64"
    assert "BF16" not in DATATYPES
    assert "BYTES" not in DATATYPES
    assert [is_protocol_path(p) for p in ("/v2", "/v2/health/live", "/v20", "/v1/v2")] == [
        True,
        True,
        False,
        False,
    ]
    assert parse_header_length(None) is None
    assert parse_header_length("12") == 12
    with pytest.raises(BadInferenceRequest, match="'-1' is not a byte count"):
        parse_header_length("-1")
