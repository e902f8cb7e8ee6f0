"""Benchmark: what the HTTP service adds on top of the engine, against a plain echo endpoint.

Run from the repository root (it starts its own servers on free loopback ports)::

    .venv/bin/python -m bench.service            # full suite
    .venv/bin/python -m bench.service --quick    # fewer repeats

For each case (channels_last float32 input, max pooling 2x2/2) it prints the median wall time of
one forward+backward pair

- ``engine``: :func:`engine.forward` + :func:`engine.backward` in this process;
- ``http``: ``POST /v1/sessions/{id}/forward`` then ``/backward`` with ``.npy`` bodies against a
  real ``python -m service`` (uvicorn, in-memory store), over one keep-alive connection;
- ``echo``: the same two request bodies posted to a plain FastAPI endpoint under the same uvicorn
  that returns its body unchanged (``bench/echo.py``): the cost of moving those bytes through
  the stack and doing nothing else. It returns X where the service returns the smaller A, so it
  is, if anything, an upper bound of the transport's share;

then the ratios http/engine and http/(engine + echo): the latter is the service's own overhead
(decoding, validation, the store, encoding) beyond computing and transporting, 1.0 being none.
Timings are only comparable as ratios within one run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import httpx
import numpy as np

import engine
from bench.engine import timings
from bench.server import free_port, serve
from poolgrad import protocol

SUITE: list[tuple[int, int, int, int]] = [
    (32, 28, 28, 1),
    (64, 32, 32, 32),
    (8, 112, 112, 64),
    (1, 512, 512, 1),
]
NPY = {"Content-Type": protocol.MEDIA_NPY}
#: Kept under its old name for the benchmarks that import it (bench.parsers, bench.store, ...).
_free_port = free_port


@contextmanager
def _server(command: list[str], env: dict[str, str]) -> Iterator[str]:
    """Run ``command`` (which must serve ``/healthz`` on $POOLGRAD_PORT); yield its base URL."""
    with serve(command, env) as server:
        yield server.base_url


@dataclass(frozen=True)
class Case:
    """One input of a suite: X, a dA shaped like A, their ``.npy`` bodies, and the URL of a
    ``/v1`` session with the suite's spec."""

    X: np.ndarray
    dA: np.ndarray
    x_body: bytes
    da_body: bytes
    session: str

    def forward_backward(self, http: httpx.Client) -> None:
        """Forward X then backward dA through the session, ``.npy`` both ways."""
        for step, body in (("forward", self.x_body), ("backward", self.da_body)):
            http.post(f"{self.session}/{step}", content=body, headers=NPY).raise_for_status()


def new_case(
    http: httpx.Client,
    base_url: str,
    spec: engine.PoolSpec,
    X: np.ndarray,
    rng: np.random.Generator,
) -> Case:
    """A :class:`Case` for ``X``, its session created on the server at ``base_url``."""
    A, _ = engine.forward(X, spec)
    dA = rng.standard_normal(A.shape).astype(X.dtype)
    created = http.post(f"{base_url}/v1/sessions", json=spec.to_dict())
    created.raise_for_status()
    session = f"{base_url}/v1/sessions/{created.json()['id']}"
    return Case(X, dA, protocol.encode_npy(X), protocol.encode_npy(dA), session)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 21
    quiet = {"POOLGRAD_LOG_LEVEL": "warning", "POOLGRAD_MAX_BODY_BYTES": str(256 * 2**20)}
    service_cmd = [sys.executable, "-m", "service"]
    echo_cmd = [sys.executable, "-m", "bench.echo"]
    spec = engine.PoolSpec(mode="max", pool_size=(2, 2))
    rng = np.random.default_rng(0)

    with (
        _server(service_cmd, quiet) as service_url,
        _server(echo_cmd, quiet) as echo_url,
        httpx.Client(timeout=120.0) as http,
    ):
        header = f"{'X shape':>18} {'engine ms':>10} {'http ms':>9} {'echo ms':>9}"
        print(f"{header} {'http/engine':>12} {'http/(engine+echo)':>19}")
        overheads: list[float] = []
        for shape in SUITE:
            X = rng.standard_normal(shape).astype(np.float32)
            case = new_case(http, service_url, spec, X, rng)

            def run_engine(case: Case = case) -> None:
                _, state = engine.forward(case.X, spec)
                engine.backward(state, case.dA)

            def run_echo(case: Case = case) -> None:
                for body in (case.x_body, case.da_body):
                    http.post(f"{echo_url}/echo", content=body, headers=NPY).raise_for_status()

            run_http = partial(case.forward_backward, http)
            medians = timings([run_engine, run_http, run_echo], repeats)
            t_engine, t_http, t_echo = (median for median, _ in medians)
            http.delete(case.session)
            overhead = t_http / (t_engine + t_echo)
            overheads.append(overhead)
            print(
                f"{shape!s:>18} {t_engine * 1e3:10.2f} {t_http * 1e3:9.2f} {t_echo * 1e3:9.2f} "
                f"{t_http / t_engine:12.2f} {overhead:19.2f}"
            )
        geomean = math.exp(sum(map(math.log, overheads)) / len(overheads))
        print(f"geometric mean http/(engine+echo): {geomean:.2f}")


if __name__ == "__main__":
    main()
