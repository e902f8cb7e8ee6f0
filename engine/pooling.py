"""forward and backward: max, min and avg pooling over 1 to 3 spatial dims.

Each kernel loops over the ``prod(pool_size)`` window offsets (see :mod:`engine.geometry`),
doing one vectorized NumPy operation per offset over all output positions at once: no Python
loop over output positions or over the batch. Batches are cut into pieces of about 1 MiB of X
that stay in L2 (a loop over pieces, not over samples); large inputs are spread over a small
thread pool, a single sample along the outermost axis that keeps chunks independent
(:mod:`engine.parallel`). Results are bit-identical however the call is cut.

max/min backward takes one of two paths, chosen from the geometry alone:

- disjoint windows (stride >= pool in every dim): each offset's gradient is written straight
  into its strided view of dX, once, no accumulation; only an uncovered remainder is zeroed;
- overlapping windows: dX is split into stride phases (``X[..., r::s, ...]``); each offset
  feeds one phase, so each phase's contributions are summed in a contiguous buffer and reach
  dX in one write, for all phases at once through a phase-major view of dX when every
  spatial size divides by its stride.

Both apply the tie rule resolved at forward time (``ties`` only changes which winner bits are
set, plus a per-window share for ``"split"``).

Forward and backward of each mode sit side by side below. :func:`gradient` runs both in one
call for a caller that keeps no state: the same kernels, the winner planes passed on in memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np

from engine import compiled
from engine.errors import ShapeMismatchError, StateError, TensorError
from engine.geometry import Offset, Plan, make_plan
from engine.memo import WeighedMemo, deep_bytes, sampled_bytes
from engine.options import DEFAULT_OPTIONS, EngineOptions, RunReport
from engine.parallel import Chunk, run_chunks, split
from engine.spec import PoolSpec
from engine.state import SUPPORTED_DTYPES, PoolState, packed_plane_bytes
from engine.upstream import accumulate_dtype, bits_dtype, split_shares, winner_counts

__all__ = ["backward", "forward", "gradient"]


def forward(
    X: np.ndarray,
    spec: PoolSpec,
    *,
    options: EngineOptions | None = None,
    report: RunReport | None = None,
) -> tuple[np.ndarray, PoolState]:
    """Pool ``X`` under ``spec``; return the output and the state backward needs.

    Parameters
    ----------
    X : ndarray, float16, float32 or float64
        ``(m, *spatial, d)`` for ``channels_last``, ``(m, d, *spatial)`` for ``channels_first``.
        Any memory order; read-only arrays are fine: X is never written and never kept.
    spec : PoolSpec
    options : EngineOptions, optional
        Threads and kernel set (:mod:`engine.options`); the defaults otherwise. The result
        does not depend on them, bit for bit.
    report : RunReport, optional
        Filled in with the kernels, chunks and threads that ran.

    Returns
    -------
    A : ndarray
        A new C-contiguous array of X's dtype (native byte order), shape ``X.shape`` with each
        spatial dim replaced by ``floor((in + before + after - p) / s) + 1``.
    state : PoolState
        max/min: one bit-packed winner plane per window offset, ``prod(pool_size) * A.size / 8``
        bytes, already resolved under ``spec.ties``; avg: shapes only (plus one bit per output
        when X holds NaN).

    Raises
    ------
    TensorError
        X is not an ndarray, has an unsupported dtype, the wrong rank, a zero-size dim, a window
        larger than the padded input, or NaN under ``nan="reject"``.

    Notes
    -----
    Cost: ``prod(pool_size)`` passes over the output for the pooled value and, for max/min, as
    many comparisons and bit-packings for the winners. Padding is never materialized and never
    wins: max/min windows start from the first real offset (or from -inf/+inf where padding
    precedes it) and winner bits are only computed where the offset lands on a real element.
    A call the compiled kernels run as one chunk on the calling thread goes straight to them,
    as :func:`gradient` says.
    """
    if report is None and type(X) is np.ndarray:
        whole = _whole_call(X, None, spec, options)
        if whole is not None:
            if whole.reject_nan:
                _checked_input(X, spec)
            A, winners = compiled.whole_forward(whole, X)
            return A, PoolState(spec, whole.input_shape, whole.output_shape, whole.dtype, winners)
    X = _checked_input(X, spec)
    plan = make_plan(spec, X.shape)
    run = _Run(options, report, spec, plan, X.dtype.itemsize)
    A = np.empty(plan.output_shape, dtype=X.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        planes = _pool(X, spec, plan, A, run)
    return A, PoolState(spec, plan.input_shape, plan.output_shape, X.dtype, *planes)


def backward(
    state: PoolState,
    dA: np.ndarray,
    *,
    options: EngineOptions | None = None,
    report: RunReport | None = None,
) -> np.ndarray:
    """Gradient of the pooled output with respect to X, from ``state`` and upstream ``dA``.

    Parameters
    ----------
    state : PoolState
        From :func:`forward` (or :meth:`PoolState.from_bytes`); never modified.
    dA : ndarray of shape ``state.output_shape``, any real int or float dtype
        Cast to ``state.dtype`` first; never modified.
    options, report
        As for :func:`forward`.

    Returns
    -------
    dX : ndarray
        A new C-contiguous array of shape ``state.input_shape`` and dtype ``state.dtype``.
        Padded positions receive nothing; elements outside every window get 0.

    Raises
    ------
    ShapeMismatchError
        dA's shape differs from ``state.output_shape``.
    TensorError
        dA is not an ndarray of real numbers.
    StateError
        A max/min state holds no winners.

    Notes
    -----
    max/min: each window sends ``dA`` to its winners as resolved by forward (``ties="all"``:
    every tied element gets the full ``dA``; ``"first"``: the first in row-major window order;
    ``"split"``: ``dA / n_tied`` each); NaN windows have no winners. avg: each element gets
    ``dA / divisor`` from every window covering it, except NaN windows. Overlapping windows
    accumulate (in float32 for float16). Pure: the same state and dA give the same dX.
    Cost, max/min: one unpacking of the winner bits, then per window offset one masked
    select (a bitwise pass, so inf/NaN in dA never reach losers); disjoint windows write it
    into dX directly, overlapping ones add it into their stride phase's buffer, written into
    dX once (see the module docstring). avg: one pass per offset. A call the compiled
    kernels run as one chunk on the calling thread, dA already of the state's dtype, goes
    straight to them, as :func:`gradient` says.
    """
    if not isinstance(state, PoolState):
        raise TypeError(f"state must be a PoolState, got {type(state).__name__}")
    if report is None and type(dA) is np.ndarray and state.winners is not None:
        whole = _whole_call(state, dA, state.spec, options)
        if whole is not None:
            return compiled.whole_backward(whole, state.winners, dA)
    with np.errstate(invalid="ignore", over="ignore"):  # dA's cast to float16 may overflow
        dA = _checked_upstream(dA, state.output_shape, state.dtype)
        plan = make_plan(state.spec, state.input_shape)
        run = _Run(options, report, state.spec, plan, state.dtype.itemsize)
        return _unpool(state.spec, plan, state.winners, state.nan_windows, dA, run)


def gradient(
    X: np.ndarray,
    dA: np.ndarray,
    spec: PoolSpec,
    *,
    options: EngineOptions | None = None,
    report: RunReport | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`forward` then :func:`backward` in one call: ``A`` and ``dX``, bit for bit theirs.

    For a caller that wants the gradient at once and keeps no state (the service's stateless
    route): the winner planes go from the forward kernels to the backward kernels in memory,
    never through a :class:`PoolState`, and what a call costs besides its kernels (checks,
    plan and split lookups, kernel choice, error state) is paid once instead of twice, about
    a third of the engine time of a tiny call.

    Parameters
    ----------
    X, spec
        As for :func:`forward`.
    dA : ndarray of A's shape, any real int or float dtype
        As for :func:`backward`: cast to X's dtype first; never modified.
    options, report
        As for :func:`forward`; ``report`` describes both halves (they run the same kernel
        set on the same chunks), ``backward_path`` included.

    Returns
    -------
    A, dX : ndarray
        New C-contiguous arrays, exactly as ``forward(X, spec)`` and then
        ``backward(state, dA)`` return them.

    Raises
    ------
    TensorError, ShapeMismatchError
        What :func:`forward` raises for X, then what :func:`backward` raises for dA (whose
        shape is checked against A's), with the same messages; both are checked before any
        kernel runs.

    Notes
    -----
    A call the compiled kernels run as one chunk on the calling thread (a small X, or
    ``threads=1``, with the default path options and no ``report``) skips the split and
    goes straight to them (:class:`engine.compiled.WholeCall`), up to 1024 elements to one
    kernel that runs forward and backward at once: the same bits, at under half the cost of
    a tiny call.
    """
    if report is None and type(X) is np.ndarray and type(dA) is np.ndarray:
        whole = _whole_call(X, dA, spec, options)
        if whole is not None:
            if whole.reject_nan:
                _checked_input(X, spec)
            return compiled.whole_gradient(whole, X, dA)
    X = _checked_input(X, spec)
    plan = make_plan(spec, X.shape)
    run = _Run(options, report, spec, plan, X.dtype.itemsize)
    with np.errstate(invalid="ignore", over="ignore"):
        dA = _checked_upstream(dA, plan.output_shape, X.dtype)
        A = np.empty(plan.output_shape, dtype=X.dtype)
        winners, nan_windows = _pool(X, spec, plan, A, run)
        return A, _unpool(spec, plan, winners, nan_windows, dA, run)


