"""poolgrad's pooling engine: pure NumPy max/min/avg pooling with exact gradients.

::

    from engine import PoolSpec, forward, backward
    spec = PoolSpec(mode="max", pool_size=(2, 2))
    A, state = forward(X, spec)      # state: bit-packed winners, never a copy of X
    dX = backward(state, dA)         # pure and repeatable
    A, dX = gradient(X, dA, spec)    # both at once, bit for bit the same; no state kept
    blob = state.to_bytes()          # versioned binary form; PoolState.from_bytes(blob)

Semantics are those of CONTRACT.md ("Layer spec"); EpyNN's ``Pooling`` layer is the reference
for the defaults. No I/O, no web code, no environment: how a call runs (threads, NumPy or
compiled kernels) is an :class:`EngineOptions` argument, and a :class:`RunReport` says what ran::

    A, state = forward(X, spec, options=EngineOptions(threads=2, kernels="numpy"))
"""

from engine.errors import (
    EngineError,
    KernelsUnavailable,
    ShapeMismatchError,
    SpecError,
    StateError,
    TensorError,
)
from engine.options import EngineOptions, RunReport
from engine.pooling import backward, forward, gradient
from engine.spec import PoolSpec
from engine.state import PoolState

__all__ = [
    "EngineError",
    "EngineOptions",
    "KernelsUnavailable",
    "PoolSpec",
    "PoolState",
    "RunReport",
    "ShapeMismatchError",
    "SpecError",
    "StateError",
    "TensorError",
    "backward",
    "forward",
    "gradient",
]
