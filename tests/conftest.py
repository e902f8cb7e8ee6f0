"""Fixtures shared by every test folder: a real uvicorn server on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 30.0


@dataclass
class LiveServer:
    """A `python -m service` process serving on 127.0.0.1; `log` is its combined output."""

    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(log_dir: Path, env: dict[str, str]) -> LiveServer:
    # A test may name the port (to restart a server where it was), else a free one.
    port = int(env.get("POOLGRAD_PORT") or free_port())
    log = log_dir / f"server-{port}.log"
    full_env = {
        **os.environ,
        "POOLGRAD_HOST": "127.0.0.1",
        "POOLGRAD_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    _stop(server)
    raise RuntimeError(f"server did not answer /healthz in {STARTUP_SECONDS}s:\n{server.output()}")


def _stop(server: LiveServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with extra `POOLGRAD_*` settings: `start_server(POOLGRAD_API_KEYS="k")`.

    Every server started is stopped at the end of the test session.
    """
    log_dir = tmp_path_factory.mktemp("servers")
    started: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = _start(log_dir, env)
        started.append(server)
        return server

    yield start
    for server in started:
        _stop(server)


@pytest.fixture(scope="session")
def live_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """One server with default settings (in-memory store), shared by the whole session."""
    return start_server()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole test session (stopped at its end); missing, it is a
    failure that says `make test` installs it, never a skip."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server as a store URL: the tests parametrized over stores by name
    (tests/service/test_races_live.py) take ``<store>_url``."""
    return redis_server.url
