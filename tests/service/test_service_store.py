"""The session store contract: one class run against every backend, the in-memory store and
a real redis-server alike (aiocache's acceptance style).

Time is the backend's own: the memory store's clock is injected and moved by hand, Redis
expires keys on its own clock, so there the tests wait (TTLs scaled down to fifths of a
second). Expiry is the store's: an expired session is gone at once and stops counting against
the budgets by the next call that checks them, with no reaper needed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis_server import RedisServer

from engine import PoolSpec
from service.errors import CapacityExceeded, InternalError, SessionNotFound
from service.stores import Limits, MemoryStore, SessionStore, Usage
from service.stores.redis import RedisStore

pytestmark = pytest.mark.anyio

LIMITS = Limits(max_sessions=3, max_state_bytes=1000)
SPEC = PoolSpec(mode="avg", pool_size=(3, 2), strides=1)
_prefixes = itertools.count()


@dataclass
class Backend:
    """A store under test, a second client of the same data (another replica, for Redis), and
    the backend's time: ``seconds(n)`` is ``n`` time units, ``elapse(n)`` lets them pass."""

    store: SessionStore
    peer: SessionStore
    unit: float
    elapse: Callable[[float], Awaitable[None]]

    def seconds(self, units: float) -> float:
        return units * self.unit

    async def stored(
        self, session_id: str, owner: str, *, ttl: float, state_bytes: int, tag: int = 0
    ) -> None:
        """A session with an idle TTL of ``ttl`` units holding a state of ``state_bytes``
        (written by ``tag``): created, then advanced once (step 1)."""
        await self.store.create(session_id, owner, SPEC, self.seconds(ttl))
        await self.store.advance(session_id, owner, blob(state_bytes, tag), state_bytes)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def memory_backend() -> Backend:
    clock = FakeClock()
    store = MemoryStore(LIMITS, clock=clock)

    async def elapse(units: float) -> None:
        clock.now += units

    return Backend(store, store, 1.0, elapse)


@pytest.fixture
async def redis_backend(redis_server: RedisServer) -> AsyncIterator[Backend]:
    prefix = f"contract{next(_prefixes)}:"
    store = RedisStore(redis_server.url, LIMITS, prefix=prefix)
    peer = RedisStore(redis_server.url, LIMITS, prefix=prefix)
    unit = 0.2  # wide margins: a loaded machine may stall the loop for a moment

    async def elapse(units: float) -> None:
        await asyncio.sleep(units * unit)

    yield Backend(store, peer, unit, elapse)
    await store.close()
    await peer.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    fixture: Backend = request.getfixturevalue(f"{request.param}_backend")
    return fixture


