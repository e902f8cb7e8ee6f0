"""The geometry memos stay within their byte budgets whatever shapes callers send, and still
serve repeated calls from memory."""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc

import numpy as np
import pytest

import engine.geometry
from engine import EngineOptions, PoolSpec, backward, compiled, forward
from engine.memo import WeighedMemo, memos


def test_memo_keeps_recent_entries_within_its_budget() -> None:
    memo: WeighedMemo[str] = WeighedMemo(10, len)
    calls: list[str] = []

    def compute(value: str) -> str:
        calls.append(value)
        return value

    assert memo.get("a", lambda: compute("aaaa")) == "aaaa"
    assert memo.get("b", lambda: compute("bbbb")) == "bbbb"
    assert memo.get("a", lambda: compute("never")) == "aaaa"  # a hit, and now most recent
    assert memo.get("c", lambda: compute("cccc")) == "cccc"  # 12 > 10: drops b, not a
    assert memo.held == 8
    assert memo.get("a", lambda: compute("never")) == "aaaa"
    assert memo.get("b", lambda: compute("bbbb")) == "bbbb"  # recomputed
    assert calls == ["aaaa", "bbbb", "cccc", "bbbb"]
    assert memo.held <= 10


def test_memo_returns_but_never_keeps_what_outweighs_it() -> None:
    memo: WeighedMemo[str] = WeighedMemo(3, len)
    assert memo.get("big", lambda: "xxxx") == "xxxx"
    assert len(memo) == 0
    assert memo.held == 0


def test_many_large_window_shapes_do_not_grow_the_plan_memo() -> None:
    # 256 x 256 windows over distinct input shapes: each plan holds 65,536 offsets (about
    # 40 MB); an entry-counted cache would keep every one a client cared to send.
    spec = PoolSpec(mode="max", pool_size=256, strides=1)
    plans = memos()["plans"]
    plans.clear()  # only this test's plans: small plans other tests used would rightly stay
    for width in range(256, 259):
        plan = engine.geometry.make_plan(spec, (1, 256, width, 1))
        assert len(plan.offsets) == 256 * 256
        assert plans.held <= plans.budget == engine.geometry.PLAN_MEMO_BYTES
    assert len(plans) <= 1


def test_distinct_long_shapes_keep_the_memos_within_their_bytes() -> None:
    # A 1-D plan holds per-dim arrays as long as its output: 2 window offsets but 16 MB here.
    # Charged by offsets, a dozen distinct lengths kept about 200 MB (plans and splits) alive.
    spec = PoolSpec(pool_size=[2])
    options = EngineOptions(threads=2)
    gc.collect()
    tracemalloc.start()
    try:
        for extra in range(0, 24, 2):
            X = np.ones((1, 4_000_000 + extra, 1), np.float32)
            A, state = forward(X, spec, options=options)
            backward(state, A, options=options)
            del X, A, state
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    budgets = sum(memo.budget for memo in memos().values())
    assert retained < budgets + (8 << 20)
    for name, memo in memos().items():
        assert memo.held <= memo.budget, name


def test_a_largest_window_still_computes_through_the_bounded_memos() -> None:
    spec = PoolSpec(mode="max", pool_size=256, strides=128)
    X = np.random.default_rng(0).standard_normal((2, 256, 384, 1)).astype(np.float32)
    A, state = forward(X, spec)
    dX = backward(state, np.ones_like(A))
    np.testing.assert_array_equal(A[0, 0, 1], X[0, :256, 128:384].max(axis=(0, 1)))
    assert dX.sum() == A.size  # one winner per window, no ties in normal data


def test_repeated_calls_reuse_their_plan() -> None:
    spec = PoolSpec(pool_size=3, strides=2)
    shape = (2, 9, 9, 3)
    first = engine.geometry.make_plan(spec, shape)
    assert engine.geometry.make_plan(spec, shape) is first


def test_a_plan_builds_each_derived_fact_once_and_a_replaced_plan_its_own() -> None:
    plan = engine.geometry.make_plan(PoolSpec(pool_size=3, strides=2), (1, 13, 11, 2))
    built: list[object] = []

    def build() -> object:
        built.append(object())
        return built[-1]

    fact = plan.derived("test-fact", build)
    assert plan.derived("test-fact", build) is fact
    assert built == [fact]
    # A plan with other flags (a forced path) is another plan: it derives its own facts.
    forced = dataclasses.replace(plan, disjoint=False)
    assert forced.derived("test-fact", build) is not fact
    assert len(built) == 2


@pytest.mark.skipif(not compiled.available(), reason="needs the fast extra (Numba)")
def test_the_compiled_kernels_take_their_geometry_from_the_plan_once() -> None:
    spec = PoolSpec(pool_size=3, strides=2)
    X = np.random.default_rng(1).standard_normal((1, 9, 9, 3)).astype(np.float32)
    options = EngineOptions(kernels="compiled", threads=1)
    A, state = forward(X, spec, options=options)
    backward(state, np.ones_like(A), options=options)
    plan = engine.geometry.make_plan(spec, X.shape)
    kernel_plan = compiled._kernel_plan(spec, plan)
    assert kernel_plan.input_5d == (1, 1, 9, 9, 3)
    assert kernel_plan.output_5d == (1, 1, 4, 4, 3)
    _, state2 = forward(X, spec, options=options)
    backward(state2, np.ones_like(A), options=options)
    assert compiled._kernel_plan(spec, plan) is kernel_plan


def test_a_memo_keeps_an_entry_in_use_while_others_come_and_go() -> None:
    memo: WeighedMemo[str] = WeighedMemo(12, len)
    assert memo.get("hot", lambda: "hhhh") == "hhhh"
    for i in range(20):
        # Used between every eviction: never dropped, so never computed again.
        assert memo.get("hot", lambda: pytest.fail("the entry in use was dropped")) == "hhhh"
        assert memo.get(f"cold{i}", lambda: "cccc") == "cccc"
        assert memo.held <= 12
    assert len(memo) == 3
