"""The Redis session store: ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs, shared by
every worker and replica pointed at the same server.

Layout (``prefix`` defaults to ``poolgrad:``):

- ``<prefix>{<id>}``: one hash per session, fields ``owner``, ``spec`` (canonical JSON),
  ``ttl`` (ms), ``step`` and, after the first forward, ``state`` (the engine's state blob). Its
  Redis TTL is the session's idle TTL, renewed on every use, so Redis expires idle sessions.
- ``<prefix>{budget}:expiry``: a sorted set, session key -> expiry time (server ms);
  ``<prefix>{budget}:bytes``: a hash, session key -> state bytes;
  ``<prefix>{budget}:total``: the sum of that hash (kept so no script sums it). Together they
  are the budgets across all replicas. Every script first releases the budget of the sessions
  whose expiry has passed (their keys expire in Redis at the same moment), so the counts are
  corrected when keys expire, whichever replica runs next.

Every read-modify-write is one Lua script (registered once, re-sent by redis-py on
``NOSCRIPT``), so it is atomic across replicas. The scripts touch a session's key and the
budget keys together: on Redis Cluster they are in different slots unless ``prefix`` itself
carries a hash tag (``{poolgrad}:``), which puts every key in one slot. This client speaks to
one Redis server (or a primary behind Sentinel-managed DNS), not a Cluster.

Every Redis failure (refused, reset, timed out, read-only replica, out of memory, loading) is
:class:`~service.errors.StoreUnavailable` (503) at this boundary; a pooled connection found
dead is replaced and the command retried once.
"""

from __future__ import annotations

from typing import Any, Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from service.errors import StoreUnavailable
from service.stores.base import (
    DEFAULT_PREFIX,
    AdvanceRefusal,
    InsertOutcome,
    Limits,
    SessionStore,
    StoredSession,
    Usage,
)

__all__ = ["RedisStore"]

#: Shared by every script. KEYS: expiry zset, bytes hash, total, then the session's hash (when
#: the script has one), whose key name is its member in the budget keys. Releases expired
#: sessions' budget first; every script's reply starts with how many it released.
_PRELUDE: Final = """
local expiry, sizes, total, session = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member = session
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function release(id)
  local bytes = redis.call('HGET', sizes, id)
  if bytes then
    redis.call('DECRBY', total, bytes)
    redis.call('HDEL', sizes, id)
  end
  redis.call('ZREM', expiry, id)
end

local released = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
for _, id in ipairs(released) do
  release(id)
end
released = #released

-- Live: the key exists and is still counted. A key whose budget was released (it expires
-- this very millisecond) is dropped; a counted id whose key is gone (a Redis restart, or an
-- eviction the server should not have been allowed to make) is released.
local function live()
  if session == nil then
    return false
  end
  local counted = redis.call('ZSCORE', expiry, member)
  if redis.call('EXISTS', session) == 1 then
    if counted then
      return true
    end
    redis.call('DEL', session)
  elseif counted then
    release(member)
    released = released + 1
  end
  return false
end

local function renew(ttl)
  redis.call('PEXPIRE', session, ttl)
  redis.call('ZADD', expiry, now + ttl, member)
end
"""

#: ARGV: owner, spec, ttl ms, max sessions. Returns {released, outcome}.
_INSERT: Final = (
    _PRELUDE
    + """
if live() then
  return {released, 'present'}
end
if redis.call('ZCARD', expiry) + 1 > tonumber(ARGV[4]) then
  return {released, 'full'}
end
redis.call('HSET', session, 'owner', ARGV[1], 'spec', ARGV[2], 'ttl', ARGV[3], 'step', 0)
redis.call('HSET', sizes, member, 0)
renew(tonumber(ARGV[3]))
return {released, 'stored'}
"""
)

#: ARGV: owner, '1' to include the state. Returns {released} or
#: {released, spec, ttl, step, state bytes[, state]}.
_READ: Final = (
    _PRELUDE
    + """
if not live() or redis.call('HGET', session, 'owner') ~= ARGV[1] then
  return {released}
end
local fields = {'spec', 'ttl', 'step'}
if ARGV[2] == '1' then
  fields[4] = 'state'
end
local values = redis.call('HMGET', session, unpack(fields))
renew(tonumber(values[2]))
local bytes = redis.call('HGET', sizes, member) or '0'
return {released, values[1], values[2], values[3], bytes, values[4]}
"""
)

#: ARGV: owner, state, state bytes, max state bytes. Returns {released, new step or refusal}.
_ADVANCE: Final = (
    _PRELUDE
    + """
if not live() or redis.call('HGET', session, 'owner') ~= ARGV[1] then
  return {released, 'absent'}
end
local change = tonumber(ARGV[3]) - tonumber(redis.call('HGET', sizes, member) or '0')
local held = tonumber(redis.call('GET', total) or '0')
if change > 0 and held + change > tonumber(ARGV[4]) then
  return {released, 'full'}
end
redis.call('INCRBY', total, change)
redis.call('HSET', sizes, member, ARGV[3])
redis.call('HSET', session, 'state', ARGV[2])
local step = redis.call('HINCRBY', session, 'step', 1)
renew(tonumber(redis.call('HGET', session, 'ttl')))
return {released, step}
"""
)

