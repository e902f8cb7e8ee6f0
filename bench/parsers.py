"""Benchmark: the HTTP parser the server runs, side by side with uvicorn's h11.

Run from the repository root (it starts both servers on free loopback ports)::

    .venv/bin/python -m bench.parsers            # 15 rounds
    .venv/bin/python -m bench.parsers --quick    # 5 rounds

Two servers with the same app, settings and event loop (uvloop where installed): ``python -m
service`` (the bounded httptools protocol, :mod:`service.server`) and the same app under
uvicorn's ``h11`` with ``h11_max_incomplete_event_size`` at the same header bound (how the server
ran before). Per case it prints the median time per request over interleaved rounds of
:data:`BATCH` requests on one keep-alive connection each and the ratio h11 / httptools, then
the same from the best round (less disturbed by other load on a shared machine):

- ``GET /healthz``: parsing and the middleware, no work;
- ``forward (1,8,8,1)``: a session forward of a tiny float32 ``.npy`` tensor;
- ``gradient (1,8,8,1)``: the stateless route with a safetensors body of X and dA.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import httpx
import numpy as np

from bench.engine import timings
from bench.server import serve
from poolgrad import protocol

BATCH = 50


def serve_h11() -> None:
    """The app under uvicorn's h11 parser, as ``python -m service`` ran it before."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def cases(http: httpx.Client, base_url: str) -> dict[str, Callable[[], None]]:
    """One batch of requests per case against the server at ``base_url``."""
    X = np.random.default_rng(0).standard_normal((1, 8, 8, 1)).astype(np.float32)
    dA = np.ones((1, 4, 4, 1), np.float32)
    x_body = protocol.encode_npy(X)
    named = protocol.encode_named({"X": X, "dA": dA}, protocol.MEDIA_SAFETENSORS)
    session = http.post(f"{base_url}/v1/sessions", json={}).json()["id"]

    def healthz() -> None:
        for _ in range(BATCH):
            http.get(f"{base_url}/healthz").raise_for_status()

    def posting(path: str, body: bytes, media_type: str) -> Callable[[], None]:
        def post() -> None:
            for _ in range(BATCH):
                http.post(
                    f"{base_url}{path}", content=body, headers={"Content-Type": media_type}
                ).raise_for_status()

        return post

    forward = posting(f"/v1/sessions/{session}/forward", x_body, protocol.MEDIA_NPY)
    gradient = posting("/v1/gradient", named, protocol.MEDIA_SAFETENSORS)

    return {"GET /healthz": healthz, "forward (1,8,8,1)": forward, "gradient (1,8,8,1)": gradient}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    parser.add_argument("--serve-h11", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_h11:
        serve_h11()
        return
    quiet = {"POOLGRAD_LOG_LEVEL": "warning"}
    with (
        serve([sys.executable, "-m", "service"], quiet) as bounded_server,
        serve([sys.executable, "-m", "bench.parsers", "--serve-h11"], quiet) as h11_server,
        httpx.Client(timeout=60.0) as bounded_http,
        httpx.Client(timeout=60.0) as h11_http,
    ):
        bounded = cases(bounded_http, bounded_server.base_url)
        h11 = cases(h11_http, h11_server.base_url)
        print(f"{'case':>20} {'httptools ms':>13} {'h11 ms':>8} {'h11/httptools':>14}  best of")
        for name in bounded:
            (median_b, best_b), (median_h, best_h) = timings(
                [bounded[name], h11[name]], 5 if args.quick else 15
            )
            print(
                f"{name:>20} {median_b / BATCH * 1e3:13.3f} {median_h / BATCH * 1e3:8.3f} "
                f"{median_h / median_b:14.2f}  ({best_b / BATCH * 1e3:.3f}, "
                f"{best_h / BATCH * 1e3:.3f}, {best_h / best_b:.2f})"
            )


if __name__ == "__main__":
    main()
