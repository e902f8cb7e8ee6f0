"""Compiled (Numba) kernels for max/min pooling, and the one place the kernel set is chosen.

The NumPy kernels (:mod:`engine.pooling`) make one pass over the output per window offset; the
kernels here make one pass over the data, one output row at a time, so they run near memory
bandwidth. They are drop-in replacements for one chunk of :mod:`engine.parallel`'s split:

- ``nogil=True`` functions over arrays the caller allocated: threading stays in the engine's
  own split (never Numba's parallel layer, which does not tolerate concurrent callers);
- the same winner bit planes (:mod:`engine.state`), written and read in place, so states move
  between processes with and without Numba; the same accumulation dtype and order per input
  element as the NumPy phase path, so dX is bit-identical (NumPy stays the oracle they are
  tested against);
- every chunk is run as a C-contiguous 5-D ``(n, t, h, w, c)`` array whose C order is the
  order of the winner bits: missing spatial dims have size 1, and a ``channels_first`` chunk
  ``(m, d, *spatial)`` is ``m * d`` single-channel images ``(m * d, *spatial, 1)`` (a view, no
  transposition). So each kernel has one compiled signature per dtype, compiled (or loaded
  from Numba's on-disk cache) by :func:`warm_up`.

Loop order: per output row ``(b, ot, oh)`` (``out_w * c`` outputs, contiguous in memory and in
the bit planes), per window offset, the innermost loop runs along contiguous memory: over
channels when ``c > 1``, along the last spatial dim when ``c == 1``; with channels and a stride
along ``w``, forward first pools the window's rows column by column, then along ``w``. Every
loop indexes a slice from 0 (see :mod:`engine._numba_kernels`: that is what lets LLVM
vectorize it). Winner flags of one row and one offset go to a byte scratch, packed 8 at a time
by one multiplication; backward unpacks a row of one plane through a byte -> 8-byte table.
Scratch is a few bytes per output of one row, whatever the window; nothing is unpacked per
chunk.

float16 is compared in float32 (exact) and accumulated in float32, as NumPy does.
avg runs on NumPy whatever the choice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple

import numpy as np

from engine.errors import KernelsUnavailable
from engine.geometry import Plan
from engine.options import KernelChoice
from engine.spec import PoolSpec
from engine.upstream import accumulate_dtype, bits_dtype, split_shares, winner_counts

__all__ = [
    "available",
    "extreme_backward_chunk",
    "extreme_forward_chunk",
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


def kernel_set(
    choice: KernelChoice,
    spec: PoolSpec | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Literal["numpy", "compiled"]:
    """Resolve an :class:`~engine.options.EngineOptions` ``kernels`` choice: the only place
    the kernel set is decided.

    For one call (``spec`` and ``input_shape`` given):

    - ``avg`` runs on NumPy (there are no compiled avg kernels);
    - ``"numpy"`` and ``"compiled"`` are taken as they are;
    - ``"auto"`` is ``"compiled"`` when Numba imports and X is ``channels_last`` with more than
      one channel or has fewer than :data:`AUTO_SMALL_ELEMENTS` elements, ``"numpy"``
      otherwise: single-channel rows (and ``channels_first``, which the kernels run as
      single-channel images) make the compiled forward read along ``w`` with a stride, slower
      than NumPy's (``python -m bench.engine``) once the input is large enough for that to
      outweigh NumPy's Python step per window offset, while with channels the compiled
      kernels are the faster ones on every shape of the suite.

    Without a call, the set the process may run (what the service warms up): ``"compiled"``
    for ``"compiled"``, and for ``"auto"`` when Numba imports.

    Raises
    ------
    KernelsUnavailable
        ``choice`` is ``"compiled"`` and Numba is not installed.
    """
    if choice == "numpy":
        return "numpy"
    if not available():
        if choice == "compiled":
            raise KernelsUnavailable(
                "kernels='compiled' needs Numba: install poolgrad[fast], or choose 'numpy' or "
                "'auto'"
            )
        return "numpy"
    if spec is None or input_shape is None:
        return "compiled"
    if spec.mode == "avg":
        return "numpy"
    single_channel = spec.layout != "channels_last" or input_shape[-1] == 1
    if choice == "auto" and single_channel and math.prod(input_shape) >= AUTO_SMALL_ELEMENTS:
        return "numpy"
    return "compiled"


#: ``"auto"`` runs single-channel inputs under this many elements on the compiled kernels too:
#: there a call is mostly Python steps, one per window offset on NumPy, and the compiled
#: kernels took 0.3-0.7x NumPy's time (forward + backward, one thread, (1, 8, 8, 1) to
#: (1, 16, 16, 1) and (1, 4, 16, 16), 2x2 and 3x3 windows); from 1024 on NumPy's passes win
#: on some shapes.
AUTO_SMALL_ELEMENTS = 1024


#: Bytes of X per batch piece when the compiled kernels run: they keep their working set in
#: cache row by row, so a call is cut only into one run per thread (fewer Python steps).
PIECE_BYTES = 1 << 62


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
    Cost: one pass over X (rows a window overlaps are read again from cache), one over A and
    one over the bit planes."""
    kernel_plan = _kernel_plan(spec, plan)
    compute = _FLOAT64 if X.dtype == _FLOAT64 else _FLOAT32
    x = _canonical(X, kernel_plan.input_5d, compute)
    a, write_back = _output(A, kernel_plan.output_5d, compute, zero=False)
    geometry, reach = kernel_plan.geometry, kernel_plan.reach
    _kernels().forward(x, a, winners, geometry, reach, spec.mode == "max", spec.ties == "first")
    write_back()


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
    Overlapping windows: each input row gathers its windows' contributions in row-major
    window-offset order in the accumulation dtype, starting, like NumPy's phase buffers, from
    its stride phase's first offset where that offset reaches it and from +0.0 elsewhere.
    """
    kernels = _kernels()
    kernel_plan = _kernel_plan(spec, plan)
    geometry, reach = kernel_plan.geometry, kernel_plan.reach
    accumulate = accumulate_dtype(dX.dtype) if not plan.disjoint else dX.dtype
    if spec.ties == "split":
        gradient = split_shares(dA, winner_counts(winners, dA.shape), accumulate)
    else:
        gradient = dA.astype(accumulate, copy=False)
    if plan.disjoint:
        # A bitwise copy: inf and NaN in dA reach winners only, float16 needs no arithmetic.
        bits = bits_dtype(dX.dtype)
        g = _canonical(gradient.view(bits), kernel_plan.output_5d, bits)
        target, write_back = _output(
            dX.view(bits), kernel_plan.input_5d, bits, zero=not plan.exact_cover
        )
        kernels.backward_disjoint(g, winners, target, geometry, reach)
        write_back()
        return "compiled-disjoint"
    g = _canonical(gradient, kernel_plan.output_5d, accumulate)
    target, write_back = _output(dX, kernel_plan.input_5d, accumulate, zero=False)
    kernels.backward_gather(g, winners, target, geometry, reach, kernel_plan.phase_firsts)
    write_back()
    return "compiled-gather"


# -- array plumbing ----------------------------------------------------------------------------


def _shape_5d(shape: tuple[int, ...], spec: PoolSpec) -> tuple[int, ...]:
    """``(n, t, h, w, c)`` of a chunk: missing spatial dims of size 1; a channels_first chunk
    as ``m * d`` single-channel images, whose C order is the chunk's own."""
    pad = (1,) * (3 - spec.ndim)
    if spec.layout == "channels_last":
        return (shape[0], *pad, *shape[1:])
    return (shape[0] * shape[1], *pad, *shape[2:], 1)


