"""A memo with a memory budget: the engine's geometry caches, bounded however callers vary.

``functools.lru_cache`` bounds the number of entries, not their size, and a plan for a
65,536-element window holds 65,536 offsets (about 40 MB): 256 of those, one per distinct input
shape a client chooses to send, would be gigabytes. Here every entry has a weight (about one
unit per window offset it holds) and the memo keeps at most ``budget`` units, dropping the
least recently used entries first; an entry heavier than the whole budget is returned but not
kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["WeighedMemo"]

V = TypeVar("V")


class WeighedMemo(Generic[V]):
    """Least-recently-used memo of values weighed by ``weigh``, at most ``budget`` in all.

    Thread-safe: lookups and insertions hold a lock; ``compute`` runs outside it (two threads
    may compute the same value, and both results are equal).
    """

    def __init__(self, budget: int, weigh: Callable[[V], int]) -> None:
        self.budget = budget
        self._weigh = weigh
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """The total weight kept now."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value memoized for ``key``, computed (and kept if it fits) on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0]
        value = compute()
        weight = max(1, self._weigh(value))
        if weight > self.budget:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, weight)
                self._held += weight
                while self._held > self.budget:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._held -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0
