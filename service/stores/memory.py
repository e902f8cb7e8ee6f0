"""The embedded in-memory session store: this process only, the default ``memory://``.

Every primitive runs on the event loop without awaiting inside, so each one is atomic with
respect to other requests; a :class:`StoredSession` is immutable and replaced whole, so a
reader holding an old one never sees a torn record. An expired session is invisible at once;
its budget is released when a budget check would otherwise fail, on :meth:`usage` and on
:meth:`reap` (a scan of every session, so the hot path never pays for it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.stores.base import (
    AdvanceRefusal,
    InsertOutcome,
    Limits,
    SessionStore,
    StoredSession,
    Usage,
)

__all__ = ["MemoryStore"]


@dataclass
class _Entry:
    stored: StoredSession
    expires_at: float


class MemoryStore(SessionStore):
    """Sessions in a dict of this process; ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(limits)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # Counts expired entries too until they are released (see the module docstring).
        self._state_bytes = 0

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry

    def _fits(self, sessions: int, state_bytes: int, limits: Limits) -> bool:
        """Whether the store may hold ``sessions`` more sessions and ``state_bytes`` more
        bytes, releasing expired sessions first when it otherwise may not."""

        def fits() -> bool:
            return (
                len(self._entries) + sessions <= limits.max_sessions
                and self._state_bytes + state_bytes <= limits.max_state_bytes
            )

        if fits():
            return True
        self._release_expired()
        return fits()

    def _release_expired(self) -> int:
        now = self._clock()
        expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in expired:
            self._drop(key)
        self.expired_total += len(expired)
        return len(expired)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._state_bytes -= entry.stored.state_bytes

    async def _insert(self, key: str, stored: StoredSession, limits: Limits) -> InsertOutcome:
        if self._live(key) is not None:
            return "present"
        if key in self._entries:  # expired, not yet released: the new session takes its place
            self._drop(key)
            self.expired_total += 1
        if not self._fits(1, stored.state_bytes, limits):
            return "full"
        self._entries[key] = _Entry(stored, self._clock() + stored.ttl_ms / 1000)
        self._state_bytes += stored.state_bytes
        return "stored"

    async def _read(self, key: str, owner: str, *, state: bool) -> StoredSession | None:
        entry = self._live(key)
        if entry is None or entry.stored.owner != owner:
            return None
        entry.expires_at = self._clock() + entry.stored.ttl_ms / 1000
        return entry.stored if state else entry.stored._replace(state=None)

    async def _advance(
        self, key: str, owner: str, state: bytes, state_bytes: int, limits: Limits
    ) -> int | AdvanceRefusal:
        entry = self._live(key)
        if entry is None or entry.stored.owner != owner:
            return "absent"
        if not self._fits(0, state_bytes - entry.stored.state_bytes, limits):
            return "full"
        self._state_bytes += state_bytes - entry.stored.state_bytes
        step = entry.stored.step + 1
        entry.stored = entry.stored._replace(step=step, state_bytes=state_bytes, state=state)
        entry.expires_at = self._clock() + entry.stored.ttl_ms / 1000
        return step

    async def _remove(self, key: str, owner: str) -> bool:
        entry = self._live(key)
        if entry is None or entry.stored.owner != owner:
            return False
        self._drop(key)
        return True

    async def _reap(self) -> int:
        return self._release_expired()

    async def _usage(self) -> Usage:
        self._release_expired()
        return Usage(sessions=len(self._entries), state_bytes=self._state_bytes)

    async def _ping(self) -> None:
        return None
