"""Load test: concurrent clients run session cycles against a real server; every answer is checked.

Run from the repository root; it starts its own server on a free loopback port::

    .venv/bin/python -m bench.load                          # 32 clients for 20 s
    .venv/bin/python -m bench.load --max-state-bytes 4096   # a small state budget: 429s expected
    .venv/bin/python -m bench.load --url http://127.0.0.1:8000 --clients 8   # a running server

Each client loops over cycles: create a session with a random spec (mode, 1 to 3 spatial dims,
pool sizes, strides, padding, layout, tie rule, dtype), run 1 to 3 forwards on random small
inputs (half of them drawn from a few integers, so windows hold ties), each followed by 1 or 2
backwards with a random ``dA``, then delete the session. Bodies travel as ``.npy``. Every ``A``
and every ``dX`` is compared bit for bit with :func:`engine.forward` and :func:`engine.backward`
run in this process on the NumPy kernels (the server runs the same engine on the same bytes,
with whichever kernels it chose: they are bit-identical), ``dX`` against the state of the step
the backward's ``ETag`` names.

A 429 ``capacity_exceeded`` (or a 503) is expected under a small budget: the client sleeps for
its ``Retry-After`` and tries again, up to :data:`ATTEMPTS` times, then gives the cycle up. A
429 or 503 without a usable ``Retry-After`` is counted as a fault.

Bounded in count and time: clients start no request after ``--duration`` seconds or once
``--requests`` requests were sent, whichever comes first, then delete the sessions they hold
(at most one request more per client). Loopback only: ``--url`` must name a loopback host.

It prints throughput, p50/p99 latency per operation, the status histogram, the wrong answers,
and, of the server process it started, the CPU time it used per request (little moved by other
work on a shared machine, unlike the wall-clock figures) and its peak resident memory
(``VmHWM``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.server import cpu_seconds_of, memory_of, serve
from engine import EngineOptions, PoolSpec, PoolState, backward, forward

#: Tries of one request answered 429 or 503 before its cycle is given up.
ATTEMPTS = 3
#: Longest back-off honoured, whatever ``Retry-After`` says, so a run stays bounded.
MAX_BACKOFF_SECONDS = 5.0
#: Statuses a healthy server answers this load with (429 only when a budget is full): any
#: other (a 404, a 422) means the server lost a session or refused what the engine accepts.
EXPECTED_STATUSES = frozenset({"200", "201", "204", "429"})
NPY = "application/x-npy"
OPERATIONS = ("create", "forward", "backward", "delete")
DTYPES = (np.float16, np.float32, np.float64)
#: The checks run the NumPy kernels, the engine's readable reference, one thread: whichever
#: kernels the server runs, every answer is compared with the reference (bit-identical by the
#: engine's contract), and the clients never wait for a JIT compiler.
REFERENCE = EngineOptions(threads=1, kernels="numpy")
#: Default bound on the elements of one random input: a cycle stays milliseconds of engine work.
MAX_INPUT_ELEMENTS = 4096


@dataclass(frozen=True)
class LoadConfig:
    """One run's bounds and the server it targets (started here unless ``url`` is given)."""

    clients: int = 32
    duration: float = 20.0
    requests: int | None = None
    seed: int = 0
    url: str | None = None
    store_url: str = "memory://"
    max_state_bytes: int | None = None
    max_sessions: int | None = None
    max_elements: int = MAX_INPUT_ELEMENTS
    engine_kernels: str | None = None

    def server_env(self) -> dict[str, str]:
        """``POOLGRAD_*`` settings of the server this tool starts."""
        env = {"POOLGRAD_STORE_URL": self.store_url, "POOLGRAD_LOG_LEVEL": "warning"}
        if self.max_state_bytes is not None:
            env["POOLGRAD_MAX_STATE_BYTES"] = str(self.max_state_bytes)
        if self.max_sessions is not None:
            env["POOLGRAD_MAX_SESSIONS"] = str(self.max_sessions)
        if self.engine_kernels is not None:
            env["POOLGRAD_ENGINE_KERNELS"] = self.engine_kernels
        return env


