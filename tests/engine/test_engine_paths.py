"""The kernels' alternative paths agree with each other and with the naive reference.

max/min backward has three ways to write dX: disjoint windows write each offset straight into
dX; overlapping windows sum each stride phase in a buffer and write the phases through one
phase-major view of dX (sizes divisible by the strides) or one strided write per phase (not
divisible). Batches are also cut into L2-sized pieces. Every path is checked on random,
tie-heavy and NaN inputs, with uncovered remainders and padding, for every tie rule and layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from pool_reference import reference

from engine import PoolSpec, PoolState, backward, forward
from engine.options import EngineOptions, RunReport

NUMPY = EngineOptions(kernels="numpy")

TIES = ("all", "first", "split")
LAYOUTS = ("channels_last", "channels_first")

# (channels_last shape, pool, strides, padding): which path each one takes is in its id.
GEOMETRIES = [
    pytest.param((3, 8, 8, 2), 2, 2, "valid", id="disjoint-exact"),
    pytest.param((3, 9, 7, 2), 2, 2, "valid", id="disjoint-remainder"),
    pytest.param((2, 9, 10, 3), 2, 3, "valid", id="disjoint-gaps"),
    pytest.param((2, 7, 7, 2), 2, 2, "same", id="disjoint-padded"),
    pytest.param((3, 8, 10, 2), 3, 2, "valid", id="overlap-merged"),
    pytest.param((2, 8, 8, 3), 3, 2, "same", id="overlap-merged-padded"),
    pytest.param((2, 9, 8, 2), 3, 2, "valid", id="overlap-per-phase"),
    pytest.param((2, 7, 9, 2), (3, 2), (1, 2), "same", id="overlap-mixed"),
    pytest.param((1, 11, 10, 2), 3, 2, [[1, 2], [2, 0]], id="overlap-explicit-pad"),
]


def _inputs(shape: tuple[int, ...], layout: str) -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(sum(shape))
    tie_heavy = rng.integers(-1, 2, shape).astype(np.float64)
    with_nan = rng.standard_normal(shape)
    with_nan.flat[:: max(1, with_nan.size // 5)] = np.nan
    for name, X in (
        ("random", rng.standard_normal(shape)),
        ("tie-heavy", tie_heavy),
        ("nan", with_nan),
    ):
        yield name, (X if layout == "channels_last" else np.moveaxis(X, -1, 1).copy())


def _spec(pool: object, strides: object, padding: object, layout: str, ties: str) -> PoolSpec:
    return PoolSpec(
        pool_size=pool,  # type: ignore[arg-type]
        strides=strides,  # type: ignore[arg-type]
        padding=padding,  # type: ignore[arg-type]
        layout=layout,  # type: ignore[arg-type]
        ties=ties,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("shape", "pool", "strides", "padding"), GEOMETRIES)
def test_every_backward_path_matches_the_reference(
    shape: tuple[int, ...],
    pool: object,
    strides: object,
    padding: object,
    layout: str,
    ties: str,
    mode: str,
) -> None:
    spec = dataclasses.replace(_spec(pool, strides, padding, layout, ties), mode=mode)
    for dtype in (np.float32, np.float16):
        for name, X64 in _inputs(shape, layout):
            X = X64.astype(dtype)
            A, state = forward(X, spec, options=NUMPY)
            dA = np.random.default_rng(1).integers(-4, 5, A.shape).astype(dtype)
            report = RunReport()
            dX = backward(state, dA, options=NUMPY, report=report)
            assert report.kernels == "numpy"
            disjoint = all(s >= p for s, p in zip(spec.strides, spec.pool_size, strict=True))
            assert report.backward_path.startswith("disjoint" if disjoint else "phases")
            expected_A, expected_dX = reference(X, spec, dA)
            assert expected_dX is not None
            np.testing.assert_array_equal(A, expected_A, err_msg=name)
            assert dX.dtype == X.dtype
            if ties == "split":
                np.testing.assert_allclose(dX, expected_dX, rtol=2e-3, atol=2e-3, err_msg=name)
            else:
                np.testing.assert_array_equal(dX, expected_dX, err_msg=name)
            # Padding never wins nor receives gradient: covered by the reference; NaN windows
            # pass nothing, so a gradient lands only where X is not NaN.
            assert not np.any(dX[np.isnan(X)]), name


def _backward_on_numpy(state: PoolState, dA: np.ndarray, **paths: bool) -> tuple[np.ndarray, str]:
    """dX on the NumPy kernels with the path choices ``paths`` forces, and the path taken."""
    report = RunReport()
    dX = backward(state, dA, options=dataclasses.replace(NUMPY, **paths), report=report)
    return dX, report.backward_path


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("shape", "pool", "strides", "padding"), GEOMETRIES[:4])
def test_disjoint_path_equals_the_phase_path(
    shape: tuple[int, ...],
    pool: object,
    strides: object,
    padding: object,
    layout: str,
    ties: str,
) -> None:
    spec = _spec(pool, strides, padding, layout, ties)
    for dtype in (np.float64, np.float32, np.float16):
        for name, X64 in _inputs(shape, layout):
            X = X64.astype(dtype)
            A, state = forward(X, spec)
            dA = np.random.default_rng(2).standard_normal(A.shape).astype(dtype)
            dA.flat[::7] = np.inf
            fast, fast_path = _backward_on_numpy(state, dA)
            general, general_path = _backward_on_numpy(state, dA, disjoint_path=False)
            assert fast_path == "disjoint"
            assert general_path.startswith("phases")
            # Bit for bit, signed zeros and NaN (from inf * share in "split") included.
            assert fast.dtype == general.dtype == X.dtype
            assert fast.tobytes() == general.tobytes(), (name, dtype)


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("shape", "pool", "strides", "padding"), GEOMETRIES[4:6])
def test_phase_major_write_equals_per_phase_writes(
    shape: tuple[int, ...],
    pool: object,
    strides: object,
    padding: object,
    layout: str,
    ties: str,
) -> None:
    spec = _spec(pool, strides, padding, layout, ties)
    for name, X64 in _inputs(shape, layout):
        X = X64.astype(np.float32)
        A, state = forward(X, spec)
        dA = np.random.default_rng(3).standard_normal(A.shape).astype(np.float32)
        merged, merged_path = _backward_on_numpy(state, dA)
        per_phase, per_phase_path = _backward_on_numpy(state, dA, merged_phase_write=False)
        assert merged_path == "phases-merged"
        assert per_phase_path == "phases-strided"
        assert merged.tobytes() == per_phase.tobytes(), name


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize(("shape", "pool", "strides", "padding"), GEOMETRIES)
@pytest.mark.parametrize("kernels", ["numpy", "compiled"])
def test_batch_pieces_equal_one_piece(
    kernels: str,
    shape: tuple[int, ...],
    pool: object,
    strides: object,
    padding: object,
    ties: str,
) -> None:
    spec = _spec(pool, strides, padding, "channels_last", ties)
    batch = (16, *shape[1:])
    X = np.random.default_rng(4).integers(-1, 2, batch).astype(np.float32)
    X.flat[::11] = np.nan
    whole = EngineOptions(kernels=kernels, piece_bytes=1 << 62)  # type: ignore[arg-type]
    one_report = RunReport()
    A1, state1 = forward(X, spec, options=whole, report=one_report)
    assert one_report.chunks == 1
    dA = np.random.default_rng(5).integers(-3, 4, A1.shape).astype(np.float32)
    dX1 = backward(state1, dA, options=whole)
    # Pieces of about one sample, on one thread.
    pieces = dataclasses.replace(whole, piece_bytes=X[0].nbytes)
    report = RunReport()
    A16, state16 = forward(X, spec, options=pieces, report=report)
    assert report.chunks > 1
    assert report.threads == 1
    np.testing.assert_array_equal(A16, A1)
    assert state16.to_bytes() == state1.to_bytes()
    assert backward(state16, dA, options=pieces).tobytes() == dX1.tobytes()


# A call on one thread whose X fits one piece runs as one chunk (no split memo, no thread
# weighing); forcing two threads on the smallest inputs cuts the same calls into several.
ONE_CHUNK = EngineOptions(threads=1)
SPLIT = EngineOptions(threads=2, parallel_min_elements=1, piece_bytes=64)


@pytest.mark.parametrize("kernels", ["numpy", "compiled"])
@pytest.mark.parametrize("mode", ["max", "min", "avg"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("shape", "pool", "strides", "padding"),
    [
        pytest.param((1, 8, 8, 1), 2, 2, "valid", id="tiny-single-sample"),
        pytest.param((4, 8, 8, 3), 2, 2, "valid", id="tiny-batch"),
        pytest.param((1, 9, 7, 2), 2, 2, "same", id="tiny-padded"),
        pytest.param((2, 8, 10, 2), 3, 2, "valid", id="tiny-overlap"),
    ],
)
def test_a_one_chunk_call_equals_the_split_call_bit_for_bit(
    kernels: str,
    mode: str,
    layout: str,
    shape: tuple[int, ...],
    pool: object,
    strides: object,
    padding: object,
) -> None:
    spec = dataclasses.replace(_spec(pool, strides, padding, layout, "split"), mode=mode)
    one = dataclasses.replace(ONE_CHUNK, kernels=kernels)
    split = dataclasses.replace(SPLIT, kernels=kernels)
    for name, X in _inputs(shape, layout):
        X = X.astype(np.float32)
        one_report, split_report = RunReport(), RunReport()
        A1, state1 = forward(X, spec, options=one, report=one_report)
        A2, state2 = forward(X, spec, options=split, report=split_report)
        assert one_report.chunks == 1, name
        assert A1.tobytes() == A2.tobytes(), name
        assert state1.to_bytes() == state2.to_bytes(), name
        dA = np.random.default_rng(6).integers(-3, 4, A1.shape).astype(np.float32)
        assert (
            backward(state1, dA, options=one).tobytes()
            == backward(state2, dA, options=split).tobytes()
        ), name
    # The split path ran: on the batch, or on the rows of one channels_last sample.
    if shape[0] > 1 or (layout == "channels_last" and strides >= pool):  # type: ignore[operator]
        assert split_report.chunks > 1


@pytest.mark.parametrize("options", [ONE_CHUNK, SPLIT], ids=["one-chunk", "split"])
def test_a_one_chunk_call_refuses_what_the_split_call_refuses(options: EngineOptions) -> None:
    spec = PoolSpec(pool_size=2, nan="reject")
    X = np.ones((1, 8, 8, 1), np.float32)
    A, state = forward(X, spec, options=options)
    with pytest.raises(
        ValueError, match=r"dA has shape \(1, 3, 4, 1\) but A has shape \(1, 4, 4, 1\)"
    ):
        backward(state, np.ones((1, 3, 4, 1), np.float32), options=options)
    with pytest.raises(
        ValueError, match=r"dA dtype complex64 is not a real number type; use float32"
    ):
        backward(state, np.ones(A.shape, np.complex64), options=options)
    X[0, 5, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN value\(s\), first at index \(0, 5, 2, 0\)"):
        forward(X, spec, options=options)
    with pytest.raises(ValueError, match=r"window 2 along spatial dim 0 \(h\) is larger"):
        forward(np.ones((1, 1, 8, 1), np.float32), spec, options=options)
