"""The engine against the naive loop reference, on hypothesis-generated specs and inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from pool_reference import reference
from strategies import Case, pool_cases, upstream

from engine import backward, forward

TOLERANCE = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}


def _close(actual: np.ndarray, expected: np.ndarray, dtype: type) -> bool:
    # Values and gradients stay within +-100 here, so cancellation errors scale with that.
    tolerance = TOLERANCE[dtype]
    return bool(np.allclose(actual, expected, rtol=tolerance, atol=100 * tolerance, equal_nan=True))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_cases())
def test_forward_and_backward_match_the_naive_reference(case: Case) -> None:
    spec, X = case.spec, case.X
    dtype = X.dtype.type
    A, state = forward(X, spec)
    dA = upstream(A.shape, dtype, case.dA_seed)
    dX = backward(state, dA)
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
        # except for "split" shares.
        assert np.array_equal(A, expected_A, equal_nan=True)
        if spec.ties == "split":
            assert _close(dX, expected_dX, dtype)
        else:
            assert np.array_equal(dX, expected_dX)
