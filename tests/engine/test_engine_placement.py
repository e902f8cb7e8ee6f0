"""Worker placement (``EngineOptions.place_workers``, engine.parallel): a call on several
threads keeps its workers off the CPU its calling thread runs on, and a call whose placement
cannot be done runs all the same, with the same bits."""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
import pytest

from engine import PoolSpec, backward, forward, parallel
from engine.options import EngineOptions

linux_smp = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and at least two CPUs",
)

#: Cut into one chunk per thread from the first element on.
SPLIT = EngineOptions(threads=2, parallel_min_elements=1)
X = np.random.default_rng(11).standard_normal((4, 8, 8, 3))
SPEC = PoolSpec(pool_size=2)


def worker_masks(options: EngineOptions) -> list[set[int]]:
    """A forward on X with ``options``: the CPU affinity of the worker at each chunk it ran."""
    masks: list[set[int]] = []
    caller = threading.get_ident()
    original = parallel.run_chunks

    def recording(work, chunks, options):  # type: ignore[no-untyped-def]
        def watched(chunk):  # type: ignore[no-untyped-def]
            if threading.get_ident() != caller:
                masks.append(os.sched_getaffinity(0))
            work(chunk)

        return original(watched, chunks, options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("engine.pooling.run_chunks", recording)
        forward(X, SPEC, options=options)
    assert masks, "no chunk ran on a worker"
    return masks


@linux_smp
@pytest.mark.parametrize("caller_cpu", [0, -1], ids=["first-cpu", "last-cpu"])
def test_workers_run_off_the_calling_threads_cpu(
    monkeypatch: pytest.MonkeyPatch, caller_cpu: int
) -> None:
    """While a call runs, its worker may use every CPU the caller may, but the caller's (here
    said to be the first or the last it may use: the caller can move between CPUs at any time,
    which would make the CPU read by the engine and by the test differ)."""
    allowed = sorted(os.sched_getaffinity(0))
    here = allowed[caller_cpu]
    monkeypatch.setattr(parallel, "_sched_getcpu", lambda: here)
    forward(X, SPEC, options=SPLIT)  # the pool's worker starts (a new thread runs unplaced)
    masks = worker_masks(SPLIT)
    assert all(mask == set(allowed) - {here} for mask in masks), masks


@linux_smp
def test_the_calling_threads_cpu_is_one_it_may_use() -> None:
    assert parallel._sched_getcpu is not None
    assert parallel._sched_getcpu() in os.sched_getaffinity(0)


@linux_smp
def test_calls_run_where_placement_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot be placed (a CPU set that changed, a thread gone) is left where it
    is: the call gives the same bits as on one thread."""
    forward(X, SPEC, options=SPLIT)  # the pool's worker starts, so the calls below place it
    refused: list[object] = []

    def refuse(*args: object) -> None:
        refused.append(args)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    A, state = forward(X, SPEC, options=SPLIT)
    assert refused, "the call did not try to place its worker"
    dA = np.random.default_rng(12).standard_normal(A.shape)
    dX = backward(state, dA, options=SPLIT)
    A1, state1 = forward(X, SPEC, options=EngineOptions(threads=1))
    assert A.tobytes() == A1.tobytes()
    assert state.to_bytes() == state1.to_bytes()
    assert dX.tobytes() == backward(state1, dA, options=EngineOptions(threads=1)).tobytes()


@linux_smp
def test_placement_can_be_left_to_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without placement a worker runs wherever the caller may: an earlier call's placement is
    undone once, and nothing is set on later calls."""
    unplaced = dataclasses.replace(SPLIT, place_workers=False)
    forward(X, SPEC, options=SPLIT)  # the pool's worker starts
    assert all(len(mask) < len(os.sched_getaffinity(0)) for mask in worker_masks(SPLIT))
    masks = worker_masks(unplaced)
    assert all(mask == os.sched_getaffinity(0) for mask in masks), masks
    calls: list[object] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda *args: calls.append(args))
    forward(X, SPEC, options=unplaced)
    assert calls == []
    forward(X, SPEC, options=SPLIT)
    assert calls  # the pool's worker, placed again
