"""Input handling: refused tensors name their problem; odd memory layouts and dtypes work;
nothing the caller passes is written; threaded chunks equal the single-threaded result."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

import engine.parallel
from engine import (
    PoolSpec,
    ShapeMismatchError,
    TensorError,
    backward,
    forward,
)
from engine.geometry import make_plan
from engine.options import EngineOptions, RunReport


@pytest.mark.parametrize(
    ("X", "spec", "message"),
    [
        (
            np.zeros((2, 3, 4), np.float32),
            PoolSpec(),
            r"X has rank 3 but spec with 2 spatial dims needs rank 4 \(m, h, w, d\); "
            r"got shape \(2, 3, 4\)",
        ),
        (
            np.zeros((2, 3, 4, 5), np.float32),
            PoolSpec(pool_size=[2, 2, 2], layout="channels_first"),
            r"needs rank 5 \(m, d, t, h, w\); got shape \(2, 3, 4, 5\)",
        ),
        (
            np.zeros((1, 4, 4, 1), np.int32),
            PoolSpec(),
            r"X dtype int32 is not supported; use float16, float32 or float64",
        ),
        (np.zeros((1, 4, 4, 1), np.complex64), PoolSpec(), r"X dtype complex64 is not supported"),
        (np.zeros((0, 4, 4, 1)), PoolSpec(), r"zero-size dim; got shape \(0, 4, 4, 1\)"),
        (
            np.zeros((1, 4, 2, 1)),
            PoolSpec(pool_size=3),
            r"window 3 along spatial dim 1 \(w\) is larger than the padded input 2",
        ),
        (
            # Two 255 x 255 windows of padding around a 4 x 4 input: tiny X, minutes of work.
            np.zeros((1, 4, 4, 1), np.float32),
            PoolSpec(pool_size=255, strides=1, padding=[[254, 254], [254, 254]]),
            r"X shape \(1, 4, 4, 1\) with pool_size \(255, 255\) and strides \(1, 1\) gives "
            r"66564 outputs of 65025 elements each: 4328324100 element visits, more than the "
            r"1073741824 one call may make",
        ),
        (
            np.array([[[0.0], [np.nan]]]),
            PoolSpec(pool_size=[1], nan="reject"),
            r"X holds 1 NaN value\(s\), first at index \(0, 1, 0\), and the spec has nan='reject'",
        ),
    ],
)
def test_refused_inputs_name_the_problem(X: np.ndarray, spec: PoolSpec, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        forward(X, spec)


def test_x_must_be_an_ndarray() -> None:
    with pytest.raises(TensorError, match=r"X must be a numpy\.ndarray, got list"):
        forward([[[[1.0]]]], PoolSpec(pool_size=1))  # type: ignore[arg-type]


def test_refused_gradients_name_the_problem() -> None:
    A, state = forward(np.zeros((1, 4, 4, 2), np.float32), PoolSpec())
    with pytest.raises(ShapeMismatchError, match=r"dA has shape \(1, 2, 2\) but A has shape"):
        backward(state, np.zeros((1, 2, 2)))
    with pytest.raises(TensorError, match=r"dA dtype bool is not a real number type"):
        backward(state, np.zeros(A.shape, bool))
    with pytest.raises(TensorError, match=r"dA dtype complex128 is not a real number type"):
        backward(state, np.zeros(A.shape, complex))


@pytest.mark.parametrize("mode", ["max", "min", "avg"])
def test_read_only_fortran_strided_and_big_endian_inputs(mode: str) -> None:
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3, 10, 12, 4)).astype(np.float32)
    spec = PoolSpec(mode=mode, pool_size=3, strides=2, padding="same")  # type: ignore[arg-type]
    expected_A, expected_state = forward(base, spec)
    dA = rng.standard_normal(expected_A.shape).astype(np.float32)
    expected_dX = backward(expected_state, dA)

    read_only = base.copy()
    read_only.flags.writeable = False
    strided = np.repeat(base, 2, axis=3)[..., ::2]
    variants = [read_only, np.asfortranarray(base), strided, base.astype(">f4")]
    for X in variants:
        before = X.copy()
        A, state = forward(X, spec)
        assert A.flags.c_contiguous
        assert A.dtype == np.float32
        np.testing.assert_array_equal(A, expected_A)
        np.testing.assert_array_equal(backward(state, dA), expected_dX)
        np.testing.assert_array_equal(X, before)


def test_dA_is_cast_to_x_dtype_and_never_written() -> None:
    X = np.arange(16, dtype=np.float16).reshape(1, 4, 4, 1)
    A, state = forward(X, PoolSpec(mode="avg"))
    dA = np.full(A.shape, 4, dtype=np.int64)
    dA.flags.writeable = False
    dX = backward(state, dA)
    assert dX.dtype == np.float16
    assert dX.ravel().tolist() == [1.0] * 16
    dX64 = backward(state, np.full(A.shape, 1e6))  # 1e6 overflows float16: inf / 4 = inf
    assert np.isinf(dX64).all()


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((6, 40, 40, 8), {}),
        ((6, 40, 41, 8), {"mode": "min", "pool_size": 3, "strides": 2, "ties": "first"}),
        ((1, 203, 200, 2), {"padding": "same", "ties": "split"}),
        ((1, 200, 199, 3), {"mode": "avg", "pool_size": 3, "padding": [(1, 1), (2, 0)]}),
        (
            (1, 5, 120, 130),
            {"layout": "channels_first", "mode": "avg", "pool_size": 3, "strides": 1},
        ),
        # Batch cuts fall on whole bytes of the state planes: 4 x 29**3 outputs per sample.
        ((5, 4, 30, 30, 30), {"pool_size": [2, 2, 2], "layout": "channels_first", "strides": 1}),
        # One sample, overlapping windows: cut along the channels.
        ((1, 8, 101, 100), {"pool_size": 3, "strides": 1, "layout": "channels_first"}),
        # Rows between windows (stride 3 > pool 2) while the other dim overlaps.
        ((1, 200, 199, 3), {"pool_size": [2, 3], "strides": [3, 1]}),
        ((1, 101, 60, 2), {"pool_size": [2, 2], "strides": [3, 1], "padding": "same"}),
    ],
)
@pytest.mark.parametrize("kernels", ["numpy", "compiled"])
def test_threaded_chunks_equal_one_thread(
    shape: tuple[int, ...], kwargs: dict[str, object], kernels: str
) -> None:
    rng = np.random.default_rng(9)
    X = rng.integers(-2, 3, shape).astype(np.float32)
    X.flat[::97] = np.nan
    spec = PoolSpec(**kwargs)  # type: ignore[arg-type]
    one = EngineOptions(threads=1, kernels=kernels, piece_bytes=1 << 62)  # type: ignore[arg-type]
    A1, state1 = forward(X, spec, options=one)
    dA = rng.integers(-3, 4, A1.shape).astype(np.float32)
    dX1 = backward(state1, dA, options=one)
    three = dataclasses.replace(one, threads=3, piece_bytes=4000, parallel_min_elements=1)
    forward_report, backward_report = RunReport(), RunReport()
    A3, state3 = forward(X, spec, options=three, report=forward_report)
    dX3 = backward(state3, dA, options=three, report=backward_report)
    # The call really was cut and spread over threads, both ways.
    for report in (forward_report, backward_report):
        assert report.chunks > 1
        assert report.threads == min(3, report.chunks)
    np.testing.assert_array_equal(A3, A1)
    assert state3.to_bytes() == state1.to_bytes()
    assert dX3.tobytes() == dX1.tobytes()


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((1, 200, 199, 3), {"pool_size": [2, 3], "strides": [3, 1]}),
        ((1, 200, 199, 3), {"pool_size": [2, 3], "strides": [5, 1], "padding": "same"}),
        ((1, 101, 60, 2), {"pool_size": [3, 2], "strides": [4, 2], "padding": [(2, 1), (0, 0)]}),
        ((7, 30, 30, 4), {"pool_size": 3, "strides": 1}),
        ((1, 12, 33, 17), {"layout": "channels_first", "pool_size": 3, "strides": 1}),
    ],
)
def test_chunks_partition_the_input(shape: tuple[int, ...], kwargs: dict[str, object]) -> None:
    # Every input element in exactly one chunk: a gap is never written by backward (dX starts
    # as np.empty where windows overlap), an overlap would be written twice.
    spec = PoolSpec(**kwargs)  # type: ignore[arg-type]
    plan = make_plan(spec, shape)
    options = EngineOptions(threads=3, piece_bytes=4000, parallel_min_elements=1)
    chunks = engine.parallel.split(spec, plan, 4, options)
    assert len(chunks) > 1
    cover = np.zeros(shape, np.int64)
    for chunk in chunks:
        cover[chunk.input_index] += 1
    assert cover.min() == 1
    assert cover.max() == 1


def test_worker_threads_run_under_the_callers_error_state() -> None:
    # forward/backward silence inf - inf once, on the calling thread; chunks on worker threads
    # must see the same state (np.errstate is per thread), or they would warn.
    shape = (4, 8, 8, 2)
    spec = PoolSpec()
    options = EngineOptions(threads=2, piece_bytes=512, parallel_min_elements=1)
    chunks = engine.parallel.split(spec, make_plan(spec, shape), 4, options)
    caller = threading.get_ident()

    def work(chunk: engine.parallel.Chunk) -> None:
        if threading.get_ident() != caller:
            np.add(np.full(2, np.inf), np.full(2, -np.inf))

    assert len(chunks) > 1
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        engine.parallel.run_chunks(work, chunks, options)


def test_one_thread_one_piece_is_one_chunk_of_the_call_plan() -> None:
    spec = PoolSpec(pool_size=3, strides=1)
    plan = make_plan(spec, (2, 9, 9, 3))
    for options in (EngineOptions(threads=1), EngineOptions(threads=2)):
        (chunk,) = engine.parallel.split(spec, plan, 8, options)
        assert chunk.plan is plan
        assert (chunk.byte_start, chunk.byte_stop) == (0, -(-2 * 7 * 7 * 3 // 8))


@pytest.mark.parametrize("field", ["threads", "piece_bytes", "parallel_min_elements"])
@pytest.mark.parametrize("value", [0, -1, True, 2.0])
def test_options_refuse_what_is_not_a_positive_int(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"EngineOptions\.{field} must be a positive int, got"):
        EngineOptions(**{field: value})  # type: ignore[arg-type]


def test_options_refuse_an_unknown_kernel_set() -> None:
    with pytest.raises(ValueError, match=r"EngineOptions\.kernels must be one of 'numpy', "):
        EngineOptions(kernels="fortran")  # type: ignore[arg-type]


def test_the_engine_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The thread count is an argument: a variable the service once passed this way is moot.
    monkeypatch.setenv("POOLGRAD_ENGINE_THREADS", "not a number")
    X = np.random.default_rng(3).standard_normal((8, 64, 64, 8)).astype(np.float32)
    report = RunReport()
    forward(X, PoolSpec(), options=EngineOptions(threads=2), report=report)
    assert report.threads == 2
