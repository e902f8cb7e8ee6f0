"""Window geometry: resolved padding, output shape and, per window offset, the slices that pair
output positions with the real (unpadded) input elements they read.

Padding is never materialized. For a window offset ``o`` along a spatial dim with stride ``s``
and padding ``before``, output index ``j`` reads input index ``i = j * s + o - before``; only the
contiguous run of ``j`` for which ``0 <= i < in`` takes part. The product of those runs over the
spatial dims is a box of output positions and a strided box of input positions, both plain
basic-indexing views: the kernels loop over window offsets, never over output positions.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from engine.errors import TensorError
from engine.memo import WeighedMemo, deep_bytes, sampled_bytes
from engine.spec import PoolSpec

__all__ = [
    "MAX_INPUT_ELEMENTS",
    "MAX_WORK",
    "PLAN_MEMO_BYTES",
    "Offset",
    "Plan",
    "axis_names",
    "call_bytes",
    "make_plan",
    "plan_bytes",
]

#: Most (output element, window element) pairs one call may visit: the bound on its time and
#: on a max/min state's size (one bit per pair, 128 MiB at the bound). Ordinary layers are far
#: below it; it refuses what would otherwise be minutes of work from a small request.
MAX_WORK = 1 << 30
#: Most input elements one call may name (8 GiB of float32). A real X is already in memory,
#: but a state blob only names its input shape, and backward allocates dX of that shape.
MAX_INPUT_ELEMENTS = 1 << 31

T = TypeVar("T")

_SPATIAL_NAMES = {1: ("w",), 2: ("h", "w"), 3: ("t", "h", "w")}


def axis_names(spec: PoolSpec) -> tuple[str, ...]:
    """Axis names of the input for ``spec``, e.g. ``("m", "h", "w", "d")`` for 2-D channels_last."""
    spatial = _SPATIAL_NAMES[spec.ndim]
    if spec.layout == "channels_last":
        return ("m", *spatial, "d")
    return ("m", "d", *spatial)


@dataclass(frozen=True)
class Offset:
    """One window offset: which output positions it reaches and which inputs they read.

    ``out_index`` and ``in_index`` are full-rank tuples of slices (views, no copy) of equal
    shape; ``full`` is True when the offset reaches every output position (no padding on it);
    ``primary`` when the offset is below the stride in every dim: primary offsets of all
    windows read pairwise distinct input elements, so backward may assign them, then add the
    rest.
    """

    out_index: tuple[slice, ...]
    in_index: tuple[slice, ...]
    full: bool
    primary: bool


@dataclass(frozen=True)
class Plan:
    """Geometry of one pooling call, derived from a spec and an input shape only."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    spatial_axes: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    window_size: int
    offsets: tuple[Offset | None, ...]
    """One entry per window offset in row-major window order; None when the offset only ever
    lands on padding."""
    disjoint: bool
    """No input element lies in two windows (stride >= pool size in every spatial dim)."""
    exact_cover: bool
    """Every input element lies in exactly one window (disjoint and nothing left uncovered)."""
    real_counts: tuple[np.ndarray, ...]
    """Per spatial dim, how many real (unpadded) elements each output index's window spans."""
    input_size: int
    """Elements of the input (``prod(input_shape)``)."""
    output_size: int
    """Elements of the output (``prod(output_shape)``)."""
    _derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def derived(self, name: str, build: Callable[[], T]) -> T:
        """The fact ``name`` that another module derives from this plan (and the spec it was
        made for) alone, built by ``build`` on first use and kept with the plan: the chunk
        covering the whole call, the compiled kernels' geometry arrays. A tiny call looks each
        up here instead of in a memo of its own (a key to hash and a lock per lookup cost it
        more than its kernels' Python steps); the plan memo's budget bounds them, as each is
        smaller than the plan's offsets (:func:`plan_bytes` counts what is already built).
        Thread-safe: two threads may both build a fact, one result is kept."""
        value = self._derived.get(name)
        if value is None:
            value = self._derived.setdefault(name, build())
        return cast(T, value)

    @property
    def has_padding(self) -> bool:
        return any(before or after for before, after in self.padding)

    def divisor(self, count_include_pad: bool, pool_size: tuple[int, ...]) -> float | np.ndarray:
        """avg divisor, broadcastable against the output: a scalar unless padding is real and
        excluded, then the outer product of the per-dim real counts (float64)."""
        if count_include_pad or not self.has_padding:
            return float(math.prod(pool_size))
        rank = len(self.output_shape)
        divisor = np.ones((1,) * rank)
        for axis, counts in zip(self.spatial_axes, self.real_counts, strict=True):
            shape = [1] * rank
            shape[axis] = counts.size
            divisor = divisor * counts.reshape(shape).astype(np.float64)
        return divisor


