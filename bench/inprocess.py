"""Benchmark: microseconds of server CPU per tiny stateless gradient, the app called in-process.

Usage::

    .venv/bin/python -m bench.inprocess             # the app as configured by default
    .venv/bin/python -m bench.inprocess --api-key k # with a bearer key checked per request
    .venv/bin/python -m bench.inprocess --no-hot-routes  # the tensor route through FastAPI

The ASGI app is awaited directly with a prepared scope and a receive that hands over the whole
safetensors body of a (1, 8, 8, 1) float32 X and its dA, so no socket, parser or second process
adds noise: what is left is routing, dependencies, middleware, body reading, the codecs and the
engine. It also times the compute alone (``Compute.gradient`` with the same body), so the
difference is what the HTTP layer of the app costs (docs/DECISIONS.md, issue 12). One process,
one core; the access log is written to ``/dev/null`` at info, as a served request writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np
from pydantic import SecretStr

from engine import PoolSpec
from poolgrad import protocol
from service.app import create_app
from service.compute import Compute
from service.httpio import BODY_RECEIVED
from service.settings import Settings

QUERY = b"mode=max&pool_size=2,2"
SPEC = PoolSpec(mode="max", pool_size=(2, 2))  # what QUERY says
MEDIA_TYPE = protocol.MEDIA_SAFETENSORS
#: Calls before timing (caches, the first lazily built route table) and per timed round.
WARM_UP_CALLS = 2000
ROUND_CALLS = 3000
ROUNDS = 7


def _body() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.random((1, 8, 8, 1), dtype=np.float32)
    return protocol.encode_named({"X": x, "dA": np.ones((1, 4, 4, 1), np.float32)}, MEDIA_TYPE)


def _http_call(app: Any, body: bytes, api_key: str | None) -> Callable[[], Awaitable[int]]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if api_key:
        headers.append((b"authorization", f"Bearer {api_key}".encode()))

    async def call() -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/gradient",
            "raw_path": b"/v1/gradient",
            "query_string": QUERY,
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
            # As service.server says of a request whose body came whole before the app ran.
            "extensions": {BODY_RECEIVED: {}},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client stays: the app never reads past the body
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses[0]

    return call


def _compute_call(compute: Compute, body: bytes) -> Callable[[], Awaitable[Any]]:
    async def call() -> bytes:
        return await compute.gradient(
            SPEC,
            partial(protocol.decode_named, body, MEDIA_TYPE),
            partial(protocol.encode_named, media_type=MEDIA_TYPE),
            inline=compute.runs_inline(len(body), MEDIA_TYPE),
        )

    return call


async def _microseconds(call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Per-call microseconds of each timed round, after a warm-up and a frozen heap."""
    for _ in range(WARM_UP_CALLS):
        await call()
    gc.collect()
    gc.freeze()
    rounds = []
    for _ in range(ROUNDS):
        # CPU time of this process, not wall time: a core taken away by another process for a
        # while (a noisy, shared machine) does not count.
        started = time.process_time()
        for _ in range(ROUND_CALLS):
            await call()
        rounds.append((time.process_time() - started) / ROUND_CALLS * 1e6)
    return rounds


async def _run(api_key: str | None, hot_routes: bool) -> None:
    access = logging.getLogger("service.access")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.addHandler(logging.FileHandler(os.devnull))
    settings = Settings(api_keys=(SecretStr(api_key),) if api_key else ())
    app = create_app(settings, hot_routes=hot_routes)
    body = _body()
    http = _http_call(app, body, api_key)
    status = await http()
    if status != 200:
        raise SystemExit(f"POST /v1/gradient answered {status}, not 200")
    for label, call in (("app", http), ("compute alone", _compute_call(app.state.compute, body))):
        rounds = await _microseconds(call)
        print(
            f"{label:>14}: {statistics.median(rounds):7.1f} us/request median, "
            f"{min(rounds):7.1f} best of {ROUNDS} rounds of {ROUND_CALLS}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", help="configure this API key and send it as a bearer key")
    parser.add_argument(
        "--no-hot-routes",
        dest="hot_routes",
        action="store_false",
        help="serve the tensor routes through FastAPI's router too (service.hotroutes)",
    )
    args = parser.parse_args()
    asyncio.run(_run(args.api_key, args.hot_routes))


if __name__ == "__main__":
    main()
