"""poolgrad.protocol.tensors: every format round-trips exactly, against numpy's and safetensors'
own codecs, and every malformed or hostile body is refused with a ProtocolError naming what is
wrong (tests/service/test_service_bad_input.py sends the same bodies through the server)."""

from __future__ import annotations

import io
import json
import math
import re
import struct
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from poolgrad import protocol
from service import Settings, create_app

FLOATS = ("float16", "float32", "float64")


def arrays(dtypes: tuple[str, ...] = FLOATS) -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(dtypes).flatmap(
        lambda dtype: hnp.arrays(
            dtype, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
        )
    )


def same(a: np.ndarray, b: np.ndarray, *, nan_sign: bool = True) -> bool:
    """Equal bit for bit in value, dtype and shape (NaN equal to NaN, -0.0 kept).

    ``nan_sign=False`` ignores the sign of NaNs, which JSON's ``"NaN"`` cannot carry.
    """
    signs_a, signs_b = np.signbit(a), np.signbit(b)
    if not nan_sign and a.dtype.kind == "f":
        signs_a, signs_b = signs_a & ~np.isnan(a), signs_b & ~np.isnan(b)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(a, b, equal_nan=True)
        and np.array_equal(signs_a, signs_b)
    )


# ----------------------------------------------------------------------------- npy


@settings(max_examples=60, deadline=None)
@given(arrays((*FLOATS, "int32", "uint8", "bool")))
def test_npy_round_trip_matches_numpy(array: np.ndarray) -> None:
    body = protocol.encode_npy(array)
    decoded = protocol.decode_npy(body)
    assert same(decoded, array)
    assert same(np.load(io.BytesIO(body), allow_pickle=False), array)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)),
        np.arange(48.0, dtype=np.float32).reshape(4, 3, 4)[::2, :, 1:],
        np.arange(6, dtype=">f8").reshape(2, 3),
    ],
    ids=["fortran", "non-contiguous", "big-endian"],
)
def test_npy_accepts_any_memory_layout(array: np.ndarray) -> None:
    assert np.array_equal(protocol.decode_npy(protocol.encode_npy(array)), array)


def test_npy_decoding_is_a_read_only_view() -> None:
    body = protocol.encode_npy(np.zeros((3, 3), np.float32))
    decoded = protocol.decode_npy(body)
    assert not decoded.flags.writeable
    assert decoded.base is not None


def npy_with_header(header: str, data: bytes = b"") -> bytes:
    raw = header.encode("latin1")
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


def pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "a", None], dtype=object), allow_pickle=True)
    return buffer.getvalue()


GOOD = protocol.encode_npy(np.arange(6, dtype=np.float32).reshape(2, 3))


#: Bodies no .npy decoder may accept: (body, the message the refusal must contain).
NPY_MALFORMED: list[tuple[bytes, str]] = [
    (b"", "not a .npy file|the body is empty"),  # decode_npy, or the route (tests below)
    (b"PK\x03\x04 a zip file", r"not a \.npy file: expected magic"),
    (GOOD[:9], "not a .npy file"),
    (GOOD[:40], "truncated: its header ends at byte"),
    (GOOD[:-1], r"truncated: shape \(2, 3\) of float32 needs 24 bytes, body holds 23"),
    (GOOD + b"\x00", "followed by extra bytes"),
    (pickled_npy(), "holds Python objects: pickled arrays are refused"),
    (
        npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (10**9, 10**9), }"),
        "header is malformed",
    ),
    (
        npy_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000000), }",
            b"\x00" * 8,
        ),
        r"needs 4000000000000000000 bytes, body holds 8",
    ),
    (
        npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }"),
        "negative dimension",
    ),
    (
        npy_with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }"),
        "structured dtype",
    ),
    (npy_with_header("__import__('os').system('true')"), "header is malformed"),
    (b"\x93NUMPY\x07\x00" + b"\x00" * 8, r"format version 7\.0 is not supported"),
    (
        b"\x93NUMPY\x02\x00" + struct.pack("<I", 10**6) + b"{}",
        "header of 1000000 bytes exceeds the 65536 limit",
    ),
]
NPY_MALFORMED_IDS = [
    "empty",
    "zip",
    "preamble",
    "header-cut",
    "data-cut",
    "trailing",
    "pickle",
    "expression-shape",
    "huge-shape",
    "negative",
    "structured",
    "code-in-header",
    "version",
    "huge-header",
]


