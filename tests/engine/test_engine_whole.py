"""``engine.gradient``'s whole-call path (:class:`engine.compiled.WholeCall`): a call the
compiled kernels run as one chunk on the calling thread skips the split, on the tiny kernel
(forward and backward in one call) or on the row kernels. Bit for bit what the general path
returns (A's bytes included) and what the NumPy kernels return (dX's bytes), on every mode, tie
rule, layout, padding, NaN and inf case and dtype; taken exactly where it should be."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import TIED_GEOMETRIES, Case, pool_cases, tied_with_specials, upstream

from engine import (
    PoolSpec,
    PoolState,
    RunReport,
    TensorError,
    backward,
    compiled,
    forward,
    gradient,
    pooling,
)
from engine.geometry import make_plan
from engine.options import EngineOptions

pytestmark = pytest.mark.skipif(not compiled.available(), reason="needs Numba")

AUTO = EngineOptions(threads=1)
COMPILED = EngineOptions(threads=1, kernels="compiled")
NUMPY = EngineOptions(threads=1, kernels="numpy")


class _GeneralPathRan(AssertionError):
    pass


@pytest.fixture
def no_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the general path (its per-call :class:`pooling._Run`) fail."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _GeneralPathRan("the general path ran")

    monkeypatch.setattr(pooling, "_Run", refuse)


@pytest.fixture
def no_whole_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the whole-call paths fail."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the whole-call path ran")

    for name in ("whole_forward", "whole_backward", "whole_gradient"):
        monkeypatch.setattr(compiled, name, refuse)


def _general(X: np.ndarray, dA: np.ndarray, spec: PoolSpec, options: EngineOptions) -> Any:
    """What the general path returns: a report makes gradient take it."""
    report = RunReport()
    A, dX = gradient(X, dA, spec, options=options, report=report)
    assert report.chunks == 1
    return A, dX, report


def _assert_whole_path_agrees(
    X: np.ndarray, dA: np.ndarray, spec: PoolSpec, options: EngineOptions = AUTO
) -> None:
    A, dX, report = _general(X, dA, spec, options)
    assert report.kernels == "compiled"
    A_whole, dX_whole = gradient(X, dA, spec, options=options)
    for whole, general in ((A_whole, A), (dX_whole, dX)):
        assert whole.dtype == general.dtype
        assert whole.shape == general.shape
        assert whole.flags.c_contiguous
        # Bytes: the sign of a zero max and NaN payloads must match too.
        assert whole.tobytes() == general.tobytes()
    # forward and backward apart: their whole-call paths give the general paths' bytes too.
    A_forward, state = forward(X, spec, options=options)
    _, general_state = forward(X, spec, options=options, report=RunReport())
    assert A_forward.tobytes() == A.tobytes()
    assert state.to_bytes() == general_state.to_bytes()
    assert backward(state, dA, options=options).tobytes() == dX.tobytes()
    # And the oracle: NumPy's kernels (A up to the sign of a zero, dX to the byte).
    A_numpy, state = forward(X, spec, options=NUMPY)
    np.testing.assert_array_equal(A_whole, A_numpy)
    assert dX_whole.tobytes() == backward(state, dA, options=NUMPY).tobytes()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pool_cases())
@pytest.mark.filterwarnings("error")  # the whole-call path silences what it must, no more
def test_whole_path_equals_general_path_bit_for_bit(case: Case) -> None:
    spec = case.spec if case.spec.mode != "avg" else dataclasses.replace(case.spec, mode="min")
    dA = upstream(forward(case.X, spec)[0].shape, case.X.dtype.type, case.dA_seed)
    _assert_whole_path_agrees(case.X, dA, spec)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ties", ["all", "first", "split"])
@pytest.mark.parametrize(("shape", "kwargs"), TIED_GEOMETRIES)
@pytest.mark.filterwarnings("error")
def test_whole_path_on_ties_nan_and_inf(
    shape: tuple[int, ...], kwargs: dict[str, object], ties: str, dtype: type
) -> None:
    """Above :data:`~engine.compiled.TINY_ELEMENTS` (the row kernels) and cut down below it
    (the tiny kernel), with NaN, inf and -0.0 in X and dA."""
    spec = PoolSpec(ties=ties, **kwargs)  # type: ignore[arg-type]
    small = tuple(min(size, 2 if axis == 0 else 4) for axis, size in enumerate(shape))
    for X_shape in (shape, small):
        X = tied_with_specials(X_shape, dtype)
        call = compiled.whole_call(spec, X.shape, X.dtype)
        assert call is not None
        assert call.tiny == (X.size <= compiled.TINY_ELEMENTS and ties != "split")
        dA = upstream(forward(X, spec)[0].shape, dtype, 1)
        _assert_whole_path_agrees(X, dA, spec, COMPILED)


@pytest.mark.filterwarnings("error")
def test_float16_sums_that_overflow_give_inf_without_a_warning() -> None:
    X = np.full((1, 5, 5, 1), 1.0, np.float16)
    dA = np.full((1, 4, 4, 1), 60000.0, np.float16)
    spec = PoolSpec(pool_size=2, strides=1)  # overlapping: each inner element sums 4 windows
    _assert_whole_path_agrees(X, dA, spec)
    assert np.isinf(gradient(X, dA, spec)[1][0, 1, 1, 0])


@pytest.mark.usefixtures("no_general_path")
@pytest.mark.parametrize(
    ("shape", "spec"),
    [
        ((1, 8, 8, 1), PoolSpec(pool_size=2)),
        ((1, 8, 8, 1), PoolSpec(pool_size=3, strides=2, padding="same", ties="first")),
        ((2, 4, 4, 3), PoolSpec(pool_size=3, strides=2, mode="min")),
        ((2, 3, 6, 6), PoolSpec(pool_size=2, layout="channels_first", ties="split")),
        ((1, 64, 64, 8), PoolSpec(pool_size=2)),  # one thread: one chunk however large
    ],
)
@pytest.mark.parametrize(
    "options",
    [None, AUTO, COMPILED, EngineOptions(threads=2, parallel_min_elements=1 << 16)],
    ids=["default", "auto", "compiled", "below-the-parallel-threshold"],
)
def test_the_whole_path_is_taken_for_one_chunk_on_one_thread(
    shape: tuple[int, ...], spec: PoolSpec, options: EngineOptions | None
) -> None:
    X = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    dA = np.ones(make_plan(spec, shape).output_shape, np.float32)
    A, dX = gradient(X, dA, spec, options=options)
    assert A.shape == dA.shape
    assert dX.shape == X.shape
    A, state = forward(X, spec, options=options)
    assert backward(state, dA, options=options).tobytes() == dX.tobytes()
    # A state that went through bytes (its planes read-only) too.
    restored = PoolState.from_bytes(state.to_bytes())
    assert backward(restored, dA, options=options).tobytes() == dX.tobytes()


def _elsewhere(
    name: str,
    X_shape: tuple[int, ...] = (1, 8, 8, 1),
    spec: PoolSpec = PoolSpec(),  # noqa: B008 - frozen
    options: EngineOptions = AUTO,
    report: RunReport | None = None,
    X_dtype: str = "f4",
    dA_dtype: str = "f4",
) -> Any:
    """A call the general path must run: ones of ``X_shape``, dA of A's shape."""
    X = np.ones(X_shape, X_dtype)
    dA = np.ones(make_plan(spec, X_shape).output_shape, dA_dtype)
    return pytest.param(X, dA, spec, options, report, id=name)