@dataclass
class Tally:
    """What every client saw, shared by all of them (one event loop, so no lock needed)."""

    deadline: float
    request_budget: float
    sent: int = 0
    cycles: int = 0
    gradients_checked: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    wrong: Counter[str] = field(default_factory=Counter)
    wrong_examples: list[str] = field(default_factory=list)
    missing_retry_after: int = 0
    #: ``"<status> <problem code>"`` of every answer of 400 or more (the fault test asserts
    #: that each 5xx was a 503 ``store_unavailable``).
    problems: Counter[str] = field(default_factory=Counter)

    def may_send(self) -> bool:
        """Whether the run's bounds allow another request (cleanup deletes ignore this)."""
        return self.sent < self.request_budget and time.perf_counter() < self.deadline

    def record_wrong(self, kind: str, detail: str) -> None:
        self.wrong[kind] += 1
        if len(self.wrong_examples) < 10:
            self.wrong_examples.append(f"{kind}: {detail}")


@dataclass(frozen=True)
class Case:
    """A random spec (as sent) and an input shape and dtype it accepts."""

    fields: dict[str, Any]
    spec: PoolSpec
    shape: tuple[int, ...]
    dtype: type[np.floating[Any]]


def random_case(rng: np.random.Generator, max_elements: int = MAX_INPUT_ELEMENTS) -> Case:
    """A spec over 1 to 3 spatial dims and an input shape it accepts, of about
    ``max_elements`` elements at most (more only when the window alone needs more)."""
    ndim = int(rng.choice([1, 2, 2, 2, 3]))
    pool = [int(rng.integers(1, 4)) for _ in range(ndim)]
    spec_fields: dict[str, Any] = {
        "mode": str(rng.choice(["max", "min", "avg"])),
        "pool_size": pool,
    }
    kind = rng.random()
    if kind < 0.3:
        spec_fields["strides"] = [int(rng.integers(1, 4)) for _ in range(ndim)]
    elif kind < 0.5:
        spec_fields["strides"] = int(rng.integers(1, 4))
    kind = rng.random()
    if kind < 0.25:
        spec_fields["padding"] = "same"
    elif kind < 0.5:
        spec_fields["padding"] = [[int(rng.integers(0, p)), int(rng.integers(0, p))] for p in pool]
    if spec_fields["mode"] == "avg":
        spec_fields["count_include_pad"] = bool(rng.random() < 0.5)
    else:
        spec_fields["ties"] = str(rng.choice(["all", "first", "split"]))
    spec_fields["layout"] = str(rng.choice(["channels_last", "channels_first"]))
    batch, channels = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    # Each spatial extent up to the one that would fill max_elements, at least the window.
    longest = int((max_elements / (batch * channels)) ** (1 / ndim))
    spatial = [int(rng.integers(p, max(p, longest) + 1)) for p in pool]
    if spec_fields["layout"] == "channels_last":
        shape = (batch, *spatial, channels)
    else:
        shape = (batch, channels, *spatial)
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    return Case(spec_fields, PoolSpec.from_dict(spec_fields), shape, dtype)


def random_tensor(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: type[np.floating[Any]]
) -> np.ndarray:
    """Half the time a few distinct integers (windows full of ties), else normal values."""
    if rng.random() < 0.5:
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def encode(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)  # type: ignore[no-any-return]


def same(got: np.ndarray, want: np.ndarray) -> bool:
    """Bit for bit: dtype, shape and values (NaN where NaN)."""
    return got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds, or None when absent or not delta-seconds."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def problem_code(response: httpx.Response) -> str:
    """The ``code`` of a problem+json answer, else ``"-"``."""
    try:
        body = response.json()
    except ValueError:
        return "-"
    return str(body.get("code", "-")) if isinstance(body, dict) else "-"


def step_of(response: httpx.Response) -> int | None:
    value = response.headers.get("etag", "").strip('"')
    return int(value) if value.isdigit() else None


