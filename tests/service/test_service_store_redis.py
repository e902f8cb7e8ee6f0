"""What only the Redis store has: its key layout and server-side TTLs, and every Redis failure
turned into StoreUnavailable (503) at the store's boundary, against a real redis-server."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis_server import RedisServer, free_port

from engine import PoolSpec
from service.errors import SessionNotFound, StoreUnavailable
from service.stores import Limits, Usage
from service.stores.redis import RedisStore

pytestmark = pytest.mark.anyio

LIMITS = Limits(max_sessions=10, max_state_bytes=10_000)
SPEC = PoolSpec()
_prefixes = itertools.count()


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at and break the server behind the store's back."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, LIMITS, prefix=f"layout{next(_prefixes)}:")
    yield store
    await store.close()


async def test_each_session_is_one_hash_under_its_id_tag_with_a_redis_ttl(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    await store.create("abc", "owner-hash", SPEC, 30.0)
    await store.advance("abc", "owner-hash", b"state-blob", 10)
    key = f"{store.prefix}{{abc}}"
    budget = {f"{store.prefix}{{budget}}:{name}" for name in ("expiry", "bytes", "total")}
    assert {name.decode() for name in await admin.keys(f"{store.prefix}*")} == {key, *budget}
    fields = await admin.hgetall(key)
    assert fields == {
        b"owner": b"owner-hash",
        b"spec": b'{"count_include_pad":false,"layout":"channels_last","mode":"max",'
        b'"nan":"propagate","padding":"valid","pool_size":[2,2],"strides":[2,2],"ties":"all"}',
        b"ttl": b"30000",
        b"step": b"1",
        b"state": b"state-blob",
    }
    assert 29_000 < await admin.pttl(key) <= 30_000


async def test_a_unix_socket_url_reaches_the_same_sessions(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.create("a", "o", SPEC, 30.0)
    over_socket = RedisStore(redis_server.unix_url, LIMITS, prefix=store.prefix)
    try:
        assert await over_socket.advance("a", "o", b"s", 1) == 1
    finally:
        await over_socket.close()
    assert (await store.get("a", "o")).step == 1


async def test_an_unreachable_server_is_store_unavailable(redis_server: RedisServer) -> None:
    closed = RedisStore(f"redis://127.0.0.1:{free_port()}/0", LIMITS, connect_timeout_seconds=0.5)
    try:
        with pytest.raises(StoreUnavailable, match="did not answer"):
            await closed.ping()
        with pytest.raises(StoreUnavailable, match="did not answer"):
            await closed.get("abc", "")
    finally:
        await closed.close()


async def test_a_dead_pooled_connection_is_replaced(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    await store.create("a", "", SPEC, 30.0)
    await admin.client_kill_filter(_type="normal", skipme=True)  # every other connection
    assert (await store.get("a", "")).step == 0


async def test_a_flushed_script_cache_is_reloaded(store: RedisStore, admin: aioredis.Redis) -> None:
    await store.create("a", "", SPEC, 30.0)
    await admin.script_flush()
    assert await store.advance("a", "", b"s", 1) == 1


async def test_out_of_memory_is_store_unavailable_and_writes_nothing(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    await store.create("a", "", SPEC, 30.0)
    await admin.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable, match="OutOfMemoryError"):
            await store.advance("a", "", b"x" * 1000, 1000)
    finally:
        await admin.config_set("maxmemory", "0")
    assert (await store.get("a", "")).step == 0


async def test_a_read_only_replica_is_store_unavailable(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    await store.create("a", "", SPEC, 30.0)
    # Made a replica of a primary that does not exist: it keeps its data and refuses writes.
    await admin.replicaof("127.0.0.1", str(free_port()))
    try:
        with pytest.raises(StoreUnavailable, match="ReadOnlyError"):
            await store.advance("a", "", b"s", 1)
    finally:
        await admin.replicaof("NO", "ONE")
    assert await store.advance("a", "", b"s", 1) == 1


async def test_a_session_lost_by_redis_is_not_found_and_stops_counting(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    """What an eviction (a server without noeviction) or a restart does to one session."""
    await store.create("a", "", SPEC, 30.0)
    await store.advance("a", "", b"x" * 500, 500)
    await admin.delete(f"{store.prefix}{{a}}")
    with pytest.raises(SessionNotFound):
        await store.get("a", "")
    assert await store.usage() == Usage(sessions=0, state_bytes=0)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (redis_errors.ConnectionError("Error 111 connecting to 10.0.0.7:6379"), True),
        (redis_errors.TimeoutError("Timeout reading from 10.0.0.7:6379"), True),
        (redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (redis_errors.ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (redis_errors.ResponseError("MISCONF Redis is configured to save RDB snapshots"), True),
        (redis_errors.ResponseError("CLUSTERDOWN The cluster is down"), True),
        (redis_errors.ResponseError("ERR user_script:3: Script attempted to access nil"), False),
        (redis_errors.DataError("Invalid input of type: 'dict'"), False),
    ],
)
async def test_which_redis_errors_mean_unavailable(
    store: RedisStore, error: Exception, unavailable: bool
) -> None:
    """Failures of a server that cannot serve now are 503s; our own bugs stay 500s."""

    async def failing() -> None:
        raise error

    if unavailable:
        with pytest.raises(StoreUnavailable, match=type(error).__name__):
            await store._call(failing())
    else:
        with pytest.raises(type(error)):
            await store._call(failing())
