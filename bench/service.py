"""Benchmark: what the HTTP service adds on top of the engine and the transport (issue 12).

Run from the repository root (it starts its own servers on free loopback ports)::

    .venv/bin/python -m bench.service                     # full suite
    .venv/bin/python -m bench.service --quick             # fewer repeats, no 25 MiB case
    .venv/bin/python -m bench.service --profile prof.txt  # py-spy samples of the service
    .venv/bin/python -m bench.service --compare DIR       # and another checkout's service
    .venv/bin/python -m bench.service --mlserver /venv/bin/mlserver  # and Seldon MLServer

Two servers run side by side: ``python -m service`` (in-memory store) and the echo floor
``python -m bench.echo`` (one FastAPI endpoint that returns its body). Requests go over
keep-alive loopback connections by a minimal HTTP/1.1 client (:class:`Connection`), so the
client's own cost stays small next to the servers'. For each X shape (float32,
channels_last, max pooling 2x2/2), timed round by round in one interleaved loop:

- ``session``: ``POST .../forward`` (X) then ``.../backward`` (dA), ``.npy`` bodies;
- ``grad st`` / ``grad json``: one stateless ``POST /v1/gradient`` with X and dA as
  safetensors / JSON (JSON only up to :data:`JSON_MAX_ELEMENTS`);
- ``echo npy`` / ``echo st``: the same request bodies posted to the echo floor: moving those
  bytes through the stack and nothing else (it answers X where the service answers the smaller
  A, so it is, if anything, an upper bound of the transport's share);
- ``engine``: :func:`engine.forward` + :func:`engine.backward` in this process;

printing p50 and p99 of each and ``service / (floor + engine)`` (p50s; 1.0 is no overhead).
Then small-request throughput: the (1, 8, 8, 1) stateless gradient (safetensors) at 1, 4 and
16 concurrent clients, each on its own connection, against the echo floor fed the same bodies
(the median of :data:`WINDOWS` short windows per server, interleaved).
Timings are only comparable as ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

import engine
from bench.server import free_port, serve
from poolgrad import protocol

SUITE: list[tuple[int, int, int, int]] = [(1, 8, 8, 1), (64, 32, 32, 32), (8, 112, 112, 64)]
#: The --quick suite leaves out the 25 MiB case.
QUICK_SUITE = SUITE[:2]
#: JSON bodies beyond this many elements are not what JSON is for (and hit its body limit).
JSON_MAX_ELEMENTS = 1 << 16
#: Rounds per shape: small requests are cheap, so they get enough rounds for a p99.
ROUNDS: dict[str, tuple[int, ...]] = {"full": (600, 80, 20), "quick": (200, 25, 5)}
WARMUP_ROUNDS = 5
CONCURRENCY = (1, 4, 16)
#: Throughput is measured in this many short windows per server, interleaved.
WINDOWS = 5
NPY = {"Content-Type": protocol.MEDIA_NPY}
SPEC = engine.PoolSpec(mode="max", pool_size=(2, 2))
QUERY = "?" + "&".join(f"{k}={v}" for k, v in protocol.spec_to_query(SPEC.to_dict()).items())


# ------------------------------------------------------------------------ transport


class Connection:
    """One keep-alive HTTP/1.1 connection that posts prebuilt requests: far lighter than a
    general client, so the numbers are the servers'. Answers must carry Content-Length."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}".encode()
        self._buffer = b""

    def request(self, path: str, body: bytes, media_type: str) -> bytearray:
        """``POST path`` with ``body``; the answer's body (raises unless 2xx)."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host.decode()}\r\nContent-Type: {media_type}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        # Head and body in one gathered write: no copy of a large body into one buffer.
        sent = self.sock.sendmsg([head.encode(), body])
        pending = memoryview(head.encode() + body if sent < len(head) else body)
        self.sock.sendall(pending[sent if sent < len(head) else sent - len(head) :])
        while b"\r\n\r\n" not in self._buffer:
            self._recv()
        header, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status = int(header[9:12])
        length = next(
            int(line.split(b":", 1)[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        # The answer is read into one buffer of its length: appending each read to a bytes
        # object copied all that came before, quadratic in the answer's size (tens of ms of a
        # 31 MB answer, charged to whichever server sent the largest single answer).
        answer = bytearray(length)
        view = memoryview(answer)
        received = min(len(self._buffer), length)
        view[:received] = self._buffer[:received]
        self._buffer = self._buffer[received:]
        while received < length:
            count = self.sock.recv_into(view[received:])
            if not count:
                raise ConnectionError("the server closed the connection")
            received += count
        if not 200 <= status < 300:
            raise RuntimeError(f"POST {path} answered {status}: {answer[:200]!r}")
        return answer

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self.sock.close()


#: Kept under its old name for the benchmarks that import it (bench.store, bench.v2, ...).
_free_port = free_port


@contextmanager
def _server(command: list[str], env: dict[str, str]) -> Iterator[str]:
    """Run ``command`` (which must serve ``/healthz`` on $POOLGRAD_PORT); yield its base URL."""
    with _started(command, env) as (base_url, _):
        yield base_url


@contextmanager
def _started(
    command: list[str],
    env: dict[str, str],
    cwd: str | None = None,
    *,
    port: int | None = None,
    health: str = "/healthz",
) -> Iterator[tuple[str, int]]:
    """Run ``command`` in ``cwd`` (it must serve ``health`` on $POOLGRAD_PORT, or on ``port``);
    yield its base URL and process id."""
    with serve(command, env, cwd=cwd, port=port, health=health) as server:
        yield server.base_url, server.pid


@contextmanager
def _profiled(pid: int, path: str | None) -> Iterator[None]:
    """py-spy samples of process ``pid`` (collapsed stacks, one line each, in ``path``)."""
    if path is None:
        yield
        return
    py_spy = str(Path(sys.executable).with_name("py-spy"))  # the dev extra installs it
    # --gil: only samples that hold the GIL, i.e. where the CPU goes, not idle waiting.
    options = ["--format", "raw", "--gil", "--nonblocking", "--rate", "250", "--output", path]
    profiler = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        yield
    finally:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        profiler.wait(timeout=30)


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


@contextmanager
def _mlserver(executable: str, env: dict[str, str]) -> Iterator[str]:
    """Seldon MLServer (``executable``: its ``mlserver`` command, from its own virtualenv)
    serving :mod:`bench.mlserver_runtime` as model ``maxpool`` on loopback; yield its URL."""
    ports = [_free_port() for _ in range(3)]
    settings = {"host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1],
                "metrics_port": ports[2], "parallel_workers": 0, "debug": False}  # fmt: skip
    model = {"name": "maxpool", "implementation": "bench.mlserver_runtime.PoolRuntime"}
    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "settings.json").write_text(json.dumps(settings))
        Path(folder, "model-settings.json").write_text(json.dumps(model))
        command = [executable, "start", folder]
        server_env = {**env, "PYTHONPATH": root}
        with _started(command, server_env, port=ports[0], health="/v2/health/ready") as (url, _):
            yield url


def v2_request(tensors: dict[str, np.ndarray]) -> bytes:
    """An Open Inference Protocol (V2) JSON request with these inputs."""
    inputs = [{"name": name, "shape": list(array.shape), "datatype": "FP32",
               "data": array.ravel().tolist()} for name, array in tensors.items()]  # fmt: skip
    return json.dumps({"inputs": inputs}).encode()


# -------------------------------------------------------------------------- timing


def samples(runs: list[Callable[[], object]], rounds: int) -> list[list[float]]:
    """Wall times of each of ``runs`` over ``rounds`` rounds, interleaved round by round so that
    load from other processes hits every contender alike, after :data:`WARMUP_ROUNDS`."""
    for _ in range(WARMUP_ROUNDS):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, out in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return times


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


@dataclass
class Bodies:
    """One shape's request bodies, for every contender."""

    shape: tuple[int, ...]
    X: np.ndarray
    dA: np.ndarray
    x_npy: bytes
    da_npy: bytes
    named_st: bytes
    named_json: bytes | None

    @classmethod
    def make(cls, shape: tuple[int, ...], rng: np.random.Generator) -> Bodies:
        X = rng.standard_normal(shape).astype(np.float32)
        A, _ = engine.forward(X, SPEC)
        dA = rng.standard_normal(A.shape).astype(np.float32)
        named = {"X": X, "dA": dA}
        small = X.size <= JSON_MAX_ELEMENTS
        return cls(
            shape, X, dA, protocol.encode_npy(X), protocol.encode_npy(dA),
            protocol.encode_safetensors(named),
            protocol.encode_named(named, protocol.MEDIA_JSON) if small else None,
        )  # fmt: skip