class LoadClient:
    """One simulated user: its own connection, its own random stream, one session at a time."""

    def __init__(
        self, http: httpx.AsyncClient, rng: np.random.Generator, tally: Tally, max_elements: int
    ) -> None:
        self.http = http
        self.rng = rng
        self.tally = tally
        self.max_elements = max_elements
        #: Whether a forward of the current cycle was answered 503 (see :meth:`send`).
        self.forward_unsettled = False

    async def run(self) -> None:
        while self.tally.may_send():
            await self.cycle()

    async def send(
        self, operation: str, path: str, *, bounded: bool = True, **kwargs: Any
    ) -> httpx.Response | None:
        """POST/DELETE ``path``; on 429/503 back off per ``Retry-After`` and retry. None when
        the run's bounds stop it first or the transport fails (counted as its exception)."""
        method = "DELETE" if operation == "delete" else "POST"
        response = None
        for attempt in range(ATTEMPTS):
            if bounded and not self.tally.may_send():
                return response
            self.tally.sent += 1
            started = time.perf_counter()
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                self.tally.statuses[type(exc).__name__] += 1
                return None
            self.tally.latencies[operation].append(time.perf_counter() - started)
            self.tally.statuses[str(response.status_code)] += 1
            if response.status_code >= 400:
                self.tally.problems[f"{response.status_code} {problem_code(response)}"] += 1
            if response.status_code == 503 and operation == "forward":
                # A forward that timed out in the store may still be applied once the store
                # answers again: its step is then taken, and the next forward's ETag skips it.
                self.forward_unsettled = True
            if response.status_code not in (429, 503):
                return response
            wait = retry_after_seconds(response)
            if wait is None:
                self.tally.missing_retry_after += 1
                return response
            if attempt + 1 < ATTEMPTS:
                # Jittered so clients refused together do not all come back together; never
                # past the run's end.
                backoff = min(wait, MAX_BACKOFF_SECONDS) * (1 + self.rng.random() / 2)
                await asyncio.sleep(
                    min(backoff, max(0.0, self.tally.deadline - time.perf_counter()))
                )
        return response

    async def cycle(self) -> None:
        case = random_case(self.rng, self.max_elements)
        self.forward_unsettled = False
        created = await self.send("create", "/v1/sessions", json=case.fields)
        if created is None or created.status_code != 201:
            return
        session = f"/v1/sessions/{created.json()['id']}"
        if created.json()["spec"] != case.spec.to_dict():
            self.tally.record_wrong("spec", f"{case.fields} normalized to {created.json()['spec']}")
        try:
            states: dict[int, PoolState] = {}
            for _ in range(int(self.rng.integers(1, 4))):
                if not await self.forward(session, case, states):
                    return
                # After a refused forward (429) the previous state must still answer.
                for _ in range(int(self.rng.integers(1, 3))):
                    await self.backward(session, case, states)
        finally:
            await self.send("delete", session, bounded=False)
            self.tally.cycles += 1

    async def forward(self, session: str, case: Case, states: dict[int, PoolState]) -> bool:
        """One forward, checked; whether the session now has a state to run backward on (a
        refused forward leaves the previous one). False also when the run's bounds stop it."""
        X = random_tensor(self.rng, case.shape, case.dtype)
        response = await self.send(
            "forward", f"{session}/forward", content=encode(X), headers={"Content-Type": NPY}
        )
        if response is None or response.status_code != 200:
            return response is not None and response.status_code == 429 and bool(states)
        A, state = forward(X, case.spec, options=REFERENCE)
        step = step_of(response)
        after = max(states, default=0)
        gap_allowed = self.forward_unsettled and step is not None and step > after
        if step is None or step in states or (states and step != after + 1 and not gap_allowed):
            self.tally.record_wrong(
                "ETag", f"{response.headers.get('etag')} after {sorted(states)}"
            )
            return False
        states[step] = state
        if not same(decode(response.content), A):
            self.tally.record_wrong("A", f"step {step} of {case.fields}, X {case.shape}")
        return True

    async def backward(self, session: str, case: Case, states: dict[int, PoolState]) -> None:
        """One backward, its dX checked against the state of the step its ETag names."""
        latest = states[max(states)]
        dA = random_tensor(self.rng, latest.output_shape, case.dtype)
        response = await self.send(
            "backward", f"{session}/backward", content=encode(dA), headers={"Content-Type": NPY}
        )
        if response is None or response.status_code != 200:
            return
        step = step_of(response)
        if step not in states:
            self.tally.record_wrong(
                "ETag", f"backward named {step}, forwards made {sorted(states)}"
            )
            return
        self.tally.gradients_checked += 1
        if not same(decode(response.content), backward(states[step], dA, options=REFERENCE)):
            self.tally.record_wrong("dX", f"step {step} of {case.fields}, X {case.shape}")


