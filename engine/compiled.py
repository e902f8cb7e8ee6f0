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

from engine.errors import KernelsUnavailable, TensorError
from engine.geometry import Plan, make_plan
from engine.memo import WeighedMemo, deep_bytes
from engine.options import DEFAULT_OPTIONS, EngineOptions, KernelChoice
from engine.spec import PoolSpec
from engine.state import SUPPORTED_DTYPES, packed_plane_bytes
from engine.upstream import accumulate_dtype, bits_dtype, split_shares, winner_counts

__all__ = [
    "WholeCall",
    "available",
    "extreme_backward_chunk",
    "extreme_forward_chunk",
    "kernel_set",
    "warm_up",
    "whole_backward",
    "whole_call",
    "whole_forward",
    "whole_gradient",
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
    compute = _FLOAT64 if X.dtype == _FLOAT64 else _FLOAT32
    kernel_plan = _kernel_plan(spec, plan)
    _forward(kernel_plan, compute, spec.mode == "max", spec.ties == "first", X, A, winners)


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
    kernel_plan = _kernel_plan(spec, plan)
    split = spec.ties == "split"
    return _backward(kernel_plan, plan.disjoint, plan.exact_cover, split, winners, dA, dX)


def _forward(
    kernel_plan: _KernelPlan,
    compute: np.dtype[Any],
    is_max: bool,
    first_only: bool,
    X: np.ndarray,
    A: np.ndarray,
    winners: np.ndarray,
) -> None:
    """:func:`extreme_forward_chunk` from the chunk's facts (a :class:`WholeCall` holds them)."""
    x = _canonical(X, kernel_plan.input_5d, compute)
    a, write_back = _output(A, kernel_plan.output_5d, compute, zero=False)
    geometry, reach = kernel_plan.geometry, kernel_plan.reach
    _kernels().forward(x, a, winners, geometry, reach, is_max, first_only)
    write_back()


def _backward(
    kernel_plan: _KernelPlan,
    disjoint: bool,
    exact_cover: bool,
    split: bool,
    winners: np.ndarray,
    dA: np.ndarray,
    dX: np.ndarray,
) -> str:
    """:func:`extreme_backward_chunk` from the chunk's facts (``dA`` of dX's dtype)."""
    kernels = _kernels()
    geometry, reach = kernel_plan.geometry, kernel_plan.reach
    accumulate = accumulate_dtype(dX.dtype) if not disjoint else dX.dtype
    if split:
        gradient = split_shares(dA, winner_counts(winners, dA.shape), accumulate)
    else:
        gradient = dA.astype(accumulate, copy=False)
    if disjoint:
        # A bitwise copy: inf and NaN in dA reach winners only, float16 needs no arithmetic.
        bits = bits_dtype(dX.dtype)
        g = _canonical(gradient.view(bits), kernel_plan.output_5d, bits)
        target, write_back = _output(
            dX.view(bits), kernel_plan.input_5d, bits, zero=not exact_cover
        )
        kernels.backward_disjoint(g, winners, target, geometry, reach)
        write_back()
        return "compiled-disjoint"
    g = _canonical(gradient, kernel_plan.output_5d, accumulate)
    target, write_back = _output(dX, kernel_plan.input_5d, accumulate, zero=False)
    kernels.backward_gather(g, winners, target, geometry, reach, kernel_plan.phase_firsts)
    write_back()
    return "compiled-gather"


# -- a whole call as one chunk ---------------------------------------------------------------


class WholeCall(NamedTuple):
    """A max/min call the compiled kernels can run as one chunk, skipping the engine's split:
    everything it needs that follows from its spec, input shape and dtype, derived once
    (:func:`whole_call`). A tiny call's kernels cost about 3 us; the general path's steps
    around them (options, kernel choice, plan, split, per-chunk closures, error state) cost
    it twice that again."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    """X's (native, supported) dtype: A's, dX's and the dtype dA must have for this path."""
    compute: np.dtype[Any]
    kernel_plan: _KernelPlan
    winners_shape: tuple[int, int]
    is_max: bool
    first_only: bool
    split: bool
    disjoint: bool
    exact_cover: bool
    reject_nan: bool
    auto: bool
    """``kernels="auto"`` picks the compiled kernels for this call (:func:`kernel_set`)."""
    batch: int
    input_size: int
    input_bytes: int
    tiny: bool
    """Runs on the tiny kernel: forward and backward in one call (no ``ties="split"``,
    whose shares NumPy computes between the two)."""
    tiny_flags: int
    """The tiny kernel's ``flags``."""
    gradient_dtype: np.dtype[Any]
    """The tiny kernel's ``G`` and ``dX``: X's dtype (disjoint windows: copied, never summed),
    its bits for float16 (which Numba does not compute in), or the accumulation dtype."""
    gradient_bits: bool
    """``gradient_dtype`` is float16's bits."""

    def runs_on(self, options: EngineOptions) -> bool:
        """Whether ``options`` run this call as one compiled chunk on the calling thread,
        on the default paths: exactly what the general path would run, minus its steps."""
        if not (options.kernels == "compiled" or (options.kernels == "auto" and self.auto)):
            return False
        if options.threads != 1 and self.input_size >= options.parallel_min_elements:
            return False
        # The compiled kernels cut a call on one thread into one piece unless a test asks
        # for smaller pieces (then only inputs below them).
        piece_bytes = options.piece_bytes
        small = piece_bytes == DEFAULT_OPTIONS.piece_bytes or self.input_bytes <= piece_bytes
        return options.disjoint_path and (self.batch == 1 or small)


#: Bytes that memoized :class:`WholeCall` facts may hold in all (about 1 KiB each; their
#: kernel plans are shared with the plans').
WHOLE_CALL_MEMO_BYTES = 4 << 20

_whole_calls: WeighedMemo[WholeCall | None] = WeighedMemo(
    WHOLE_CALL_MEMO_BYTES, deep_bytes, name="whole-calls"
)


def whole_call(
    spec: PoolSpec, input_shape: tuple[int, ...], dtype: np.dtype[Any]
) -> WholeCall | None:
    """The :class:`WholeCall` for X of ``input_shape`` and ``dtype`` under ``spec``, or None
    when the compiled kernels cannot run it (no Numba, avg, an unsupported or non-native
    dtype, a shape the plan refuses: the general path then raises what it must). Memoized:
    a hit is one lookup."""
    return _whole_calls.get(
        (spec, input_shape, dtype), lambda: _build_whole_call(spec, input_shape, dtype)
    )


def _build_whole_call(
    spec: PoolSpec, input_shape: tuple[int, ...], dtype: np.dtype[Any]
) -> WholeCall | None:
    if not available() or spec.mode == "avg" or dtype not in SUPPORTED_DTYPES:
        return None
    try:
        plan = make_plan(spec, input_shape)
    except TensorError:
        return None
    return WholeCall(
        input_shape=plan.input_shape,
        output_shape=plan.output_shape,
        dtype=dtype,
        compute=_FLOAT64 if dtype == _FLOAT64 else _FLOAT32,
        kernel_plan=_kernel_plan(spec, plan),
        winners_shape=(plan.window_size, packed_plane_bytes(plan.output_shape)),
        is_max=spec.mode == "max",
        first_only=spec.ties == "first",
        split=spec.ties == "split",
        disjoint=plan.disjoint,
        exact_cover=plan.exact_cover,
        reject_nan=spec.nan == "reject",
        auto=kernel_set("auto", spec, plan.input_shape) == "compiled",
        batch=plan.input_shape[0],
        input_size=plan.input_size,
        input_bytes=plan.input_size * dtype.itemsize,
        tiny=spec.ties != "split" and plan.input_size <= TINY_ELEMENTS,
        tiny_flags=(spec.mode == "max") | (spec.ties == "first") << 1 | plan.disjoint << 2,
        gradient_dtype=_tiny_gradient_dtype(dtype, plan.disjoint),
        gradient_bits=plan.disjoint and dtype == _FLOAT16,
    )


def _tiny_gradient_dtype(dtype: np.dtype[Any], disjoint: bool) -> np.dtype[Any]:
    if not disjoint:
        return accumulate_dtype(dtype)
    return bits_dtype(dtype) if dtype == _FLOAT16 else dtype


#: Inputs up to this many elements run on the tiny kernel (:class:`WholeCall`): its scalar
#: loops cost a few ns per window element, the row kernels' spans about 0.1 us each to set
#: up. Kernel time alone, float32 max, tiny against forward + backward row kernels: 2x2/2
#: (1, 32, 32, 1) 6.2 / 9.2 us, (1, 64, 64, 1) 21 / 18 us; 3x3/2 (4, 8, 8, 4) 5.5 / 13.2 us,
#: (1, 8, 8, 16) 4.1 / 4.4 us, (1, 16, 16, 16) 17 / 10 us: the row kernels win from about
#: here on.
TINY_ELEMENTS = 1024


def whole_forward(call: WholeCall, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and the winner planes of X (checked, of ``call.dtype`` and ``call.input_shape``)
    on the chunk kernels as one chunk: what :func:`engine.forward`'s general path computes.
    No error state: the kernels and the copies around them do no NumPy arithmetic."""
    A = np.empty(call.output_shape, call.dtype)
    winners = np.zeros(call.winners_shape, np.uint8)
    _forward(call.kernel_plan, call.compute, call.is_max, call.first_only, X, A, winners)
    return A, winners


def whole_backward(call: WholeCall, winners: np.ndarray, dA: np.ndarray) -> np.ndarray:
    """dX from a forward's winner planes and dA (of A's shape and X's dtype) on the chunk
    kernels as one chunk: what :func:`engine.backward`'s general path computes (float16 under
    its error state, as :func:`whole_gradient` says)."""
    if call.dtype == _FLOAT16:
        with np.errstate(invalid="ignore", over="ignore"):
            return _whole_backward(call, winners, dA)
    return _whole_backward(call, winners, dA)


def _whole_backward(call: WholeCall, winners: np.ndarray, dA: np.ndarray) -> np.ndarray:
    # As the general path allocates it: disjoint windows write only what they cover.
    allocate = np.zeros if call.disjoint and not call.exact_cover else np.empty
    dX = allocate(call.input_shape, call.dtype)
    _backward(call.kernel_plan, call.disjoint, call.exact_cover, call.split, winners, dA, dX)
    return dX


def whole_gradient(call: WholeCall, X: np.ndarray, dA: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``dX`` of X (checked, of ``call.dtype`` and ``call.input_shape``) and dA
    (of A's shape and X's dtype), bit for bit what :func:`engine.gradient`'s general path
    returns: on the tiny kernel (``call.tiny``), else on the chunk kernels as one chunk.

    float16 runs under the error state the general path sets: its overlapping windows' float32
    sums are cast back, and an overflow there is data (inf), not a warning. The other dtypes
    need none: the kernels and the copies around them do no NumPy arithmetic that can warn
    (split shares divide by a count of at least 1, in a wider dtype), and entering and leaving
    an error state costs a tiny call 1 us."""
    if call.dtype == _FLOAT16:
        with np.errstate(invalid="ignore", over="ignore"):
            return _whole_gradient(call, X, dA)
    return _whole_gradient(call, X, dA)


def _whole_gradient(
    call: WholeCall, X: np.ndarray, dA: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if not call.tiny:
        A, winners = whole_forward(call, X)
        return A, _whole_backward(call, winners, dA)
    kernel_plan = call.kernel_plan
    winners = np.zeros(call.winners_shape, np.uint8)
    # A and dX are allocated as the kernel takes them and returned as views of their shape
    # (C-contiguous all the same): every NumPy call costs a tiny call 0.1-0.2 us.
    gradient_dtype = call.gradient_dtype
    x = _canonical(X, kernel_plan.input_5d, call.compute)
    g = _canonical(
        dA.view(gradient_dtype) if call.gradient_bits else dA, kernel_plan.output_5d, gradient_dtype
    )
    a = np.empty(kernel_plan.output_5d, call.compute)
    d = np.empty(kernel_plan.input_5d, gradient_dtype)
    _kernels().tiny_gradient(x, a, winners, g, d, kernel_plan.table, call.tiny_flags)
    A, dX = a.reshape(call.output_shape), d.reshape(call.input_shape)
    if call.dtype != _FLOAT16:
        return A, dX
    return A.astype(_FLOAT16), dX.view(_FLOAT16) if call.gradient_bits else dX.astype(_FLOAT16)


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
_FLOAT16, _FLOAT32, _FLOAT64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


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
    table: np.ndarray
    """int64 ``(3, 1 + max pool, 3)``: the three above in one array for the tiny kernel (one
    argument to pass, not three): per dim, row 0 pool size, stride, padding before; row
    ``1 + o`` offset ``o``'s reach ``[lo, hi)`` and phase-first flag."""


def _kernel_plan(spec: PoolSpec, plan: Plan) -> _KernelPlan:
    """The kernels' view of a chunk, kept with its plan (:meth:`~engine.geometry.Plan.derived`:
    a few hundred bytes, about 50 per window offset of the longest dim) and shared by threads
    (the kernels only read it): built per call, the geometry cost a tiny call more than its
    kernels did (about 18 us of a 28 us forward), and one lookup per chunk replaces one per
    fact."""
    return plan.derived("kernel-plan", lambda: _build_kernel_plan(spec, plan))


def _build_kernel_plan(spec: PoolSpec, plan: Plan) -> _KernelPlan:
    geometry, reach = _build_geometry(spec, plan)
    phase_firsts = _build_phase_firsts(geometry, reach)
    table = np.zeros((3, 1 + reach.shape[1], 3), dtype=np.int64)
    table[:, 0] = geometry[:, :3]
    table[:, 1:, :2] = reach
    table[:, 1:, 2] = phase_firsts
    return _KernelPlan(
        input_5d=_shape_5d(plan.input_shape, spec),
        output_5d=_shape_5d(plan.output_shape, spec),
        geometry=geometry,
        reach=reach,
        phase_firsts=phase_firsts,
        table=table,
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
    # The tiny kernel: per compute dtype, its gradient (float16's as its bits, disjoint
    # windows only).
    tiny_gradient = compile_(
        [
            numba.void(
                array(f, 5, readonly=True),
                array(f, 5),
                array(numba.uint8, 2),
                array(g, 5, readonly=True),
                array(g, 5),
                i64_3d,
                numba.int64,
            )
            for f, g in (
                (numba.float32, numba.float32),
                (numba.float64, numba.float64),
                (numba.float32, numba.int16),
            )
        ]
    )(kernels.tiny_gradient)
    return SimpleNamespace(
        forward=forward,
        backward_disjoint=backward_disjoint,
        backward_gather=backward_gather,
        tiny_gradient=tiny_gradient,
    )
