"""The compiled kernels against the NumPy kernels, their oracle, bit for bit: A, the state's
bytes and dX, on every mode, tie rule, layout, padding, NaN case, dtype and spatial rank; and the
kernel choice, with and without Numba."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TIED_GEOMETRIES, Case, pool_cases, tied_with_specials, upstream

from engine import PoolSpec, TensorError, backward, forward
from engine.options import EngineOptions, RunReport

NUMPY = EngineOptions(kernels="numpy")
COMPILED = EngineOptions(kernels="compiled")


def _assert_same(X: np.ndarray, spec: PoolSpec, dA_seed: int, compiled: EngineOptions) -> None:
    A, state = forward(X, spec, options=NUMPY)
    report = RunReport()
    A_c, state_c = forward(X, spec, options=compiled, report=report)
    assert report.kernels == ("compiled" if spec.mode != "avg" else "numpy")
    # Equal values and NaN; the sign of a zero max/min is NumPy's maximum's choice, which
    # depends on dtype and position, so only its value is pinned.
    assert A_c.dtype == A.dtype
    assert np.array_equal(A_c, A, equal_nan=True)
    assert state_c.to_bytes() == state.to_bytes()
    dA = upstream(A.shape, X.dtype.type, dA_seed)
    dX = backward(state, dA, options=NUMPY)
    dX_c = backward(state_c, dA, options=compiled, report=report)
    if spec.mode != "avg":
        assert report.backward_path.startswith("compiled-")
    assert dX_c.dtype == dX.dtype
    assert dX_c.tobytes() == dX.tobytes()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pool_cases(), general=st.booleans())
def test_compiled_kernels_equal_numpy_bit_for_bit(case: Case, general: bool) -> None:
    # general: disjoint windows forced onto the gather kernel, which must agree as well.
    compiled = dataclasses.replace(COMPILED, disjoint_path=not general)
    _assert_same(case.X, case.spec, case.dA_seed, compiled)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ties", ["all", "first", "split"])
@pytest.mark.parametrize(("shape", "kwargs"), TIED_GEOMETRIES)
def test_compiled_kernels_on_ties_nan_and_inf(
    shape: tuple[int, ...], kwargs: dict[str, object], ties: str, dtype: type
) -> None:
    X = tied_with_specials(shape, dtype)
    spec = PoolSpec(ties=ties, **kwargs)  # type: ignore[arg-type]
    _assert_same(X, spec, 1, COMPILED)  # odd seed: dA holds NaN / inf / -0.0
    threaded = dataclasses.replace(COMPILED, threads=3, piece_bytes=512, parallel_min_elements=1)
    _assert_same(X, spec, 3, threaded)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ties", ["all", "first", "split"])
@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        # Channels and a stride along w: rows pooled column by column, spans of c per output.
        ((2, 9, 11, 32), {"pool_size": 3, "strides": 2}),
        ((2, 10, 10, 7), {"pool_size": [3, 2], "strides": [2, 3], "padding": "same"}),
        # Stride 1 along w: one span per row and offset; padding cuts the spans.
        ((2, 9, 11, 24), {"pool_size": 3, "strides": 1, "padding": "same", "mode": "min"}),
        # A few channels and a stride along w: one strided run per channel.
        ((2, 9, 12, 3), {"pool_size": [3, 2], "strides": 2, "padding": "same"}),
        # Single-channel rows, strided along w.
        ((3, 2, 13, 9), {"pool_size": 3, "strides": 2, "layout": "channels_first"}),
        ((2, 4, 7, 9, 16), {"pool_size": [2, 3, 3], "strides": [1, 2, 2], "padding": "same"}),
        ((2, 30, 5), {"pool_size": [4], "strides": [2], "padding": [(3, 2)]}),
    ],
)
def test_compiled_kernels_sum_overlapping_windows_in_numpys_order(
    shape: tuple[int, ...], kwargs: dict[str, object], ties: str, dtype: type
) -> None:
    # Random normal dA: a sum of three or more contributions depends on their order (small
    # integers, as elsewhere, would sum exactly in any order); X rounded in places for ties.
    rng = np.random.default_rng(sum(shape))
    X = rng.standard_normal(shape).astype(dtype)
    X.flat[::3] = np.round(X.flat[::3])
    spec = PoolSpec(ties=ties, **kwargs)  # type: ignore[arg-type]
    A, state = forward(X, spec, options=NUMPY)
    A_c, state_c = forward(X, spec, options=COMPILED)
    assert np.array_equal(A_c, A)
    assert state_c.to_bytes() == state.to_bytes()
    dA = rng.standard_normal(A.shape).astype(dtype)
    dX = backward(state, dA, options=NUMPY)
    assert backward(state_c, dA, options=COMPILED).tobytes() == dX.tobytes()


def test_reject_refuses_nan_before_either_kernel_runs() -> None:
    X = np.zeros((1, 4, 4, 1), np.float32)
    X[0, 1, 2, 0] = np.nan
    for options in (NUMPY, COMPILED):
        with pytest.raises(TensorError, match=r"first at index \(0, 1, 2, 0\)"):
            forward(X, PoolSpec(nan="reject"), options=options)


def test_the_kernels_free_every_scratch_array_they_allocate() -> None:
    # The kernels borrow their arrays (no reference counting in the loops) and keep their
    # scratch alive by hand: Numba's own allocation counters, on in a fresh interpreter,
    # must balance after every kernel (forward, both backward kernels, the tiny one), every
    # tie rule, and match the NumPy kernels' results call after call.
    code = """
        import numpy as np
        from numba.core.runtime import rtsys
        from engine import EngineOptions, PoolSpec, backward, forward, gradient

        compiled = EngineOptions(threads=1, kernels="compiled")
        numpy = EngineOptions(threads=1, kernels="numpy")
        rng = np.random.default_rng(0)
        cases = []
        for shape, kwargs in (
            ((3, 9, 9, 16), dict(pool_size=3, strides=2)),
            ((3, 8, 8, 16), dict(pool_size=2)),
            ((2, 9, 9, 3), dict(pool_size=3, strides=2, padding="same")),
            ((1, 4, 4, 2), dict(pool_size=2)),
        ):
            for ties in ("all", "first"):
                X = rng.integers(-2, 3, shape).astype(np.float32)
                cases.append((X, PoolSpec(ties=ties, **kwargs)))

        def run(X, spec, options):
            A, state = forward(X, spec, options=options)
            dA = np.linspace(-1, 1, A.size, dtype=np.float32).reshape(A.shape)
            dX = backward(state, dA, options=options)
            fused = gradient(X, dA, spec, options=options)[1]
            return A.tobytes() + state.to_bytes() + dX.tobytes() + fused.tobytes()

        expected = [run(X, spec, numpy) for X, spec in cases]
        for X, spec in cases:
            run(X, spec, compiled)
        before = rtsys.get_allocation_stats()
        for _ in range(3):
            assert [run(X, spec, compiled) for X, spec in cases] == expected
        after = rtsys.get_allocation_stats()
        print(after.alloc - before.alloc, after.free - before.free,
              after.mi_alloc - before.mi_alloc, after.mi_free - before.mi_free)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,  # compiles the kernels if no earlier test left them in the cache
        env={**os.environ, "NUMBA_NRT_STATS": "1"},
    )
    alloc, free, mi_alloc, mi_free = map(int, result.stdout.split())
    assert alloc > 0  # the counters ran and the kernels allocated scratch
    assert mi_alloc > 0
    assert (alloc, mi_alloc) == (free, mi_free)


