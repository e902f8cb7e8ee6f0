"""The session store interface: a template method over a few atomic backend primitives.

Public async methods (:meth:`SessionStore.create`, :meth:`~SessionStore.get`,
:meth:`~SessionStore.advance`, ...) do the work every backend shares, once: the key layout,
(de)serializing a :class:`SessionRecord`, ownership, the answers to refusals, and mapping
backend failures to :class:`~service.errors.StoreUnavailable`. A backend implements only the
small primitives (``_insert``, ``_read``, ``_advance``, ``_remove``, ``_reap``, ``_usage``,
``_ping``), each atomic on its own, so no caller ever needs a lock:

- a forward computes outside the store and then :meth:`~SessionStore.advance`-s the session:
  ownership, liveness, the state-byte budget, step + 1, the new state and the TTL renewal in
  one atomic step. Concurrent forwards on one session (from any replica) each get a distinct
  step, and the state kept is that of the highest step; a session deleted or expired while its
  forward computed is not brought back.
- a backward reads one snapshot with :meth:`~SessionStore.get` (step and state written by one
  forward) and computes on it with no lock held.

Expiry is the store's own (Redis key TTLs, or the memory store's clock): an expired session is
gone at once, and it stops counting against the budgets no later than the next store call that
checks them. The record crosses the primitive boundary as a :class:`StoredSession` of plain
values (bytes, ints), so a backend in another process (Redis) holds exactly what the in-memory
one does: each fact once (the spec as canonical JSON, owner, TTL, step, state bytes and the
engine's state blob; shapes and dtype live in the state blob only).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, NoReturn, TypeVar

from engine import PoolSpec
from poolgrad.protocol import quote
from service.errors import (
    CapacityExceeded,
    InternalError,
    ServiceError,
    SessionNotFound,
    StoreUnavailable,
)

__all__ = [
    "AdvanceRefusal",
    "InsertOutcome",
    "Limits",
    "SessionRecord",
    "SessionStore",
    "StoredSession",
    "Usage",
    "spec_from_bytes",
    "spec_to_bytes",
]

#: What ``_insert`` did: ``stored``; or nothing, because the store was ``full`` or the id is
#: ``present`` (live) already.
InsertOutcome = Literal["stored", "full", "present"]
#: Why ``_advance`` wrote nothing: the session is ``absent`` (unknown, expired, deleted or
#: another owner's), or its new state does not fit the byte budget (``full``).
AdvanceRefusal = Literal["absent", "full"]

#: The default key prefix; a backend shared by several deployments takes one each.
DEFAULT_PREFIX: Final = "poolgrad:"

T = TypeVar("T")

#: How often ``create(replace=True)`` deletes a concurrent creator's session and tries again.
_REPLACE_ATTEMPTS: Final = 3


def spec_to_bytes(spec: PoolSpec) -> bytes:
    """The spec's canonical form in a record: compact JSON of the normalized fields, so equal
    specs are equal bytes (and share one :func:`spec_from_bytes` cache entry)."""
    return json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True).encode()


@functools.lru_cache(maxsize=256)
def spec_from_bytes(spec: bytes) -> PoolSpec:
    """The :class:`PoolSpec` of a record's spec bytes, parsed once per distinct spec: sessions
    mostly share a few specs, so a small bounded cache makes a forward's spec free."""
    return PoolSpec.from_dict(json.loads(spec))


@dataclass(frozen=True)
class SessionRecord:
    """One session as the store holds it. ``owner`` is a hash of the API key that created it
    (``""`` without keys); ``state`` is the engine's ``PoolState.to_bytes()`` of the last
    forward (``None`` before it), counted as ``state_bytes`` against the budget.

    ``state`` may be a view into the stored bytes (no copy); it is only ever read.
    """

    id: str
    owner: str
    spec: PoolSpec
    ttl_seconds: float
    step: int = 0
    state: bytes | memoryview | None = field(default=None, repr=False)
    state_bytes: int = 0