#: The compute dtypes, as dtype objects: comparing a dtype with ``np.float64`` converts the
#: type on every call.
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def _in_place() -> None:
    """What :func:`_output` returns to call when the kernel wrote ``array`` itself."""


def _canonical(array: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The chunk as a C-contiguous array of ``dtype`` and 5-D ``shape`` (its
    :func:`_shape_5d`): a view when it already is one."""
    return np.ascontiguousarray(array, dtype=dtype).reshape(shape)


def _output(
    array: np.ndarray, shape: tuple[int, ...], dtype: Any, *, zero: bool
) -> tuple[np.ndarray, Callable[[], None]]:
    """A C-contiguous array of 5-D ``shape`` (``array``'s :func:`_shape_5d`) for a kernel to
    write, and the call that moves it into ``array``: a view of ``array`` when possible
    (nothing to move), else a scratch array (zeroed if ``zero``, as the caller zeroed
    ``array``)."""
    if array.flags.c_contiguous and array.dtype == dtype:
        return array.reshape(shape), _in_place
    scratch = (np.zeros if zero else np.empty)(shape, dtype=dtype)
    return scratch, lambda: np.copyto(array, scratch.reshape(array.shape), casting="unsafe")


class _KernelPlan(NamedTuple):
    """What the kernels take of one chunk's geometry, derived from its spec and plan alone."""

    input_5d: tuple[int, ...]
    """:func:`_shape_5d` of the chunk's X (and dX)."""
    output_5d: tuple[int, ...]
    """:func:`_shape_5d` of the chunk's A (and dA)."""
    geometry: np.ndarray
    """int64 ``(3, 4)``: per 3-D spatial dim, pool size, stride, padding before, output size."""
    reach: np.ndarray
    """int64 ``(3, max pool, 2)``: per dim and window offset, the outputs ``[lo, hi)`` whose
    window puts that offset on a real element (``lo == hi`` for none)."""
    phase_firsts: np.ndarray
    """bool ``(3, max pool)``: per dim, whether window offset ``o`` is the smallest offset of
    its stride phase (``o mod stride``) that lands on a real element: the offset NumPy's
    phase path writes first, the others adding to it (the gather kernel's)."""


def _kernel_plan(spec: PoolSpec, plan: Plan) -> _KernelPlan:
    """The kernels' view of a chunk, kept with its plan (:meth:`~engine.geometry.Plan.derived`:
    a few hundred bytes, about 50 per window offset of the longest dim) and shared by threads
    (the kernels only read it): built per call, the geometry cost a tiny call more than its
    kernels did (about 18 us of a 28 us forward), and one lookup per chunk replaces one per
    fact."""
    return plan.derived("kernel-plan", lambda: _build_kernel_plan(spec, plan))


def _build_kernel_plan(spec: PoolSpec, plan: Plan) -> _KernelPlan:
    geometry, reach = _build_geometry(spec, plan)
    return _KernelPlan(
        input_5d=_shape_5d(plan.input_shape, spec),
        output_5d=_shape_5d(plan.output_shape, spec),
        geometry=geometry,
        reach=reach,
        phase_firsts=_build_phase_firsts(geometry, reach),
    )


def _build_geometry(spec: PoolSpec, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    rows = [(1, 1, 0, 1, 1)] * (3 - spec.ndim)
    for dim, axis in enumerate(plan.spatial_axes):
        rows.append(
            (
                spec.pool_size[dim],
                spec.strides[dim],
                plan.padding[dim][0],
                plan.output_shape[axis],
                plan.input_shape[axis],
            )
        )
    geometry = np.array(rows, dtype=np.int64)
    reach = np.zeros((3, int(geometry[:, 0].max()), 2), dtype=np.int64)
    for dim, (pool, stride, before, out, size) in enumerate(rows):
        offsets = np.arange(pool)
        lo = np.maximum(0, -((offsets - before) // stride))
        hi = np.minimum(out, (size - 1 + before - offsets) // stride + 1)
        reach[dim, :pool, 0] = lo
        reach[dim, :pool, 1] = np.maximum(lo, hi)
    return np.ascontiguousarray(geometry[:, :4]), reach


def _build_phase_firsts(geometry: np.ndarray, reach: np.ndarray) -> np.ndarray:
    firsts = np.zeros(reach.shape[:2], dtype=np.bool_)
    for dim, (pool, stride, _, _) in enumerate(geometry):
        seen: set[int] = set()
        for offset in range(pool):
            lands = reach[dim, offset, 0] < reach[dim, offset, 1]
            if lands and offset % stride not in seen:
                seen.add(offset % stride)
                firsts[dim, offset] = True
    return firsts


@functools.cache
def _kernels() -> SimpleNamespace:
    """The compiled functions, one signature per dtype, compiled (or loaded from the on-disk
    cache) on first use."""
    if not available():
        raise KernelsUnavailable("the compiled kernels need Numba: install poolgrad[fast]")
    import numba

    from engine import _numba_kernels as kernels

    def array(dtype: Any, ndim: int, contiguous: bool = True, readonly: bool = False) -> Any:
        return numba.types.Array(dtype, ndim, "C" if contiguous else "A", readonly=readonly)

    # A chunk's columns of the state's bit planes: forward ORs bits in, backward reads them.
    planes = array(numba.uint8, 2, contiguous=False)
    planes_in = array(numba.uint8, 2, contiguous=False, readonly=True)
    i64_2d, i64_3d, b_2d = array(numba.int64, 2), array(numba.int64, 3), array(numba.boolean, 2)
    floats, ints = (numba.float32, numba.float64), (numba.int16, numba.int32, numba.int64)

    def compile_(signatures: list[Any]) -> Callable[[Callable[..., None]], Any]:
        def build(function: Callable[..., None]) -> Any:
            # boundscheck off (the default, said aloud): the loops stay within the geometry
            # the plan checked. fastmath off: bit-exactness with NumPy is the contract.
            def jit(cache: bool) -> Any:
                return numba.njit(
                    signatures,
                    cache=cache,
                    nogil=True,
                    boundscheck=False,
                    fastmath=False,
                    error_model="numpy",
                )(function)

            try:
                return jit(cache=True)
            except RuntimeError as exc:
                # No writable cache location (a read-only install without NUMBA_CACHE_DIR):
                # compile for this process only rather than fail to start.
                if "cannot cache" not in str(exc):
                    raise
                return jit(cache=False)

        return build

    forward = compile_(
        [
            numba.void(
                array(f, 5, readonly=True),
                array(f, 5),
                planes,
                i64_2d,
                i64_3d,
                numba.boolean,
                numba.boolean,
            )
            for f in floats
        ]
    )(kernels.forward)
    backward_disjoint = compile_(
        [
            numba.void(array(i, 5, readonly=True), planes_in, array(i, 5), i64_2d, i64_3d)
            for i in ints
        ]
    )(kernels.backward_disjoint)
    backward_gather = compile_(
        [
            numba.void(array(f, 5, readonly=True), planes_in, array(f, 5), i64_2d, i64_3d, b_2d)
            for f in floats
        ]
    )(kernels.backward_gather)
    return SimpleNamespace(
        forward=forward, backward_disjoint=backward_disjoint, backward_gather=backward_gather
    )
