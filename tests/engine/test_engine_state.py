"""PoolState: compact contents, exact binary round trip, corruption detected."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import Case, pool_cases, upstream

from engine import PoolSpec, PoolState, StateError, backward, forward


@pytest.mark.parametrize("ties", ["all", "first", "split"])
@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(
    ("shape", "pool_size"),
    [
        ((64, 32, 32, 32), 2),
        ((8, 30, 30, 16), 3),
        ((32, 28, 28, 1), 2),
        ((4, 8, 16, 16, 8), [2, 2, 2]),
    ],
)
def test_max_min_state_is_at_most_an_eighth_of_x_for_non_overlapping_float32(
    ties: str, mode: str, shape: tuple[int, ...], pool_size: object
) -> None:
    X = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    spec = PoolSpec(mode=mode, pool_size=pool_size, ties=ties)  # type: ignore[arg-type]
    A, state = forward(X, spec)
    assert state.nbytes <= X.nbytes / 8
    # One bit per window element: prod(pool_size) bits per output position.
    assert state.nbytes == int(np.prod(spec.pool_size)) * ((A.size + 7) // 8)


def test_avg_state_holds_shapes_only() -> None:
    X = np.random.default_rng(0).standard_normal((4, 9, 9, 3)).astype(np.float32)
    A, state = forward(X, PoolSpec(mode="avg", pool_size=3, strides=2, padding="same"))
    assert state.nbytes == 0
    assert state.winners is None
    assert state.nan_windows is None
    assert (state.input_shape, state.output_shape, state.dtype) == (X.shape, A.shape, X.dtype)


@settings(max_examples=100, deadline=None)
@given(pool_cases())
def test_to_bytes_round_trips_exactly(case: Case) -> None:
    A, state = forward(case.X, case.spec)
    blob = state.to_bytes()
    restored = PoolState.from_bytes(blob)
    assert restored.spec == state.spec
    assert restored.input_shape == state.input_shape
    assert restored.output_shape == state.output_shape
    assert restored.dtype == state.dtype
    assert restored.nbytes == state.nbytes
    assert restored.to_bytes() == blob
    dA = upstream(A.shape, case.X.dtype.type, case.dA_seed)
    np.testing.assert_array_equal(backward(restored, dA), backward(state, dA))


def _blob() -> bytes:
    X = np.random.default_rng(1).standard_normal((2, 6, 6, 3))
    return forward(X, PoolSpec(pool_size=3, strides=2))[1].to_bytes()


def _rewrite_header(blob: bytes, change: dict[str, object]) -> bytes:
    # Forge a blob with a valid CRC but an altered header, to reach the consistency checks.
    magic, version, length = struct.unpack_from("<7sBI", blob)
    header = json.loads(blob[12 : 12 + length])
    header.update(change)
    new_header = json.dumps(header).encode()
    body = struct.pack("<7sBI", magic, version, len(new_header)) + new_header
    body += blob[12 + length : -4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_every_truncation_is_refused() -> None:
    blob = _blob()
    for length in range(len(blob)):
        with pytest.raises(StateError, match=r"truncated|corrupt"):
            PoolState.from_bytes(blob[:length])


def test_flipped_bits_are_refused_by_the_crc() -> None:
    blob = bytearray(_blob())
    for position in (0, 7, 9, 20, len(blob) // 2, len(blob) - 5, len(blob) - 1):
        corrupt = bytearray(blob)
        corrupt[position] ^= 0x10
        with pytest.raises(StateError, match=r"corrupt|magic|version"):
            PoolState.from_bytes(bytes(corrupt))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"output_shape": [2, 3, 3, 3]},
            r"output_shape \(2, 3, 3, 3\) does not match \(2, 2, 2, 3\)",
        ),
        ({"dtype": "int32"}, r"dtype 'int32' is not float16/32/64"),
        ({"spec": {"mode": "median"}}, r"invalid spec: mode must be one of"),
        ({"input_shape": [2, 6, 6]}, r"input_shape \(2, 6, 6\) does not fit its spec"),
        ({"input_shape": "big"}, r"input_shape must be a list of positive ints, got 'big'"),
        ({"arrays": []}, r"lacks its winners array"),
        (
            {"arrays": [{"name": "winners", "dtype": "uint8", "shape": [9, 4]}]},
            r"state array 'winners' is uint8 \(9, 4\), expected uint8 \(9, 3\)",
        ),
        ({"extra": 1}, r"state header has keys"),
        (
            {"arrays": [{"name": ["winners"], "dtype": "uint8", "shape": [9, 3]}]},
            r"state array \['winners'\] is unexpected",
        ),
        (
            # backward would allocate dX of this shape: 7 PiB
            {
                "spec": {"pool_size": [1, 1], "strides": [10**15, 1]},
                "input_shape": [1, 10**15, 1, 1],
            },
            r"has 1000000000000000 elements, more than the 2147483648 one call may take",
        ),
    ],
)
def test_inconsistent_headers_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(StateError, match=message):
        PoolState.from_bytes(_rewrite_header(_blob(), change))


def _with_raw_header(header: bytes) -> bytes:
    body = struct.pack("<7sBI", b"PGSTATE", 1, len(header)) + header
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "header length 200000 exceeds the 65536 limit"),
        (b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),  # nested past the recursion limit
        (b'{"n": ' + b"9" * 5_000 + b"}", "not valid JSON"),  # past Python's int-digit limit
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_forged_headers_raise_state_error_only(header: bytes, message: str) -> None:
    with pytest.raises(StateError, match=message):
        PoolState.from_bytes(_with_raw_header(header))


def test_foreign_magic_and_version_are_refused() -> None:
    blob = _blob()
    body = b"NOTPOOL" + blob[7:-4]
    with pytest.raises(StateError, match=r"magic b'NOTPOOL'"):
        PoolState.from_bytes(body + struct.pack("<I", zlib.crc32(body)))
    body = blob[:7] + b"\x02" + blob[8:-4]
    with pytest.raises(StateError, match=r"version 2, this engine reads 1"):
        PoolState.from_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_state_arrays_are_read_only() -> None:
    _, state = forward(np.ones((1, 4, 4, 1)), PoolSpec())
    assert state.winners is not None
    with pytest.raises(ValueError, match="read-only"):
        state.winners[0, 0] = 1
    with pytest.raises(AttributeError):
        state.spec = PoolSpec()  # type: ignore[misc]


def test_a_max_state_without_winners_is_a_state_error() -> None:
    spec = PoolSpec(mode="max")
    state = PoolState(spec, (1, 4, 4, 1), (1, 2, 2, 1), np.dtype(np.float32))
    with pytest.raises(StateError, match="state for mode 'max' holds no winners"):
        backward(state, np.ones((1, 2, 2, 1), np.float32))


def _with_body(blob: bytes, arrays: bytes) -> bytes:
    """``blob``'s header over other array bytes, with a valid CRC."""
    (length,) = struct.unpack_from("<I", blob, 8)
    body = blob[: 12 + length] + arrays
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_cached_state_layout_is_checked_against_each_blob_s_length() -> None:
    # The checked layout of a small header is kept; the same header over fewer or more array
    # bytes must still be refused as a first reading of it would be.
    blob = _blob()
    state = PoolState.from_bytes(blob)
    (length,) = struct.unpack_from("<I", blob, 8)
    arrays = blob[12 + length : -4]
    with pytest.raises(
        StateError, match=r"array 'winners' needs 27 bytes at offset 296, blob body has 322"
    ):
        PoolState.from_bytes(_with_body(blob, arrays[:-1]))
    with pytest.raises(StateError, match="has 1 trailing bytes after its arrays"):
        PoolState.from_bytes(_with_body(blob, arrays + b"\x00"))
    again = PoolState.from_bytes(blob)
    assert again.to_bytes() == state.to_bytes() == blob
    assert again.winners is not None
    assert state.winners is not None
    assert not np.shares_memory(again.winners, state.winners)  # each state its own copy


def test_state_refusals_are_never_cached_and_layouts_stay_bounded() -> None:
    from engine import state as state_module

    bad = _rewrite_header(_blob(), {"dtype": "int8"})
    for _ in range(2):
        with pytest.raises(StateError, match="dtype 'int8' is not float16/32/64"):
            PoolState.from_bytes(bad)
    for width in range(2, state_module.LAYOUT_CACHE_SIZE + 12):
        X = np.ones((1, 2, width, 1), np.float32)
        A, state = forward(X, PoolSpec(pool_size=2, strides=1))
        assert PoolState.from_bytes(state.to_bytes()).output_shape == A.shape
    assert state_module._cached_layout.cache_info().currsize <= state_module.LAYOUT_CACHE_SIZE
