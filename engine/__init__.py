"""poolgrad's pooling engine: pure NumPy max/min/avg pooling with exact gradients.

::

    from engine import PoolSpec, forward, backward
    spec = PoolSpec(mode="max", pool_size=(2, 2))
    A, state = forward(X, spec)      # state: bit-packed winners, never a copy of X
    dX = backward(state, dA)         # pure and repeatable
    blob = state.to_bytes()          # versioned binary form; PoolState.from_bytes(blob)

Semantics are those of CONTRACT.md ("Layer spec"); EpyNN's ``Pooling`` layer is the reference
for the defaults. No I/O, no web code.

Environment
-----------
``POOLGRAD_ENGINE_THREADS``
    Threads a large call is spread over, read once at first use; default
    ``min(4, os.cpu_count())``, ``1`` disables threading (see :mod:`engine.parallel`).
"""

from engine.errors import (
    EngineError,
    ShapeMismatchError,
    SpecError,
    StateError,
    TensorError,
)
from engine.pooling import backward, forward
from engine.spec import PoolSpec
from engine.state import PoolState

__all__ = [
    "EngineError",
    "PoolSpec",
    "PoolState",
    "ShapeMismatchError",
    "SpecError",
    "StateError",
    "TensorError",
    "backward",
    "forward",
]