@pytest.mark.parametrize(("body", "message"), NPY_MALFORMED, ids=NPY_MALFORMED_IDS)
def test_npy_refuses_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=message) as info:
        protocol.decode_npy(body)
    assert info.value.code == "malformed_tensor"


def test_npy_non_numeric_dtype_is_invalid_tensor_not_malformed() -> None:
    body = protocol.encode_npy(np.array(["ab", "cd"]))
    with pytest.raises(protocol.ProtocolError, match="dtype <U2 is not numeric") as info:
        protocol.decode_npy(body)
    assert info.value.code == "invalid_tensor"


def test_npy_encoder_refuses_object_arrays() -> None:
    with pytest.raises(protocol.ProtocolError, match="never pickled"):
        protocol.encode_npy(np.array([None], dtype=object))


# ---------------------------------------------------------------------- JSON tensor


@settings(max_examples=60, deadline=None)
@given(arrays((*FLOATS, "int64", "uint16", "bool")))
def test_json_round_trip_is_exact(array: np.ndarray) -> None:
    assert same(
        protocol.decode_json_tensor(protocol.encode_json_tensor(array)), array, nan_sign=False
    )


@pytest.mark.parametrize(
    ("dtype", "data", "message"),
    [
        ("float16", [1.0, 1e10], r"data\[1\] = 10000000000.0 overflows dtype float16"),
        ("float16", [70000, 1], r"data\[0\] = 70000 overflows dtype float16"),
        ("float32", [0.0, -1e300], r"data\[1\] = -1e\+300 overflows dtype float32"),
        ("float16", ["NaN", 1e5], r"data\[1\] = 100000.0 overflows dtype float16"),
    ],
    ids=["float", "int", "negative", "with-non-finite-names"],
)
def test_json_refuses_finite_values_that_overflow_the_dtype(
    dtype: str, data: list[object], message: str
) -> None:
    body = json.dumps({"dtype": dtype, "shape": [2], "data": data}).encode()
    with pytest.raises(protocol.ProtocolError, match=message) as info:
        protocol.decode_json_tensor(body)
    assert info.value.code == "malformed_tensor"


def test_json_keeps_named_infinities_and_the_largest_finite_value() -> None:
    body = json.dumps({"dtype": "float16", "shape": [3], "data": ["Infinity", 65504, -65504]})
    decoded = protocol.decode_json_tensor(body.encode())
    assert decoded.tolist() == [np.inf, 65504.0, -65504.0]


def test_json_names_non_finite_values() -> None:
    array = np.array([np.nan, np.inf, -np.inf, -0.0, 1.5], dtype=np.float32)
    obj = json.loads(protocol.encode_json_tensor(array))
    assert obj == {
        "dtype": "float32",
        "shape": [5],
        "data": ["NaN", "Infinity", "-Infinity", -0.0, 1.5],
    }


