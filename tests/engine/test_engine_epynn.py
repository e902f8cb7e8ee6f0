"""The engine with default ties/NaN/padding against EpyNN's own Pooling layer (the reference).

EpyNN is GPL-3.0: it is driven here as a black box, never copied. Its layer takes
``(m, h, w, d)`` input, honours ``strides`` only as a tuple (an int is silently replaced by the
pool size), and sums the masked upstream gradient over overlapping windows.
"""

from __future__ import annotations

import numpy as np
import pytest

# EpyNN 1.2.13 still names the warning class NumPy 2 moved.
np.VisibleDeprecationWarning = np.exceptions.VisibleDeprecationWarning  # type: ignore[attr-defined]
from epynn.pooling.models import Pooling  # noqa: E402

from engine import PoolSpec, backward, forward  # noqa: E402

GEOMETRIES = [
    # (input shape, pool_size, strides, overlapping)
    ((3, 8, 8, 4), (2, 2), (2, 2), False),
    ((2, 9, 7, 3), (2, 2), (2, 2), False),  # uncovered remainder rows and columns
    ((2, 9, 11, 2), (3, 2), (3, 2), False),
    ((2, 10, 10, 3), (2, 3), (3, 4), False),  # stride above pool size: gaps
    ((2, 9, 9, 3), (3, 3), (2, 2), True),
    ((2, 8, 10, 2), (3, 2), (1, 1), True),
    ((1, 7, 6, 5), (2, 3), (1, 2), True),
]


def _epynn(
    X: np.ndarray,
    dA_seed: int,
    pool_size: tuple[int, int],
    strides: tuple[int, int],
    reduce: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layer = Pooling(pool_size=pool_size, strides=strides, pool=reduce)
    A = layer.forward(X)
    dA = np.random.default_rng(dA_seed).standard_normal(A.shape).astype(X.dtype)
    return A, dA, layer.backward(dA)


def _inputs(kind: str, shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "ties":
        return rng.integers(0, 3, shape).astype(dtype)
    X = rng.integers(0, 3, shape).astype(dtype)
    X.flat[rng.choice(X.size, size=max(1, X.size // 20), replace=False)] = np.nan
    return X


@pytest.mark.parametrize("kind", ["random", "ties", "nan"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(("shape", "pool_size", "strides", "overlapping"), GEOMETRIES)
def test_matches_epynn(
    kind: str,
    dtype: type,
    mode: str,
    shape: tuple[int, ...],
    pool_size: tuple[int, int],
    strides: tuple[int, int],
    overlapping: bool,
) -> None:
    X = _inputs(kind, shape, dtype, seed=len(shape) * 1000 + sum(pool_size) + sum(strides))
    expected_A, dA, expected_dX = _epynn(
        X.copy(), 7, pool_size, strides, np.max if mode == "max" else np.min
    )
    A, state = forward(X, PoolSpec(mode=mode, pool_size=pool_size, strides=strides))  # type: ignore[arg-type]
    dX = backward(state, dA)
    assert A.dtype == dX.dtype == dtype
    np.testing.assert_array_equal(A, expected_A)  # NaN positions must agree as well
    if overlapping:
        np.testing.assert_allclose(
            dX,
            expected_dX,
            rtol=1e-5 if dtype == np.float32 else 1e-12,
            atol=1e-6 if dtype == np.float32 else 1e-13,
        )
    else:
        np.testing.assert_array_equal(dX, expected_dX)


def test_int_pool_size_is_a_square_window_as_in_epynn() -> None:
    X = np.random.default_rng(3).standard_normal((2, 9, 9, 2))
    expected_A, dA, expected_dX = _epynn(X.copy(), 1, 3, None, np.max)  # type: ignore[arg-type]
    A, state = forward(X, PoolSpec(pool_size=3))
    np.testing.assert_array_equal(A, expected_A)
    np.testing.assert_array_equal(backward(state, dA), expected_dX)