def _resolve_padding(spec: PoolSpec, sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    if spec.padding == "valid":
        return ((0, 0),) * spec.ndim
    if spec.padding == "same":
        pads = []
        for size, pool, stride in zip(sizes, spec.pool_size, spec.strides, strict=True):
            out = -(-size // stride)
            total = max((out - 1) * stride + pool - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return spec.padding


#: Bytes that memoized plans may hold in all: one largest plan (65,536 offsets, about 40 MB)
#: and then some.
PLAN_MEMO_BYTES = 64 << 20


def plan_bytes(plan: Plan) -> int:
    """Bytes a plan holds: its offsets' slices and its per-dim arrays as long as the output."""
    reached = [offset for offset in plan.offsets if offset is not None]
    fields = {name: value for name, value in vars(plan).items() if name != "offsets"}
    return (
        sys.getsizeof(plan)
        + deep_bytes(fields)
        + sys.getsizeof(plan.offsets)
        + sampled_bytes(reached)
    )


_plans: WeighedMemo[Plan] = WeighedMemo(PLAN_MEMO_BYTES, plan_bytes, name="plans")


def make_plan(spec: PoolSpec, input_shape: tuple[int, ...]) -> Plan:
    """Resolve padding and output shape of ``spec`` on an input of ``input_shape``.

    Memoized within a memory budget (:class:`~engine.memo.WeighedMemo`; the plan is
    immutable): a call and its batch pieces reuse their plans.

    Raises
    ------
    TensorError
        If the rank does not match the spec, a dim is zero, a window is larger than the
        padded input, or the call would visit more than :data:`MAX_WORK` window elements.
    """
    return _plans.get((spec, tuple(input_shape)), lambda: _build_plan(spec, tuple(input_shape)))


def _build_plan(spec: PoolSpec, input_shape: tuple[int, ...]) -> Plan:
    rank = spec.ndim + 2
    names = axis_names(spec)
    if len(input_shape) != rank:
        raise TensorError(
            f"X has rank {len(input_shape)} but spec with {spec.ndim} spatial dims needs rank "
            f"{rank} ({', '.join(names)}); got shape {input_shape}"
        )
    if 0 in input_shape:
        raise TensorError(f"X has a zero-size dim; got shape {input_shape} ({', '.join(names)})")
    if math.prod(input_shape) > MAX_INPUT_ELEMENTS:
        raise TensorError(
            f"X shape {input_shape} has {math.prod(input_shape)} elements, more than the "
            f"{MAX_INPUT_ELEMENTS} one call may take"
        )
    if spec.layout == "channels_last":
        spatial_axes = tuple(range(1, rank - 1))
    else:
        spatial_axes = tuple(range(2, rank))
    sizes = tuple(input_shape[axis] for axis in spatial_axes)
    padding = _resolve_padding(spec, sizes)

    output_shape = list(input_shape)
    for dim, axis in enumerate(spatial_axes):
        size, pool, stride = sizes[dim], spec.pool_size[dim], spec.strides[dim]
        before, after = padding[dim]
        if size + before + after < pool:
            raise TensorError(
                f"window {pool} along spatial dim {dim} ({names[axis]}) is larger than the "
                f"padded input {size + before + after} (size {size}, padding {(before, after)}); "
                f"X shape {input_shape}, pool_size {spec.pool_size}"
            )
        output_shape[axis] = (size + before + after - pool) // stride + 1
    work = math.prod(spec.pool_size) * math.prod(output_shape)
    if work > MAX_WORK:
        raise TensorError(
            f"X shape {input_shape} with pool_size {spec.pool_size} and strides {spec.strides} "
            f"gives {math.prod(output_shape)} outputs of {math.prod(spec.pool_size)} elements "
            f"each: {work} element visits, more than the {MAX_WORK} one call may make"
        )

    runs: list[list[tuple[int, int, int] | None]] = []
    real_counts = []
    for dim, axis in enumerate(spatial_axes):
        size, pool, stride = sizes[dim], spec.pool_size[dim], spec.strides[dim]
        before = padding[dim][0]
        out = output_shape[axis]
        counts = np.zeros(out, dtype=np.int64)
        dim_runs: list[tuple[int, int, int] | None] = []
        for o in range(pool):
            first = max(0, -(-(before - o) // stride))
            stop = min(out, (size - 1 + before - o) // stride + 1)
            if stop <= first:
                dim_runs.append(None)
                continue
            counts[first:stop] += 1
            dim_runs.append((first, stop, first * stride + o - before))
        runs.append(dim_runs)
        counts.flags.writeable = False
        real_counts.append(counts)

    offsets: list[Offset | None] = []
    window_offsets = itertools.product(*(range(pool) for pool in spec.pool_size))
    for combo, window_offset in zip(itertools.product(*runs), window_offsets, strict=True):
        reached = [run for run in combo if run is not None]
        if len(reached) < len(combo):
            offsets.append(None)
            continue
        out_index = [slice(None)] * rank
        in_index = [slice(None)] * rank
        full = True
        for dim, axis in enumerate(spatial_axes):
            first, stop, start = reached[dim]
            stride = spec.strides[dim]
            out_index[axis] = slice(first, stop)
            in_index[axis] = slice(start, start + (stop - first - 1) * stride + 1, stride)
            full = full and first == 0 and stop == output_shape[axis]
        primary = all(o < s for o, s in zip(window_offset, spec.strides, strict=True))
        offsets.append(Offset(tuple(out_index), tuple(in_index), full, primary))

    disjoint = all(s >= p for s, p in zip(spec.strides, spec.pool_size, strict=True))
    exact_cover = disjoint and all(
        spec.strides[dim] == spec.pool_size[dim]
        and output_shape[axis] * spec.strides[dim] >= sizes[dim] + padding[dim][0]
        for dim, axis in enumerate(spatial_axes)
    )
    return Plan(
        input_shape=tuple(input_shape),
        output_shape=tuple(output_shape),
        spatial_axes=spatial_axes,
        padding=padding,
        window_size=math.prod(spec.pool_size),
        offsets=tuple(offsets),
        disjoint=disjoint,
        exact_cover=exact_cover,
        real_counts=tuple(real_counts),
        input_size=math.prod(input_shape),
        output_size=math.prod(output_shape),
    )


def call_bytes(spec: PoolSpec, input_shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes one forward or backward call may hold at its peak besides X and dA themselves: an
    upper bound, documented in docs/DECISIONS.md ("What one call costs") and pinned by a test.

    - the state: one bit per (output, window element) for max/min, ``<= MAX_WORK / 8``
      (128 MiB); one bit per output for avg;
    - the geometry: the plan and the stride-phase grouping, each about :func:`plan_bytes`
      (some 700 bytes per window offset: ``<= 2 x 47 MB`` at ``MAX_WINDOW_SIZE``);
    - arrays as large as the output (A, dA's wide copy, masks, one unpacked winner plane at a
      time, split shares, the phase path's contributions): ``<= 4`` accumulator-wide copies;
    - arrays as large as the input: dX and, where windows overlap or for avg, its
      accumulator-wide sums.
    """
    plan = make_plan(spec, input_shape)
    inputs, outputs = math.prod(input_shape), math.prod(plan.output_shape)
    wide = max(itemsize, 4)  # float16 accumulates in float32
    state = (plan.window_size if spec.mode != "avg" else 1) * -(-outputs // 8)
    geometry = 2 * plan_bytes(plan)
    per_output = itemsize + 4 * wide + 2
    per_input = itemsize + wide
    return state + geometry + outputs * per_output + inputs * per_input
