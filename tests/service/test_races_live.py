"""Races against a real server (``python -m service`` under uvicorn on loopback), over every
store it offers: concurrent forwards and backwards on one session, forward against DELETE,
expiry against backward. Every dX is checked against the X of the step its ``ETag`` names.

The tests keep the X of every step (a forward's ``ETag`` names the step it made) and compute
each backward's expected dX from the X of the step *the backward's* ``ETag`` names. So a
backward that reads the step from one forward and the state from another (a torn snapshot:
say, the step checked under ``If-Match``, then the state read again after decoding ``dA``)
answers a dX that does not match its step, and fails here: every X has distinct values in a
different order, so no two steps share a dX. (Issue 11 found that the in-process race test
caught a missing forward lock but not a missing backward lock: a backward that reads its record
once is consistent with or without a lock, so only a torn read can make one wrong.)

Each test was seen to fail against a server broken on purpose in a scratch copy. On the
lock-free store (one snapshot per backward, an atomic step per forward): a backward that reads
the state again after decoding dA, on every store (the first and third test in three runs of
three, the second in one); a forward that answers the step it read instead of the one it wrote
(the first, two runs of three: two forwards answer one step); a memory store that serves expired
sessions until they are reaped (the third, three of three). On the earlier locking store: a
store that writes a forward's state back to a session deleted meanwhile (the second, five of
five); the in-process race test caught the torn backward in two runs of seven.

More stores: :data:`STORES` lists the stores by name; a store other than ``memory`` takes its
URL from a session-scoped fixture named ``<store>_url`` (``redis_url`` in ``tests/conftest.py``:
the session's real redis-server). A store without such a fixture skips and says so.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from service_helpers import NPY, npy

from engine import PoolSpec, backward, forward

pytestmark = pytest.mark.anyio

#: (store, uvicorn workers): every store the server offers, and two worker processes on a
#: shared store, where one session's requests reach different processes.
STORES = [
    pytest.param(("memory", 1), id="memory"),
    pytest.param(("redis", 1), id="redis"),
    pytest.param(("redis", 2), id="redis-2-workers"),
]
SPEC = {"mode": "max", "pool_size": [2, 2]}
SHAPE = (2, 8, 8, 4)
OUTPUT_SHAPE = (2, 4, 4, 4)
#: Inputs whose forward takes milliseconds in the server, long enough for a DELETE to land in it.
LARGE_SHAPE = (4, 128, 128, 8)
LARGE_OUTPUT_SHAPE = (4, 64, 64, 8)


@pytest.fixture(scope="module", params=STORES)
def race_server(request: pytest.FixtureRequest, start_server: Callable[..., Any]) -> Any:
    """A live server on the store named by the parameter (its URL from ``<store>_url``)."""
    store, workers = request.param
    if store == "memory":
        store_url = "memory://"
    else:
        try:
            store_url = request.getfixturevalue(f"{store}_url")
        except pytest.FixtureLookupError:
            pytest.skip(f"no {store}_url fixture: define it in tests/conftest.py to race {store}")
    return start_server(
        POOLGRAD_STORE_URL=store_url,
        # Its own keys in a shared store, so no other test's sessions count against it.
        POOLGRAD_STORE_PREFIX=f"races-{store}-{workers}:",
        POOLGRAD_WORKERS=str(workers),
        POOLGRAD_LOG_LEVEL="warning",
    )


@pytest.fixture
async def http(race_server: Any) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=race_server.base_url, timeout=60.0, limits=limits) as c:
        yield c


def distinct_input(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """All values different, in an order set by ``seed``, so each X has its own winners."""
    values = np.random.default_rng(seed).permutation(np.prod(shape)).astype(np.float64)
    return values.reshape(shape)


def upstream(seed: int, shape: tuple[int, ...] = OUTPUT_SHAPE) -> np.ndarray:
    return np.random.default_rng(10_000 + seed).standard_normal(shape)


def expected_dX(X: np.ndarray, dA: np.ndarray) -> np.ndarray:
    return backward(forward(X, PoolSpec(**SPEC))[1], dA)


def decoded(response: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(response.content), allow_pickle=False)  # type: ignore[no-any-return]


def step_of(response: httpx.Response) -> int:
    tag = response.headers["etag"]
    assert tag[0] == tag[-1] == '"', tag
    return int(tag[1:-1])


class Session:
    """One session seen from outside: the X of every step a forward answered."""

    def __init__(self, http: httpx.AsyncClient, session_id: str) -> None:
        self.http = http
        self.path = f"/v1/sessions/{session_id}"
        self.inputs: dict[int, np.ndarray] = {}
        #: (step named by the ETag, dA sent, dX answered) of every backward answered 200.
        self.gradients: list[tuple[int, np.ndarray, np.ndarray]] = []

    @classmethod
    async def create(cls, http: httpx.AsyncClient, **fields: Any) -> Session:
        response = await http.post("/v1/sessions", json={**SPEC, **fields})
        assert response.status_code == 201, response.text
        return cls(http, response.json()["id"])

    async def forward(self, X: np.ndarray) -> httpx.Response:
        """POST forward; a 200 records X under the step its ETag names (each step once)."""
        response = await self.http.post(f"{self.path}/forward", content=npy(X), headers=NPY)
        if response.status_code == 200:
            step = step_of(response)
            assert step not in self.inputs, f"step {step} answered to two forwards"
            self.inputs[step] = X
            np.testing.assert_array_equal(decoded(response), forward(X, PoolSpec(**SPEC))[0])
        return response

    async def backward(self, dA: np.ndarray, if_match: int | None = None) -> httpx.Response:
        """POST backward; a 200 is recorded for :meth:`check_gradients`."""
        headers = dict(NPY) if if_match is None else {**NPY, "If-Match": f'"{if_match}"'}
        response = await self.http.post(f"{self.path}/backward", content=npy(dA), headers=headers)
        if response.status_code == 200:
            step = step_of(response)
            assert if_match in (None, step), f"If-Match {if_match} answered step {step}"
            self.gradients.append((step, dA, decoded(response)))
        return response

    def check_gradients(self) -> None:
        """Every dX is the one of the X whose forward made the step its ETag names."""
        for step, dA, dX in self.gradients:
            assert step in self.inputs, f"a backward named step {step}, forwards made {self.inputs}"
            np.testing.assert_array_equal(
                dX, expected_dX(self.inputs[step], dA), err_msg=f"dX answered for step {step}"
            )

    async def assert_gone(self) -> None:
        """404 to everything, and a forward does not bring it back."""
        assert (await self.forward(distinct_input(99))).status_code == 404
        assert (await self.backward(upstream(99))).status_code == 404
        assert (await self.http.get(self.path)).status_code == 404


async def test_concurrent_forwards_and_backwards_answer_the_step_their_etag_names(
    http: httpx.AsyncClient,
) -> None:
    session = await Session.create(http)
    assert (await session.forward(distinct_input(0))).status_code == 200
    forwards = 24

    # Staggered over the same fraction of a second, so forwards land between backwards.
    async def backward(seed: int) -> None:
        await asyncio.sleep(0.003 * seed)
        # Every other backward names the newest step this client has seen: 200 for exactly
        # that step, or 412 once a later forward replaced it.
        if_match = max(session.inputs) if seed % 2 else None
        response = await session.backward(upstream(seed), if_match)
        assert response.status_code in ((200, 412) if if_match else (200,)), response.text

    async def forward(seed: int) -> None:
        await asyncio.sleep(0.012 * seed)
        assert (await session.forward(distinct_input(seed))).status_code == 200

    await asyncio.gather(
        *(forward(seed) for seed in range(1, forwards + 1)),
        *(backward(seed) for seed in range(4 * forwards)),
    )
    assert sorted(session.inputs) == list(range(1, forwards + 2))
    assert len(session.gradients) >= 2 * forwards  # the half without If-Match all answered
    session.check_gradients()
    info = (await http.get(session.path)).json()
    assert info["step"] == forwards + 1
    # What is cached now is the newest step's state.
    assert (await session.backward(upstream(0))).status_code == 200
    assert session.gradients[-1][0] == forwards + 1
    session.check_gradients()


async def test_forward_racing_delete_is_either_done_before_or_refused(
    http: httpx.AsyncClient,
) -> None:
    races = 20

    async def delete_after(path: str, seconds: float) -> httpx.Response:
        await asyncio.sleep(seconds)
        return await http.delete(path)

    # One race at a time, the DELETE sent a little later in each, from the forward's start to
    # past its end (scaled by how long the same forward took just before), so some land
    # while the server computes it: a forward whose session is deleted then must not write
    # it back.
    for race in range(races):
        session = await Session.create(http)
        started = time.perf_counter()
        assert (await session.forward(distinct_input(race, LARGE_SHAPE))).status_code == 200
        delay = (time.perf_counter() - started) * 1.5 * race / races
        forwarded, deleted, backwarded = await asyncio.gather(
            session.forward(distinct_input(100 + race, LARGE_SHAPE)),
            delete_after(session.path, delay),
            session.backward(upstream(race, LARGE_OUTPUT_SHAPE)),
        )
        assert forwarded.status_code in (200, 404), forwarded.text
        assert deleted.status_code == 204, deleted.text
        assert backwarded.status_code in (200, 404), backwarded.text
        session.check_gradients()
        await session.assert_gone()


async def test_expiry_racing_backward_answers_right_or_404_and_stays_gone(
    http: httpx.AsyncClient,
) -> None:
    ttl = 0.4

    async def live_until_it_expires(seed: int) -> None:
        rng = np.random.default_rng(seed)
        session = await Session.create(http, ttl_seconds=ttl)
        assert (await session.forward(distinct_input(seed))).status_code == 200
        for round_ in range(8):
            # Around the TTL: some uses come in time (and renew it), some after it ran out.
            await asyncio.sleep(ttl * rng.uniform(0.5, 1.5))
            answers = await asyncio.gather(
                session.backward(upstream(round_)),
                session.backward(upstream(round_ + 1)),
                session.forward(distinct_input(1000 * seed + round_)),
            )
            statuses = {response.status_code for response in answers}
            assert statuses <= {200, 404}, [response.text for response in answers]
            if 404 in statuses:
                break
        else:
            await asyncio.sleep(3 * ttl)  # past any renewal: it must have expired now
        session.check_gradients()
        await session.assert_gone()

    await asyncio.gather(*(live_until_it_expires(seed) for seed in range(12)))