def _whole_call(
    X: np.ndarray | PoolState,
    dA: np.ndarray | None,
    spec: PoolSpec,
    options: EngineOptions | None,
) -> compiled.WholeCall | None:
    """The call's :class:`~engine.compiled.WholeCall` (for X, or the state of a forward on
    it) when the compiled kernels run it as one chunk as it is: dA, when given, already of
    X's dtype and A's shape (a cast or a mismatch is left to the general path, with its
    checks and messages)."""
    options = DEFAULT_OPTIONS if options is None else options
    # kernels="numpy" never loads Numba, not even to find out whether it is there.
    if options.kernels == "numpy" or not isinstance(spec, PoolSpec):
        return None
    shape, dtype = (X.input_shape, X.dtype) if isinstance(X, PoolState) else (X.shape, X.dtype)
    whole = compiled.whole_call(spec, shape, dtype)
    if (
        whole is None
        or (dA is not None and (dA.dtype != whole.dtype or dA.shape != whole.output_shape))
        or not whole.runs_on(options)
    ):
        return None
    return whole


class _Planes(NamedTuple):
    """The bit planes a forward leaves for its backward (:class:`PoolState`'s arrays, in the
    order its constructor takes them)."""

    winners: np.ndarray | None
    nan_windows: np.ndarray | None


