"""``engine.gradient`` (forward and backward in one call) against ``forward`` then ``backward``,
its oracle: bit for bit on every mode, tie rule, padding, NaN case, dtype, layout and spatial
rank, on both kernel sets, in one chunk and split; the same refusals with the same messages."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TIED_GEOMETRIES, Case, pool_cases, tied_with_specials, upstream

from engine import PoolSpec, RunReport, ShapeMismatchError, TensorError, backward, forward, gradient
from engine.options import EngineOptions

KERNELS = ("numpy", "compiled")
#: One chunk (one thread, one piece), and the same calls cut into many chunks over 2 threads.
ONE_CHUNK = EngineOptions(threads=1)
SPLIT = EngineOptions(threads=2, parallel_min_elements=1, piece_bytes=64)


def _assert_fused_equals_two_calls(X: Any, dA: Any, spec: PoolSpec, options: EngineOptions) -> None:
    two_calls, fused = RunReport(), RunReport()
    A, state = forward(X, spec, options=options, report=two_calls)
    chunks = two_calls.chunks
    dX = backward(state, dA, options=options, report=two_calls)
    A_fused, dX_fused = gradient(X, dA, spec, options=options, report=fused)
    # Bytes, not values: the sign of a zero max and NaN payloads must match too.
    assert A_fused.dtype == A.dtype
    assert A_fused.shape == A.shape
    assert A_fused.tobytes() == A.tobytes()
    assert dX_fused.dtype == dX.dtype
    assert dX_fused.shape == dX.shape
    assert dX_fused.tobytes() == dX.tobytes()
    assert A_fused.flags.c_contiguous
    assert dX_fused.flags.c_contiguous
    # The report tells what ran for both halves: the same kernels on the same chunks.
    assert (fused.kernels, fused.chunks, fused.backward_path) == (
        two_calls.kernels,
        chunks,
        two_calls.backward_path,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=pool_cases(),
    kernels=st.sampled_from(KERNELS),
    options=st.sampled_from([ONE_CHUNK, SPLIT]),
)
def test_gradient_equals_forward_then_backward_bit_for_bit(
    case: Case, kernels: str, options: EngineOptions
) -> None:
    options = dataclasses.replace(options, kernels=kernels)  # type: ignore[arg-type]
    # An odd seed puts NaN / inf / -0.0 in dA.
    dA = upstream(forward(case.X, case.spec)[0].shape, case.X.dtype.type, case.dA_seed)
    _assert_fused_equals_two_calls(case.X, dA, case.spec, options)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("options", [ONE_CHUNK, SPLIT], ids=["one-chunk", "split"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ties", ["all", "first", "split"])
@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        *TIED_GEOMETRIES,
        ((1, 8, 8, 1), {"pool_size": 2}),
        ((2, 9, 10, 3), {"mode": "avg", "pool_size": 3, "strides": 2, "padding": "same"}),
        ((2, 9, 10, 3), {"mode": "avg", "pool_size": 2, "count_include_pad": True,
                         "padding": "same"}),
    ],
)  # fmt: skip
def test_gradient_on_ties_nan_and_inf(
    shape: tuple[int, ...],
    kwargs: dict[str, object],
    ties: str,
    dtype: type,
    options: EngineOptions,
    kernels: str,
) -> None:
    X = tied_with_specials(shape, dtype)
    spec = PoolSpec(ties=ties, **kwargs)  # type: ignore[arg-type]
    options = dataclasses.replace(options, kernels=kernels)  # type: ignore[arg-type]
    A_shape = forward(X, spec)[0].shape
    _assert_fused_equals_two_calls(X, upstream(A_shape, dtype, 3), spec, options)


@pytest.mark.parametrize("kernels", KERNELS)
def test_gradient_on_odd_inputs_and_upstreams(kernels: str) -> None:
    """Read-only, Fortran-order, strided and big-endian X; int, float64 (overflowing
    float16) and read-only dA: what forward and backward accept, gradient takes the same way,
    writing neither."""
    options = EngineOptions(threads=1, kernels=kernels)  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3, 10, 12, 4)).astype(np.float16)
    read_only = base.copy()
    read_only.flags.writeable = False
    strided = np.repeat(base, 2, axis=3)[..., ::2]
    spec = PoolSpec(pool_size=3, strides=2, padding="same")
    A_shape = forward(base, spec)[0].shape
    big = np.full(A_shape, 1e6)  # overflows float16: inf reaches the winners only
    frozen = rng.integers(-3, 4, A_shape)
    frozen.flags.writeable = False
    for X in (read_only, np.asfortranarray(base), strided, base.astype(">f2")):
        for dA in (big, frozen):
            before_X, before_dA = X.copy(), dA.copy()
            _assert_fused_equals_two_calls(X, dA, spec, options)
            np.testing.assert_array_equal(X, before_X)
            np.testing.assert_array_equal(dA, before_dA)


X_OK = np.ones((1, 8, 8, 1), np.float32)
DA_OK = np.ones((1, 4, 4, 1), np.float32)
X_NAN = X_OK.copy()
X_NAN[0, 5, 2, 0] = np.nan


@pytest.mark.parametrize(
    ("X", "dA", "spec"),
    [
        pytest.param([[[[1.0]]]], DA_OK, PoolSpec(), id="X-not-an-array"),
        pytest.param(X_OK.astype(np.int32), DA_OK, PoolSpec(), id="X-int"),
        pytest.param(X_OK[0], DA_OK, PoolSpec(), id="X-rank"),
        pytest.param(np.ones((1, 1, 8, 1), np.float32), DA_OK, PoolSpec(), id="X-small"),
        pytest.param(X_NAN, DA_OK, PoolSpec(nan="reject"), id="X-nan-reject"),
        pytest.param(X_NAN, DA_OK[:, :3], PoolSpec(nan="reject"), id="X-and-dA-bad"),
        pytest.param(X_OK, DA_OK.tolist(), PoolSpec(), id="dA-not-an-array"),
        pytest.param(X_OK, DA_OK[:, :3], PoolSpec(), id="dA-shape"),
        pytest.param(X_OK, DA_OK[..., 0], PoolSpec(), id="dA-rank"),
        pytest.param(X_OK, DA_OK.astype(np.complex64), PoolSpec(), id="dA-complex"),
        pytest.param(X_OK, DA_OK.astype(bool), PoolSpec(mode="avg"), id="dA-bool"),
        pytest.param(X_OK, DA_OK, {"mode": "max"}, id="spec-not-a-PoolSpec"),
    ],
)
@pytest.mark.parametrize("options", [ONE_CHUNK, SPLIT], ids=["one-chunk", "split"])
def test_gradient_refuses_what_forward_then_backward_refuse(
    X: Any, dA: Any, spec: Any, options: EngineOptions
) -> None:
    with pytest.raises((TensorError, ShapeMismatchError, TypeError)) as two_calls:
        _forward_then_backward(X, dA, spec, options)
    with pytest.raises(two_calls.type, match=f"^{re.escape(str(two_calls.value))}$"):
        gradient(X, dA, spec, options=options)


def test_the_refusals_above_name_their_values() -> None:
    """The pinned messages (the test above only checks that both paths agree)."""
    with pytest.raises(ShapeMismatchError, match=r"dA has shape \(1, 3, 4, 1\) but A has shape "):
        gradient(X_OK, DA_OK[:, :3], PoolSpec())
    with pytest.raises(TensorError, match=r"complex64 is not a real number type; use float32$"):
        gradient(X_OK.astype(">f4"), DA_OK.astype(np.complex64), PoolSpec())
    with pytest.raises(TensorError, match=r"1 NaN value\(s\), first at index \(0, 5, 2, 0\)"):
        gradient(X_NAN, DA_OK[:, :3], PoolSpec(nan="reject"))


def _forward_then_backward(X: Any, dA: Any, spec: Any, options: EngineOptions) -> np.ndarray:
    _, state = forward(X, spec, options=options)
    return backward(state, dA, options=options)
