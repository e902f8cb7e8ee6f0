"""The engine, with each kernel set, against the naive loop reference, on hypothesis-generated
specs and inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from pool_reference import reference
from strategies import Case, pool_cases, upstream

from engine import PoolSpec, backward, forward
from engine.options import EngineOptions, RunReport

TOLERANCE = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}


def _close(actual: np.ndarray, expected: np.ndarray, dtype: type) -> bool:
    # Values and gradients stay within +-100 here, so cancellation errors scale with that.
    tolerance = TOLERANCE[dtype]
    return bool(np.allclose(actual, expected, rtol=tolerance, atol=100 * tolerance, equal_nan=True))


@pytest.mark.parametrize("kernels", ["numpy", "compiled"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pool_cases())
def test_forward_and_backward_match_the_naive_reference(kernels: str, case: Case) -> None:
    spec, X = case.spec, case.X
    dtype = X.dtype.type
    options = EngineOptions(kernels=kernels)  # type: ignore[arg-type]
    report = RunReport()
    A, state = forward(X, spec, options=options)
    dA = upstream(A.shape, dtype, case.dA_seed)
    dX = backward(state, dA, options=options, report=report)
    # avg runs on NumPy whatever the choice.
    assert report.kernels == (kernels if spec.mode != "avg" else "numpy")
    expected_A, expected_dX = reference(X, spec, dA)
    assert expected_dX is not None
    assert A.shape == expected_A.shape == state.output_shape
    assert A.dtype == dX.dtype == X.dtype
    assert dX.shape == X.shape
    if spec.mode == "avg":
        assert _close(A, expected_A, dtype)
        assert _close(dX, expected_dX, dtype)
    else:
        # max/min pick an element: exact. dA is a small-integer grid, so sums are exact too,
        # except for "split" shares; its NaN and inf reach winners only.
        assert np.array_equal(A, expected_A, equal_nan=True)
        if spec.ties == "split":
            assert _close(dX, expected_dX, dtype)
        else:
            assert np.array_equal(dX, expected_dX, equal_nan=True)


def _within_one_ulp(actual: np.ndarray, expected: np.ndarray) -> bool:
    gap = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return bool(np.all(gap <= np.spacing(np.abs(expected)).astype(np.float64)))


def _summed_in_float16(spec: PoolSpec, X: np.ndarray, dA: np.ndarray, output: str) -> np.ndarray:
    """A (4x4 avg) or dX (3x3 stride 1, valid) as an engine summing float16 in float16 would."""
    if output == "A":
        total = np.zeros(dA.shape, np.float16)
        for row, col in np.ndindex(4, 4):
            total += X[:, row::4, col::4]
        return (total / np.float16(16)).astype(np.float16)
    share = dA / np.float16(9) if spec.mode == "avg" else dA
    dX = np.zeros(X.shape, np.float16)
    for row, col in np.ndindex(3, 3):
        dX[:, row : row + 10, col : col + 10] += share.astype(np.float16)
    return dX


FLOAT16_CASES = [
    pytest.param(PoolSpec(mode="avg", pool_size=4), "A", id="avg-forward-4x4"),
    pytest.param(PoolSpec(mode="avg", pool_size=3, strides=1), "dX", id="avg-backward-overlap"),
    pytest.param(PoolSpec(mode="max", pool_size=3, strides=1), "dX", id="max-backward-all-ties"),
    pytest.param(
        PoolSpec(mode="min", pool_size=3, strides=1, padding="same"), "dX", id="min-same-ties"
    ),
]


@pytest.mark.parametrize("kernels", ["numpy", "compiled"])
@pytest.mark.parametrize(("spec", "output"), FLOAT16_CASES)
def test_float16_accumulates_wide_to_within_one_ulp_of_the_reference(
    spec: PoolSpec, output: str, kernels: str
) -> None:
    # Values of 512 to 1024 are float16 multiples of 0.5 and their sums of 9 or 16 reach the
    # thousands, where float16 steps by 8: summing in float16 rounds at every step.
    rng = np.random.default_rng(16)
    shape = (2, 12, 12, 3)
    # max/min on a constant X: every window ties, so each element sums up to 9 upstream values.
    X = (
        np.full(shape, 7, np.float16)
        if spec.mode != "avg"
        else (rng.integers(1024, 2048, shape) / 2).astype(np.float16)
    )
    options = EngineOptions(kernels=kernels)  # type: ignore[arg-type]
    A, state = forward(X, spec, options=options)
    dA = (rng.integers(1024, 2048, A.shape) / 2).astype(np.float16)
    dX = backward(state, dA, options=options)
    expected_A, expected_dX = reference(X, spec, dA)
    assert expected_dX is not None
    actual, expected = (A, expected_A) if output == "A" else (dX, expected_dX)
    assert actual.dtype == np.float16
    assert _within_one_ulp(actual, expected)
    # The fixture can tell: the same sums taken in float16 miss by more than one ulp.
    if spec.padding == "valid":
        assert not _within_one_ulp(_summed_in_float16(spec, X, dA, output), expected)
