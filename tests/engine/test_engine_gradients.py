"""Gradients: finite differences, hand-written tie and NaN fixtures, algebraic invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import Case, pool_cases, upstream

from engine import PoolSpec, backward, forward

FD_SPECS = [
    PoolSpec(mode="avg", pool_size=(3, 3), strides=(2, 2), padding="same"),
    PoolSpec(
        mode="avg",
        pool_size=(3, 2),
        strides=(1, 1),
        padding=[(1, 1), (1, 0)],
        count_include_pad=True,
    ),
    PoolSpec(mode="avg", pool_size=(2,), strides=(3,), layout="channels_first"),
    PoolSpec(mode="max", pool_size=(3, 3), strides=(2, 2), padding="same"),
    PoolSpec(mode="max", pool_size=(2, 2, 2), strides=(1, 2, 1)),
    PoolSpec(mode="min", pool_size=(3, 2), strides=(1, 3), padding=[(2, 0), (1, 1)]),
    PoolSpec(mode="min", pool_size=(2,), strides=(1,), layout="channels_first"),
]


def _spread_input(spec: PoolSpec, seed: int) -> np.ndarray:
    # A permutation of well-separated values: no ties, and a step of 1e-6 changes no winner.
    spatial = {1: (7,), 2: (6, 5), 3: (4, 5, 4)}[spec.ndim]
    shape = (2, *spatial, 3) if spec.layout == "channels_last" else (2, 3, *spatial)
    rng = np.random.default_rng(seed)
    values = rng.permutation(int(np.prod(shape))).astype(np.float64) * 0.5 - 20.0
    return (values + rng.uniform(-0.1, 0.1, values.shape)).reshape(shape)


@pytest.mark.parametrize("spec", FD_SPECS, ids=lambda s: f"{s.mode}-{s.pool_size}-{s.padding}")
def test_backward_matches_central_finite_differences(spec: PoolSpec) -> None:
    X = _spread_input(spec, 11)
    A, state = forward(X, spec)
    dA = np.random.default_rng(12).standard_normal(A.shape)
    dX = backward(state, dA)
    step = 1e-6
    numeric = np.empty_like(X)
    for index in np.ndindex(X.shape):
        plus, minus = X.copy(), X.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (
            np.sum(dA * forward(plus, spec)[0]) - np.sum(dA * forward(minus, spec)[0])
        ) / (2 * step)
    np.testing.assert_allclose(dX, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("ties", "expected"),
    [("all", [1.0, 1.0, 0.0, 0.0]), ("first", [1.0, 0.0, 0.0, 0.0]), ("split", [0.5, 0.5, 0, 0])],
)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_tie_rules_on_the_issue_fixture(ties: str, expected: list[float], dtype: type) -> None:
    X = np.array([[2, 2], [1, 0]], dtype=dtype).reshape(1, 2, 2, 1)
    A, state = forward(X, PoolSpec(ties=ties))  # type: ignore[arg-type]
    dX = backward(state, np.ones_like(A))
    assert A.ravel().tolist() == [2.0]
    assert dX.dtype == dtype
    assert dX.ravel().tolist() == expected


@pytest.mark.parametrize("ties", ["all", "first", "split"])
def test_min_tie_rules_and_overlapping_windows_accumulate(ties: str) -> None:
    # 1-D windows [0, 0, 5] stride 1 pool 2: windows (0,0), (0,5). Element 1 wins both.
    X = np.array([0.0, 0.0, 5.0]).reshape(1, 3, 1)
    spec = PoolSpec(mode="min", pool_size=(2,), strides=(1,), ties=ties)  # type: ignore[arg-type]
    A, state = forward(X, spec)
    dX = backward(state, np.array([1.0, 10.0]).reshape(1, 2, 1))
    expected = {"all": [1, 11, 0], "first": [1, 10, 0], "split": [0.5, 10.5, 0]}[ties]
    assert A.ravel().tolist() == [0.0, 0.0]
    assert dX.ravel().tolist() == expected


@pytest.mark.parametrize("mode", ["max", "min", "avg"])
def test_nan_window_pools_to_nan_and_passes_no_gradient(mode: str) -> None:
    # Windows of size 2, stride 1 over [1, nan, 3, 4]: the first two hold the NaN.
    X = np.array([1.0, np.nan, 3.0, 4.0]).reshape(1, 4, 1)
    spec = PoolSpec(mode=mode, pool_size=(2,), strides=(1,))  # type: ignore[arg-type]
    A, state = forward(X, spec)
    dX = backward(state, np.full(A.shape, 2.0))
    last = {"max": 4.0, "min": 3.0, "avg": 3.5}[mode]
    assert np.isnan(A.ravel()[:2]).all()
    assert A.ravel()[2] == last
    expected = {"max": [0, 0, 0, 2], "min": [0, 0, 2, 0], "avg": [0, 0, 1, 1]}[mode]
    assert dX.ravel().tolist() == expected


def test_avg_nan_state_holds_one_bit_per_output_only_when_x_holds_nan() -> None:
    X = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    spec = PoolSpec(mode="avg")
    assert forward(X, spec)[1].nbytes == 0
    X[0, 0, 0, 0] = np.nan
    A, state = forward(X, spec)
    assert state.nbytes == (A.size + 7) // 8
    dX = backward(state, np.ones_like(A))
    assert dX[0, :2, :2, 0].tolist() == [[0, 0], [0, 0]]
    assert dX[0, 2:, 2:, 0].tolist() == np.full((6, 6), 0.25).tolist()


def test_avg_inf_minus_inf_is_nan_but_still_passes_gradient() -> None:
    # No NaN in X: the window is not a NaN window, its elements get dA / 2 as the true
    # gradient of a sum would give.
    X = np.array([np.inf, -np.inf, 1.0, 3.0]).reshape(1, 4, 1)
    A, state = forward(X, PoolSpec(mode="avg", pool_size=(2,)))
    assert np.isnan(A.ravel()[0])
    assert A.ravel()[1] == 2.0
    assert backward(state, np.ones_like(A)).ravel().tolist() == [0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("ties", ["all", "first", "split"])
def test_padding_never_ties_with_a_window_of_real_minus_infinity(ties: str) -> None:
    X = np.full((1, 2, 2, 1), -np.inf)
    spec = PoolSpec(pool_size=3, strides=1, padding=[(1, 1), (1, 1)], ties=ties)  # type: ignore[arg-type]
    A, state = forward(X, spec)
    dX = backward(state, np.ones_like(A))
    assert A.ravel().tolist() == [-np.inf] * 4
    # Four windows, each holding all four real elements; the gradient never reaches padding.
    expected = {"all": [4, 4, 4, 4], "first": [4, 0, 0, 0], "split": [1, 1, 1, 1]}[ties]
    assert dX.ravel().tolist() == expected


@settings(max_examples=150, deadline=None)
@given(pool_cases(allow_nan=False))
def test_backward_is_pure_and_repeatable(case: Case) -> None:
    A, state = forward(case.X, case.spec)
    dA = upstream(A.shape, case.X.dtype.type, case.dA_seed)
    dA_before, blob = dA.copy(), state.to_bytes()
    first, second = backward(state, dA), backward(state, dA)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(dA, dA_before)
    assert state.to_bytes() == blob


@pytest.mark.parametrize("spec", FD_SPECS, ids=lambda s: f"{s.mode}-{s.pool_size}-{s.padding}")
def test_inner_products_agree_without_ties(spec: PoolSpec) -> None:
    # Pooling is positively homogeneous: <dA, A> == <dX, X> when every window has one winner.
    X = _spread_input(spec, 5)
    A, state = forward(X, spec)
    dA = np.random.default_rng(6).standard_normal(A.shape)
    np.testing.assert_allclose(np.vdot(dA, A), np.vdot(backward(state, dA), X), rtol=1e-12)


@settings(max_examples=150, deadline=None)
@given(pool_cases())
def test_max_is_minus_min_of_minus_x_with_matching_gradients(case: Case) -> None:
    fields = case.spec.to_dict()
    fields["mode"] = "max"
    max_spec = PoolSpec.from_dict(fields)
    fields["mode"] = "min"
    min_spec = PoolSpec.from_dict(fields)
    A_max, max_state = forward(case.X, max_spec)
    A_min, min_state = forward(-case.X, min_spec)
    np.testing.assert_array_equal(A_max, -A_min)
    dA = upstream(A_max.shape, case.X.dtype.type, case.dA_seed)
    np.testing.assert_array_equal(backward(max_state, dA), -backward(min_state, -dA))
