"""Benchmark: a session's forward+backward over HTTP with the Redis store against the memory store.

Run from the repository root (it starts a redis-server and two servers on free loopback
ports; ``make test-deps`` installs redis-server)::

    .venv/bin/python -m bench.store            # full run
    .venv/bin/python -m bench.store --quick    # fewer repeats

Both servers are the same ``python -m service`` (uvicorn, one worker), one on
``POOLGRAD_STORE_URL=memory://``, one on a local ``redis-server`` (no persistence). The case is
max pooling 2x2/2 of a (64, 32, 32, 32) float32 X (8 MiB; its state is 256 KiB), ``.npy``
bodies over one keep-alive connection each. It prints the median wall time of one
forward+backward pair on each and their ratio redis/memory: what keeping sessions in Redis
(a state write per forward, a snapshot read per call, over loopback) costs per pair.
Timings are only comparable as ratios within one run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import redis

import engine
from bench.engine import timings
from bench.service import _free_port, _server
from poolgrad import protocol

SHAPE = (64, 32, 32, 32)
SPEC = engine.PoolSpec(mode="max", pool_size=(2, 2))
STARTUP_SECONDS = 20.0


@contextmanager
def _redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory),
                *("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            with redis.Redis.from_url(url) as client:
                while True:
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        if process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError("redis-server did not start") from None
                        time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


def _bodies() -> tuple[bytes, bytes]:
    """The ``.npy`` bodies of X and of a dA of A's shape."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal(SHAPE).astype(np.float32)
    A, _ = engine.forward(X, SPEC)
    dA = rng.standard_normal(A.shape).astype(np.float32)
    return protocol.encode_npy(X), protocol.encode_npy(dA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    repeats = 5 if parser.parse_args().quick else 21
    x_body, da_body = _bodies()
    npy = {"Content-Type": protocol.MEDIA_NPY}
    quiet = {"POOLGRAD_LOG_LEVEL": "warning", "POOLGRAD_MAX_BODY_BYTES": str(64 * 2**20)}
    command = [sys.executable, "-m", "service"]

    with (
        _redis_server() as redis_url,
        _server(command, {**quiet, "POOLGRAD_STORE_URL": "memory://"}) as memory_base,
        _server(command, {**quiet, "POOLGRAD_STORE_URL": redis_url}) as redis_base,
        httpx.Client(timeout=120.0) as http,
    ):
        sessions = []
        for base in (memory_base, redis_base):
            created = http.post(f"{base}/v1/sessions", json=SPEC.to_dict())
            created.raise_for_status()
            sessions.append(f"{base}/v1/sessions/{created.json()['id']}")

        def pair(session: str) -> None:
            http.post(f"{session}/forward", content=x_body, headers=npy).raise_for_status()
            http.post(f"{session}/backward", content=da_body, headers=npy).raise_for_status()

        (memory_median, _), (redis_median, _) = timings(
            [lambda: pair(sessions[0]), lambda: pair(sessions[1])], repeats
        )
        print(f"X {SHAPE} float32, max 2x2/2, forward+backward over HTTP, median of {repeats}")
        print(f"  memory store: {memory_median * 1e3:8.2f} ms")
        print(f"  redis store:  {redis_median * 1e3:8.2f} ms")
        print(f"  redis/memory: {redis_median / memory_median:8.2f}")


if __name__ == "__main__":
    main()
