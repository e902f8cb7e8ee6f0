"""Compiled (Numba) kernels for max/min pooling, and the one place the kernel set is chosen.

The NumPy kernels (:mod:`engine.pooling`) make one pass over the output per window offset; the
kernels here make one pass over the data, with the channel loop innermost (contiguous in
``channels_last``), so they run at memory bandwidth. They are drop-in replacements for one
chunk of :mod:`engine.parallel`'s split:

- ``nogil=True`` functions over arrays the caller allocated: threading stays in the engine's
  own split (never Numba's parallel layer, which does not tolerate concurrent callers);
- the same winner bit planes (:mod:`engine.state`), so states move between processes with and
  without Numba; the same accumulation dtype and order per input element as the NumPy phase
  path, so dX is bit-identical (NumPy stays the oracle they are tested against);
- every spatial rank is run as 3-D (missing dims of size 1) and every layout as channels_last
  (a channels_first chunk is copied into that order first), so each kernel has one compiled
  signature per dtype, compiled (or loaded from Numba's on-disk cache) by :func:`warm_up`.

float16 is compared in float32 (exact) and accumulated in float32, as NumPy does.
avg runs on NumPy whatever the choice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from engine.errors import KernelsUnavailable
from engine.geometry import Plan
from engine.options import KernelChoice
from engine.spec import PoolSpec
from engine.upstream import accumulate_dtype, split_shares, winner_counts

__all__ = [
    "UNPACKED_BYTES",
    "available",
    "extreme_backward_chunk",
    "extreme_forward_chunk",
    "fits",
    "kernel_set",
    "warm_up",
]


@functools.cache
def available() -> bool:
    """True when Numba imports (the ``fast`` extra is installed)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_set(choice: KernelChoice) -> Literal["numpy", "compiled"]:
    """Resolve an :class:`~engine.options.EngineOptions` ``kernels`` choice: the only place
    the kernel set is decided.

    Raises
    ------
    KernelsUnavailable
        ``choice`` is ``"compiled"`` and Numba is not installed.
    """
    if choice == "numpy":
        return "numpy"
    if available():
        return "compiled"
    if choice == "compiled":
        raise KernelsUnavailable(
            "kernels='compiled' needs Numba: install poolgrad[fast], or choose 'numpy' or 'auto'"
        )
    return "numpy"


#: Most bytes of unpacked winner planes (one byte per window element of every output) the
#: compiled kernels may hold for one chunk; a chunk above it runs on the NumPy kernels, which
#: unpack one plane at a time (same bits, bounded memory).
UNPACKED_BYTES = 32 << 20


def fits(plan: Plan) -> bool:
    """True when the compiled kernels may run this chunk within :data:`UNPACKED_BYTES`."""
    return plan.window_size * math.prod(plan.output_shape) <= UNPACKED_BYTES


def warm_up() -> None:
    """Compile every kernel signature (or load it from Numba's cache) with tiny calls, so no
    user request pays for compilation. Needs Numba."""
    _kernels()


# -- the chunk kernels (same interface as engine.pooling's) ----------------------------------


def extreme_forward_chunk(
    X: np.ndarray, spec: PoolSpec, plan: Plan, A: np.ndarray, winners: np.ndarray
) -> None:
    """max/min forward of one chunk: fills ``A`` and sets the winner bits of ``winners``
    (zeroed by the caller), exactly as :func:`engine.pooling._extreme_forward_chunk`.
    Cost: one pass over X per window that covers it, plus one over A."""
    compute = np.float64 if X.dtype == np.float64 else np.float32
    x = _canonical(X, spec, compute)
    a, write_back = _output(A, spec, compute, zero=False)
    # One uint8 0/1 per (window offset, output) of this chunk (an L2-sized piece), packed by
    # NumPy's SIMD packbits: far cheaper than setting bits one by one in the kernel.
    hits = np.zeros((plan.window_size, A.size), dtype=np.uint8)
    _kernels().forward(
        x,
        a,
        hits,
        _geometry(spec, plan),
        _bit_strides(plan.output_shape, spec),
        spec.mode == "max",
        spec.ties == "first",
    )
    write_back()
    winners[...] = np.packbits(hits, axis=1)