@pytest.mark.parametrize(
    ("obj", "message", "code"),
    [
        ([1, 2], "tensor must be a JSON object with dtype, shape, data; got list", None),
        ({"shape": [1], "data": [1], "extra": 1}, r"unknown field\(s\) \['extra'\]", None),
        ({"dtype": "complex64", "shape": [1], "data": [1]}, "'complex64' is not supported", 1),
        ({"dtype": "object", "shape": [1], "data": [1]}, "'object' is not supported", 1),
        (
            {"shape": [2, -1], "data": []},
            r"shape must be a list of non-negative ints, got \[2, -1\]",
            None,
        ),
        ({"shape": [2, True], "data": [1, 2]}, "shape must be a list of non-negative ints", None),
        ({"shape": "2", "data": [1, 2]}, "shape must be a list", None),
        ({"shape": [3], "data": [1, 2]}, r"holds 2 values but shape \[3\] needs 3", None),
        (
            {"shape": [10**12], "data": [1]},
            r"holds 1 values but shape \[1000000000000\] needs",
            None,
        ),
        ({"shape": [1], "data": "1"}, "data must be a flat list of numbers, got str", None),
        ({"shape": [2], "data": [[1], [2]]}, "must be flat", None),
        ({"shape": [2], "data": [1, "one"]}, r"data\[1\] = 'one' is not a number", None),
        ({"shape": [1], "data": ["1.5"]}, r"data\[0\] = '1.5' is not a number", None),
        ({"shape": [1], "data": ["nan"]}, r"data\[0\] = 'nan' is not a number", None),
        ({"shape": [2], "data": [1, True]}, r"data\[1\] = True is not a number", None),
        ({"shape": [1], "data": [None]}, r"data\[0\] = None is not a number", None),
        ({"dtype": "int8", "shape": [1], "data": [300]}, "300 does not fit dtype int8", None),
        ({"dtype": "int32", "shape": [1], "data": [1.5]}, "1.5 does not fit dtype int32", None),
        ({"dtype": "int32", "shape": [1], "data": ["NaN"]}, "'NaN' is not a number", None),
    ],
)
def test_json_refuses_bad_tensors(obj: object, message: str, code: int | None) -> None:
    with pytest.raises(protocol.ProtocolError, match=message) as info:
        protocol.decode_json_tensor(json.dumps(obj).encode())
    assert info.value.code == ("invalid_tensor" if code else "malformed_tensor")


@pytest.mark.parametrize("body", [b"", b"{", b"[" * 100_000, b"\xff\xfe"])
def test_json_refuses_unparsable_bodies(body: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="not valid JSON"):
        protocol.decode_json_tensor(body)


def test_json_dtype_defaults_to_float32() -> None:
    decoded = protocol.decode_json_tensor(b'{"shape": [2], "data": [1, 2]}')
    assert decoded.dtype == np.float32


# ---------------------------------------------------------------------- safetensors


@settings(max_examples=40, deadline=None)
@given(arrays(), arrays((*FLOATS, "int8")))
def test_safetensors_interoperates_with_the_reference_library(
    x: np.ndarray, da: np.ndarray
) -> None:
    ours = protocol.encode_safetensors({"X": x, "dA": da})
    theirs = safetensors.numpy.load(ours)
    assert same(theirs["X"], x)
    assert same(theirs["dA"], da)
    decoded = protocol.decode_safetensors(safetensors.numpy.save({"X": x, "dA": da}))
    assert same(decoded["X"], x)
    assert same(decoded["dA"], da)


def safetensors_with(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


#: Bodies no safetensors decoder may accept: (body, the message the refusal must contain).
SAFETENSORS_MALFORMED: list[tuple[bytes, str]] = [
    (b"\x01\x02", "shorter than its 8-byte prefix"),
    (struct.pack("<Q", 2**40), "header of 1099511627776 bytes exceeds the 65536 limit"),
    (struct.pack("<Q", 100) + b"{}", "truncated: header claims 100 bytes"),
    (safetensors_with([1]), "header must be a JSON object, got list"),
    (safetensors_with({"X": {"dtype": "F32"}}), "must hold dtype, shape, data_offsets"),
    (
        safetensors_with({"X": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),
        r"offsets \[0, 8\] outside its 0-byte buffer",
    ),
    (
        safetensors_with(
            {"X": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4]}}, b"\x00" * 4
        ),
        "needs 4000000000 bytes, offsets span 4",
    ),
    (
        safetensors_with(
            {"X": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\x00" * 4
        ),
        "outside its",
    ),
    (
        safetensors_with({"X": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}),
        r"bad shape \[-1\]",
    ),
]


@pytest.mark.parametrize(("body", "message"), SAFETENSORS_MALFORMED)
def test_safetensors_refuses_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode_safetensors(body)


def test_safetensors_unsupported_dtype_is_invalid_tensor() -> None:
    body = safetensors_with({"X": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"0" * 8)
    with pytest.raises(protocol.ProtocolError, match="unsupported dtype 'C64'") as info:
        protocol.decode_safetensors(body)
    assert info.value.code == "invalid_tensor"


def reference_safetensors(tensors: dict[Any, np.ndarray]) -> bytes:
    """The safetensors file as the encoder wrote it before it built its header by hand: one
    ``json.dumps`` of the header dict, the raw little-endian C-order bytes after it."""
    codes = {"float16": "F16", "float32": "F32", "float64": "F64", "int8": "I8", "int16": "I16",
             "int32": "I32", "int64": "I64", "uint8": "U8", "uint16": "U16", "uint32": "U32",
             "uint64": "U64", "bool": "BOOL"}  # fmt: skip
    header: dict[Any, Any] = {}
    data = b""
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}  # fmt: skip
        data += raw
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


#: Every dtype safetensors carries.
SAFETENSORS_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                      "uint8", "uint16", "uint32", "uint64", "bool")  # fmt: skip


