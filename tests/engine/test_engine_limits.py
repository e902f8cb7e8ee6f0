"""What one call at the engine's limits costs in memory: within :func:`call_bytes`, and far
below a byte per window element of every output (which unpacking every winner plane at once
used to cost: 1 GiB at ``MAX_WORK``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from engine import PoolSpec
from engine.geometry import MAX_WORK, call_bytes, make_plan

# 64 x 64 windows at stride 1 over 575 x 575: 512 x 512 outputs of 4,096 elements each, exactly
# MAX_WORK element visits (a 256 x 256 window at the same work takes minutes of Python loops).
LIMIT_SHAPE = (1, 575, 575, 1)
LIMIT_SPEC = {"pool_size": 64, "strides": 1}

_MEASURE = """
import json, sys, tracemalloc
import numpy as np
from engine import EngineOptions, PoolSpec, backward, compiled, forward
spec = PoolSpec(mode=sys.argv[1], ties=sys.argv[2], **json.loads(sys.argv[3]))
X = np.random.default_rng(0).standard_normal(json.loads(sys.argv[4])).astype(np.float32)
options = EngineOptions(kernels=sys.argv[5])
# Numba's import and its kernels' loading are the process's, not the call's.
if compiled.kernel_set(options.kernels) == "compiled":
    compiled.warm_up()
tracemalloc.start()
A, state = forward(X, spec, options=options)
forward_peak = tracemalloc.get_traced_memory()[1]
dA = np.ones_like(A)
tracemalloc.reset_peak()
base = tracemalloc.get_traced_memory()[0]
backward(state, dA, options=options)
backward_peak = tracemalloc.get_traced_memory()[1] - base + state.nbytes + A.nbytes
print(json.dumps({"forward": forward_peak, "backward": backward_peak, "state": state.nbytes}))
"""


def test_the_limit_case_is_at_the_work_bound() -> None:
    plan = make_plan(PoolSpec(**LIMIT_SPEC), LIMIT_SHAPE)  # type: ignore[arg-type]
    assert plan.window_size * plan.output_shape[1] * plan.output_shape[2] == MAX_WORK


@pytest.mark.parametrize(
    ("mode", "ties", "kernels"),
    [("max", "all", "numpy"), ("min", "split", "compiled"), ("avg", "all", "numpy")],
)
def test_a_call_at_the_limits_stays_within_its_stated_memory(
    mode: str, ties: str, kernels: str
) -> None:
    # A fresh process, so no memo or earlier test's arrays count.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_MEASURE),
            mode,
            ties,
            json.dumps(LIMIT_SPEC),
            json.dumps(LIMIT_SHAPE),
            kernels,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    measured = json.loads(result.stdout)
    spec = PoolSpec(mode=mode, ties=ties, **LIMIT_SPEC)  # type: ignore[arg-type]
    stated = call_bytes(spec, LIMIT_SHAPE, 4)
    # max/min: the state is MAX_WORK / 8 = 128 MiB; the rest is small beside a byte per window
    # element of every output (1 GiB).
    for call in ("forward", "backward"):
        assert measured[call] <= stated, call
        assert measured[call] < (384 << 20), call
    if mode != "avg":
        assert measured["state"] == MAX_WORK // 8
