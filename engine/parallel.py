"""Splitting one pooling call into independent chunks and running them on a small thread pool.

NumPy releases the GIL inside its ufunc loops, so chunks of one call run truly in parallel.
A batch (``m > 1``) is cut into pieces of about ``options.piece_bytes`` of X (1 MiB), so that
each kernel step of a piece works on data that stays in a core's L2 cache (NumPy's elementwise
passes run markedly faster there than on arrays streamed from memory); the pieces run in order,
in one
contiguous run per thread. Threads are used only when X holds at least
``options.parallel_min_elements`` elements, and then a call is cut:

- along the batch axis when ``m > 1``;
- for a single sample, along the channel axis (``channels_first``) or along the first spatial
  axis (``channels_last``) when windows do not overlap in that dim (so no input element is
  written by two chunks in backward), each chunk being a sub-problem with explicit padding.

Chunk boundaries fall on whole bytes of the bit-packed state planes, so every chunk packs its
own bits; results are bit-identical to a single-threaded run.

The thread count, piece size and threshold come from the caller's
:class:`~engine.options.EngineOptions` (the engine reads no environment); one pool of worker
threads is kept per thread count asked for.

Worker placement (``options.place_workers``, Linux): before a call hands runs to its workers,
their CPU affinity is set to every CPU the calling thread may use except the one it runs on.
Left to itself, the scheduler of a virtual machine whose other virtual CPU sat idle for some
milliseconds (the host parks it) queues the woken worker behind the calling thread, on the
caller's CPU: the worker's run then starts only when the caller's run ends, and a 2-thread call
takes as long as a 1-thread one. On the 2-core bench machine that was every other call after a
20 ms pause ((64, 32, 32, 32) 3x3/2 forward+backward, median of 25: 3.38 ms against 1.47 ms
back to back; placed: 2.03 ms). Pinning costs two system calls per call that uses threads (a
call of at least ``parallel_min_elements`` elements, hundreds of microseconds); where the
affinity cannot be read or set (another OS, a thread already gone, a CPU set that changed),
placement is skipped and the call runs as before.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from engine.geometry import Plan, make_plan, plan_bytes
from engine.memo import WeighedMemo, deep_bytes
from engine.options import EngineOptions
from engine.spec import PoolSpec

__all__ = ["SPLIT_MEMO_BYTES", "Chunk", "run_chunks", "split"]

_lock = threading.Lock()
_executors: dict[int, ThreadPoolExecutor] = {}
#: Per pool (thread count), the native ids of its worker threads, as they start.
_workers: dict[int, list[int]] = {}


class Chunk(NamedTuple):
    """One independent piece of a call: a sub-problem on views of X / dX and A / dA.

    ``input_index`` / ``output_index`` are full-rank slice tuples into X and A; ``spec`` and
    ``plan`` describe the sub-problem; its state bits are bytes ``[byte_start, byte_stop)`` of
    every bit plane. A named tuple, not a frozen dataclass: a tiny call builds its one chunk
    per call, and a frozen dataclass took three times as long to build.
    """

    input_index: tuple[slice, ...]
    output_index: tuple[slice, ...]
    spec: PoolSpec
    plan: Plan
    byte_start: int
    byte_stop: int


def _executor_for(threads: int) -> ThreadPoolExecutor:
    # One pool per thread count in use (a process normally uses one): its threads - 1 workers
    # plus the calling thread run a call.
    with _lock:
        executor = _executors.get(threads)
        if executor is None:
            workers = _workers[threads] = []
            executor = ThreadPoolExecutor(
                threads - 1,
                thread_name_prefix="poolgrad-engine",
                initializer=lambda: workers.append(threading.get_native_id()),
            )
            _executors[threads] = executor
        return executor


def _current_cpu() -> Any:
    """glibc's (and musl's) ``sched_getcpu``, or None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):  # no C library to load, or no such function
        return None


_sched_getcpu = _current_cpu() if hasattr(os, "sched_setaffinity") else None


#: The pools (by thread count) whose workers a call has placed and no call has let go since.
_placed: set[int] = set()


def _place_workers(threads: int, place: bool) -> None:
    """Let the workers of the ``threads`` pool run on every CPU the calling thread may use but
    the one it runs on now (module docstring), or, when not ``place``, on every CPU it may use
    (undoing an earlier call's placement); nothing where that cannot be done."""
    if _sched_getcpu is None or not (place or threads in _placed):
        return
    try:
        allowed = os.sched_getaffinity(0)
        cpus = allowed - {_sched_getcpu()} if place else allowed
        if not cpus:  # one CPU: nowhere else to go
            return
        for worker in list(_workers.get(threads, ())):
            os.sched_setaffinity(worker, cpus)
    except OSError:
        return
    if place:
        _placed.add(threads)
    else:
        _placed.discard(threads)