def _service_runs(case: Bodies, service: Connection, label: str) -> dict[str, Callable[[], object]]:
    """The service's contenders for ``case``: a session's forward+backward, the gradient."""
    npy, st, js = protocol.MEDIA_NPY, protocol.MEDIA_SAFETENSORS, protocol.MEDIA_JSON
    created = service.request("/v1/sessions", protocol.dumps(SPEC.to_dict()), js)
    session = f"/v1/sessions/{protocol.loads(created)['id']}"

    def run_session() -> None:
        service.request(f"{session}/forward", case.x_npy, npy)
        service.request(f"{session}/backward", case.da_npy, npy)

    runs: dict[str, Callable[[], object]] = {
        f"session{label}": run_session,
        f"grad st{label}": lambda: service.request(f"/v1/gradient{QUERY}", case.named_st, st),
    }
    if case.named_json is not None:
        body = case.named_json
        runs[f"grad json{label}"] = lambda: service.request(f"/v1/gradient{QUERY}", body, js)
    return runs


def latency(
    case: Bodies,
    services: dict[str, Connection],
    echo: Connection,
    rounds: int,
    mlserver: Connection | None = None,
) -> None:
    """Print p50/p99 of every contender for ``case`` and the service's overhead ratios;
    ``services`` maps a label ("" for this checkout) to a connection; ``mlserver`` adds its
    V2 endpoint doing the same stateless work (JSON)."""
    npy, st, js = protocol.MEDIA_NPY, protocol.MEDIA_SAFETENSORS, protocol.MEDIA_JSON

    def run_echo_npy() -> None:
        echo.request("/echo", case.x_npy, npy)
        echo.request("/echo", case.da_npy, npy)

    def run_engine() -> None:
        _, state = engine.forward(case.X, SPEC)
        engine.backward(state, case.dA)

    runs: dict[str, Callable[[], object]] = {
        "echo npy": run_echo_npy,
        "echo st": lambda: echo.request("/echo", case.named_st, st),
        "engine": run_engine,
    }
    if case.named_json is not None:
        body = case.named_json
        runs["echo json"] = lambda: echo.request("/echo", body, js)
    for label, service in services.items():
        runs.update(_service_runs(case, service, label))
    if mlserver is not None and case.named_json is not None:
        v2_body = v2_request({"X": case.X, "dA": case.dA})
        path = "/v2/models/maxpool/infer"
        runs["mlserver v2"] = lambda: mlserver.request(path, v2_body, js)
    timed = dict(zip(runs, samples(list(runs.values()), rounds), strict=True))
    for name, values in timed.items():
        print(f"{case.shape!s:>18} {name:>14} {p50(values) * 1e3:9.3f} {p99(values) * 1e3:9.3f}")
    engine_p50 = p50(timed["engine"])
    for label in services:
        for kind, floor_name in (("session", "echo npy"), ("grad st", "echo st"),
                                 ("grad json", "echo json")):  # fmt: skip
            name = f"{kind}{label}"
            if name in timed:
                ratio = p50(timed[name]) / (p50(timed[floor_name]) + engine_p50)
                print(f"{'':>18} {name:>14} / ({floor_name} + engine) = {ratio:.2f}")
            if name in timed and name.startswith("grad") and "mlserver v2" in timed:
                ratio = p50(timed[name]) / p50(timed["mlserver v2"])
                print(f"{'':>18} {name:>14} / mlserver v2 = {ratio:.2f}")


