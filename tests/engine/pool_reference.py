"""A naive pooling reference for the tests: plain Python loops over every window.

Written from CONTRACT.md alone, sharing no code with engine/: it resolves padding itself, walks
each window element by element, skips padded positions and applies the tie and NaN rules
literally. Slow on purpose; only for small shapes. Arithmetic is float64, cast at the end.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from engine import PoolSpec


def resolve_padding(spec: PoolSpec, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    if spec.padding == "valid":
        return [(0, 0)] * len(spatial)
    if spec.padding == "same":
        pads = []
        for size, pool, stride in zip(spatial, spec.pool_size, spec.strides, strict=True):
            out = math.ceil(size / stride)
            total = max((out - 1) * stride + pool - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    return [tuple(pair) for pair in spec.padding]  # type: ignore[misc]


def _to_channels_last(array: np.ndarray, spec: PoolSpec) -> np.ndarray:
    return array if spec.layout == "channels_last" else np.moveaxis(array, 1, -1)


def _from_channels_last(array: np.ndarray, spec: PoolSpec) -> np.ndarray:
    return array if spec.layout == "channels_last" else np.moveaxis(array, -1, 1)


def reference(
    X: np.ndarray, spec: PoolSpec, dA: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(A, dX)`` (``dX`` None when ``dA`` is None), in X's layout and dtype."""
    x = _to_channels_last(X, spec).astype(np.float64)
    batch, *spatial, channels = x.shape
    pads = resolve_padding(spec, tuple(spatial))
    out_spatial = [
        (size + before + after - pool) // stride + 1
        for size, (before, after), pool, stride in zip(
            spatial, pads, spec.pool_size, spec.strides, strict=True
        )
    ]
    a = np.zeros((batch, *out_spatial, channels))
    da = None if dA is None else _to_channels_last(dA, spec).astype(X.dtype).astype(np.float64)
    dx = np.zeros(x.shape)
    for sample, channel in itertools.product(range(batch), range(channels)):
        for out_pos in itertools.product(*(range(n) for n in out_spatial)):
            elements = []  # (input position, value), row-major window order, real only
            for offset in itertools.product(*(range(p) for p in spec.pool_size)):
                pos = tuple(
                    index * stride + k - before
                    for index, stride, k, (before, _) in zip(
                        out_pos, spec.strides, offset, pads, strict=True
                    )
                )
                if all(0 <= i < n for i, n in zip(pos, spatial, strict=True)):
                    elements.append((pos, x[(sample, *pos, channel)]))
            values = [v for _, v in elements]
            has_nan = any(math.isnan(v) for v in values)
            key = (sample, *out_pos, channel)
            if spec.mode == "avg":
                divisor = math.prod(spec.pool_size) if spec.count_include_pad else len(values)
                a[key] = math.nan if has_nan else sum(values) / divisor
                if da is not None and not has_nan:
                    for pos, _ in elements:
                        dx[(sample, *pos, channel)] += da[key] / divisor
                continue
            if has_nan:
                a[key] = math.nan
                continue
            best = max(values) if spec.mode == "max" else min(values)
            a[key] = best
            if da is None:
                continue
            winners = [pos for pos, v in elements if v == best]
            if spec.ties == "first":
                winners = winners[:1]
            share = da[key] / len(winners) if spec.ties == "split" else da[key]
            for pos in winners:
                dx[(sample, *pos, channel)] += share
    A = _from_channels_last(a, spec).astype(X.dtype)
    if da is None:
        return A, None
    return A, _from_channels_last(dx, spec).astype(X.dtype)