@dataclass(frozen=True)
class LoadReport:
    """What one run measured; :meth:`lines` is what ``python -m bench.load`` prints."""

    config: LoadConfig
    engine_kernels: str
    seconds: float
    requests: int
    cycles: int
    gradients_checked: int
    statuses: dict[str, int]
    latencies: dict[str, list[float]]
    wrong: dict[str, int]
    wrong_examples: list[str]
    missing_retry_after: int
    client_cpu_seconds: float
    problems: dict[str, int] = field(default_factory=dict)
    rss_start_bytes: int | None = None
    rss_peak_bytes: int | None = None
    server_errors_logged: int | None = None
    server_cpu_seconds: float | None = None

    @property
    def server_errors(self) -> int:
        """Answers of 500 or more, and requests the transport failed (no answer at all)."""
        return sum(
            n for status, n in self.statuses.items() if not status.isdigit() or int(status) >= 500
        )

    @property
    def unexpected(self) -> int:
        """Answers outside :data:`EXPECTED_STATUSES`, transport failures included."""
        return sum(n for status, n in self.statuses.items() if status not in EXPECTED_STATUSES)

    def lines(self) -> list[str]:
        mib = 1024 * 1024
        config = self.config
        lines = [
            f"clients {config.clients}, duration bound {config.duration:g} s, request bound "
            f"{config.requests or 'none'}, seed {config.seed}, store {config.store_url}, "
            f"max_state_bytes {config.max_state_bytes or 'default'}, server engine kernels "
            f"{self.engine_kernels}",
            f"{self.requests} requests in {self.seconds:.1f} s: {self.requests / self.seconds:.0f} "
            f"requests/s, {self.cycles} session cycles, {self.gradients_checked} dX checked",
            f"{'operation':>10} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}",
        ]
        for operation in OPERATIONS:
            times = self.latencies.get(operation, [])
            if times:
                p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
                lines.append(f"{operation:>10} {len(times):7d} {p50:8.2f} {p99:8.2f}")
        histogram = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        lines.append(f"statuses: {histogram}")
        if self.problems:
            problems = ", ".join(f"{key}: {n}" for key, n in sorted(self.problems.items()))
            lines.append(f"problems: {problems}")
        wrong = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.wrong.items())) or "none"
        lines.append(
            f"wrong answers: {wrong}; 429/503 without Retry-After: {self.missing_retry_after}"
        )
        lines.extend(f"  {example}" for example in self.wrong_examples)
        ms_per_request = 1e3 / max(self.requests, 1)
        cpu = f"CPU per request: clients {self.client_cpu_seconds * ms_per_request:.2f} ms"
        if self.server_cpu_seconds is not None:
            cpu += f", server {self.server_cpu_seconds * ms_per_request:.2f} ms"
        lines.append(cpu + " (the clients' includes checking every answer)")
        if self.rss_peak_bytes is not None and self.rss_start_bytes is not None:
            lines.append(
                f"server RSS: {self.rss_start_bytes / mib:.1f} MiB after start-up, peak "
                f"{self.rss_peak_bytes / mib:.1f} MiB; error lines logged: "
                f"{self.server_errors_logged}"
            )
        else:
            lines.append("server RSS: not measured (the server was not started by this tool)")
        return lines


async def drive(base_url: str, config: LoadConfig) -> LoadReport:
    """Run ``config.clients`` clients against ``base_url`` until the bounds stop them."""
    started, cpu_started = time.perf_counter(), time.process_time()
    budget = math.inf if config.requests is None else config.requests
    tally = Tally(deadline=started + config.duration, request_budget=budget)
    seeds = np.random.SeedSequence(config.seed).spawn(config.clients)
    ready = httpx.get(f"{base_url}/readyz", timeout=10.0)
    kernels = str(ready.json().get("engine_kernels", "unknown")) if ready.is_success else "unknown"
    https = [httpx.AsyncClient(base_url=base_url, timeout=60.0) for _ in range(config.clients)]
    try:
        async with asyncio.TaskGroup() as group:
            for http, seed in zip(https, seeds, strict=True):
                client = LoadClient(http, np.random.default_rng(seed), tally, config.max_elements)
                group.create_task(client.run())
    finally:
        for http in https:
            await http.aclose()
    return LoadReport(
        config=config,
        engine_kernels=kernels,
        seconds=time.perf_counter() - started,
        requests=tally.sent,
        cycles=tally.cycles,
        gradients_checked=tally.gradients_checked,
        statuses=dict(tally.statuses),
        latencies=dict(tally.latencies),
        wrong=dict(tally.wrong),
        wrong_examples=list(tally.wrong_examples),
        missing_retry_after=tally.missing_retry_after,
        client_cpu_seconds=time.process_time() - cpu_started,
        problems=dict(tally.problems),
    )


