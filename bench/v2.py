"""Benchmark: the Open Inference Protocol (``/v2``) against ``/v1`` on the same server.

Run from the repository root (it starts its own server on a free loopback port; needs the dev
extra for ``tritonclient``)::

    .venv/bin/python -m bench.v2            # full suite
    .venv/bin/python -m bench.v2 --quick    # fewer repeats

For each case (channels_last float32 input, max pooling 2x2/2) it prints the median wall time of
one forward+backward pair in a session:

- ``v1``: ``POST /v1/sessions/{id}/forward`` then ``/backward`` with ``.npy`` bodies (httpx);
- ``v2 bin``: ``tritonclient.http`` ``infer`` with X, then with dA, in one sequence, tensors as
  binary data (the client's default);
- ``v2 httpx``: the same binary requests, built here and posted with httpx as for v1, so
  ``v2 httpx / v1`` is the server's cost of the protocol and the rest is the client's;
- ``v2 json``: as ``v2 bin`` with JSON tensors (``binary_data=False``), small inputs only.
Timings are only comparable as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial

import httpx
import numpy as np
import tritonclient.http as triton

import engine
from bench.engine import timings
from bench.service import _server, new_case

SUITE: list[tuple[int, int, int, int]] = [
    (32, 28, 28, 1),
    (64, 32, 32, 32),
    (8, 112, 112, 64),
]
#: JSON tensors are for small inputs: past this many elements the JSON run is skipped.
JSON_MAX_ELEMENTS = 100_000


def _infer(
    client: triton.InferenceServerClient, name: str, array: np.ndarray, binary: bool
) -> None:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    output = triton.InferRequestedOutput("A" if name == "X" else "dX", binary_data=binary)
    client.infer("maxpool", [tensor], outputs=[output], sequence_id=1)


def _binary_request(name: str, array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An infer request body in sequence 1 with ``array`` as binary data, and its header."""
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": list(array.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": array.nbytes}},
            ],
            "parameters": {"sequence_id": 1, "binary_data_output": True},
        }
    ).encode()  # fmt: skip
    return header + array.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 21
    settings = {
        "POOLGRAD_LOG_LEVEL": "warning",
        "POOLGRAD_MAX_BODY_BYTES": str(256 * 2**20),
        "POOLGRAD_MAX_JSON_BODY_BYTES": str(64 * 2**20),
    }
    spec = engine.PoolSpec(mode="max", pool_size=(2, 2))
    rng = np.random.default_rng(0)

    with (
        _server([sys.executable, "-m", "service"], settings) as url,
        httpx.Client(timeout=120.0) as http,
        triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120.0) as v2,
    ):
        print(
            f"{'X shape':>18} {'v1 ms':>9} {'v2 bin ms':>10} {'v2 httpx ms':>12} "
            f"{'v2 json ms':>11} {'bin/v1':>7} {'httpx/v1':>9}"
        )
        infer = f"{url}/v2/models/maxpool/infer"
        for shape in SUITE:
            X = rng.standard_normal(shape).astype(np.float32)
            case = new_case(http, url, spec, X, rng)
            dA = case.dA
            start = triton.InferInput("X", list(X.shape), "FP32").set_data_from_numpy(X)
            v2.infer("maxpool", [start], sequence_id=1, sequence_start=True)

            def run_v2(binary: bool, X: np.ndarray = X, dA: np.ndarray = dA) -> None:
                _infer(v2, "X", X, binary)
                _infer(v2, "dA", dA, binary)

            requests = [_binary_request("X", X), _binary_request("dA", dA)]

            def run_v2_httpx(requests: list[tuple[bytes, dict[str, str]]] = requests) -> None:
                for body, headers in requests:
                    http.post(infer, content=body, headers=headers).raise_for_status()

            run_v1 = partial(case.forward_backward, http)
            runs: list[Callable[[], object]] = [run_v1, lambda: run_v2(True), run_v2_httpx]
            if X.size <= JSON_MAX_ELEMENTS:
                runs.append(lambda: run_v2(False))
            t_v1, t_bin, t_httpx, *t_json = [median for median, _ in timings(runs, repeats)]
            http.delete(case.session)
            json_ms = f"{t_json[0] * 1e3:11.2f}" if t_json else f"{'-':>11}"
            print(
                f"{shape!s:>18} {t_v1 * 1e3:9.2f} {t_bin * 1e3:10.2f} {t_httpx * 1e3:12.2f} "
                f"{json_ms} {t_bin / t_v1:7.2f} {t_httpx / t_v1:9.2f}"
            )


if __name__ == "__main__":
    main()