@pytest.mark.parametrize(
    "tensors",
    [
        {"A": np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1), "dX": np.ones((1, 8, 8, 1))},
        {dtype: np.ones(2, dtype) for dtype in SAFETENSORS_DTYPES},
        {"big": np.arange(6, dtype=">f4").reshape(2, 3), "le": np.arange(3, dtype="<i8")},
        {"fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "strided": np.ones(9)[::2]},
        {"scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float16)},
        {"longlong": np.ones(2, np.longlong), "ulonglong": np.ones(2, np.ulonglong)},
        {'quote"back\\slash': np.ones(1), "ünïcödé ✓": np.ones(1), "": np.ones(1)},
        # Keys JSON converts; 1 and True are equal keys, so they come in turn (same entry).
        {1: np.ones(1), 2.5: np.ones(3), None: np.ones(4)},
        {True: np.ones(1), 2: np.ones(3), "null": np.ones(4)},
    ],
    ids=[
        "tiny",
        "every-dtype",
        "byte-orders",
        "memory-orders",
        "0-d-and-empty",
        "aliases",
        "odd-names",
        "json-keys",
        "json-keys-again",
    ],
)
def test_safetensors_encoder_writes_what_json_dumps_wrote(tensors: dict[Any, np.ndarray]) -> None:
    # Twice: the second encoding comes from the cached header entries.
    for _ in range(2):
        assert protocol.encode_safetensors(tensors) == reference_safetensors(tensors)


@pytest.mark.parametrize("dtype", ["complex64", "<U3", "datetime64[ns]", "V4"])
def test_safetensors_encoder_refuses_other_dtypes_by_name(dtype: str) -> None:
    array = np.zeros(2, dtype)
    with pytest.raises(protocol.MalformedTensor, match=re.escape(f"'X' of dtype {array.dtype}")):
        protocol.encode_safetensors({"X": array})


def test_safetensors_decodes_to_read_only_views_of_the_body() -> None:
    body = protocol.encode_safetensors({"X": np.arange(4.0), "dA": np.ones((2, 2), np.float16)})
    decoded = protocol.decode_safetensors(body)
    for array in decoded.values():
        assert array.base is body  # no copy
        assert not array.flags.writeable


def test_a_cached_safetensors_layout_is_checked_against_each_body_s_length() -> None:
    # The layout of a small header is kept; the same header over a shorter buffer must still
    # be refused, naming that buffer's length, as a first decoding of it would be.
    body = protocol.encode_safetensors({"X": np.arange(4.0, dtype=np.float32)})
    assert protocol.decode_safetensors(body)["X"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(
        protocol.MalformedTensor, match=r"offsets \[0, 16\] outside its 12-byte buffer"
    ):
        protocol.decode_safetensors(body[:-4])
    assert protocol.decode_safetensors(body)["X"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_safetensors_refusals_are_never_cached() -> None:
    body = safetensors_with({"X": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    for _ in range(2):
        with pytest.raises(protocol.MalformedTensor, match="outside its 0-byte buffer"):
            protocol.decode_safetensors(body)
    assert protocol.decode_safetensors(body + b"\x00" * 8)["X"].tolist() == [0.0, 0.0]


def test_the_safetensors_layout_cache_stays_bounded() -> None:
    from poolgrad.protocol import tensors

    for length in range(tensors.LAYOUT_CACHE_SIZE + 10):
        body = protocol.encode_safetensors({"X": np.zeros(length, np.float32)})
        assert protocol.decode_safetensors(body)["X"].shape == (length,)
    assert tensors._cached_layout.cache_info().currsize <= tensors.LAYOUT_CACHE_SIZE
    # A header over the cached size decodes the same way, every time checked afresh.
    many = {f"tensor_{i}": np.full(i % 3, i, np.float32) for i in range(40)}
    body = protocol.encode_safetensors(many)
    assert struct.unpack_from("<Q", body)[0] > tensors.LAYOUT_CACHE_HEADER_BYTES
    for _ in range(2):
        decoded = protocol.decode_safetensors(body)
        assert all(same(decoded[name], value) for name, value in many.items())


# ------------------------------------------------------- shapes no array can have


def npy_of_shape(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + b"\x00" * (4 * math.prod(shape))


def json_of_shape(shape: tuple[int, ...]) -> bytes:
    return json.dumps({"dtype": "float32", "shape": list(shape), "data": [0.0] * math.prod(shape)})


def safetensors_of_shape(shape: tuple[int, ...]) -> bytes:
    size = 4 * math.prod(shape)
    entry = {"dtype": "F32", "shape": list(shape), "data_offsets": [0, size]}
    return safetensors_with({"X": entry}, b"\x00" * size)


HUGE_ZERO_SIZE = (0, 2**62, 2**62, 1)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (HUGE_ZERO_SIZE, r"shape \[0, 4611686018427387904, 4611686018427387904, 1\] of float32"),
        ((2**31, 2**31, 2**31, 0), r"shape \[2147483648, 2147483648, 2147483648, 0\]"),
        ((1, 2**61, 0), r"spans 9223372036854775808 bytes, more than any array"),
        ((1,) * 33, "shape has 33 dims; at most 32 are allowed"),
        ((1,) * 65, "shape has 65 dims; at most 32 are allowed"),
    ],
    ids=["zero-size-huge", "json-example", "just-over", "33-dims", "65-dims"],
)
@pytest.mark.parametrize(
    ("encode", "decode"),
    [
        (npy_of_shape, protocol.decode_npy),
        (json_of_shape, protocol.decode_json_tensor),
        (safetensors_of_shape, protocol.decode_safetensors),
    ],
    ids=["npy", "json", "safetensors"],
)
def test_every_decoder_refuses_shapes_no_array_can_have(
    encode: Any, decode: Any, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(protocol.ProtocolError, match=message) as info:
        decode(encode(shape))
    assert info.value.code == "malformed_tensor"


@pytest.mark.parametrize(
    "shape", [(0, 2**40, 2**20), (1,) * 32, (0,) * 32], ids=["large-zero-size", "32-ones", "zeros"]
)
def test_shapes_at_the_limits_still_decode(shape: tuple[int, ...]) -> None:
    for encode, decode in [
        (npy_of_shape, protocol.decode_npy),
        (json_of_shape, protocol.decode_json_tensor),
    ]:
        assert decode(encode(shape)).shape == shape
    assert protocol.decode_safetensors(safetensors_of_shape(shape))["X"].shape == shape


@pytest.mark.parametrize("dtype", [[], {"a": 1}, 4, None], ids=["list", "dict", "int", "null"])
def test_safetensors_refuses_a_dtype_that_is_not_a_string(dtype: object) -> None:
    body = safetensors_with({"X": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}, b"0" * 4)
    with pytest.raises(
        protocol.ProtocolError, match=re.escape(f"unsupported dtype {dtype!r}")
    ) as info:
        protocol.decode_safetensors(body)
    assert info.value.code == "invalid_tensor"


# ---------------------------------------------------------------- by media type


@pytest.mark.parametrize("media_type", [protocol.MEDIA_SAFETENSORS, protocol.MEDIA_JSON])
def test_named_tensors_round_trip(media_type: str) -> None:
    tensors = {"X": np.arange(8.0).reshape(1, 2, 2, 2), "dA": np.ones((1, 1, 1, 2), np.float16)}
    decoded = protocol.decode_named(protocol.encode_named(tensors, media_type), media_type)
    assert decoded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert same(decoded[name], value)


@pytest.mark.parametrize("media_type", [protocol.MEDIA_NPY, protocol.MEDIA_JSON])
def test_tensor_round_trip_by_media_type(media_type: str) -> None:
    array = np.arange(6, dtype=np.float64).reshape(3, 2)
    assert same(
        protocol.decode_tensor(protocol.encode_tensor(array, media_type), media_type), array
    )


def test_json_named_tensors_must_be_an_object() -> None:
    with pytest.raises(protocol.ProtocolError, match="named tensors must be a JSON object"):
        protocol.decode_named(b"[]", protocol.MEDIA_JSON)


@pytest.mark.parametrize(
    ("codec", "args"),
    [
        (protocol.decode_tensor, (b"", "text/csv")),
        (protocol.encode_tensor, (np.ones(1), "text/csv")),
        (protocol.decode_named, (b"", protocol.MEDIA_NPY)),
        (protocol.encode_named, ({"X": np.ones(1)}, protocol.MEDIA_NPY)),
    ],
)
def test_a_media_type_without_a_codec_is_a_protocol_error(codec: Any, args: Any) -> None:
    with pytest.raises(protocol.UnsupportedMediaType, match="for media type") as caught:
        codec(*args)
    assert caught.value.code == "unsupported_media_type"


# ------------------------------------------------------ at the server's input boundary


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _post(path: str, body: bytes, media_type: str) -> httpx.Response:
    app = create_app(Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if path == "forward":
            session_id = (await client.post("/v1/sessions")).json()["id"]
            path = f"/v1/sessions/{session_id}/forward"
            response = await client.post(path, content=body, headers={"Content-Type": media_type})
            # Refused means unchanged: the session still has no forward.
            assert (await client.get(f"/v1/sessions/{session_id}")).json()["step"] == 0
            return response
        return await client.post(path, content=body, headers={"Content-Type": media_type})


#: (route, media type, body, message) for every malformed body above.
SERVER_CASES = [("forward", protocol.MEDIA_NPY, *case) for case in NPY_MALFORMED] + [
    ("/v1/gradient", protocol.MEDIA_SAFETENSORS, *case) for case in SAFETENSORS_MALFORMED
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("route", "media_type", "body", "message"),
    SERVER_CASES,
    ids=[*NPY_MALFORMED_IDS, *(f"safetensors-{i}" for i in range(len(SAFETENSORS_MALFORMED)))],
)
async def test_the_server_refuses_malformed_bodies_as_the_decoder_does(
    route: str, media_type: str, body: bytes, message: str
) -> None:
    response = await _post(route, body, media_type)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "malformed_tensor"
    assert re.search(message, response.json()["detail"])


@pytest.mark.parametrize(
    ("array", "name"),
    [
        (np.arange(3, dtype=">f4"), "float32"),
        (np.arange(3, dtype=np.longlong), "int64"),
        (np.arange(3, dtype=">u2"), "uint16"),
        (np.array([True, False]), "bool"),
        (np.zeros((2, 0), np.float16), "float16"),
    ],
)
def test_json_tensors_name_their_dtype_whatever_its_byte_order(
    array: np.ndarray, name: str
) -> None:
    obj = protocol.tensor_to_obj(array)
    assert obj["dtype"] == name
    assert same(protocol.tensor_from_obj(obj), array.astype(array.dtype.newbyteorder("=")))


@pytest.mark.parametrize("dtype", ["complex64", "<U2", "datetime64[s]", ">c16"])
def test_json_tensors_refuse_other_dtypes_by_name(dtype: str) -> None:
    array = np.zeros(2, dtype)
    with pytest.raises(protocol.InvalidTensor, match=re.escape(f"dtype {array.dtype} cannot")):
        protocol.tensor_to_obj(array)


def test_a_cached_npy_header_is_checked_against_each_body_s_length() -> None:
    body = protocol.encode_npy(np.arange(4.0, dtype=np.float32))
    assert protocol.decode_npy(body).tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(
        protocol.MalformedTensor,
        match=r"\.npy data is truncated: shape \(4,\) of float32 needs 16 bytes, body holds 12",
    ):
        protocol.decode_npy(body[:-4])
    with pytest.raises(protocol.MalformedTensor, match="followed by extra bytes"):
        protocol.decode_npy(body + b"\x00")
    decoded = protocol.decode_npy(body)
    assert decoded.base is body  # a view, no copy
    assert not decoded.flags.writeable


def test_npy_refusals_are_never_cached_and_long_headers_decode_alike() -> None:
    from poolgrad.protocol import tensors

    body = npy_of_shape((2,)).replace(b"'<f4'", b"'<c8'")
    for _ in range(2):
        with pytest.raises(protocol.InvalidTensor, match="dtype complex64 is not numeric"):
            protocol.decode_npy(body)
    # A header over the cached size (padded with spaces, as the format allows): parsed every
    # time, alike.
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + b" " * 600 + b"\n"
    assert len(text) > tensors.NPY_CACHE_HEADER_BYTES
    long_header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + b"\x00" * 8
    for _ in range(2):
        assert protocol.decode_npy(long_header).tolist() == [0.0, 0.0]
    for length in range(tensors.NPY_CACHE_SIZE + 10):
        assert protocol.decode_npy(npy_of_shape((length,))).shape == (length,)
    assert tensors._cached_npy_header.cache_info().currsize <= tensors.NPY_CACHE_SIZE


# -------------------------------------------------------------------------- parts


def _every_layout() -> list[np.ndarray]:
    """Arrays of every dtype the binary formats carry, in both byte orders, in C, Fortran and
    no order, 0-d and empty among them."""
    arrays = []
    for name in SAFETENSORS_DTYPES:
        for order in "<>":
            dtype = np.dtype(name).newbyteorder(order)
            block = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
            arrays += [
                block,
                np.asfortranarray(block),
                block[:, ::2, 1:],
                block[1, 2, 3, ...].copy(),  # 0-d (an array: block[1, 2, 3] is a scalar)
                np.zeros((2, 0, 3), dtype),
            ]
    return arrays


EVERY_LAYOUT = _every_layout()
LAYOUT_IDS = [
    f"{a.dtype.str}-{a.shape}-{'F' if a.flags.f_contiguous else 'C'}" for a in EVERY_LAYOUT
]


def numpy_npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


@pytest.mark.parametrize("array", EVERY_LAYOUT, ids=LAYOUT_IDS)
def test_npy_parts_join_to_exactly_what_numpy_writes(array: np.ndarray) -> None:
    parts = protocol.encode_npy_parts(array)
    assert [type(part) for part in parts] == [bytes, memoryview]
    assert b"".join(parts) == numpy_npy(array) == protocol.encode_npy(array)
    assert protocol.encode_tensor_parts(array, protocol.MEDIA_NPY) == parts


@pytest.mark.parametrize("array", EVERY_LAYOUT, ids=LAYOUT_IDS)
def test_safetensors_parts_join_to_exactly_what_json_dumps_wrote(array: np.ndarray) -> None:
    tensors = {"X": array, "dA": np.arange(3, dtype=np.float32)}
    parts = protocol.encode_safetensors_parts(tensors)
    assert [type(part) for part in parts] == [bytes, memoryview, memoryview]
    assert b"".join(parts) == reference_safetensors(tensors) == protocol.encode_safetensors(tensors)
    assert protocol.encode_named_parts(tensors, protocol.MEDIA_SAFETENSORS) == parts


def _bytes_of(part: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(part, np.uint8)


@pytest.mark.parametrize(
    "array",
    [a for a in EVERY_LAYOUT if a.size and (a.flags.c_contiguous or a.flags.f_contiguous)],
)
def test_npy_parts_are_views_of_the_array_s_own_memory(array: np.ndarray) -> None:
    data = protocol.encode_npy_parts(array)[1]
    assert len(data) == array.nbytes
    assert np.shares_memory(_bytes_of(data), array)


@pytest.mark.parametrize("array", [a for a in EVERY_LAYOUT if a.size], ids=str)
def test_safetensors_parts_copy_only_what_is_not_little_endian_c_order(array: np.ndarray) -> None:
    data = protocol.encode_safetensors_parts({"X": array})[1]
    as_stored = array.dtype.byteorder != ">" and array.flags.c_contiguous
    assert np.shares_memory(_bytes_of(data), array) == as_stored


def test_an_empty_array_s_part_is_empty() -> None:
    assert protocol.encode_npy_parts(np.zeros((0, 4), np.float32))[1].nbytes == 0
    assert protocol.encode_safetensors_parts({"X": np.zeros((3, 0))})[1].nbytes == 0


def test_json_parts_are_the_one_document() -> None:
    array = np.array([[1.0, np.inf]], np.float32)
    assert protocol.encode_tensor_parts(array, protocol.MEDIA_JSON) == [
        protocol.encode_tensor(array, protocol.MEDIA_JSON)
    ]
    named = {"X": array, "dA": np.zeros(2)}
    assert protocol.encode_named_parts(named, protocol.MEDIA_JSON) == [
        protocol.encode_named(named, protocol.MEDIA_JSON)
    ]


@pytest.mark.parametrize(
    "codec", [protocol.encode_tensor_parts, protocol.encode_named_parts], ids=["one", "named"]
)
def test_parts_encoders_refuse_media_types_without_a_codec(codec: Any) -> None:
    with pytest.raises(protocol.UnsupportedMediaType, match="text/csv"):
        codec(
            np.zeros(1) if codec is protocol.encode_tensor_parts else {"X": np.zeros(1)}, "text/csv"
        )


# ------------------------------------------------------- decoding a bytearray body


def _assert_read_only_view_of(array: np.ndarray, body: bytearray) -> None:
    assert np.shares_memory(array, np.frombuffer(body, np.uint8))  # no copy
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[...] = 0


def test_npy_decodes_a_bytearray_to_a_read_only_view_of_it() -> None:
    X = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    body = bytearray(protocol.encode_npy(X))
    for decoded in (protocol.decode_npy(body), protocol.decode_tensor(body, protocol.MEDIA_NPY)):
        assert same(decoded, X)
        _assert_read_only_view_of(decoded, body)


def test_safetensors_decodes_a_bytearray_to_read_only_views_of_it() -> None:
    tensors = {"X": np.arange(6.0).reshape(2, 3), "dA": np.ones(4, np.float16)}
    body = bytearray(protocol.encode_safetensors(tensors))
    for decoded in (
        protocol.decode_safetensors(body),
        protocol.decode_named(body, protocol.MEDIA_SAFETENSORS),
    ):
        for name, array in decoded.items():
            assert same(array, tensors[name])
            _assert_read_only_view_of(array, body)


def test_json_bodies_decode_from_a_bytearray_too() -> None:
    X = np.array([[1.0, -2.5]], np.float32)
    assert same(
        protocol.decode_tensor(bytearray(protocol.encode_json_tensor(X)), "application/json"), X
    )
    named = protocol.encode_named({"X": X}, protocol.MEDIA_JSON)
    assert same(protocol.decode_named(bytearray(named), protocol.MEDIA_JSON)["X"], X)