def _pool(X: np.ndarray, spec: PoolSpec, plan: Plan, A: np.ndarray, run: _Run) -> _Planes:
    """Fill ``A``; return what backward needs (run under the callers' error state)."""
    if spec.mode == "avg":
        return _Planes(None, _avg_forward(X, spec, plan, A, run))
    return _Planes(_extreme_forward(X, spec, plan, A, run), None)


def _unpool(
    spec: PoolSpec,
    plan: Plan,
    winners: np.ndarray | None,
    nan_windows: np.ndarray | None,
    dA: np.ndarray,
    run: _Run,
) -> np.ndarray:
    """dX from a forward's planes and ``dA`` (already of X's dtype)."""
    if spec.mode == "avg":
        return _avg_backward(plan, nan_windows, dA, run)
    if winners is None:
        raise StateError(f"state for mode {spec.mode!r} holds no winners")
    return _extreme_backward(spec, plan, winners, dA, run)


# -- max / min -------------------------------------------------------------------------------


def _extreme_forward(
    X: np.ndarray, spec: PoolSpec, plan: Plan, A: np.ndarray, run: _Run
) -> np.ndarray:
    winners = np.zeros((plan.window_size, packed_plane_bytes(plan.output_shape)), np.uint8)

    def work(chunk: Chunk) -> None:
        kernel = run.kernel_for(chunk, compiled.extreme_forward_chunk, _extreme_forward_chunk)
        kernel(
            X[chunk.input_index],
            chunk.spec,
            chunk.plan,
            A[chunk.output_index],
            winners[:, chunk.byte_start : chunk.byte_stop],
        )

    run.chunks(work)
    return winners


