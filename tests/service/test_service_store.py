"""The session store contract, one class run against every backend (only memory exists yet),
with an injected clock so TTLs are exact and instant."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from service.errors import CapacityExceeded, InternalError, SessionNotFound
from service.stores import Limits, MemoryStore, SessionRecord, SessionStore, Usage

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def memory_store(limits: Limits, clock: FakeClock) -> SessionStore:
    return MemoryStore(limits, clock=clock)


BACKENDS: list[Callable[[Limits, FakeClock], SessionStore]] = [memory_store]


def record(session_id: str, *, owner: str = "", ttl: float = 10.0, state: int = 0) -> SessionRecord:
    blank = SessionRecord(id=session_id, owner=owner, spec={"mode": "max"}, ttl_seconds=ttl)
    if not state:
        return blank
    return blank.with_state(
        bytes(range(256)) * (state // 256) + bytes(state % 256),
        state_bytes=state,
        input_shape=(1, 4, 4, 1),
        output_shape=(1, 2, 2, 1),
        dtype="float32",
    )


@pytest.fixture(params=BACKENDS, ids=lambda factory: factory.__name__)
def backend(request: pytest.FixtureRequest) -> Callable[..., SessionStore]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend: Callable[..., SessionStore], clock: FakeClock) -> SessionStore:
    return backend(Limits(max_sessions=3, max_state_bytes=1000), clock)


class TestSessionStoreContract:
    async def test_record_round_trips_through_bytes(self, store: SessionStore) -> None:
        original = record("a", owner="o", state=300)
        await store.create(original)
        loaded = await store.get("a", "o")
        assert loaded.id == "a"
        assert loaded.step == 1
        assert loaded.state is not None
        assert bytes(loaded.state) == bytes(original.state or b"")
        assert loaded.input_shape == (1, 4, 4, 1)
        assert loaded.state_bytes == 300
        assert SessionRecord.from_bytes(original.to_bytes()).spec == {"mode": "max"}

    async def test_another_owner_sees_not_found(self, store: SessionStore) -> None:
        await store.create(record("a", owner="alice"))
        with pytest.raises(SessionNotFound, match="'a'"):
            await store.get("a", "bob")
        with pytest.raises(SessionNotFound):
            await store.delete("a", "bob")
        assert (await store.get("a", "alice")).id == "a"

    async def test_idle_ttl_expires_and_every_get_renews_it(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        await store.create(record("a", ttl=10))
        for _ in range(5):
            clock.now += 8
            await store.get("a", "")  # renews: 40 s later it is still there
        clock.now += 10
        with pytest.raises(SessionNotFound):
            await store.get("a", "")

    async def test_reap_reclaims_expired_sessions_and_their_bytes(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        await store.create(record("a", ttl=5, state=400))
        await store.create(record("b", ttl=50, state=100))
        clock.now += 6
        assert await store.reap() == 1
        assert await store.usage() == Usage(sessions=1, state_bytes=100)
        assert store.expired_total == 1

    async def test_session_count_limit(self, store: SessionStore) -> None:
        for name in "abc":
            await store.create(record(name))
        with pytest.raises(CapacityExceeded, match="max_sessions=3"):
            await store.create(record("d"))
        assert store.refused_total == 1

    async def test_expired_sessions_are_reclaimed_before_refusing(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        await store.create(record("a", ttl=1))
        await store.create(record("b", ttl=100))
        await store.create(record("c", ttl=100))
        clock.now += 2
        await store.create(record("d"))  # fits once "a" is reclaimed
        assert store.expired_total == 1
        assert store.refused_total == 0

    async def test_byte_budget_refusal_keeps_the_previous_record(self, store: SessionStore) -> None:
        await store.create(record("a", state=600))
        with pytest.raises(CapacityExceeded, match="max_state_bytes=1000"):
            await store.create(record("b", state=500))
        bigger = record("a", state=1001)
        with pytest.raises(CapacityExceeded):
            await store.put(bigger)
        kept = await store.get("a", "")
        assert kept.state_bytes == 600
        assert await store.usage() == Usage(sessions=1, state_bytes=600)
        await store.put(record("a", state=900))  # replacing frees the old bytes first
        assert (await store.usage()).state_bytes == 900

    async def test_never_holds_more_than_its_limits(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        rng = random.Random(7)
        # What the store should hold: name -> (expires_at, state_bytes), expired ones included
        # until a reap (the one the test asks for, or the one a full store runs) drops them.
        held: dict[str, tuple[float, int]] = {}
        for _ in range(400):
            name = rng.choice("abcdefg")
            action = rng.random()
            reaped_before = store.expired_total
            live = name in held and held[name][0] > clock.now
            try:
                if action < 0.5:
                    ttl, state = rng.uniform(1, 20), rng.randint(0, 700)
                    new = record(name, ttl=ttl, state=state)
                    await (store.put(new) if live else store.create(new))
                    held[name] = (clock.now + ttl, state)
                elif action < 0.7:
                    await store.delete(name, "")
                    del held[name]
                elif action < 0.9:
                    clock.now += rng.uniform(0, 5)
                else:
                    await store.reap()
            except (CapacityExceeded, SessionNotFound):
                pass
            if store.expired_total != reaped_before:
                held = {key: value for key, value in held.items() if value[0] > clock.now}
            usage = await store.usage()
            assert usage == Usage(len(held), sum(state for _, state in held.values()))
            assert usage.sessions <= 3
            assert usage.state_bytes <= 1000
        assert store.refused_total > 0  # the sequence did press against the limits
        assert store.expired_total > 0

    async def test_put_never_brings_back_a_deleted_or_expired_session(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        await store.create(record("gone", state=100))
        await store.create(record("late", ttl=5, state=100))
        await store.delete("gone", "")
        with pytest.raises(SessionNotFound, match="'gone' was deleted or expired"):
            await store.put(record("gone", state=200))
        clock.now += 6  # "late" expired but is not reaped yet
        with pytest.raises(SessionNotFound, match="'late' was deleted or expired"):
            await store.put(record("late", state=200))
        await store.reap()
        with pytest.raises(SessionNotFound):
            await store.put(record("late", state=200))
        with pytest.raises(SessionNotFound):
            await store.put(record("never", state=200))
        assert await store.usage() == Usage(sessions=0, state_bytes=0)

    async def test_create_refuses_a_live_id_and_takes_an_expired_one(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        await store.create(record("a", ttl=5, state=100))
        with pytest.raises(InternalError, match="'a' is already taken"):
            await store.create(record("a", state=300))
        clock.now += 6
        await store.create(record("a", state=300))
        assert (await store.get("a", "")).state_bytes == 300
        assert await store.usage() == Usage(sessions=1, state_bytes=300)

    async def test_delete_does_not_renew_the_ttl_it_checks(
        self, store: SessionStore, clock: FakeClock
    ) -> None:
        await store.create(record("a", owner="alice", ttl=10))
        clock.now += 9
        with pytest.raises(SessionNotFound):
            await store.delete("a", "bob")
        clock.now += 2  # 11 s after the last use: bob's refused delete did not renew it
        with pytest.raises(SessionNotFound):
            await store.get("a", "alice")

    async def test_lock_serializes_one_session_but_not_others(self, store: SessionStore) -> None:
        order: list[str] = []

        async def hold(session_id: str, tag: str, seconds: float) -> None:
            async with store.lock(session_id):
                order.append(f"{tag}+")
                await asyncio.sleep(seconds)
                order.append(f"{tag}-")

        async with asyncio.TaskGroup() as group:
            group.create_task(hold("a", "a1", 0.05))
            await asyncio.sleep(0.01)
            group.create_task(hold("a", "a2", 0.0))
            group.create_task(hold("b", "b1", 0.0))
        assert order.index("a1-") < order.index("a2+")  # same session: one after the other
        assert order.index("b1-") < order.index("a1-")  # other session: did not wait


async def test_memory_locks_live_only_while_held_or_awaited(clock: FakeClock) -> None:
    store = MemoryStore(Limits(max_sessions=3, max_state_bytes=1000), clock=clock)
    async with store.lock("a"), store.lock("b"):
        assert len(store._locks) == 2
    assert store._locks == {}  # no lock per session ever created accumulates