def throughput(
    url: str, path: str, body: bytes, media_type: str, clients: int, seconds: float
) -> float:
    """Requests per second that ``clients`` threads, each on its own connection, complete."""
    connections = [Connection(url) for _ in range(clients)]
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def drive(index: int) -> None:
        connection = connections[index]
        while time.perf_counter() < stop:
            connection.request(path, body, media_type)
            counts[index] += 1

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no 25 MiB case")
    parser.add_argument("--profile", metavar="PATH", help="py-spy samples of the service")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also run `python -m service` from another checkout (e.g. `git archive main`), "
        "interleaved with this one, labelled 'base'",
    )
    parser.add_argument(
        "--shape",
        action="append",
        type=lambda text: tuple(int(dim) for dim in text.split(",")),
        help="X shapes to time instead of the suite, e.g. --shape 64,32,32,32 (repeatable)",
    )
    parser.add_argument(
        "--echo-http",
        choices=["auto", "h11", "httptools"],
        default="auto",
        help="uvicorn's HTTP parser for the echo floor (auto: httptools when installed, as "
        "the service's bounded parser is); h11 shows what the parser alone costs",
    )
    parser.add_argument(
        "--mlserver",
        metavar="PATH",
        help="the `mlserver` command of a virtualenv with Seldon MLServer installed: adds its "
        "V2 JSON endpoint doing the same stateless work (small shapes)",
    )
    args = parser.parse_args()
    quick = args.quick
    suite = args.shape or (QUICK_SUITE if quick else SUITE)
    rounds = ROUNDS["quick" if quick else "full"]
    if args.shape:  # each shape gets the rounds of the suite's shape of about its size
        sizes = [math.prod(shape) for shape in SUITE]
        rounds = tuple(rounds[min(range(3), key=lambda i: abs(sizes[i] - math.prod(shape)))]
                       for shape in args.shape)  # fmt: skip
    window = 0.5 if quick else 1.0
    env = {"POOLGRAD_LOG_LEVEL": "warning", "POOLGRAD_MAX_BODY_BYTES": str(256 * 2**20)}
    rng = np.random.default_rng(0)
    cases = [Bodies.make(shape, rng) for shape in suite]
    print(f"load average before: {os.getloadavg()[0]:.2f}; echo floor parser: {args.echo_http}")
    service_cmd = [sys.executable, "-m", "service"]
    with contextlib.ExitStack() as stack:
        service_url, service_pid = stack.enter_context(_started(service_cmd, env))
        echo_env = {**env, "BENCH_ECHO_HTTP": args.echo_http}
        echo_cmd = [sys.executable, "-m", "bench.echo"]
        echo_url = stack.enter_context(_server(echo_cmd, echo_env))
        urls = {"": service_url}
        if args.compare:
            urls[" base"] = stack.enter_context(_started(service_cmd, env, args.compare))[0]
        mlserver = None
        if args.mlserver:
            mlserver = Connection(stack.enter_context(_mlserver(args.mlserver, env)))
        stack.enter_context(_profiled(service_pid, args.profile))
        services = {label: Connection(url) for label, url in urls.items()}
        echo = Connection(echo_url)
        print(f"{'X shape':>18} {'what':>14} {'p50 ms':>9} {'p99 ms':>9}")
        for case, case_rounds in zip(cases, rounds, strict=False):
            latency(case, services, echo, case_rounds, mlserver)
        tiny = Bodies.make(SUITE[0], rng)
        st = protocol.MEDIA_SAFETENSORS
        print(f"\nthroughput, {tiny.shape} stateless gradient (safetensors), requests/s")
        print(f"(median of {WINDOWS} interleaved windows of {window:g} s each):")
        print(f"{'clients':>8} {'server':>8} {'req/s':>9} {'echo req/s':>11} {'/echo':>6}")
        targets = {label.strip() or "this": (url, f"/v1/gradient{QUERY}")
                   for label, url in urls.items()}  # fmt: skip
        targets["echo"] = (echo_url, "/echo")
        for clients in CONCURRENCY:
            rates: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(WINDOWS):  # interleaved: load from elsewhere hits all alike
                for name, (url, path) in targets.items():
                    rate = throughput(url, path, tiny.named_st, st, clients, window)
                    rates[name].append(rate)
            floor = p50(rates["echo"])
            for name in [name for name in targets if name != "echo"]:
                served = p50(rates[name])
                print(f"{clients:>8} {name:>8} {served:9.0f} {floor:11.0f} {served / floor:6.2f}")
        for connection in [*services.values(), echo, *([mlserver] if mlserver else [])]:
            connection.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
