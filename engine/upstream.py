"""The upstream gradient as both kernel sets consume it: the accumulation dtype and the
``ties="split"`` shares, computed once here so the NumPy and compiled kernels agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["accumulate_dtype", "bits_dtype", "split_shares", "winner_counts"]

# dtype objects, not types: comparing a dtype with ``np.float16`` converts the type per call.
_FLOAT16, _FLOAT32 = np.dtype(np.float16), np.dtype(np.float32)
#: The signed int dtype of each float's width: its bits, for a bitwise select or copy.
_BITS: dict[int, np.dtype[Any]] = {size: np.dtype(f"i{size}") for size in (2, 4, 8)}


def accumulate_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """float16 sums lose too much: they accumulate in float32 and are cast back once."""
    return _FLOAT32 if dtype == _FLOAT16 else np.dtype(dtype)


def bits_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The signed int dtype as wide as ``dtype`` (float16, 32 or 64): a view of a gradient
    as its bits, so masks and copies move inf and NaN without arithmetic."""
    return _BITS[dtype.itemsize]


def split_shares(dA: np.ndarray, counts: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``dA / n_tied`` per window as ``dtype`` (a new array): the quotient is taken in float64
    (int32 counts promote it), so it is correctly rounded once into ``dtype``. NaN windows have
    no winners (count 0) and send nothing: the divisor there is moot."""
    shares: np.ndarray = dA.astype(accumulate_dtype(dA.dtype)) / np.maximum(counts, 1)
    return shares.astype(dtype, copy=False)


def winner_counts(winners: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """int32 array of ``shape``: how many window elements won each window, summed one bit
    plane at a time (never a byte per window element of every output at once)."""
    size = int(np.prod(shape))
    counts = np.zeros(size, dtype=np.int32)
    for plane in winners:
        counts += np.unpackbits(plane, count=size)
    return counts.reshape(shape)