def split(
    spec: PoolSpec,
    plan: Plan,
    itemsize: int,
    options: EngineOptions,
    piece_bytes: int | None = None,
) -> list[Chunk]:
    """Chunks covering the whole call (X of ``itemsize`` bytes per element), in order; a single
    chunk when splitting would not pay. ``piece_bytes`` overrides ``options.piece_bytes``.
    Memoized on everything it depends on; a single chunk carries ``plan`` itself.

    A call on one thread whose X fits in one piece is one chunk: that is decided before the
    memo, whose key (a spec and a shape to hash) and lookup would cost a tiny call more than
    its kernels' Python steps."""
    piece_bytes = options.piece_bytes if piece_bytes is None else piece_bytes
    elements = plan.input_size
    one_thread = options.threads == 1 or elements < options.parallel_min_elements
    if one_thread and (plan.input_shape[0] == 1 or elements * itemsize <= piece_bytes):
        return [_whole(spec, plan)]
    chunks = _split(
        spec,
        plan.input_shape,
        itemsize,
        options.threads,
        piece_bytes,
        options.parallel_min_elements,
    )
    if len(chunks) == 1:
        return [chunks[0]._replace(plan=plan)]
    return list(chunks)


def _whole(spec: PoolSpec, plan: Plan) -> Chunk:
    """The call as one chunk."""
    whole = (slice(None),) * len(plan.input_shape)
    return Chunk(whole, whole, spec, plan, 0, -(-plan.output_size // 8))


#: Bytes that memoized splits (chunks and the sub-plans they keep alive) may hold in all.
SPLIT_MEMO_BYTES = 32 << 20


def _split_bytes(chunks: tuple[Chunk, ...]) -> int:
    # The chunks keep their plans alive (even once the plan memo dropped them): weigh each
    # distinct plan once, in bytes, plus the chunks' own slices and specs.
    plans = {id(chunk.plan): chunk.plan for chunk in chunks}
    shell = chunks[0]._replace(plan=None)  # type: ignore[arg-type]
    return sum(plan_bytes(plan) for plan in plans.values()) + len(chunks) * deep_bytes(shell)


_splits: WeighedMemo[tuple[Chunk, ...]] = WeighedMemo(SPLIT_MEMO_BYTES, _split_bytes, name="splits")


def _split(
    spec: PoolSpec,
    input_shape: tuple[int, ...],
    itemsize: int,
    thread_setting: int,
    piece_bytes: int,
    parallel_min_elements: int,
) -> tuple[Chunk, ...]:
    def compute() -> tuple[Chunk, ...]:
        plan = make_plan(spec, input_shape)
        return tuple(
            _compute_split(spec, plan, itemsize, thread_setting, piece_bytes, parallel_min_elements)
        )

    key = (spec, input_shape, itemsize, thread_setting, piece_bytes, parallel_min_elements)
    return _splits.get(key, compute)


def _compute_split(
    spec: PoolSpec,
    plan: Plan,
    itemsize: int,
    thread_setting: int,
    piece_bytes: int,
    parallel_min_elements: int,
) -> list[Chunk]:
    whole = _whole(spec, plan)
    elements = math.prod(plan.input_shape)
    threads = thread_setting if elements >= parallel_min_elements else 1
    if plan.input_shape[0] > 1:
        # A whole number of pieces per thread, each about piece_bytes of X.
        per_thread = max(1, round(elements * itemsize / piece_bytes / threads))
        if threads * per_thread == 1:
            return [whole]
        return _split_outer(spec, plan, threads * per_thread, axis=0) or [whole]
    if threads == 1:
        return [whole]
    if spec.layout == "channels_first":
        return _split_outer(spec, plan, threads, axis=1) or [whole]
    return _split_first_spatial(spec, plan, threads) or [whole]


def _boundaries(count: int, parts: int, row_elements: int) -> list[int]:
    # Each boundary b must start a whole byte of the packed planes: b * row_elements % 8 == 0.
    step = 8 // math.gcd(row_elements, 8)
    cuts = sorted({min(count, round(count * i / parts / step) * step) for i in range(parts + 1)})
    cuts[0], cuts[-1] = 0, count
    return sorted(set(cuts))


def _byte_range(start: int, stop: int, row_elements: int) -> tuple[int, int]:
    return start * row_elements // 8, -(-stop * row_elements // 8)


def _split_outer(spec: PoolSpec, plan: Plan, threads: int, axis: int) -> list[Chunk] | None:
    """Cut ``axis`` into byte-aligned runs: the batch axis, or the channel axis of one
    channels_first sample. Every axis before ``axis`` has size 1 or is not cut, so each run is
    contiguous in A's flat order and its windows are independent of the others'."""
    count = plan.input_shape[axis]
    row = math.prod(plan.output_shape[axis + 1 :])
    cuts = _boundaries(count, threads, row)
    if len(cuts) < 3:
        return None
    chunks = []
    for start, stop in itertools.pairwise(cuts):
        index = [slice(None)] * len(plan.input_shape)
        index[axis] = slice(start, stop)
        shape = list(plan.input_shape)
        shape[axis] = stop - start
        sub_plan = make_plan(spec, tuple(shape))
        chunks.append(
            Chunk(tuple(index), tuple(index), spec, sub_plan, *_byte_range(start, stop, row))
        )
    return chunks


def _split_first_spatial(spec: PoolSpec, plan: Plan, threads: int) -> list[Chunk] | None:
    # channels_last, one sample: cut the output rows of the first spatial dim. Windows must not
    # overlap along it, else two chunks would both write an input row in backward.
    pool, stride = spec.pool_size[0], spec.strides[0]
    if stride < pool:
        return None
    axis = plan.spatial_axes[0]
    size = plan.input_shape[axis]
    before, after = plan.padding[0]
    out = plan.output_shape[axis]
    row = math.prod(plan.output_shape[axis + 1 :])
    cuts = _boundaries(out, threads, row)
    if len(cuts) < 3:
        return None
    chunks = []
    for start, stop in itertools.pairwise(cuts):
        last = stop == out
        first_row = max(0, start * stride - before)
        # Up to the next chunk's first row, not just this chunk's last window: with a stride
        # above the pool size, the rows between windows must belong to some chunk, whose
        # backward writes their zeros.
        stop_row = size if last else stop * stride - before
        padding = list(plan.padding)
        padding[0] = (before if start == 0 else 0, after if last else 0)
        sub_spec = PoolSpec(
            mode=spec.mode,
            pool_size=spec.pool_size,
            strides=spec.strides,
            padding=padding,
            count_include_pad=spec.count_include_pad,
            layout=spec.layout,
            ties=spec.ties,
            nan=spec.nan,
        )
        shape = list(plan.input_shape)
        shape[axis] = stop_row - first_row
        sub_plan = make_plan(sub_spec, tuple(shape))
        input_index = [slice(None)] * len(shape)
        output_index = [slice(None)] * len(shape)
        input_index[axis] = slice(first_row, stop_row)
        output_index[axis] = slice(start, stop)
        chunks.append(
            Chunk(
                tuple(input_index),
                tuple(output_index),
                sub_spec,
                sub_plan,
                *_byte_range(start, stop, row),
            )
        )
    return chunks


def run_chunks(
    work: Callable[[Chunk], None], chunks: Sequence[Chunk], options: EngineOptions
) -> int:
    """Run ``work`` on every chunk in order, in one contiguous run per thread (the calling
    thread takes the first run); all on the calling thread below
    ``options.parallel_min_elements`` input elements in all. Worker threads run under the
    calling thread's NumPy error state (``np.errstate`` is per thread). Returns the threads
    used."""
    if len(chunks) == 1:  # most calls: no threads to weigh
        work(chunks[0])
        return 1
    elements = sum(chunk.plan.input_size for chunk in chunks)
    threads = min(options.threads, len(chunks)) if elements >= options.parallel_min_elements else 1
    if threads == 1:
        for chunk in chunks:
            work(chunk)
        return 1
    cuts = [round(len(chunks) * i / threads) for i in range(threads + 1)]
    runs = [chunks[start:stop] for start, stop in itertools.pairwise(cuts)]

    def work_run(run: Sequence[Chunk]) -> None:
        for chunk in run:
            work(chunk)

    error_state = np.geterr()

    def worker_run(run: Sequence[Chunk]) -> None:
        with np.errstate(**error_state):
            work_run(run)

    executor = _executor_for(options.threads)
    _place_workers(options.threads, options.place_workers)
    futures = [executor.submit(worker_run, run) for run in runs[1:]]
    work_run(runs[0])
    for future in futures:
        future.result()
    return threads