def _run_without_numba(code: str) -> str:
    # A fresh interpreter where `import numba` fails, as in an install without the fast extra.
    prelude = "import sys\nsys.modules['numba'] = None\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


def test_auto_falls_back_to_numpy_without_numba_and_compiled_says_what_is_missing() -> None:
    out = _run_without_numba(
        """
        import numpy as np
        from engine import PoolSpec, forward
        from engine import EngineOptions, KernelsUnavailable, RunReport
        report = RunReport()
        forward(np.ones((1, 4, 4, 1)), PoolSpec(), report=report)
        print(report.kernels)
        try:
            forward(np.ones((1, 4, 4, 1)), PoolSpec(), options=EngineOptions(kernels="compiled"))
        except KernelsUnavailable as exc:
            print(exc)
        """
    )
    assert out.splitlines() == [
        "numpy",
        "kernels='compiled' needs Numba: install poolgrad[fast], or choose 'numpy' or 'auto'",
    ]


@pytest.mark.parametrize(
    ("shape", "layout", "mode", "kernels"),
    [
        ((1, 4, 4, 3), "channels_last", "max", "compiled"),
        ((1, 4, 4, 3), "channels_last", "min", "compiled"),
        ((1, 32, 32, 1), "channels_last", "max", "numpy"),  # single channel: NumPy is faster
        ((1, 3, 32, 32), "channels_first", "max", "numpy"),  # run as single-channel images
        ((1, 31, 33, 1), "channels_last", "max", "compiled"),  # ... but not on tiny inputs
        ((1, 3, 4, 4), "channels_first", "max", "compiled"),
        ((1, 4, 4, 3), "channels_last", "avg", "numpy"),  # no compiled avg kernels
    ],
)
def test_auto_routes_each_call_by_its_layout_and_channels(
    shape: tuple[int, ...], layout: str, mode: str, kernels: str
) -> None:
    spec = PoolSpec(mode=mode, layout=layout)  # type: ignore[arg-type]
    report = RunReport()
    A, state = forward(np.ones(shape), spec, report=report)
    assert report.kernels == kernels
    backward(state, np.ones_like(A), report=report)
    assert report.kernels == kernels
    # An explicit choice is taken as it is (max/min).
    forward(np.ones(shape), spec, options=COMPILED, report=report)
    assert report.kernels == ("numpy" if mode == "avg" else "compiled")