def blob(size: int, tag: int = 0) -> bytes:
    """A state blob of ``size`` bytes that says which write it came from."""
    return (tag.to_bytes(4, "little") + bytes(range(256)) * (size // 256 + 1))[:size]


class TestSessionStoreContract:
    async def test_a_session_round_trips_every_fact_once(self, backend: Backend) -> None:
        store = backend.store
        created = await store.create("a", "o", SPEC, backend.seconds(10))
        assert (created.step, created.state, created.state_bytes) == (0, None, 0)
        fresh = await store.get("a", "o")
        assert fresh.spec == SPEC
        assert fresh.ttl_seconds == pytest.approx(backend.seconds(10))
        assert (fresh.step, fresh.state, fresh.state_bytes) == (0, None, 0)
        assert await store.advance("a", "o", blob(300, 1), 300) == 1
        loaded = await store.get("a", "o")
        assert (loaded.id, loaded.owner, loaded.spec, loaded.step) == ("a", "o", SPEC, 1)
        assert bytes(loaded.state or b"") == blob(300, 1)
        assert loaded.state_bytes == 300
        spec_only = await store.get("a", "o", state=False)
        assert (spec_only.spec, spec_only.step, spec_only.state_bytes) == (SPEC, 1, 300)
        assert spec_only.state is None

    async def test_another_owner_sees_not_found_and_changes_nothing(self, backend: Backend) -> None:
        store = backend.store
        await backend.stored("a", "alice", ttl=10, state_bytes=10, tag=1)
        with pytest.raises(SessionNotFound, match="'a'"):
            await store.get("a", "bob")
        with pytest.raises(SessionNotFound, match="'a'"):
            await store.advance("a", "bob", blob(20, 2), 20)
        with pytest.raises(SessionNotFound, match="'a'"):
            await store.delete("a", "bob")
        kept = await store.get("a", "alice")
        assert (kept.step, bytes(kept.state or b"")) == (1, blob(10, 1))

    async def test_idle_ttl_expires_and_every_use_renews_it(self, backend: Backend) -> None:
        store = backend.store
        await store.create("a", "", SPEC, backend.seconds(5))
        for turn in range(3):
            await backend.elapse(3)
            if turn == 1:
                await store.advance("a", "", blob(10), 10)  # renews as well
            else:
                await store.get("a", "", state=False)  # renews: 9 units later it is there
        await backend.elapse(6)
        with pytest.raises(SessionNotFound):
            await store.get("a", "")

    async def test_expired_sessions_stop_counting_without_a_reaper(self, backend: Backend) -> None:
        store = backend.store
        await backend.stored("a", "", ttl=3, state_bytes=400)
        await backend.stored("b", "", ttl=50, state_bytes=100)
        await backend.elapse(5)
        assert await store.usage() == Usage(sessions=1, state_bytes=100)
        assert store.expired_total == 1
        assert await store.reap() == 0  # nothing left to release

    async def test_session_count_limit(self, backend: Backend) -> None:
        for name in "abc":
            await backend.store.create(name, "", SPEC, backend.seconds(10))
        with pytest.raises(CapacityExceeded, match=r"'d'.*holds 3 of max_sessions=3"):
            await backend.store.create("d", "", SPEC, backend.seconds(10))
        assert backend.store.refused_total == 1

    async def test_expired_sessions_are_released_before_refusing(self, backend: Backend) -> None:
        store = backend.store
        await store.create("a", "", SPEC, backend.seconds(2))
        await store.create("b", "", SPEC, backend.seconds(100))
        await store.create("c", "", SPEC, backend.seconds(100))
        await backend.elapse(3)
        await store.create("d", "", SPEC, backend.seconds(100))  # fits: "a" expired
        assert store.expired_total == 1
        assert store.refused_total == 0

    async def test_byte_budget_refusal_keeps_the_previous_state(self, backend: Backend) -> None:
        store = backend.store
        await store.create("a", "", SPEC, backend.seconds(10))
        await store.create("b", "", SPEC, backend.seconds(10))
        await store.advance("a", "", blob(600, 1), 600)
        with pytest.raises(CapacityExceeded, match=r"500 state bytes.*max_state_bytes=1000"):
            await store.advance("b", "", blob(500, 2), 500)
        with pytest.raises(CapacityExceeded):
            await store.advance("a", "", blob(1001, 3), 1001)
        kept = await store.get("a", "")
        assert (kept.step, kept.state_bytes, bytes(kept.state or b"")) == (1, 600, blob(600, 1))
        assert (await store.get("b", "")).step == 0
        assert await store.usage() == Usage(sessions=2, state_bytes=600)
        assert await store.advance("a", "", blob(900, 4), 900) == 2  # the old 600 is freed
        assert await store.usage() == Usage(sessions=2, state_bytes=900)

    async def test_never_holds_more_than_its_limits(self, backend: Backend) -> None:
        store = backend.store
        rng = random.Random(7)
        # The model: name -> state bytes of the live sessions. TTLs are either far shorter than
        # one elapse step or far longer than the whole run, so the model knows what expired.
        held: dict[str, int] = {}
        short: set[str] = set()
        for _ in range(150):
            name = rng.choice("abcdefg")
            action = rng.random()
            try:
                if action < 0.3:
                    is_short = rng.random() < 0.3
                    ttl = backend.seconds(2 if is_short else 10_000)
                    await store.create(name, "", SPEC, ttl)
                    held[name] = 0
                    short.discard(name)
                    if is_short:
                        short.add(name)
                elif action < 0.7:
                    state_bytes = rng.randint(0, 700)
                    await store.advance(name, "", blob(state_bytes), state_bytes)
                    held[name] = state_bytes
                elif action < 0.9:
                    await store.delete(name, "")
                    del held[name]
                elif action < 0.95:
                    await backend.elapse(5)
                    held = {key: value for key, value in held.items() if key not in short}
                    short.clear()
                else:
                    await store.reap()
            except (CapacityExceeded, SessionNotFound, InternalError):
                pass
            usage = await store.usage()
            assert usage == Usage(len(held), sum(held.values()))
            assert usage.sessions <= LIMITS.max_sessions
            assert usage.state_bytes <= LIMITS.max_state_bytes
        assert store.refused_total > 0  # the sequence did press against the limits
        assert store.expired_total > 0

    async def test_advance_never_brings_back_a_deleted_or_expired_session(
        self, backend: Backend
    ) -> None:
        store = backend.store
        await backend.stored("gone", "", ttl=10, state_bytes=100)
        await backend.stored("late", "", ttl=2, state_bytes=100)
        await store.delete("gone", "")
        with pytest.raises(SessionNotFound, match="'gone' does not exist, or was deleted"):
            await store.advance("gone", "", blob(200), 200)
        await backend.elapse(3)
        with pytest.raises(SessionNotFound, match="'late' does not exist, or was deleted"):
            await store.advance("late", "", blob(200), 200)
        with pytest.raises(SessionNotFound):
            await store.advance("never", "", blob(200), 200)
        assert await store.usage() == Usage(sessions=0, state_bytes=0)

    async def test_create_refuses_a_live_id_and_takes_an_expired_one(
        self, backend: Backend
    ) -> None:
        store = backend.store
        await backend.stored("a", "", ttl=2, state_bytes=100)
        with pytest.raises(InternalError, match="'a' is already taken"):
            await store.create("a", "", SPEC, backend.seconds(10))
        await backend.elapse(3)
        await store.create("a", "", SPEC, backend.seconds(10))
        fresh = await store.get("a", "")
        assert (fresh.step, fresh.state, fresh.state_bytes) == (0, None, 0)
        assert await store.usage() == Usage(sessions=1, state_bytes=0)

    async def test_create_with_replace_drops_the_owners_session_and_its_budget(
        self, backend: Backend
    ) -> None:
        store = backend.store
        await backend.stored("a", "o", ttl=10, state_bytes=100, tag=1)
        other = {**SPEC.to_dict(), "mode": "avg"}
        replaced = await store.create(
            "a", "o", type(SPEC).from_dict(other), backend.seconds(10), replace=True
        )
        assert (replaced.step, replaced.state) == (0, None)
        fresh = await store.get("a", "o")
        assert (fresh.spec.mode, fresh.step, fresh.state) == ("avg", 0, None)
        assert await store.usage() == Usage(sessions=1, state_bytes=0)
        # Concurrent restarts of one id all succeed and leave exactly one session.
        await asyncio.gather(
            *(store.create("a", "o", SPEC, backend.seconds(10), replace=True) for _ in range(3))
        )
        assert await store.usage() == Usage(sessions=1, state_bytes=0)

    async def test_a_refused_delete_does_not_renew_the_ttl(self, backend: Backend) -> None:
        store = backend.store
        await store.create("a", "alice", SPEC, backend.seconds(10))
        await backend.elapse(7)
        with pytest.raises(SessionNotFound):
            await store.delete("a", "bob")
        with pytest.raises(SessionNotFound):
            await store.get("a", "bob")
        await backend.elapse(5)  # 12 units after the last use: bob's calls did not renew it
        with pytest.raises(SessionNotFound):
            await store.get("a", "alice")

    async def test_concurrent_advances_get_distinct_steps_and_the_last_state_stays(
        self, backend: Backend
    ) -> None:
        """Forwards racing on one session through two clients (two replicas, for Redis)."""
        store, peer = backend.store, backend.peer
        await store.create("a", "", SPEC, backend.seconds(100))

        async def advance(tag: int) -> tuple[int, int]:
            client = store if tag % 2 else peer
            return await client.advance("a", "", blob(40, tag), 40), tag

        results = await asyncio.gather(*(advance(tag) for tag in range(24)))
        steps = sorted(step for step, _ in results)
        assert steps == list(range(1, 25))
        last_tag = max(results)[1]
        final = await peer.get("a", "")
        assert (final.step, bytes(final.state or b"")) == (24, blob(40, last_tag))

    async def test_a_read_is_one_snapshot_of_step_and_state(self, backend: Backend) -> None:
        """Reads racing with forwards always see the state written with the step they see."""
        store, peer = backend.store, backend.peer
        await backend.stored("a", "", ttl=100, state_bytes=64, tag=1)
        written: dict[int, int] = {1: 1}
        seen: list[tuple[int, bytes]] = []

        async def forward(tag: int) -> None:
            written[await store.advance("a", "", blob(64, tag), 64)] = tag

        async def read() -> None:
            record = await peer.get("a", "")
            seen.append((record.step, bytes(record.state or b"")))

        await asyncio.gather(*(forward(tag) for tag in range(2, 30)), *(read() for _ in range(30)))
        for step, state in seen:
            assert state == blob(64, written[step]), f"step {step} read with another state"

    async def test_two_clients_share_sessions_and_budgets(self, backend: Backend) -> None:
        store, peer = backend.store, backend.peer
        await store.create("a", "o", SPEC, backend.seconds(10))
        assert await peer.advance("a", "o", blob(700), 700) == 1
        assert (await store.get("a", "o")).step == 1
        await peer.create("b", "o", SPEC, backend.seconds(10))
        with pytest.raises(CapacityExceeded, match="700 of max_state_bytes=1000"):
            await store.advance("b", "o", blob(301), 301)
        await peer.delete("a", "o")
        with pytest.raises(SessionNotFound):
            await store.get("a", "o")
        assert await store.usage() == await peer.usage() == Usage(sessions=1, state_bytes=0)
