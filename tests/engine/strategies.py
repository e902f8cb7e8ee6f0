"""Hypothesis strategies for pooling specs and inputs (shared by the engine tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from engine import PoolSpec

DTYPES = (np.float16, np.float32, np.float64)
SPECIAL_VALUES = (np.nan, np.inf, -np.inf, -0.0, 0.0)


@dataclass(frozen=True)
class Case:
    spec: PoolSpec
    X: np.ndarray
    dA_seed: int


@st.composite
def pool_cases(draw: st.DrawFn, *, max_ndim: int = 3, allow_nan: bool = True) -> Case:
    """A spec and an X that fits it: 1-3 spatial dims, stride below, equal to and above the
    pool size, all paddings, both layouts; values either a small-integer grid (ties galore) or
    floats sprinkled with NaN, +-inf and -0.0."""
    ndim = draw(st.integers(1, max_ndim))
    pool = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    strides = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    padding_kind = draw(st.sampled_from(["valid", "same", "explicit"]))
    padding: object = padding_kind
    if padding_kind == "explicit":
        padding = [(draw(st.integers(0, p - 1)), draw(st.integers(0, p - 1))) for p in pool]
    spec = PoolSpec(
        mode=draw(st.sampled_from(["max", "min", "avg"])),
        pool_size=pool,
        strides=strides,
        padding=padding,  # type: ignore[arg-type]
        count_include_pad=draw(st.booleans()),
        layout=draw(st.sampled_from(["channels_last", "channels_first"])),
        ties=draw(st.sampled_from(["all", "first", "split"])),
    )
    # Keep the total size small: the reference loops in Python.
    top = {1: 9, 2: 6, 3: 4}[ndim]
    if padding_kind == "explicit":
        spatial = [
            draw(st.integers(max(1, p - b - a), top))
            for p, (b, a) in zip(pool, padding, strict=True)  # type: ignore[arg-type]
        ]
    elif padding_kind == "valid":
        spatial = [draw(st.integers(p, max(p, top))) for p in pool]
    else:
        spatial = [draw(st.integers(1, top)) for _ in pool]
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    shape = (
        (batch, *spatial, channels)
        if spec.layout == "channels_last"
        else (batch, channels, *spatial)
    )
    dtype = draw(st.sampled_from(DTYPES))
    size = int(np.prod(shape))
    if draw(st.booleans()):
        values = draw(st.lists(st.integers(-2, 2), min_size=size, max_size=size))
        X = np.array(values, dtype=dtype).reshape(shape)
    else:
        X = np.array(
            draw(st.lists(st.floats(-100, 100, width=16), min_size=size, max_size=size)),
            dtype=dtype,
        ).reshape(shape)
        specials = SPECIAL_VALUES if allow_nan else SPECIAL_VALUES[1:]
        for _ in range(draw(st.integers(0, 3))):
            X.flat[draw(st.integers(0, size - 1))] = draw(st.sampled_from(specials))
    return Case(spec, X, draw(st.integers(0, 2**32 - 1)))


UPSTREAM_SPECIALS = (np.nan, np.inf, -np.inf, -0.0)


def upstream(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    """A small-integer upstream gradient (sums of it are exact in every float dtype); for odd
    seeds, a few entries are NaN, +-inf or -0.0, which must reach the elements that win their
    window and no other (a select, never a multiply by a 0/1 mask)."""
    rng = np.random.default_rng(seed)
    dA = rng.integers(-4, 5, shape).astype(dtype)
    if seed % 2:
        for _ in range(int(rng.integers(1, 4))):
            dA.flat[int(rng.integers(0, dA.size))] = rng.choice(UPSTREAM_SPECIALS)
    return dA


def tied_with_specials(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """-1, 0 and 1 (ties in nearly every window) with NaN, inf and -inf at fixed strides."""
    rng = np.random.default_rng(len(shape) + shape[-1])
    X = rng.integers(-1, 2, shape).astype(dtype)
    X.flat[::17] = np.nan
    X.flat[5::23] = np.inf
    X.flat[7::29] = -np.inf
    return X


#: (shape, spec keywords) for :func:`tied_with_specials` inputs: disjoint and overlapping
#: windows, padding, both layouts, 1 to 3 spatial dims, batches that split.
TIED_GEOMETRIES: list[tuple[tuple[int, ...], dict[str, object]]] = [
    ((4, 16, 16, 8), {"pool_size": 2}),
    ((4, 17, 15, 8), {"pool_size": 3, "strides": 2}),
    ((2, 12, 12, 5), {"pool_size": 3, "strides": 1, "padding": "same", "mode": "min"}),
    ((2, 5, 12, 12), {"pool_size": 3, "strides": 2, "layout": "channels_first"}),
    ((2, 9, 3), {"pool_size": [4], "strides": [1], "padding": [(2, 1)]}),
    ((2, 5, 6, 7, 3), {"pool_size": [2, 3, 2], "strides": [1, 2, 2], "padding": "same"}),
]
