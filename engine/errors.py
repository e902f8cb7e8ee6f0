"""Exceptions raised by the pooling engine.

Every engine error is a ``ValueError``, so callers that only know NumPy conventions still
catch it; the service maps each subclass to one problem code::

    ValueError
    └── EngineError              root of everything the engine raises on bad input
        ├── SpecError            a PoolSpec field is invalid            (422 invalid_spec)
        ├── TensorError          X or dA refused: rank, dtype, size, NaN (422 invalid_tensor)
        ├── ShapeMismatchError   dA's shape differs from A's             (422 shape_mismatch)
        ├── StateError           a serialized state is truncated or corrupt, or lacks winners
        └── KernelsUnavailable   kernels="compiled" asked for without Numba installed

Messages always name the offending value.
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "KernelsUnavailable",
    "ShapeMismatchError",
    "SpecError",
    "StateError",
    "TensorError",
]


class EngineError(ValueError):
    """Root of every error the engine raises on bad input."""


class SpecError(EngineError):
    """A layer spec field is invalid (wrong type, out of range, unknown key or value)."""


class TensorError(EngineError):
    """An input tensor is refused: rank, dtype, zero-size dims, NaN under ``nan="reject"``,
    or a window larger than the padded input."""


class ShapeMismatchError(EngineError):
    """The upstream gradient ``dA`` does not have the shape of the forward output ``A``."""


class StateError(EngineError):
    """A serialized :class:`~engine.PoolState` blob is truncated, corrupt or inconsistent."""


class KernelsUnavailable(EngineError):
    """``kernels="compiled"`` was asked for but Numba is not installed (the ``fast`` extra)."""
