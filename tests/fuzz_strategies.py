"""Hypothesis strategies shared by the fuzz tests (tests/protocol/test_protocol_fuzz.py,
tests/service/test_service_fuzz.py): valid arrays, hostile numbers, header tokens, JSON
values, query values, and byte-level mutation of a valid body."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from poolgrad import protocol

FIELD_NAMES = [field.name for field in protocol.FIELDS]

FLOAT_DTYPES = ("float16", "float32", "float64")
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


def arrays() -> st.SearchStrategy[np.ndarray]:
    dtypes = st.sampled_from((*FLOAT_DTYPES, "int32", "uint8", "bool", ">f8"))
    return dtypes.flatmap(lambda dtype: hnp.arrays(dtype, SHAPES))


#: Numbers a hostile header would claim: zero, small, huge, negative, past 64 bits.
CLAIMS = st.one_of(
    st.integers(0, 8),
    st.integers(2**31 - 2, 2**31 + 2),
    st.integers(2**62, 2**64 + 1),
    st.integers(-(2**63), -1),
    st.just(10**30),
)

#: Tokens of the .npy header grammar, to recombine into near-headers.
HEADER_TOKENS = st.one_of(
    st.sampled_from(
        [
            "{",
            "}",
            "(",
            ")",
            "[",
            "]",
            ",",
            ":",
            " ",
            "'descr'",
            "'shape'",
            "'fortran_order'",
            "'<f4'",
            "'|O'",
            "'<U2'",
            "'f4,f4'",
            "True",
            "False",
            "None",
            "'",
            '"',
            "\\",
            "\n",
            "\x00",
            "é",
            "\u2028",
            "1e3",
            "2.0",
            "-1",
            "__import__('os')",
            "*",
            "**",
        ]
    ),
    CLAIMS.map(str),
)


def mutate(body: bytes, data: st.DataObject) -> bytes:
    """``body`` with one of: bytes flipped, cut short, grown, or a slice replaced."""
    if not body:
        return data.draw(st.binary(max_size=64))
    how = data.draw(st.sampled_from(["flip", "cut", "grow", "splice"]))
    at = data.draw(st.integers(0, len(body) - 1))
    if how == "flip":
        return body[:at] + bytes([body[at] ^ data.draw(st.integers(1, 255))]) + body[at + 1 :]
    if how == "cut":
        return body[:at]
    if how == "grow":
        return body + data.draw(st.binary(min_size=1, max_size=64))
    end = data.draw(st.integers(at, len(body)))
    return body[:at] + data.draw(st.binary(max_size=32)) + body[end:]


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "float32", "float16", "complex64"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)


QUERY_VALUES = st.one_of(
    st.text(max_size=12),
    st.lists(CLAIMS.map(str), min_size=1, max_size=4).map(",".join),
    st.lists(st.tuples(CLAIMS, CLAIMS), min_size=1, max_size=3).map(
        lambda pairs: ",".join(f"{a}:{b}" for a, b in pairs)
    ),
    st.sampled_from(["valid", "same", "true", "false", "2,", ",", ":", "1:", "²", "1_000"]),
)
