"""The load run of ``bench.load`` against a real server on a real redis-server while Redis is
paused past the store timeout (SIGSTOP, then SIGCONT), killed (SIGKILL) and restarted on the
same port, once with its data (an append-only file synced on every write) and once empty.

What must hold throughout: no 5xx but 503 ``store_unavailable`` with ``Retry-After``, no answer
wrong (every A and dX bit for bit against the engine), the server process alive; afterwards
every session Redis kept still runs forward and backward, and every one it lost is a 404.
No timing asserts: the outage and recovery figures are printed (``pytest -s``), not checked.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis_server import RedisServer
from service_helpers import NPY, expected, npy

from bench.load import LoadConfig, LoadReport, run
from poolgrad import protocol

#: Short store timeouts, so an outage is answered quickly and the run stays a few seconds.
STORE_TIMEOUT_SECONDS = 0.5
#: How long Redis stays paused: well past the store timeout, so commands do time out.
PAUSE_SECONDS = 4 * STORE_TIMEOUT_SECONDS
#: How long Redis stays dead before it is started again.
DEAD_SECONDS = 1.5
#: Load before, between and after the faults, so every phase sees requests in flight.
STEADY_SECONDS = 1.5
#: Sessions created (and run forward) before the faults, checked after them.
KEPT_SESSIONS = 6
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: Problems the load may see: the outage, sessions lost with Redis (or deleted by a DELETE
#: answered 503 that Redis applied once it woke, then retried), budgets.
EXPECTED_PROBLEMS = {"503 store_unavailable", "404 session_not_found", "429 capacity_exceeded"}

rng = np.random.default_rng(11)
X = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
DA = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
A_EXPECTED, DX_EXPECTED = expected(X, DA)


@pytest.fixture(params=[True, False], ids=["restarted-with-its-data", "restarted-empty"])
def faulty_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test only; persistent (append-only, fsync always) or not."""
    server = RedisServer(tmp_path, persistent=request.param)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def until_ready(http: httpx.Client, bound: float = 30.0) -> float:
    """Seconds until ``/readyz`` answers 200 again (a failure past ``bound``)."""
    started = time.monotonic()
    while time.monotonic() - started < bound:
        if http.get("/readyz").status_code == 200:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"/readyz did not answer 200 within {bound} s")


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "store_unavailable"
    assert response.headers["retry-after"] == "1"


def inflict_faults(redis: RedisServer, http: httpx.Client) -> dict[str, float]:
    """Pause, resume, kill and restart ``redis`` while the load runs; the recovery figures."""
    assert redis.process is not None
    time.sleep(STEADY_SECONDS)
    redis.process.send_signal(signal.SIGSTOP)
    time.sleep(PAUSE_SECONDS / 2)
    assert_unavailable(http.get("/readyz"))
    time.sleep(PAUSE_SECONDS / 2)
    redis.process.send_signal(signal.SIGCONT)
    after_pause = until_ready(http)
    time.sleep(STEADY_SECONDS)
    redis.kill()
    time.sleep(DEAD_SECONDS / 2)
    assert_unavailable(http.get("/readyz"))
    time.sleep(DEAD_SECONDS / 2)
    restarted = time.monotonic()
    redis.start()
    after_restart = until_ready(http)
    return {
        "ready after SIGCONT (s)": after_pause,
        "ready after restart began (s)": after_restart,
        "redis-server start (s)": time.monotonic() - restarted - after_restart,
    }


def test_load_survives_redis_paused_killed_and_restarted(
    faulty_redis: RedisServer, start_server: Callable[..., Any]
) -> None:
    server = start_server(
        POOLGRAD_STORE_URL=faulty_redis.url,
        POOLGRAD_STORE_TIMEOUT_SECONDS=str(STORE_TIMEOUT_SECONDS),
        POOLGRAD_STORE_CONNECT_TIMEOUT_SECONDS=str(STORE_TIMEOUT_SECONDS),
        POOLGRAD_RETRY_AFTER_SECONDS="1",
        POOLGRAD_LOG_LEVEL="warning",
    )
    load_seconds = 3 * STEADY_SECONDS + PAUSE_SECONDS + DEAD_SECONDS + 2.0
    config = LoadConfig(clients=4, duration=load_seconds, seed=12, url=server.base_url)
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http:
        kept = [http.post("/v1/sessions", json={}).json()["id"] for _ in range(KEPT_SESSIONS)]
        for session_id in kept:
            forward = http.post(f"/v1/sessions/{session_id}/forward", content=npy(X), headers=NPY)
            np.testing.assert_array_equal(protocol.decode_npy(forward.content), A_EXPECTED)
        with ThreadPoolExecutor(max_workers=1) as pool:
            load = pool.submit(run, config)
            figures = inflict_faults(faulty_redis, http)
            report: LoadReport = load.result()

        assert server.process.poll() is None, server.output()
        assert report.wrong == {}, report.wrong_examples
        assert report.gradients_checked > 0
        assert report.missing_retry_after == 0
        assert all(status.isdigit() for status in report.statuses), report.statuses
        assert set(report.problems) <= EXPECTED_PROBLEMS, report.problems
        assert report.problems.get("503 store_unavailable", 0) > 0, report.problems  # it was hit

        for session_id in kept:
            path = f"/v1/sessions/{session_id}"
            answer = http.post(f"{path}/backward", content=npy(DA), headers=NPY)
            if faulty_redis.persistent:
                assert answer.status_code == 200, answer.text
                np.testing.assert_array_equal(protocol.decode_npy(answer.content), DX_EXPECTED)
                again = http.post(f"{path}/forward", content=npy(X), headers=NPY)
                assert again.status_code == 200, again.text
                assert again.headers["etag"] == '"2"'
            else:
                assert answer.status_code == 404, answer.text
                assert answer.json()["code"] == "session_not_found"
    assert server.process.poll() is None
    assert "Traceback" not in server.output()
    print(
        f"\n{'kept' if faulty_redis.persistent else 'lost'} data: "
        f"{report.requests} requests, statuses {report.statuses}, problems {report.problems}, "
        + ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
    )