@pytest.mark.usefixtures("no_whole_path")
@pytest.mark.parametrize(
    ("X", "dA", "spec", "options", "report"),
    [
        _elsewhere(
            "threads", (4, 64, 64, 8), options=EngineOptions(threads=2, parallel_min_elements=1)
        ),
        _elsewhere("pieces", (4, 8, 8, 2), options=EngineOptions(threads=1, piece_bytes=512)),
        _elsewhere("avg", spec=PoolSpec(mode="avg")),
        _elsewhere("numpy", options=NUMPY),
        _elsewhere("auto-picks-numpy", (1, 64, 64, 1)),
        _elsewhere("forced-phase-path", options=EngineOptions(threads=1, disjoint_path=False)),
        _elsewhere("report", report=RunReport()),
        _elsewhere("dA-to-cast", dA_dtype="f8"),
        _elsewhere("big-endian", X_dtype=">f4", dA_dtype=">f4"),
    ],
)
def test_the_general_path_runs_everything_else(
    X: np.ndarray, dA: np.ndarray, spec: PoolSpec, options: EngineOptions, report: Any
) -> None:
    A, dX = gradient(X, dA, spec, options=options, report=report)
    assert A.shape == dA.shape
    assert dX.shape == X.shape
    _, state = forward(X, spec, options=options, report=RunReport())
    assert backward(state, dA, options=options, report=report).shape == X.shape
    if dA.dtype == X.dtype:  # else only backward's own check sends it to the general path
        assert forward(X, spec, options=options, report=report)[0].shape == dA.shape


def test_the_whole_path_refuses_nan_as_the_general_path_does() -> None:
    X = np.ones((1, 8, 8, 1), np.float32)
    X[0, 5, 2, 0] = np.nan
    dA = np.ones((1, 4, 4, 1), np.float32)
    spec = PoolSpec(nan="reject")
    assert compiled.whole_call(spec, X.shape, X.dtype) is not None
    message = r"1 NaN value\(s\), first at index \(0, 5, 2, 0\)"
    with pytest.raises(TensorError, match=message):
        gradient(X, dA, spec, options=AUTO)
    with pytest.raises(TensorError, match=message):
        forward(X, spec, options=AUTO)


def test_odd_memory_orders_take_the_whole_path_unchanged(no_general_path: None) -> None:
    """Read-only, Fortran-order and strided X and dA: copied as the chunk kernels copy them,
    never written."""
    rng = np.random.default_rng(5)
    base = rng.integers(-2, 3, (2, 6, 6, 3)).astype(np.float32)
    spec = PoolSpec(pool_size=3, strides=2, padding="same")
    dA_base = upstream((2, 3, 3, 3), np.float32, 1)
    read_only = base.copy()
    read_only.flags.writeable = False
    strided = np.repeat(base, 2, axis=3)[..., ::2]
    expected = None
    for X in (base, read_only, np.asfortranarray(base), strided):
        for dA in (dA_base, np.asfortranarray(dA_base), np.repeat(dA_base, 2, axis=2)[:, :, ::2]):
            before = X.copy(), dA.copy()
            A, dX = gradient(X, dA, spec)
            expected = expected or (A.tobytes(), dX.tobytes())
            assert (A.tobytes(), dX.tobytes()) == expected
            assert before[0].tobytes() == X.tobytes()
            assert before[1].tobytes() == dA.tobytes()
