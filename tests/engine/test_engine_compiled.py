"""The compiled kernels against the NumPy kernels, their oracle, bit for bit: A, the state's
bytes and dX, on every mode, tie rule, layout, padding, NaN case, dtype and spatial rank; and the
kernel choice, with and without Numba."""

from __future__ import annotations

import dataclasses
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


def test_reject_refuses_nan_before_either_kernel_runs() -> None:
    X = np.zeros((1, 4, 4, 1), np.float32)
    X[0, 1, 2, 0] = np.nan
    for options in (NUMPY, COMPILED):
        with pytest.raises(TensorError, match=r"first at index \(0, 1, 2, 0\)"):
            forward(X, PoolSpec(nan="reject"), options=options)


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