def _extreme_forward_chunk(
    X: np.ndarray, spec: PoolSpec, plan: Plan, A: np.ndarray, winners: np.ndarray
) -> None:
    better = np.maximum if spec.mode == "max" else np.minimum
    offsets = plan.offsets
    first = offsets[0]
    if first is not None and first.full:
        np.copyto(A, X[first.in_index])
        rest = offsets[1:]
    else:
        # Padding precedes the first real element of some windows: start from the identity of
        # the reduction. Every window holds a real element, so the identity never survives.
        A.fill(-np.inf if spec.mode == "max" else np.inf)
        rest = offsets
    for offset in rest:
        if offset is not None:
            target = A[offset.out_index]
            better(target, X[offset.in_index], out=target)

    # NaN compares unequal to everything, so a NaN window (A is NaN) has no winners. Bits are
    # computed only where the offset lands on a real element: padding never wins.
    hit = np.empty(plan.output_shape, dtype=np.bool_)
    untaken = np.ones(plan.output_shape, dtype=np.bool_) if spec.ties == "first" else None
    for k, offset in enumerate(offsets):
        if offset is None:
            continue
        if not offset.full:
            hit.fill(False)
        np.equal(X[offset.in_index], A[offset.out_index], out=hit[offset.out_index])
        if untaken is not None:
            np.logical_and(hit, untaken, out=hit)
            # hit is a subset of untaken here, so xor clears exactly the windows just won.
            np.logical_xor(untaken, hit, out=untaken)
        winners[k] = np.packbits(hit)


def _extreme_backward(
    spec: PoolSpec, plan: Plan, winners: np.ndarray, dA: np.ndarray, run: _Run
) -> np.ndarray:
    if not run.options.disjoint_path:
        plan = dataclasses.replace(plan, disjoint=False, exact_cover=False)
    # Disjoint windows: exactly covered inputs get every element written once (winner or +0.0),
    # so no zeroing. Overlapping windows: every element is written once, phase by phase.
    allocate = np.zeros if plan.disjoint and not plan.exact_cover else np.empty
    dX = allocate(plan.input_shape, dtype=dA.dtype)

    paths = set()

    def work(chunk: Chunk) -> None:
        if not run.options.disjoint_path:
            chunk = chunk._replace(
                plan=dataclasses.replace(chunk.plan, disjoint=False, exact_cover=False)
            )
        kernel = run.kernel_for(chunk, compiled.extreme_backward_chunk, _extreme_backward_chunk)
        path = kernel(
            chunk.spec,
            chunk.plan,
            winners[:, chunk.byte_start : chunk.byte_stop],
            dA[chunk.output_index],
            dX[chunk.input_index],
            run.options.merged_phase_write,
        )
        paths.add(path)

    run.chunks(work)
    if run.report is not None:
        run.report.backward_path = "+".join(sorted(paths))
    return dX


def _extreme_backward_chunk(
    spec: PoolSpec,
    plan: Plan,
    winners: np.ndarray,
    dA: np.ndarray,
    dX: np.ndarray,
    merged_phase_write: bool,
) -> str:
    """One chunk's max/min dX; returns the path taken (see :class:`~engine.options.RunReport`)."""
    size = dA.size
    accumulate = accumulate_dtype(dX.dtype) if not plan.disjoint else dX.dtype
    gradient = dA.astype(accumulate, copy=False)
    if spec.ties == "split":
        gradient = split_shares(dA, winner_counts(winners, dA.shape), accumulate)

    def masked(k: int, offset: Offset, out: np.ndarray) -> None:
        # One plane at a time as uint8 0/1 (all planes at once would be a byte per window
        # element of every output: up to MAX_WORK bytes), then 0/1 -> 0/255, i.e. int8 0/-1:
        # sign-extended, all bits clear or set at any width.
        mask = np.unpackbits(winners[k], count=size).reshape(plan.output_shape)
        np.negative(mask, out=mask)
        _select(gradient[offset.out_index], mask.view(np.int8)[offset.out_index], out)

    if plan.disjoint:
        # Each offset owns its input elements: one strided write per offset, no accumulation.
        for k, offset in _reached(plan):
            masked(k, offset, dX[offset.in_index])
        return "disjoint"
    contribution = np.empty(plan.output_shape, dtype=accumulate)
    phases = _phases(spec, dX.shape)
    merged = _phase_major(dX, spec.strides, plan.spatial_axes) if merged_phase_write else None
    # Phase-major scratch: phase r's total is totals[r]; with a merged view of dX all phases
    # reach dX in one copy that writes dX in memory order (several times faster than one
    # strided write per phase).
    totals = (
        np.empty((len(phases), *phases[0][2]), dtype=accumulate) if merged is not None else None
    )
    for number, (phase_index, members, shape) in enumerate(phases):
        total = totals[number] if totals is not None else np.empty(shape, dtype=accumulate)
        if not members:
            total.fill(0)
        else:
            (k, offset, box), *rest = members
            masked(k, offset, total[box])
            _zero_outside(total, box, plan.spatial_axes)
            for k, offset, box in rest:
                part = contribution[offset.out_index]
                masked(k, offset, part)
                np.add(total[box], part, out=total[box])
        if totals is None:
            np.copyto(dX[phase_index], total, casting="same_kind")
    if merged is not None and totals is not None:
        np.copyto(merged, totals.reshape(merged.shape), casting="same_kind")
        return "phases-merged"
    return "phases-strided"