class StoredSession(NamedTuple):
    """A record as a backend holds it: plain values, written and read whole (one snapshot)."""

    owner: str
    spec: bytes
    ttl_ms: int
    step: int
    state_bytes: int
    state: bytes | None


@dataclass(frozen=True)
class Limits:
    """What a store may hold at once; a write that would pass either is refused."""

    max_sessions: int
    max_state_bytes: int


@dataclass(frozen=True)
class Usage:
    """What a store holds now: live sessions only."""

    sessions: int
    state_bytes: int


def ttl_ms(ttl_seconds: float) -> int:
    """A TTL as the whole milliseconds backends count in (at least one)."""
    return max(1, round(ttl_seconds * 1000))


class SessionStore(abc.ABC):
    """Sessions keyed by id, each with an idle TTL, under a session-count and state-byte budget.

    Not-found and not-yours are the same answer (:class:`SessionNotFound`), so a client cannot
    probe for other keys' session ids. ``expired_total`` and ``refused_total`` count what this
    process saw expire and refused (exported as metrics); backends add to ``expired_total``
    whenever they reclaim an expired session's budget.
    """

    def __init__(self, limits: Limits, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.limits = limits
        self.prefix = prefix
        self.expired_total = 0
        self.refused_total = 0

    # ------------------------------------------------------------------ public API

    async def create(
        self,
        session_id: str,
        owner: str,
        spec: PoolSpec,
        ttl_seconds: float,
        *,
        replace: bool = False,
    ) -> SessionRecord:
        """Store a new session (step 0, no state); :class:`CapacityExceeded` when full.

        ``replace``: a session ``owner`` holds under ``session_id`` is deleted first (ids that
        clients name, such as inference-protocol sequences); a concurrent creator of the same
        id that wins in between is replaced in turn, a bounded number of times.
        """
        stored = StoredSession(owner, spec_to_bytes(spec), ttl_ms(ttl_seconds), 0, 0, None)
        key = self._key(session_id)
        for _ in range(_REPLACE_ATTEMPTS if replace else 1):
            if replace:
                with contextlib.suppress(SessionNotFound):
                    await self.delete(session_id, owner)
            outcome = await self._call(self._insert(key, stored, self.limits))
            if outcome != "present":
                break
        if outcome == "present":
            raise InternalError(f"session id {quote(session_id)} is already taken")
        if outcome == "full":
            await self._refuse(f"a new session {quote(session_id)}")
        return self._record(session_id, stored)

    async def get(self, session_id: str, owner: str, *, state: bool = True) -> SessionRecord:
        """The session, its idle TTL renewed: one snapshot (``step`` and ``state`` written by
        the same forward; ``state`` is None without ``state=True``, for callers that need the
        spec only). :class:`SessionNotFound` if unknown, expired, deleted or owned by another
        key."""
        stored = await self._call(self._read(self._key(session_id), owner, state=state))
        if stored is None:
            raise SessionNotFound(f"session {quote(session_id)} does not exist or has expired")
        return self._record(session_id, stored)

    async def advance(self, session_id: str, owner: str, state: bytes, state_bytes: int) -> int:
        """Replace the session's state with a forward's ``state`` and return its new step.

        Atomic: the session is live and ``owner``'s, else :class:`SessionNotFound` (a session
        deleted or expired while its forward computed stays gone); the new ``state_bytes``
        (counted instead of the old) fit the budget, else :class:`CapacityExceeded` and the
        previous state stays; then step + 1, the state replaced and the TTL renewed.
        """
        key = self._key(session_id)
        result = await self._call(self._advance(key, owner, state, state_bytes, self.limits))
        if isinstance(result, int):
            return result
        if result == "full":
            await self._refuse(f"session {quote(session_id)} with {state_bytes} state bytes")
        raise SessionNotFound(
            f"session {quote(session_id)} does not exist, or was deleted or expired while in use; "
            "its new state was not kept"
        )

    async def delete(self, session_id: str, owner: str) -> None:
        """Drop a session and its state; :class:`SessionNotFound` as for :meth:`get`. A
        refused delete does not renew the TTL."""
        if not await self._call(self._remove(self._key(session_id), owner)):
            raise SessionNotFound(f"session {quote(session_id)} does not exist or has expired")

    async def reap(self) -> int:
        """Release the budget of expired sessions now; returns how many (the reaper calls
        this; stores also do it whenever they check the budget)."""
        return await self._call(self._reap())

    async def usage(self) -> Usage:
        """Live sessions and their state bytes."""
        return await self._call(self._usage())

    async def ping(self) -> None:
        """Return when the store answers; :class:`StoreUnavailable` otherwise."""
        await self._call(self._ping())

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release in memory
        """Release connections; the app calls this on shutdown."""

    # ------------------------------------------------------------- shared helpers

    def _key(self, session_id: str) -> str:
        """The session's key: its id as the hash tag, so every key of one session lands in
        one Redis Cluster slot."""
        return f"{self.prefix}{{{session_id}}}"

    @staticmethod
    def _record(session_id: str, stored: StoredSession) -> SessionRecord:
        return SessionRecord(
            id=session_id,
            owner=stored.owner,
            spec=spec_from_bytes(stored.spec),
            ttl_seconds=stored.ttl_ms / 1000,
            step=stored.step,
            state=stored.state,
            state_bytes=stored.state_bytes,
        )

    async def _refuse(self, what: str) -> NoReturn:
        self.refused_total += 1
        usage = await self.usage()
        raise CapacityExceeded(
            f"{what} does not fit: the store holds {usage.sessions} of "
            f"max_sessions={self.limits.max_sessions} sessions and {usage.state_bytes} of "
            f"max_state_bytes={self.limits.max_state_bytes} state bytes"
        )

    async def _call(self, operation: Awaitable[T]) -> T:
        """Await a primitive, translating a backend's failure into :class:`StoreUnavailable`
        (chained) so no backend exception leaks past the store."""
        try:
            return await operation
        except ServiceError:
            raise
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"session store did not answer: {exc}") from exc
        except Exception as exc:
            unavailable = self._unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    def _unavailable(self, exc: Exception) -> StoreUnavailable | None:
        """The :class:`StoreUnavailable` a backend-specific failure means, or None for a bug
        (which then propagates as the 500 it is)."""
        return None

    # ---------------------------------------------------------- backend primitives

    @abc.abstractmethod
    async def _insert(self, key: str, stored: StoredSession, limits: Limits) -> InsertOutcome:
        """Atomically store a new session with its TTL, or nothing (``present``, ``full``).

        ``full`` only when, after releasing expired sessions, one more would pass ``limits``.
        """

    @abc.abstractmethod
    async def _read(self, key: str, owner: str, *, state: bool) -> StoredSession | None:
        """The live session under ``key`` (one snapshot, without its state blob unless
        ``state``), its TTL renewed; None, renewing nothing, when absent, expired or another
        owner's."""

    @abc.abstractmethod
    async def _advance(
        self, key: str, owner: str, state: bytes, state_bytes: int, limits: Limits
    ) -> int | AdvanceRefusal:
        """Atomically: when ``key`` is live and ``owner``'s and, counting ``state_bytes``
        instead of its old state's (expired sessions released first), the state bytes stay
        within ``limits``: step + 1, state replaced, TTL renewed; return the new step.
        Otherwise change nothing and say why."""

    @abc.abstractmethod
    async def _remove(self, key: str, owner: str) -> bool:
        """Drop ``key`` and release its budget when it is live and ``owner``'s; say whether."""

    @abc.abstractmethod
    async def _reap(self) -> int:
        """Release the budget of expired sessions; return how many."""

    @abc.abstractmethod
    async def _usage(self) -> Usage:
        """Live sessions and their state bytes."""

    @abc.abstractmethod
    async def _ping(self) -> None:
        """Return when the backend answers."""