def require_loopback(url: str) -> None:
    """SystemExit unless ``url`` names a loopback host: this tool never loads another machine."""
    host = httpx.URL(url).host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"bench.load: --url {url!r} is not a loopback address (127.0.0.1, ::1)")


def run(config: LoadConfig) -> LoadReport:
    """One bounded run: against ``config.url``, or a server started here with the config's
    settings (then the report has its memory and how many error lines it logged)."""
    if config.url is not None:
        require_loopback(config.url)
        return asyncio.run(drive(config.url, config))
    command = [sys.executable, "-m", "service"]
    with tempfile.TemporaryDirectory() as log_dir:
        log = Path(log_dir) / "server.log"
        with serve(command, config.server_env(), log) as server:
            rss_start = memory_of(server.pid, "VmRSS")
            cpu_start = cpu_seconds_of(server.pid)
            report = asyncio.run(drive(server.base_url, config))
            cpu = cpu_seconds_of(server.pid) - cpu_start
            rss_peak = memory_of(server.pid, "VmHWM")
        logged = log.read_text(errors="replace").splitlines()
        errors = sum(" ERROR " in line or line.startswith("Traceback") for line in logged)
    return replace(
        report,
        rss_start_bytes=rss_start,
        rss_peak_bytes=rss_peak,
        server_errors_logged=errors,
        server_cpu_seconds=cpu,
    )


def parse_args(argv: Sequence[str] | None) -> LoadConfig:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run (20)")
    parser.add_argument("--requests", type=int, default=None, help="most requests to send")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    parser.add_argument("--url", default=None, help="a running server (loopback) instead")
    parser.add_argument("--store-url", default="memory://", help="POOLGRAD_STORE_URL")
    parser.add_argument(
        "--max-state-bytes", type=int, default=None, help="POOLGRAD_MAX_STATE_BYTES"
    )
    parser.add_argument("--max-sessions", type=int, default=None, help="POOLGRAD_MAX_SESSIONS")
    parser.add_argument(
        "--engine-kernels",
        choices=["numpy", "compiled", "auto"],
        default=None,
        help="POOLGRAD_ENGINE_KERNELS",
    )
    parser.add_argument(
        "--max-elements",
        type=int,
        default=MAX_INPUT_ELEMENTS,
        help=f"elements of one random input at most ({MAX_INPUT_ELEMENTS})",
    )
    args = parser.parse_args(argv)
    for flag in ("clients", "requests", "max_elements"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if not args.duration > 0:
        parser.error(f"--duration must be > 0 seconds, got {args.duration}")
    server_flags = {
        "--store-url": args.store_url != "memory://",
        "--max-state-bytes": args.max_state_bytes is not None,
        "--max-sessions": args.max_sessions is not None,
        "--engine-kernels": args.engine_kernels is not None,
    }
    given = [flag for flag, set_ in server_flags.items() if set_]
    if args.url is not None and given:
        parser.error(
            f"{', '.join(given)} set(s) the server this tool starts; with --url "
            f"{args.url!r} configure that server instead"
        )
    # Every flag's destination is the LoadConfig field of the same name.
    return LoadConfig(**{item.name: getattr(args, item.name) for item in fields(LoadConfig)})


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; exit 1 when any answer was wrong or unexpected (a 5xx among them), or
    a 429 came without Retry-After."""
    report = run(parse_args(argv))
    print("\n".join(report.lines()))
    failed = report.wrong or report.unexpected or report.missing_retry_after
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
