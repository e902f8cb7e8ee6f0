"""poolgrad.protocol.npyheader: every header NumPy writes parses as NumPy reads it, and every
crafted one (the probe's unclosed tuple, one-element descr tuple, booleans in the shape, and
more) is a MalformedTensor naming the fault, in format 1.0, 2.0 and 3.0 alike, both in the
decoder and through the server's forward and backward."""

from __future__ import annotations

import io
import struct

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from poolgrad import protocol
from poolgrad.protocol.npyheader import parse_npy_header
from service import Settings, create_app

VERSIONS = (1, 2, 3)


def npy_v(header: str, version: int, data: bytes = b"") -> bytes:
    """A ``.npy`` body of format ``version``.0 with this header text, padded as NumPy pads."""
    raw = header.encode("utf-8" if version == 3 else "latin-1")
    preamble = 10 if version == 1 else 12
    raw += b" " * (-(len(raw) + preamble + 1) % 64) + b"\n"
    length = struct.pack("<H" if version == 1 else "<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw + data


def header(descr: str = "'<f4'", fortran: str = "False", shape: str = "(2,)") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


#: (id, header text, what the refusal must say). Each made NumPy's own reader raise something
#: other than ValueError, or is a neighbour of one that did.
CRAFTED: list[tuple[str, str, str]] = [
    ("unclosed-tuple", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}",
     "expected ',' or '\\)' at character 55"),
    ("unclosed-dict", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
     "expected ',' or '}'"),
    ("unclosed-string", "{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }",
     "expected ',' or '}'"),
    ("one-element-descr-tuple", header(descr="('<f4',)"), "descr must be a quoted dtype"),
    ("two-element-descr-tuple", header(descr="('<f4', (2,))"), "descr must be a quoted dtype"),
    ("bool-in-shape", header(shape="(True, 2)"), "shape dimensions must be non-negative ints"),
    ("bool-only-shape", header(shape="(False,)"), "shape dimensions must be non-negative ints"),
    ("bool-shape", header(shape="True"), "expected '\\('"),
    ("float-in-shape", header(shape="(2.0,)"), "expected ',' or '\\)'"),
    ("string-in-shape", header(shape="('2',)"), "shape dimensions must be non-negative ints"),
    ("list-shape", header(shape="[2]"), "expected '\\('"),
    ("int-shape", header(shape="2"), "expected '\\('"),
    ("parenthesized-int", header(shape="(2)"), "needs its comma"),
    ("nested-shape", header(shape="((2,),)"), "shape dimensions must be non-negative ints"),
    ("deep-nesting", header(shape="(" * 5000 + ")" * 5000), "shape dimensions"),
    ("negative", header(shape="(-1, 4)"), "negative dimension '-1'"),
    ("huge-int", header(shape=f"({'9' * 5000},)"), "dimension of 5000 digits"),
    ("expression", header(shape="(10**9, 10**9)"), "expected ',' or '\\)'"),
    ("call", "__import__('os').system('true')", "expected '{'"),
    ("int-fortran", header(fortran="1"), "fortran_order must be True or False"),
    ("string-fortran", header(fortran="'False'"), "fortran_order must be True or False"),
    ("none-fortran", header(fortran="None"), "expected a value for 'fortran_order'"),
    ("int-descr", header(descr="5"), "descr must be a quoted dtype"),
    ("unknown-descr", header(descr="'zz'"), "descr 'zz', which is not a NumPy dtype"),
    ("bad-size-descr", header(descr="'<f3'"), "descr '<f3'"),
    ("alias-descr", header(descr="'a'"), "not a NumPy dtype string"),
    ("comma-descr", header(descr="'f4,f4'"), "not a NumPy dtype string"),
    ("structured", header(descr="[('a', '<f4')]"), "structured dtype"),
    ("escape-in-string", header(descr="'<f\\x34'"), "expected"),
    ("duplicate-key", "{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (2,)}",
     "gives 'descr' more than once"),
    ("missing-key", "{'descr': '<f4', 'shape': (2,)}", "lacks fortran_order"),
    ("unknown-key", header()[:-1] + "'x': 1}", "unknown key 'x'"),
    ("unquoted-key", "{descr: '<f4', 'fortran_order': False, 'shape': (2,)}",
     "expected a key or '}'"),
    ("trailing-text", header() + " junk", "unexpected text after the header dict"),
    ("two-dicts", header() + header(), "unexpected text after the header dict"),
    ("empty-dict", "{}", "lacks descr, fortran_order, shape"),
    ("empty", "", "expected '{'"),
    ("nul", header(descr="'<f4\0'"), "not a NumPy dtype string"),
    ("json-literals", '{"descr": "<f4", "fortran_order": false, "shape": [2]}',
     "expected a value for 'fortran_order'"),
]  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("text", "message"), [case[1:] for case in CRAFTED], ids=[case[0] for case in CRAFTED]
)
def test_crafted_headers_are_malformed_tensors(text: str, message: str, version: int) -> None:
    with pytest.raises(protocol.MalformedTensor, match=message) as info:
        protocol.decode_npy(npy_v(text, version, b"\0" * 8))
    assert info.value.code == "malformed_tensor"
    assert len(str(info.value)) < 400  # the header is quoted within bounds


