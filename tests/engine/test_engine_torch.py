"""The engine against PyTorch CPU autograd: ties="first", both layouts, padding, 1-3 dims,
avg with count_include_pad both ways."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import PoolSpec, backward, forward

MAX_POOL: dict[int, Callable[..., torch.Tensor]] = {
    1: F.max_pool1d,
    2: F.max_pool2d,
    3: F.max_pool3d,
}
AVG_POOL: dict[int, Callable[..., torch.Tensor]] = {
    1: F.avg_pool1d,
    2: F.avg_pool2d,
    3: F.avg_pool3d,
}

CASES = [
    # (spatial shape, pool_size, strides, symmetric padding per dim)
    ((11,), (3,), (2,), (1,)),
    ((8,), (2,), (2,), (0,)),
    ((9, 7), (2, 2), (2, 2), (0, 0)),
    ((9, 10), (3, 3), (2, 2), (1, 1)),
    ((8, 9), (3, 2), (1, 2), (1, 0)),
    ((7, 8), (2, 3), (3, 1), (1, 1)),
    ((5, 6, 7), (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ((6, 5, 7), (3, 2, 3), (2, 1, 2), (1, 1, 0)),
]


def _torch_grad(
    X: np.ndarray, dA_seed: int, pool: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = torch.tensor(X, requires_grad=True)
    a = pool(x)
    dA = np.random.default_rng(dA_seed).integers(-4, 5, tuple(a.shape)).astype(X.dtype)
    a.backward(torch.tensor(dA))
    assert x.grad is not None
    return a.detach().numpy(), dA, x.grad.numpy()


def _to_layout(array: np.ndarray, layout: str) -> np.ndarray:
    # torch is channels_first; channels_last moves the channel axis to the end.
    return np.ascontiguousarray(np.moveaxis(array, 1, -1)) if layout == "channels_last" else array


def _from_layout(array: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(array, -1, 1) if layout == "channels_last" else array


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("values", ["random", "ties"])
@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(("spatial", "pool_size", "strides", "pads"), CASES)
def test_max_min_ties_first_match_torch(
    layout: str,
    values: str,
    mode: str,
    spatial: tuple[int, ...],
    pool_size: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
) -> None:
    rng = np.random.default_rng(len(spatial) * 100 + sum(pool_size))
    shape = (2, 3, *spatial)
    X = (rng.standard_normal(shape) if values == "random" else rng.integers(0, 3, shape)).astype(
        np.float32
    )
    sign = 1 if mode == "max" else -1
    pool = MAX_POOL[len(spatial)]
    # torch has no min pool: min(X) = -max(-X), winners included.
    expected_A, dA, expected_dX = _torch_grad(
        sign * X, 5, lambda x: pool(x, pool_size, strides, pads)
    )
    spec = PoolSpec(
        mode=mode,  # type: ignore[arg-type]
        pool_size=pool_size,
        strides=strides,
        padding=[(p, p) for p in pads],
        layout=layout,  # type: ignore[arg-type]
        ties="first",
    )
    A, state = forward(_to_layout(X, layout), spec)
    dX = backward(state, _to_layout(sign * dA, layout))
    np.testing.assert_array_equal(_from_layout(A, layout), sign * expected_A)
    np.testing.assert_array_equal(_from_layout(dX, layout), sign * expected_dX)


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("spatial", "pool_size", "strides", "pads"), CASES)
def test_avg_matches_torch(
    count_include_pad: bool,
    layout: str,
    dtype: type,
    spatial: tuple[int, ...],
    pool_size: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
) -> None:
    X = np.random.default_rng(sum(spatial)).standard_normal((2, 3, *spatial)).astype(dtype)
    pool = AVG_POOL[len(spatial)]
    expected_A, dA, expected_dX = _torch_grad(
        X,
        9,
        lambda x: pool(x, pool_size, strides, pads, count_include_pad=count_include_pad),
    )
    spec = PoolSpec(
        mode="avg",
        pool_size=pool_size,
        strides=strides,
        padding=[(p, p) for p in pads],
        layout=layout,  # type: ignore[arg-type]
        count_include_pad=count_include_pad,
    )
    A, state = forward(_to_layout(X, layout), spec)
    dX = backward(state, _to_layout(dA, layout))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(_from_layout(A, layout), expected_A, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(_from_layout(dX, layout), expected_dX, rtol=rtol, atol=rtol)