#: ARGV: owner. Returns {released, 1 when removed else 0}.
_REMOVE: Final = (
    _PRELUDE
    + """
if not live() or redis.call('HGET', session, 'owner') ~= ARGV[1] then
  return {released, 0}
end
release(member)
redis.call('DEL', session)
return {released, 1}
"""
)

#: No session key. Returns {released, sessions, state bytes}.
_USAGE: Final = (
    _PRELUDE
    + """
return {released, redis.call('ZCARD', expiry), tonumber(redis.call('GET', total) or '0')}
"""
)

#: Error replies that mean "this server cannot serve now" rather than a bug of ours: those
#: redis-py parses into classes of their own, then the rest by their reply code.
_UNAVAILABLE_ERRORS: Final = (
    redis_errors.ConnectionError,  # refused, reset, closed, loading, authentication
    redis_errors.TimeoutError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.NoPermissionError,
)
_UNAVAILABLE_REPLIES: Final = (
    "MASTERDOWN",
    "MISCONF",
    "NOREPLICAS",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
)


class RedisStore(SessionStore):
    """Sessions in Redis, shared by every process using the same server and ``prefix``.

    ``connect_timeout_seconds`` bounds opening a connection, ``timeout_seconds`` each command;
    a command on a pooled connection found dead is retried once on a new one.
    """

    def __init__(
        self,
        url: str,
        limits: Limits,
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout_seconds: float = 1.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        super().__init__(limits, prefix=prefix)
        self._redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_seconds,
            socket_timeout=timeout_seconds,
            # Once: a second dead connection in a row means the server is down (a 503 now
            # beats a retry storm), and every retry would add a timeout to the wait.
            retry=Retry(NoBackoff(), retries=1),
            retry_on_error=[redis_errors.ConnectionError],
            health_check_interval=30,
        )
        self._budget = [f"{prefix}{{budget}}:{name}" for name in ("expiry", "bytes", "total")]
        register = self._redis.register_script
        self._insert_script = register(_INSERT)
        self._read_script = register(_READ)
        self._advance_script = register(_ADVANCE)
        self._remove_script = register(_REMOVE)
        self._usage_script = register(_USAGE)

    def _unavailable(self, exc: Exception) -> StoreUnavailable | None:
        if isinstance(exc, _UNAVAILABLE_ERRORS) or (
            isinstance(exc, redis_errors.ResponseError)
            and str(exc).startswith(_UNAVAILABLE_REPLIES)
        ):
            return StoreUnavailable(f"session store did not answer: {type(exc).__name__}: {exc}")
        return None

    async def _run(self, script: AsyncScript, key: str | None, *args: Any) -> list[Any]:
        """Run one script on the budget keys (and ``key``), adding the sessions it released to
        ``expired_total``; returns the rest of its reply."""
        keys = self._budget if key is None else [*self._budget, key]
        reply: list[Any] = await script(keys=keys, args=args)
        self.expired_total += int(reply[0])
        return reply[1:]

    async def _insert(self, key: str, stored: StoredSession, limits: Limits) -> InsertOutcome:
        (outcome,) = await self._run(
            self._insert_script,
            key,
            stored.owner,
            stored.spec,
            stored.ttl_ms,
            limits.max_sessions,
        )
        result: InsertOutcome = outcome.decode()
        return result

    async def _read(self, key: str, owner: str, *, state: bool) -> StoredSession | None:
        reply = await self._run(self._read_script, key, owner, "1" if state else "0")
        if not reply:
            return None
        spec, ttl, step, state_bytes, *state_blob = reply
        blob = state_blob[0] if state_blob else None
        return StoredSession(owner, spec, int(ttl), int(step), int(state_bytes), blob)

    async def _advance(
        self, key: str, owner: str, state: bytes, state_bytes: int, limits: Limits
    ) -> int | AdvanceRefusal:
        (result,) = await self._run(
            self._advance_script, key, owner, state, state_bytes, limits.max_state_bytes
        )
        if isinstance(result, int):
            return result
        refusal: AdvanceRefusal = result.decode()
        return refusal

    async def _remove(self, key: str, owner: str) -> bool:
        (removed,) = await self._run(self._remove_script, key, owner)
        return bool(removed)

    async def _reap(self) -> int:
        released = int((await self._usage_script(keys=self._budget, args=()))[0])
        self.expired_total += released
        return released

    async def _usage(self) -> Usage:
        sessions, state_bytes = await self._run(self._usage_script, None)
        return Usage(sessions=int(sessions), state_bytes=int(state_bytes))

    async def _ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
