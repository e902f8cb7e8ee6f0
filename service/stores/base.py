"""The session store interface: a template method over a few backend primitives.

Public async methods (:meth:`SessionStore.create`, :meth:`~SessionStore.get`, ...) do the
work every backend shares, once: the key layout, (de)serializing a :class:`SessionRecord` to
bytes, TTL renewal, ownership, capacity checks with reclaim-then-retry, and mapping backend
failures to :class:`~service.errors.StoreUnavailable`. A backend implements only the small
primitives (``_load``, ``_save``, ``_touch``, ``_delete``, ``_reap``, ``_usage``, ``_ping``,
``_lock``) and must make ``_save`` atomic: check the mode and the limits and write, or write
nothing. ``_save``'s mode is what keeps a deleted or expired session dead: a forward that
loaded its session before it was deleted or reaped ``replace``-s it, which finds no live key
and writes nothing.

Records cross the primitive boundary as bytes only, so a backend in another process (Redis)
sees exactly what the in-memory one does; nothing here assumes in-process objects.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Awaitable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeVar

from poolgrad import protocol
from service.errors import (
    CapacityExceeded,
    InternalError,
    ServiceError,
    SessionNotFound,
    StoreUnavailable,
)

__all__ = ["Limits", "SaveMode", "SaveOutcome", "SessionRecord", "SessionStore", "Usage"]

#: ``create``: the key must be absent (or expired); ``replace``: it must be present and live.
SaveMode = Literal["create", "replace"]
#: What ``_save`` did: ``stored``; or nothing, because the store was ``full``, or the key was
#: ``absent`` (replace) or ``present`` (create).
SaveOutcome = Literal["stored", "full", "absent", "present"]

_RECORD_MAGIC: Final = b"PGREC1"
_RECORD_PREFIX: Final = struct.Struct("<6sI")
_KEY_PREFIX: Final = "poolgrad:session:"

T = TypeVar("T")


@dataclass(frozen=True)
class SessionRecord:
    """One session as stored: metadata plus the engine's serialized state (``None`` before the
    first forward). ``owner`` is a hash of the API key that created it (``""`` without keys).

    ``state`` may be a view into the stored blob (no copy); it is only ever read.
    """

    id: str
    owner: str
    spec: Mapping[str, Any]
    ttl_seconds: float
    step: int = 0
    state: bytes | memoryview | None = field(default=None, repr=False)
    state_bytes: int = 0
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    dtype: str | None = None

    def with_state(
        self,
        state: bytes,
        *,
        state_bytes: int,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        dtype: str,
    ) -> SessionRecord:
        """The record after a forward: the new state, one step further."""
        return replace(
            self,
            step=self.step + 1,
            state=state,
            state_bytes=state_bytes,
            input_shape=input_shape,
            output_shape=output_shape,
            dtype=dtype,
        )

    def to_bytes(self) -> bytes:
        """``magic | u32 metadata length | metadata JSON | state``: one copy of the state."""
        meta = protocol.dumps(
            {
                "id": self.id,
                "owner": self.owner,
                "spec": dict(self.spec),
                "ttl_seconds": self.ttl_seconds,
                "step": self.step,
                "has_state": self.state is not None,
                "state_bytes": self.state_bytes,
                "input_shape": self.input_shape,
                "output_shape": self.output_shape,
                "dtype": self.dtype,
            }
        )
        prefix = _RECORD_PREFIX.pack(_RECORD_MAGIC, len(meta))
        return b"".join((prefix, meta, self.state if self.state is not None else b""))

    @staticmethod
    def owner_of(blob: bytes) -> str:
        """The owner recorded in a :meth:`to_bytes` blob (its metadata only is parsed)."""
        owner: str = SessionRecord._metadata(blob)["owner"]
        return owner

    @staticmethod
    def _metadata(blob: bytes) -> dict[str, Any]:
        magic, meta_length = _RECORD_PREFIX.unpack_from(blob)
        if magic != _RECORD_MAGIC:
            raise ValueError(f"session record has magic {magic!r}, expected {_RECORD_MAGIC!r}")
        start = _RECORD_PREFIX.size
        meta: dict[str, Any] = protocol.loads(blob[start : start + meta_length])
        return meta

    @classmethod
    def from_bytes(cls, blob: bytes) -> SessionRecord:
        """Parse :meth:`to_bytes` output; ``state`` is a view of ``blob`` (no copy)."""
        meta = cls._metadata(blob)
        _, meta_length = _RECORD_PREFIX.unpack_from(blob)
        view = memoryview(blob)[_RECORD_PREFIX.size + meta_length :]
        return cls(
            id=meta["id"],
            owner=meta["owner"],
            spec=meta["spec"],
            ttl_seconds=meta["ttl_seconds"],
            step=meta["step"],
            state=view if meta["has_state"] else None,
            state_bytes=meta["state_bytes"],
            input_shape=_shape(meta["input_shape"]),
            output_shape=_shape(meta["output_shape"]),
            dtype=meta["dtype"],
        )


def _shape(value: list[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class Limits:
    """What a store may hold at once; ``_save`` refuses a write that would pass either."""

    max_sessions: int
    max_state_bytes: int


@dataclass(frozen=True)
class Usage:
    """What a store holds now (expired but not yet reclaimed sessions included)."""

    sessions: int
    state_bytes: int


class SessionStore(abc.ABC):
    """Sessions keyed by id, each with an idle TTL, under a session-count and state-byte budget.

    Not-found and not-yours are the same answer (:class:`SessionNotFound`), so a client cannot
    probe for other keys' session ids. ``expired_total`` and ``refused_total`` count what this
    process reclaimed and refused (exported as metrics).
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.expired_total = 0
        self.refused_total = 0

    # ------------------------------------------------------------------ public API

    async def create(self, record: SessionRecord) -> None:
        """Store a new session (no state yet); :class:`CapacityExceeded` when full."""
        await self._store(record, "create")

    async def get(self, session_id: str, owner: str) -> SessionRecord:
        """The session, its idle TTL renewed; :class:`SessionNotFound` if unknown, expired,
        deleted or owned by another key."""
        key = self._key(session_id)
        blob = await self._call(self._load(key))
        record = None if blob is None else SessionRecord.from_bytes(blob)
        if record is None or record.owner != owner:
            raise SessionNotFound(f"session {session_id!r} does not exist or has expired")
        await self._call(self._touch(key, record.ttl_seconds))
        return record

    async def put(self, record: SessionRecord) -> None:
        """Replace a live session's record (a forward's new state), renewing its TTL.

        Atomic: when the state-byte budget would be exceeded even after reclaiming expired
        sessions, :class:`CapacityExceeded` is raised and the previous record stays. A session
        deleted or expired since it was read is not written back: :class:`SessionNotFound`.
        """
        await self._store(record, "replace")

    async def delete(self, session_id: str, owner: str) -> None:
        """Drop a session and its state; :class:`SessionNotFound` as for :meth:`get`.

        Reads only the record's metadata to check the owner, and does not renew its TTL.
        """
        key = self._key(session_id)
        blob = await self._call(self._load(key))
        if blob is None or SessionRecord.owner_of(blob) != owner:
            raise SessionNotFound(f"session {session_id!r} does not exist or has expired")
        await self._call(self._delete(key))

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Hold this while reading and replacing one session, so its forward and backward never
        interleave. Distinct sessions never wait on each other."""
        return self._lock(self._key(session_id))

    async def reap(self) -> int:
        """Reclaim expired sessions now; returns how many (the reaper calls this)."""
        reclaimed = await self._call(self._reap())
        self.expired_total += reclaimed
        return reclaimed

    async def usage(self) -> Usage:
        """Sessions and state bytes held now."""
        return await self._call(self._usage())

    async def ping(self) -> None:
        """Return when the store answers; :class:`StoreUnavailable` otherwise."""
        await self._call(self._ping())

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release in memory
        """Release connections; the app calls this on shutdown."""

    # ------------------------------------------------------------- shared helpers

    @staticmethod
    def _key(session_id: str) -> str:
        return _KEY_PREFIX + session_id

    async def _store(self, record: SessionRecord, mode: SaveMode) -> None:
        key = self._key(record.id)
        blob = record.to_bytes()
        for attempt in range(2):
            outcome = await self._call(
                self._save(key, blob, record.ttl_seconds, record.state_bytes, self.limits, mode)
            )
            if outcome == "stored":
                return
            if outcome == "absent":
                raise SessionNotFound(
                    f"session {record.id!r} was deleted or expired while in use; its new state "
                    "was not kept"
                )
            if outcome == "present":
                raise InternalError(f"session id {record.id!r} is already taken")
            # Expired sessions still hold their bytes until reaped: reclaim them before
            # refusing anyone, then try exactly once more.
            if attempt == 0:
                await self.reap()
        self.refused_total += 1
        usage = await self.usage()
        raise CapacityExceeded(
            f"session {record.id!r} with {record.state_bytes} state bytes does not fit: the store "
            f"holds {usage.sessions} of max_sessions={self.limits.max_sessions} sessions and "
            f"{usage.state_bytes} of max_state_bytes={self.limits.max_state_bytes} state bytes"
        )

    @staticmethod
    async def _call(operation: Awaitable[T]) -> T:
        """Await a primitive, translating a backend's connection failure into
        :class:`StoreUnavailable` (chained) so no backend exception leaks past the store."""
        try:
            return await operation
        except ServiceError:
            raise
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"session store did not answer: {exc}") from exc

    # ---------------------------------------------------------- backend primitives

    @abc.abstractmethod
    async def _load(self, key: str) -> bytes | None:
        """The blob under ``key``, or None when absent or expired."""

    @abc.abstractmethod
    async def _save(
        self,
        key: str,
        blob: bytes,
        ttl_seconds: float,
        state_bytes: int,
        limits: Limits,
        mode: SaveMode,
    ) -> SaveOutcome:
        """Atomically store ``blob`` with a fresh TTL, or nothing.

        Nothing when ``mode`` is ``create`` and ``key`` is live (``present``), when it is
        ``replace`` and ``key`` is absent or expired (``absent``), or when, counting this write
        (and no longer counting the blob it replaces), the store would hold more than
        ``limits`` (``full``). ``state_bytes`` is what this record counts against the budget.
        """

    @abc.abstractmethod
    async def _touch(self, key: str, ttl_seconds: float) -> None:
        """Renew the TTL of ``key`` (no-op when absent)."""

    @abc.abstractmethod
    async def _delete(self, key: str) -> None:
        """Drop ``key`` (no-op when absent)."""

    @abc.abstractmethod
    async def _reap(self) -> int:
        """Drop expired records, releasing their budget; return how many."""

    @abc.abstractmethod
    async def _usage(self) -> Usage:
        """Records and state bytes held now."""

    @abc.abstractmethod
    async def _ping(self) -> None:
        """Return when the backend answers."""

    @abc.abstractmethod
    def _lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """A mutual-exclusion lock for one key."""