def _phase_major(
    dX: np.ndarray, strides: tuple[int, ...], spatial_axes: tuple[int, ...]
) -> np.ndarray | None:
    """A view of ``dX`` with the stride phases as leading axes, ``(*strides, *phase_shape)``,
    or None when a spatial size is not a multiple of its stride or dX is not contiguous."""
    if not dX.flags.c_contiguous or any(
        dX.shape[axis] % stride for axis, stride in zip(spatial_axes, strides, strict=True)
    ):
        return None
    split_shape: list[int] = []
    phase_axes: list[int] = []
    other_axes: list[int] = []
    for axis, size in enumerate(dX.shape):
        if axis in spatial_axes:
            stride = strides[spatial_axes.index(axis)]
            other_axes.append(len(split_shape))
            phase_axes.append(len(split_shape) + 1)
            split_shape += [size // stride, stride]
        else:
            other_axes.append(len(split_shape))
            split_shape.append(size)
    return dX.reshape(split_shape).transpose(*phase_axes, *other_axes)


_Phase = tuple[tuple[slice, ...], list[tuple[int, Offset, tuple[slice, ...]]], tuple[int, ...]]

#: Bytes that memoized stride-phase groupings may hold in all.
PHASE_MEMO_BYTES = 32 << 20


def _phases_bytes(phases: list[_Phase]) -> int:
    # Members hold offsets (possibly outliving their plan) and boxes of slices.
    return sys.getsizeof(phases) + sum(
        deep_bytes((index, shape)) + sampled_bytes(members) for index, members, shape in phases
    )


_phase_memo: WeighedMemo[list[_Phase]] = WeighedMemo(PHASE_MEMO_BYTES, _phases_bytes, name="phases")


def _phases(spec: PoolSpec, input_shape: tuple[int, ...]) -> list[_Phase]:
    return _phase_memo.get((spec, input_shape), lambda: _group_phases(spec, input_shape))


def _group_phases(spec: PoolSpec, input_shape: tuple[int, ...]) -> list[_Phase]:
    """Group the reached window offsets of overlapping windows by stride phase.

    The phase ``r`` (one residue per spatial dim) is the strided view ``X[..., r::s, ...]``;
    the phase views partition X. Every offset reads inputs of one phase only, as a contiguous
    box of that phase's view, so contributions sum in a contiguous buffer per phase and reach
    dX in one strided write. Returns, per phase in row-major order, the phase's index into X,
    its ``(plane index, offset, box)`` members in row-major window order and the phase view's
    shape (memoized).
    """
    plan = make_plan(spec, input_shape)
    groups: dict[tuple[int, ...], list[tuple[int, Offset, tuple[slice, ...]]]] = {}
    for k, offset in _reached(plan):
        phase: list[int] = []
        box = list(offset.out_index)
        for axis, stride in zip(plan.spatial_axes, spec.strides, strict=True):
            start = offset.in_index[axis].start
            run = offset.out_index[axis]
            phase.append(start % stride)
            box[axis] = slice(start // stride, start // stride + run.stop - run.start)
        groups.setdefault(tuple(phase), []).append((k, offset, tuple(box)))
    residue_ranges = [
        range(min(stride, input_shape[axis]))
        for stride, axis in zip(spec.strides, plan.spatial_axes, strict=True)
    ]
    phases = []
    for residues in itertools.product(*residue_ranges):
        index = [slice(None)] * len(input_shape)
        for axis, stride, residue in zip(plan.spatial_axes, spec.strides, residues, strict=True):
            index[axis] = slice(residue, None, stride)
        shape = list(input_shape)
        for axis, stride, residue in zip(plan.spatial_axes, spec.strides, residues, strict=True):
            shape[axis] = -(-(input_shape[axis] - residue) // stride)
        phases.append((tuple(index), groups.get(residues, []), tuple(shape)))
    return phases


def _zero_outside(total: np.ndarray, box: tuple[slice, ...], axes: tuple[int, ...]) -> None:
    """Zero what lies outside ``box`` (a slice per axis, full on non-spatial axes)."""
    for axis in axes:
        edge = [slice(None)] * total.ndim
        edge[axis] = slice(0, box[axis].start)
        total[tuple(edge)] = 0
        edge[axis] = slice(box[axis].stop, None)
        total[tuple(edge)] = 0


def _reached(plan: Plan) -> list[tuple[int, Offset]]:
    """(plane index, offset) for the window offsets that land on real elements."""
    return [(k, offset) for k, offset in enumerate(plan.offsets) if offset is not None]


def _select(values: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
    """``out = values where mask else +0.0`` for an int8 ``mask`` of 0 / -1, bit for bit: inf
    and NaN in dA never leak to losers (as ``values * mask`` would), and no branch per element
    (masked ufuncs with ``where=`` run several times slower on random masks). One mixed-type
    ufunc pass: NumPy widens the mask in small buffers, never as a whole array."""
    bits = bits_dtype(values.dtype)
    np.bitwise_and(values.view(bits), mask, out=out.view(bits))


# -- avg -------------------------------------------------------------------------------------


def _avg_forward(
    X: np.ndarray, spec: PoolSpec, plan: Plan, A: np.ndarray, run: _Run
) -> np.ndarray | None:
    """Fill ``A``; return the NaN-window bits, or None when no window holds NaN."""

    def work(chunk: Chunk) -> None:
        _avg_forward_chunk(X[chunk.input_index], chunk.spec, chunk.plan, A[chunk.output_index])

    run.chunks(work)
    nan_windows = None
    # A window holding NaN pools to NaN, so checking the small A keeps the NaN-free path cheap.
    # inf - inf gives NaN too without any NaN in X, hence the exact mask from X below.
    if spec.nan == "propagate" and np.isnan(A).any():
        in_nan_window = np.zeros(plan.output_shape, dtype=np.bool_)
        for offset in plan.offsets:
            if offset is not None:
                target = in_nan_window[offset.out_index]
                np.logical_or(target, np.isnan(X[offset.in_index]), out=target)
        if in_nan_window.any():
            nan_windows = np.packbits(in_nan_window)
    return nan_windows


def _avg_forward_chunk(X: np.ndarray, spec: PoolSpec, plan: Plan, A: np.ndarray) -> None:
    total = np.zeros(plan.output_shape, dtype=accumulate_dtype(X.dtype))
    for offset in plan.offsets:
        if offset is not None:
            target = total[offset.out_index]
            np.add(target, X[offset.in_index], out=target)
    np.divide(total, plan.divisor(spec.count_include_pad, spec.pool_size), out=total)
    np.copyto(A, total, casting="same_kind")


def _avg_backward(
    plan: Plan, nan_windows: np.ndarray | None, dA: np.ndarray, run: _Run
) -> np.ndarray:
    accumulate = accumulate_dtype(dA.dtype)
    gradient = dA.astype(accumulate)
    if nan_windows is not None:
        gradient[_unpack(nan_windows, dA.size, plan.output_shape).view(np.bool_)] = 0
    # Exactly covered inputs get every element written once: no zeroing.
    dX = (np.empty if plan.exact_cover else np.zeros)(plan.input_shape, dtype=accumulate)

    def work(chunk: Chunk) -> None:
        _avg_backward_chunk(
            chunk.spec, chunk.plan, gradient[chunk.output_index], dX[chunk.input_index]
        )

    run.chunks(work)
    return dX.astype(dA.dtype, copy=False)


def _avg_backward_chunk(spec: PoolSpec, plan: Plan, gradient: np.ndarray, dX: np.ndarray) -> None:
    share = gradient / plan.divisor(spec.count_include_pad, spec.pool_size)
    # Primary offsets first: they write distinct elements, so they assign; the rest add.
    for _, offset in sorted(_reached(plan), key=lambda item: not item[1].primary):
        target = dX[offset.in_index]
        if plan.disjoint or offset.primary:
            np.copyto(target, share[offset.out_index], casting="same_kind")
        else:
            np.add(target, share[offset.out_index], out=target, casting="same_kind")


# -- shared ----------------------------------------------------------------------------------


_K = TypeVar("_K", bound=Callable[..., object])


class _Run:
    """One call's options, resolved kernel set, split and report: a forward, a backward, or
    both (:func:`gradient`), which run the same kernel set on the same chunks."""

    def __init__(
        self,
        options: EngineOptions | None,
        report: RunReport | None,
        spec: PoolSpec,
        plan: Plan,
        itemsize: int,
    ):
        self.options = options if options is not None else DEFAULT_OPTIONS
        self.report = report
        self.spec = spec
        self.plan = plan
        self.itemsize = itemsize
        self.kernels = compiled.kernel_set(self.options.kernels, spec, plan.input_shape)
        self._split: list[Chunk] | None = None
        if report is not None:
            report.kernels = self.kernels
            report.backward_path = ""

    def kernel_for(self, chunk: Chunk, compiled_kernel: _K, numpy_kernel: _K) -> _K:
        """The kernel for one chunk of the call's kernel set (the same bits either way)."""
        return compiled_kernel if self.kernels == "compiled" else numpy_kernel

    def chunks(self, work: Callable[[Chunk], None]) -> None:
        """Split the call (once, however many passes run on it) and run ``work`` on every
        chunk, under the caller's error state (:func:`forward` and :func:`backward` silence
        what is data here: inf - inf, float16 overflow and the like give NaN / inf in the
        result, handled by the NaN rules)."""
        chunks = self._split
        if chunks is None:
            piece_bytes = None
            if (
                self.kernels == "compiled"
                and self.options.piece_bytes == DEFAULT_OPTIONS.piece_bytes
            ):
                # The default piece is NumPy's cache size; the compiled kernels stream row by
                # row.
                piece_bytes = compiled.PIECE_BYTES
            chunks = split(self.spec, self.plan, self.itemsize, self.options, piece_bytes)
            self._split = chunks
        threads = run_chunks(work, chunks, self.options)
        if self.report is not None:
            self.report.chunks = len(chunks)
            self.report.threads = threads


def _unpack(plane: np.ndarray, size: int, shape: tuple[int, ...]) -> np.ndarray:
    """One bit plane as uint8 0/1 of ``shape`` (a new array)."""
    return np.unpackbits(plane, count=size).reshape(shape)


def _checked_input(X: object, spec: PoolSpec) -> np.ndarray:
    if not isinstance(spec, PoolSpec):
        raise TypeError(f"spec must be a PoolSpec, got {type(spec).__name__}")
    if not isinstance(X, np.ndarray):
        raise TensorError(f"X must be a numpy.ndarray, got {type(X).__name__}")
    if X.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise TensorError(f"X dtype {X.dtype} is not supported; use float16, float32 or float64")
    if not X.dtype.isnative:
        X = X.astype(X.dtype.newbyteorder("="))
    if spec.nan == "reject":
        nan_count = int(np.count_nonzero(np.isnan(X)))
        if nan_count:
            first = tuple(int(i) for i in np.argwhere(np.isnan(X))[0])
            raise TensorError(
                f"X holds {nan_count} NaN value(s), first at index {first}, and the spec has "
                f"nan='reject'; X shape {X.shape}"
            )
    return X


def _checked_upstream(
    dA: object, output_shape: tuple[int, ...], dtype: np.dtype[np.floating]
) -> np.ndarray:
    """``dA`` checked against A's shape and cast to X's ``dtype``."""
    if not isinstance(dA, np.ndarray):
        raise TensorError(f"dA must be a numpy.ndarray, got {type(dA).__name__}")
    if dA.shape != output_shape:
        raise ShapeMismatchError(f"dA has shape {dA.shape} but A has shape {output_shape}")
    if dA.dtype.kind not in "iuf":
        raise TensorError(f"dA dtype {dA.dtype} is not a real number type; use {dtype.name}")
    return dA.astype(dtype, copy=False)