def extreme_backward_chunk(
    spec: PoolSpec,
    plan: Plan,
    winners: np.ndarray,
    dA: np.ndarray,
    dX: np.ndarray,
    merged_phase_write: bool,
) -> str:
    """max/min backward of one chunk into ``dX``, bit for bit as
    :func:`engine.pooling._extreme_backward_chunk`; returns the path (``"compiled-disjoint"``
    or ``"compiled-gather"``). ``merged_phase_write`` is a NumPy-path choice, moot here.

    Disjoint windows: each winner's gradient is copied (as bits) to its input element, once.
    Overlapping windows: each input element gathers its windows' contributions in row-major
    window-offset order in the accumulation dtype, starting, like NumPy's phase buffers, from
    its stride phase's first offset where that offset reaches it and from +0.0 elsewhere.
    """
    kernels = _kernels()
    geometry = _geometry(spec, plan)
    bit_strides = _bit_strides(plan.output_shape, spec)
    accumulate = accumulate_dtype(dX.dtype) if not plan.disjoint else dX.dtype
    masks = np.unpackbits(winners, axis=1, count=dA.size)
    if spec.ties == "split":
        gradient = split_shares(dA, winner_counts(winners, dA.shape), accumulate)
    else:
        gradient = dA.astype(accumulate, copy=False)
    if plan.disjoint:
        # A bitwise copy: inf and NaN in dA reach winners only, float16 needs no arithmetic.
        bits = np.dtype(f"i{dX.itemsize}")
        g = _canonical(gradient.view(bits), spec, bits)
        target, write_back = _output(dX.view(bits), spec, bits, zero=not plan.exact_cover)
        kernels.backward_disjoint(g, masks, target, geometry, bit_strides)
        write_back()
        return "compiled-disjoint"
    g = _canonical(gradient, spec, accumulate)
    target, write_back = _output(dX, spec, accumulate, zero=False)
    kernels.backward_gather(g, masks, target, geometry, _first_members(spec, plan), bit_strides)
    write_back()
    return "compiled-gather"


# -- array plumbing ----------------------------------------------------------------------------


def _to_5d(array: np.ndarray, spec: PoolSpec) -> np.ndarray:
    """A view ``(n, t, h, w, c)`` of a chunk in either layout (missing spatial dims size 1)."""
    last = array if spec.layout == "channels_last" else np.moveaxis(array, 1, -1)
    return last.reshape(last.shape[0], *(1,) * (3 - spec.ndim), *last.shape[1:])


def _canonical(array: np.ndarray, spec: PoolSpec, dtype: Any) -> np.ndarray:
    """The chunk as a C-contiguous 5-D array of ``dtype``: a view when it already is one."""
    return np.ascontiguousarray(_to_5d(array, spec), dtype=dtype)


def _output(
    array: np.ndarray, spec: PoolSpec, dtype: Any, *, zero: bool
) -> tuple[np.ndarray, Callable[[], None]]:
    """A C-contiguous 5-D array for a kernel to write, and the call that moves it into
    ``array``: the view itself when possible (nothing to move), else a scratch array."""
    view = _to_5d(array, spec)
    if view.flags.c_contiguous and view.dtype == dtype:
        return view, lambda: None
    scratch = (np.zeros if zero else np.empty)(view.shape, dtype=dtype)
    return scratch, lambda: np.copyto(view, scratch, casting="unsafe")


def _geometry(spec: PoolSpec, plan: Plan) -> np.ndarray:
    """int64 ``(3, 4)``: per 3-D spatial dim, pool size, stride, padding before, output size."""
    rows = [(1, 1, 0, 1)] * (3 - spec.ndim)
    for dim, axis in enumerate(plan.spatial_axes):
        rows.append(
            (spec.pool_size[dim], spec.strides[dim], plan.padding[dim][0], plan.output_shape[axis])
        )
    return np.array(rows, dtype=np.int64)


def _bit_strides(output_shape: tuple[int, ...], spec: PoolSpec) -> np.ndarray:
    """int64 ``(5,)``: the step of the flat (C-order) output index per ``(n, t, h, w, c)``
    axis of the 5-D view: the winner bit of an output is its flat index in the chunk."""
    strides = [math.prod(output_shape[axis + 1 :]) for axis in range(len(output_shape))]
    if spec.layout == "channels_first":
        strides.append(strides.pop(1))
    return np.array([strides[0], *(0,) * (3 - spec.ndim), *strides[1:]], dtype=np.int64)


