"""The embedded in-memory session store: this process only, the default ``memory://``.

Every primitive runs on the event loop without awaiting inside, so each one is atomic with
respect to other requests; the blob bytes are immutable, so a reader holding an old record
never sees a torn one. Expired records stay invisible until :meth:`_reap` drops them, and
they keep counting against the limits until then (the store never holds more than its
budget, and the base class reaps before it refuses anyone).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from service.stores.base import Limits, SaveMode, SaveOutcome, SessionStore, Usage

__all__ = ["MemoryStore"]


@dataclass
class _Entry:
    blob: bytes
    state_bytes: int
    expires_at: float


@dataclass
class _KeyLock:
    lock: asyncio.Lock
    users: int = 0


class MemoryStore(SessionStore):
    """Sessions in a dict of this process; ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(limits)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._state_bytes = 0
        self._locks: dict[str, _KeyLock] = {}

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry

    async def _load(self, key: str) -> bytes | None:
        entry = self._live(key)
        return None if entry is None else entry.blob

    async def _save(
        self,
        key: str,
        blob: bytes,
        ttl_seconds: float,
        state_bytes: int,
        limits: Limits,
        mode: SaveMode,
    ) -> SaveOutcome:
        live = self._live(key) is not None
        if mode == "create" and live:
            return "present"
        if mode == "replace" and not live:
            return "absent"
        # An expired entry not yet reaped is replaced by a create, so it stops counting.
        previous = self._entries.get(key)
        sessions = len(self._entries) + (previous is None)
        total = self._state_bytes + state_bytes - (previous.state_bytes if previous else 0)
        if sessions > limits.max_sessions or total > limits.max_state_bytes:
            return "full"
        self._entries[key] = _Entry(blob, state_bytes, self._clock() + ttl_seconds)
        self._state_bytes = total
        return "stored"

    async def _touch(self, key: str, ttl_seconds: float) -> None:
        entry = self._live(key)
        if entry is not None:
            entry.expires_at = self._clock() + ttl_seconds

    async def _delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._state_bytes -= entry.state_bytes

    async def _reap(self) -> int:
        now = self._clock()
        expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in expired:
            await self._delete(key)
        return len(expired)

    async def _usage(self) -> Usage:
        return Usage(sessions=len(self._entries), state_bytes=self._state_bytes)

    async def _ping(self) -> None:
        return None

    def _lock(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._held(key)

    @asynccontextmanager
    async def _held(self, key: str) -> AsyncIterator[None]:
        # One asyncio.Lock per key, alive only while someone holds or waits for it, so locks
        # of deleted and expired sessions do not accumulate.
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]
