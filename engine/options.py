"""How the engine runs a call: threads, kernels, and the path choices tests may force.

The engine reads no environment: a caller that wants another thread count or kernel set passes
an :class:`EngineOptions` to :func:`engine.forward` / :func:`engine.backward` (the service builds
one from its settings). A :class:`RunReport` passed along is filled in with what actually ran,
so tests can assert which path they exercised instead of patching module names.

Kernels
-------
``"numpy"``
    The pure NumPy kernels (:mod:`engine.pooling`): the reference, and always available.
``"compiled"``
    The Numba kernels (:mod:`engine.compiled`) where they exist (max and min); avg and any call
    they do not cover run on NumPy. Needs the ``fast`` extra; a
    :class:`~engine.errors.KernelsUnavailable` otherwise.
``"auto"`` (default)
    ``"compiled"`` when Numba imports and X is ``channels_last`` with more than one channel
    or is tiny (under 1024 elements), else ``"numpy"`` (larger single-channel inputs run
    faster on NumPy); decided per call by
    :func:`engine.compiled.kernel_set` and reported in :class:`RunReport`.

Both kernel sets give bit-identical A (up to the sign of a zero max/min, which NumPy's own
``maximum`` leaves unspecified), states and dX.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = [
    "KERNEL_CHOICES",
    "EngineOptions",
    "KernelChoice",
    "RunReport",
    "default_threads",
]

KernelChoice: TypeAlias = Literal["numpy", "compiled", "auto"]
KERNEL_CHOICES: tuple[KernelChoice, ...] = ("numpy", "compiled", "auto")


def default_threads() -> int:
    """``min(4, os.cpu_count())``: threads a large call is spread over unless told otherwise."""
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineOptions:
    """How to run one call. Every field has a default that serves production.

    Parameters
    ----------
    threads : int
        Threads a large call is spread over; ``1`` runs everything on the calling thread.
    kernels : {"auto", "numpy", "compiled"}
        Which kernel set runs (module docstring).
    piece_bytes : int
        Bytes of X per batch piece (:mod:`engine.parallel`): each piece's working set stays in
        a core's L2 cache. With the default, the compiled kernels (which keep their working
        set in cache row by row) cut a call into one piece per thread instead.
    parallel_min_elements : int
        Below this many input elements a call stays on the calling thread.
    disjoint_path : bool
        max/min backward with disjoint windows writes each offset straight into dX; ``False``
        forces the general stride-phase path (an oracle for tests; slower, same bits).
    merged_phase_write : bool
        The stride-phase path writes all phases through one phase-major view of dX where the
        sizes allow; ``False`` forces one strided write per phase (same bits).
    place_workers : bool
        A call on several threads keeps its worker threads off the CPU the calling thread
        runs on (Linux; :mod:`engine.parallel`), so a worker woken after an idle spell is not
        queued behind the caller; ``False`` leaves placement to the OS scheduler.
    """

    threads: int = field(default_factory=default_threads)
    kernels: KernelChoice = "auto"
    piece_bytes: int = 1 << 20
    parallel_min_elements: int = 1 << 18
    disjoint_path: bool = True
    merged_phase_write: bool = True
    place_workers: bool = True

    def __post_init__(self) -> None:
        for name in ("threads", "piece_bytes", "parallel_min_elements"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EngineOptions.{name} must be a positive int, got {value!r}")
        if self.kernels not in KERNEL_CHOICES:
            choices = ", ".join(repr(choice) for choice in KERNEL_CHOICES)
            raise ValueError(
                f"EngineOptions.kernels must be one of {choices}, got {self.kernels!r}"
            )


DEFAULT_OPTIONS = EngineOptions()


@dataclass
class RunReport:
    """What one :func:`engine.forward` or :func:`engine.backward` call actually ran; the engine
    overwrites every field it knows.

    ``kernels`` is ``"numpy"`` or ``"compiled"``; ``chunks`` the independent pieces the call
    was cut into and ``threads`` how many threads ran them; ``backward_path`` (max/min
    backward only) ``"disjoint"``, ``"phases-merged"`` or ``"phases-strided"``.
    """

    kernels: str = ""
    chunks: int = 0
    threads: int = 0
    backward_path: str = ""