def test_a_v3_header_that_is_not_utf8_is_malformed() -> None:
    body = npy_v(header(), 3)
    body = body[:12] + b"\xff" + body[13:]
    with pytest.raises(protocol.MalformedTensor, match=r"3\.0 header is not UTF-8"):
        protocol.decode_npy(body)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("text", "shape", "fortran"),
    [
        (header(), (2,), False),
        ("{'descr':'<f4','fortran_order':True,'shape':(1,2)}", (1, 2), True),
        ('{"descr": "<f4", "shape": (2, 1, ), "fortran_order": False}', (2, 1), False),
        ("{ 'shape' : () , 'fortran_order' : False , 'descr' : '<f4' }", (), False),
    ],
    ids=["numpy", "compact", "any-order-double-quotes", "scalar-spaced"],
)
def test_other_writers_spacing_order_and_quotes_are_accepted(
    text: str, shape: tuple[int, ...], fortran: bool, version: int
) -> None:
    count = int(np.prod(shape))
    decoded = protocol.decode_npy(npy_v(text, version, np.arange(count, dtype="<f4").tobytes()))
    assert decoded.shape == shape
    assert decoded.flags.f_contiguous if fortran and decoded.ndim > 1 else True


DTYPES = st.sampled_from(
    ["<f2", ">f4", "<f8", "|b1", "<i8", ">u2", "|u1", "<c16", "<U3", "|S2", "<M8[s]"]
)


_WRITERS = {1: np.lib.format.write_array_header_1_0, 2: np.lib.format.write_array_header_2_0}
_READERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}


@settings(max_examples=150, deadline=None)
@given(
    dtype=DTYPES,
    shape=hnp.array_shapes(min_dims=0, max_dims=6, min_side=0, max_side=5),
    fortran=st.booleans(),
    version=st.sampled_from([1, 2]),
)
def test_every_header_numpy_writes_parses_as_numpy_reads_it(
    dtype: str, shape: tuple[int, ...], fortran: bool, version: int
) -> None:
    """NumPy's own writer and reader are the oracle; a 3.0 file differs from a 2.0 one only in
    its version byte and text encoding (the same for these ASCII headers)."""
    buffer = io.BytesIO()
    _WRITERS[version](buffer, {"descr": dtype, "fortran_order": fortran, "shape": shape})
    written = buffer.getvalue()
    start = 10 if version == 1 else 12
    text = written[start:].decode("latin-1")
    stream = io.BytesIO(written)
    np.lib.format.read_magic(stream)
    theirs = _READERS[version](stream)
    assert parse_npy_header(text) == theirs
    if version == 2:
        v3 = written[:6] + b"\x03" + written[7:]
        count = int(np.prod(shape)) * theirs[2].itemsize
        body = v3 + b"\0" * count
        if theirs[2].kind in "biuf":
            assert protocol.decode_npy(body).shape == shape


# ------------------------------------------------------------------ through the server

SERVER_CASES = [case for case in CRAFTED if case[0] != "structured"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("version", VERSIONS)
async def test_crafted_headers_are_400_on_forward_and_backward(version: int) -> None:
    """Every crafted header, as X and as dA, is a 400 malformed_tensor (never a 500), and the
    session keeps its state and step."""
    app = create_app(Settings())
    X = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        session_id = (await client.post("/v1/sessions")).json()["id"]
        headers = {"Content-Type": protocol.MEDIA_NPY}
        base = f"/v1/sessions/{session_id}"
        assert (await client.post(f"{base}/forward", content=protocol.encode_npy(X),
                                  headers=headers)).status_code == 200  # fmt: skip
        for name, text, _ in SERVER_CASES:
            body = npy_v(text, version, b"\0" * 16)
            for route in ("forward", "backward"):
                response = await client.post(f"{base}/{route}", content=body, headers=headers)
                assert response.status_code == 400, (name, route, response.text)
                assert response.json()["code"] == "malformed_tensor", (name, route)
        info = (await client.get(base)).json()
        assert info["step"] == 1
        assert info["input_shape"] == [1, 4, 4, 1]
        metrics = (await client.get("/metrics")).text
        assert 'status="500"' not in metrics
