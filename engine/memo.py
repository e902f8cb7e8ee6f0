"""A memo with a memory budget: the engine's geometry caches, bounded however callers vary.

``functools.lru_cache`` bounds the number of entries, not their size, and a plan for a
65,536-element window holds 65,536 offsets (about 40 MB), a plan for a long 1-D input arrays
as long as its output: a few hundred of those, one per distinct input shape a client chooses
to send, would be gigabytes. Here every entry is weighed in the bytes it holds
(:func:`deep_bytes`) and the memo keeps at most ``budget`` bytes, dropping the least recently
used entries first (approximately, see :meth:`WeighedMemo.get`); an entry heavier than the
whole budget is returned but not kept. Every memo registers under a name: :func:`memos` lists
them with what they hold.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["WeighedMemo", "deep_bytes", "memos", "sampled_bytes"]

V = TypeVar("V")

_registry: dict[str, WeighedMemo[Any]] = {}


def memos() -> dict[str, WeighedMemo[Any]]:
    """Every engine memo by name; ``memo.held`` is the bytes it keeps, ``memo.budget`` its
    bound."""
    return dict(_registry)


def deep_bytes(value: object, seen: set[int] | None = None) -> int:
    """Bytes held by ``value`` and what it references: containers, dataclass fields, slices,
    NumPy arrays (their data included); each object counted once."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, np.ndarray):
        # getsizeof already counts the data of an array that owns it.
        return size if value.base is None else size + deep_bytes(value.base, seen)
    if isinstance(value, tuple | list):
        return size + sum(deep_bytes(item, seen) for item in value)
    if isinstance(value, dict):
        return size + sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in value.items())
    if isinstance(value, slice):
        return size + sum(deep_bytes(part, seen) for part in (value.start, value.stop, value.step))
    fields = getattr(value, "__dict__", None)
    if fields is not None:
        return size + deep_bytes(fields, seen)
    return size


def sampled_bytes(items: Sequence[object]) -> int:
    """:func:`deep_bytes` of a long sequence of like items, from its first two: walking a
    65,536-offset plan item by item would cost as much as building it. The second item is
    weighed after the first, so what items share (``slice(None)``, small ints) counts once."""
    seen: set[int] = set()
    if len(items) < 2:
        return sys.getsizeof(items) + sum(deep_bytes(item, seen) for item in items)
    first = deep_bytes(items[0], seen)
    return sys.getsizeof(items) + first + (len(items) - 1) * deep_bytes(items[1], seen)


class _Entry(Generic[V]):
    """One memoized value, its weight, and whether it was used since eviction last passed it."""

    __slots__ = ("used", "value", "weight")

    def __init__(self, value: V, weight: int) -> None:
        self.value = value
        self.weight = weight
        self.used = False


class WeighedMemo(Generic[V]):
    """Memo of values weighed by ``weigh`` (bytes), at most ``budget`` in all, dropping the
    least recently used first (approximately: see :meth:`get`); registered under ``name``
    when given (see :func:`memos`).

    Thread-safe: a hit reads the entries without a lock (one dict read and one attribute
    write, each atomic under the GIL); insertions and evictions hold a lock; ``compute`` runs
    outside it (two threads may compute the same value, and both results are equal).
    """

    def __init__(self, budget: int, weigh: Callable[[V], int], name: str | None = None) -> None:
        self.budget = budget
        self._weigh = weigh
        # Insertion order is eviction order (a plain dict keeps it).
        self._entries: dict[Hashable, _Entry[V]] = {}
        self._held = 0
        self._lock = threading.Lock()
        if name is not None:
            _registry[name] = self

    @property
    def held(self) -> int:
        """The total weight kept now."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value memoized for ``key``, computed (and kept if it fits) on a miss.

        A hit only marks its entry used, so it takes no lock and moves nothing: a tiny engine
        call makes several lookups, and a lock and a reordering per hit cost it more than its
        kernels' Python steps. Eviction gives a used entry a second chance (the CLOCK
        approximation of least-recently-used): the oldest entry is dropped unless it was used
        since eviction last came round, in which case it is unmarked and goes to the back; the
        entry just added is never the one dropped.
        """
        entry = self._entries.get(key)
        if entry is not None:
            entry.used = True
            return entry.value
        value = compute()
        weight = max(1, self._weigh(value))
        if weight > self.budget:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = _Entry(value, weight)
                self._held += weight
                self._evict(key)
        return value

    def _evict(self, newest: Hashable) -> None:
        """Drop the oldest unused entries but ``newest`` until the budget holds (the caller
        holds the lock). Ends: a pass unmarks every entry it moves back, so the next pass drops
        them, and ``newest`` alone fits the budget."""
        while self._held > self.budget:
            key, oldest = next(iter(self._entries.items()))
            del self._entries[key]
            if oldest.used or key is newest:
                oldest.used = False
                self._entries[key] = oldest
            else:
                self._held -= oldest.weight

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0
