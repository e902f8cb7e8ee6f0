"""Real server processes on a real redis-server: Redis faults seen from outside, and replicas
(one of them multi-worker) behind a real HAProxy running deploy/haproxy.cfg.

Every HTTP call has a client timeout, so "never a hang" is checked by the calls returning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis_server import RedisServer, binary, free_port
from service_helpers import NPY, expected, npy

from poolgrad import protocol

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
STARTUP_SECONDS = 30.0

rng = np.random.default_rng(9)
X = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
DA = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
A_EXPECTED, DX_EXPECTED = expected(X, DA)


def problem_code(response: httpx.Response) -> str:
    return str(response.json().get("code")) if response.content else ""


def forward(http: httpx.Client, session_id: str, X: np.ndarray = X) -> httpx.Response:
    return http.post(f"/v1/sessions/{session_id}/forward", content=npy(X), headers=NPY)


def backward(http: httpx.Client, session_id: str, dA: np.ndarray = DA) -> httpx.Response:
    return http.post(f"/v1/sessions/{session_id}/backward", content=npy(dA), headers=NPY)


def assert_dx(response: httpx.Response, dX: np.ndarray = DX_EXPECTED) -> None:
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(protocol.decode_npy(response.content), dX)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test only, which it may stop, pause and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def test_redis_paused_stopped_and_restarted_empty(
    own_redis: RedisServer, start_server: Callable[..., Any]
) -> None:
    server = start_server(
        POOLGRAD_STORE_URL=own_redis.url,
        POOLGRAD_STORE_TIMEOUT_SECONDS="1",
        POOLGRAD_STORE_CONNECT_TIMEOUT_SECONDS="1",
        POOLGRAD_RETRY_AFTER_SECONDS="3",
    )
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http:
        session_id = http.post("/v1/sessions", json={}).json()["id"]
        assert forward(http, session_id).status_code == 200
        assert_dx(backward(http, session_id))
        assert http.get("/readyz").status_code == 200

        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # answers nothing: commands time out
        for response in (backward(http, session_id), http.get("/readyz")):
            assert response.status_code == 503, response.text
            assert problem_code(response) == "store_unavailable"
            assert response.headers["retry-after"] == "3"
        assert http.get("/healthz").status_code == 200
        own_redis.process.send_signal(signal.SIGCONT)  # back, with its data: recovered
        assert http.get("/readyz").status_code == 200
        assert_dx(backward(http, session_id))

        own_redis.stop()  # refuses connections
        for response in (forward(http, session_id), http.post("/v1/sessions", json={})):
            assert response.status_code == 503, response.text
            assert problem_code(response) == "store_unavailable"
        assert http.get("/readyz").status_code == 503
        assert server.process.poll() is None

        own_redis.start()  # the same address, empty: the session is lost, not an error
        assert http.get("/readyz").status_code == 200
        lost = backward(http, session_id)
        assert lost.status_code == 404, lost.text
        assert problem_code(lost) == "session_not_found"
        fresh = http.post("/v1/sessions", json={}).json()["id"]
        assert forward(http, fresh).status_code == 200
        assert_dx(backward(http, fresh))
    assert "Traceback" not in server.output()


class Proxy:
    """Debian's haproxy running deploy/haproxy.cfg in front of two replicas."""

    def __init__(self, log_dir: Path, replica1: str, replica2: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "POOLGRAD_PROXY_BIND": f"127.0.0.1:{self.port}",
            "POOLGRAD_REPLICA1": replica1.removeprefix("http://"),
            "POOLGRAD_REPLICA2": replica2.removeprefix("http://"),
        }
        self.log = log_dir / "haproxy.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [binary("haproxy"), "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def wait_until_up(self) -> None:
        """Until the proxy answers ``/readyz`` through its replicas several times in a row."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log.read_text()}")
            try:
                answers = [httpx.get(f"{self.base_url}/readyz", timeout=2) for _ in range(4)]
                if all(answer.status_code == 200 for answer in answers):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"haproxy never answered through its replicas:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    start_server: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[tuple[list[Any], Proxy, Callable[..., Any]]]:
    """Three server processes on one redis-server (the third with two workers), and HAProxy in
    front of the first and the third. Yields the servers, the proxy, and ``restart(i)``."""
    prefix = f"cluster{free_port()}:"
    settings = {"POOLGRAD_STORE_URL": redis_server.url, "POOLGRAD_STORE_PREFIX": prefix}
    servers = [
        start_server(**settings),
        start_server(**settings),
        start_server(**settings, POOLGRAD_WORKERS="2"),
    ]

    def restart(index: int) -> None:
        old = servers[index]
        old.process.kill()
        old.process.wait(timeout=10)
        port = old.base_url.rsplit(":", 1)[1]
        servers[index] = start_server(**settings, POOLGRAD_PORT=port)

    proxy = Proxy(tmp_path, servers[0].base_url, servers[2].base_url)
    try:
        proxy.wait_until_up()
        yield servers, proxy, restart
    finally:
        proxy.stop()
        for server in servers:
            server.process.terminate()


def test_a_session_moves_between_replicas(
    cluster: tuple[list[Any], Proxy, Callable[..., Any]],
) -> None:
    servers, _, _ = cluster
    clients = [httpx.Client(base_url=server.base_url, timeout=TIMEOUT) for server in servers]
    try:
        first, second, third = clients
        session_id = first.post("/v1/sessions", json={"mode": "avg"}).json()["id"]
        A_avg, dX_avg = expected(X, DA, mode="avg")
        response = forward(second, session_id)
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(protocol.decode_npy(response.content), A_avg)
        assert response.headers["etag"] == '"1"'
        # If-Match holds across replicas: the step is the store's, not a process's.
        assert_dx(
            third.post(
                f"/v1/sessions/{session_id}/backward",
                content=npy(DA),
                headers={**NPY, "If-Match": '"1"'},
            ),
            dX_avg,
        )
        assert forward(first, session_id).headers["etag"] == '"2"'
        stale = third.post(
            f"/v1/sessions/{session_id}/backward",
            content=npy(DA),
            headers={**NPY, "If-Match": '"1"'},
        )
        assert stale.status_code == 412, stale.text

        # Forwards racing on one session from all three replicas: distinct steps, and the state
        # kept is that of the highest step's X.
        inputs = [rng.standard_normal(X.shape).astype(np.float32) for _ in range(9)]
        with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
            racing = list(
                pool.map(
                    lambda i: forward(clients[i % 3], session_id, inputs[i]), range(len(inputs))
                )
            )
        steps = [int(response.headers["etag"].strip('"')) for response in racing]
        assert sorted(steps) == list(range(3, 3 + len(inputs)))
        last = inputs[steps.index(max(steps))]
        assert_dx(backward(second, session_id), expected(last, DA, mode="avg")[1])

        assert second.delete(f"/v1/sessions/{session_id}").status_code == 204
        assert backward(third, session_id).status_code == 404
    finally:
        for client in clients:
            client.close()


#: What a client sees while a replica dies under it: the proxy's answer for a request that the
#: dead replica had received (never re-sent by the proxy), or the connection cut.
RETRIED = (502, 503, 504)


def new_sessions(base_url: str, count: int) -> list[str]:
    """The ids of ``count`` sessions (default spec) created through ``base_url``."""
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        return [http.post("/v1/sessions", json={}).json()["id"] for _ in range(count)]


def run_clients(
    base_url: str, sessions: list[str], rounds: int, halfway: threading.Barrier | None = None
) -> list[str]:
    """Each session driven by its own thread through ``base_url``: forward then backward with
    fresh data every round, every A and dX checked; a request cut by a dying replica is sent
    again (the same X again gives the same state). Returns the failures left."""

    def send(http: httpx.Client, path: str, tensor: np.ndarray) -> httpx.Response:
        def call() -> httpx.Response:
            return http.post(path, content=npy(tensor), headers=NPY)

        for _ in range(10):
            try:
                response = call()
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code not in RETRIED:
                return response
            time.sleep(0.2)
        return call()

    def drive(index: int) -> list[str]:
        failures = []
        local = np.random.default_rng(index)
        session_id = sessions[index]
        with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
            for turn in range(rounds):
                if halfway is not None and turn == rounds // 2:
                    halfway.wait(timeout=60)
                x = local.standard_normal(X.shape).astype(np.float32)
                da = local.standard_normal(DA.shape).astype(np.float32)
                a_expected, dx_expected = expected(x, da)
                step = send(http, f"/v1/sessions/{session_id}/forward", x)
                if step.status_code != 200:
                    failures.append(f"forward {step.status_code} {step.text}")
                    continue
                np.testing.assert_array_equal(protocol.decode_npy(step.content), a_expected)
                grad = send(http, f"/v1/sessions/{session_id}/backward", da)
                if grad.status_code != 200:
                    failures.append(f"backward {grad.status_code} {grad.text}")
                    continue
                np.testing.assert_array_equal(protocol.decode_npy(grad.content), dx_expected)
        return failures

    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        return [failure for found in pool.map(drive, range(len(sessions))) for failure in found]


def test_many_clients_through_the_proxy(
    cluster: tuple[list[Any], Proxy, Callable[..., Any]],
) -> None:
    _, proxy, _ = cluster
    sessions = new_sessions(proxy.base_url, 12)
    assert run_clients(proxy.base_url, sessions, rounds=8) == []
    with httpx.Client(base_url=proxy.base_url, timeout=TIMEOUT) as http:
        steps = [http.get(f"/v1/sessions/{session_id}").json()["step"] for session_id in sessions]
    assert steps == [8] * len(sessions)


def test_a_replica_killed_and_restarted_mid_run_loses_no_session(
    cluster: tuple[list[Any], Proxy, Callable[..., Any]],
) -> None:
    _, proxy, restart = cluster
    sessions = new_sessions(proxy.base_url, 6)
    # Every client pauses halfway; the main thread joins them there, then kills the replica
    # (SIGKILL) while their next requests are already on their way.
    halfway = threading.Barrier(len(sessions) + 1)
    with ThreadPoolExecutor(max_workers=1) as runner:
        run = runner.submit(run_clients, proxy.base_url, sessions, 10, halfway)
        halfway.wait(timeout=60)
        restart(0)
        assert run.result(timeout=300) == []
    with httpx.Client(base_url=proxy.base_url, timeout=TIMEOUT) as http:
        for session_id in sessions:
            info = http.get(f"/v1/sessions/{session_id}")
            assert info.status_code == 200, info.text
            assert info.json()["step"] >= 10  # every forward landed (a re-sent one twice)