def _first_members(spec: PoolSpec, plan: Plan) -> np.ndarray:
    """int64 ``(3, max stride)``: per dim and stride residue ``r``, the smallest window offset
    ``o = r (mod stride)`` that lands on a real element (-1 if none): the offset of a stride
    phase that NumPy's phase path writes first, the others adding to it."""
    geometry = _geometry(spec, plan)
    sizes = [1] * (3 - spec.ndim) + [plan.input_shape[axis] for axis in plan.spatial_axes]
    first = np.full((3, int(geometry[:, 1].max())), -1, dtype=np.int64)
    for dim, ((pool, stride, before, out), size) in enumerate(zip(geometry, sizes, strict=True)):
        for offset in range(pool):
            start = max(0, -(-(before - offset) // stride))
            stop = min(out, (size - 1 + before - offset) // stride + 1)
            if stop > start and first[dim, offset % stride] < 0:
                first[dim, offset % stride] = offset
    return first


# -- the Numba functions -------------------------------------------------------------------------


def _forward(
    X: Any,
    A: Any,
    hits: Any,
    geometry: Any,
    bit_strides: Any,
    is_max: bool,
    first_only: bool,
) -> None:  # pragma: no cover - compiled
    n, size_t, size_h, size_w, channels = X.shape
    pool_t, stride_t, before_t, out_t = geometry[0]
    pool_h, stride_h, before_h, out_h = geometry[1]
    pool_w, stride_w, before_w, out_w = geometry[2]
    best = np.empty(channels, dtype=X.dtype)
    taken = np.empty(channels, dtype=np.bool_)
    step_c = bit_strides[4]
    for b in range(n):
        for ot in range(out_t):
            # The window offsets that land on real elements: no bounds test per element.
            t0 = ot * stride_t - before_t
            kt_lo, kt_hi = max(0, -t0), min(pool_t, size_t - t0)
            for oh in range(out_h):
                h0 = oh * stride_h - before_h
                kh_lo, kh_hi = max(0, -h0), min(pool_h, size_h - h0)
                for ow in range(out_w):
                    w0 = ow * stride_w - before_w
                    kw_lo, kw_hi = max(0, -w0), min(pool_w, size_w - w0)
                    for c in range(channels):
                        best[c] = X[b, t0 + kt_lo, h0 + kh_lo, w0 + kw_lo, c]
                    for kt in range(kt_lo, kt_hi):
                        for kh in range(kh_lo, kh_hi):
                            for kw in range(kw_lo, kw_hi):
                                # NaN sticks, as with np.maximum / np.minimum.
                                if is_max:
                                    for c in range(channels):
                                        v, kept = X[b, t0 + kt, h0 + kh, w0 + kw, c], best[c]
                                        best[c] = v if (v > kept) | (v != v) else kept
                                else:
                                    for c in range(channels):
                                        v, kept = X[b, t0 + kt, h0 + kh, w0 + kw, c], best[c]
                                        best[c] = v if (v < kept) | (v != v) else kept
                    base = (
                        b * bit_strides[0]
                        + ot * bit_strides[1]
                        + oh * bit_strides[2]
                        + ow * bit_strides[3]
                    )
                    for c in range(channels):
                        A[b, ot, oh, ow, c] = best[c]
                        taken[c] = False
                    for kt in range(kt_lo, kt_hi):
                        for kh in range(kh_lo, kh_hi):
                            for kw in range(kw_lo, kw_hi):
                                k = (kt * pool_h + kh) * pool_w + kw
                                # NaN equals nothing: a NaN window has no winners.
                                if first_only:
                                    for c in range(channels):
                                        v = X[b, t0 + kt, h0 + kh, w0 + kw, c]
                                        if v == best[c] and not taken[c]:
                                            hits[k, base + c * step_c] = 1
                                            taken[c] = True
                                else:
                                    for c in range(channels):
                                        v = X[b, t0 + kt, h0 + kh, w0 + kw, c]
                                        hits[k, base + c * step_c] = v == best[c]


def _backward_disjoint(
    G: Any, masks: Any, dX: Any, geometry: Any, bit_strides: Any
) -> None:  # pragma: no cover - compiled
    n, out_t, out_h, out_w, channels = G.shape
    size_t, size_h, size_w = dX.shape[1], dX.shape[2], dX.shape[3]
    pool_t, stride_t, before_t, _ = geometry[0]
    pool_h, stride_h, before_h, _ = geometry[1]
    pool_w, stride_w, before_w, _ = geometry[2]
    zero = np.zeros(1, dtype=G.dtype)[0]
    step_c = bit_strides[4]
    for b in range(n):
        for ot in range(out_t):
            for oh in range(out_h):
                for ow in range(out_w):
                    base = (
                        b * bit_strides[0]
                        + ot * bit_strides[1]
                        + oh * bit_strides[2]
                        + ow * bit_strides[3]
                    )
                    for kt in range(pool_t):
                        t = ot * stride_t + kt - before_t
                        if t < 0 or t >= size_t:
                            continue
                        for kh in range(pool_h):
                            h = oh * stride_h + kh - before_h
                            if h < 0 or h >= size_h:
                                continue
                            for kw in range(pool_w):
                                w = ow * stride_w + kw - before_w
                                if w < 0 or w >= size_w:
                                    continue
                                k = (kt * pool_h + kh) * pool_w + kw
                                for c in range(channels):
                                    # zero - 1 sets every bit: a branch-free select.
                                    keep = zero - masks[k, base + c * step_c]
                                    dX[b, t, h, w, c] = G[b, ot, oh, ow, c] & keep


def _backward_gather(
    G: Any, masks: Any, dX: Any, geometry: Any, first_members: Any, bit_strides: Any
) -> None:  # pragma: no cover - compiled
    n, size_t, size_h, size_w, channels = dX.shape
    pool_t, stride_t, before_t, out_t = geometry[0]
    pool_h, stride_h, before_h, out_h = geometry[1]
    pool_w, stride_w, before_w, out_w = geometry[2]
    total = np.empty(channels, dtype=G.dtype)
    zero = np.zeros(1, dtype=G.dtype)[0]
    step_c = bit_strides[4]
    for b in range(n):
        for t in range(size_t):
            first_t = first_members[0, (t + before_t) % stride_t]
            for h in range(size_h):
                first_h = first_members[1, (h + before_h) % stride_h]
                for w in range(size_w):
                    first_w = first_members[2, (w + before_w) % stride_w]
                    for c in range(channels):
                        total[c] = zero
                    # Offsets of this element's stride phase, in row-major window order.
                    for kt in range((t + before_t) % stride_t, pool_t, stride_t):
                        ot = (t + before_t - kt) // stride_t
                        if ot < 0 or ot >= out_t:
                            continue
                        for kh in range((h + before_h) % stride_h, pool_h, stride_h):
                            oh = (h + before_h - kh) // stride_h
                            if oh < 0 or oh >= out_h:
                                continue
                            for kw in range((w + before_w) % stride_w, pool_w, stride_w):
                                ow = (w + before_w - kw) // stride_w
                                if ow < 0 or ow >= out_w:
                                    continue
                                k = (kt * pool_h + kh) * pool_w + kw
                                assign = kt == first_t and kh == first_h and kw == first_w
                                base = (
                                    b * bit_strides[0]
                                    + ot * bit_strides[1]
                                    + oh * bit_strides[2]
                                    + ow * bit_strides[3]
                                )
                                # The phase's first offset assigns (keeping a -0.0), as
                                # NumPy's phase buffer does; the rest add.
                                if assign:
                                    for c in range(channels):
                                        won = masks[k, base + c * step_c]
                                        total[c] = G[b, ot, oh, ow, c] if won else zero
                                else:
                                    for c in range(channels):
                                        won = masks[k, base + c * step_c]
                                        value = G[b, ot, oh, ow, c] if won else zero
                                        total[c] = total[c] + value
                    for c in range(channels):
                        dX[b, t, h, w, c] = total[c]


@functools.cache
def _kernels() -> SimpleNamespace:
    """The compiled functions, one signature per dtype, compiled (or loaded from the on-disk
    cache) on first use."""
    if not available():
        raise KernelsUnavailable("the compiled kernels need Numba: install poolgrad[fast]")
    import numba

    def array(dtype: Any, ndim: int, contiguous: bool = True, readonly: bool = False) -> Any:
        return numba.types.Array(dtype, ndim, "C" if contiguous else "A", readonly=readonly)

    # Unpacked 0/1 planes: forward fills new ones, backward reads those of a state.
    u8 = array(numba.uint8, 2)
    i64_2d, i64_1d = array(numba.int64, 2), array(numba.int64, 1)
    floats, ints = (numba.float32, numba.float64), (numba.int16, numba.int32, numba.int64)

    def compile_(signatures: list[Any]) -> Callable[[Callable[..., None]], Any]:
        def build(function: Callable[..., None]) -> Any:
            try:
                return numba.njit(signatures, nogil=True, cache=True)(function)
            except RuntimeError as exc:
                # No writable cache location (a read-only install without NUMBA_CACHE_DIR):
                # compile for this process only rather than fail to start.
                if "cannot cache" not in str(exc):
                    raise
                return numba.njit(signatures, nogil=True)(function)

        return build

    forward = compile_(
        [
            numba.void(
                array(f, 5, readonly=True),
                array(f, 5),
                u8,
                i64_2d,
                i64_1d,
                numba.boolean,
                numba.boolean,
            )
            for f in floats
        ]
    )(_forward)
    backward_disjoint = compile_(
        [numba.void(array(i, 5, readonly=True), u8, array(i, 5), i64_2d, i64_1d) for i in ints]
    )(_backward_disjoint)
    backward_gather = compile_(
        [
            numba.void(array(f, 5, readonly=True), u8, array(f, 5), i64_2d, i64_2d, i64_1d)
            for f in floats
        ]
    )(_backward_gather)
    return SimpleNamespace(
        forward=forward, backward_disjoint=backward_disjoint, backward_gather=backward_gather
    )
