"""Servers for the benchmarks: a command that serves ``/healthz``, run on a free loopback port.

``serve([sys.executable, "-m", "service"], {"POOLGRAD_LOG_LEVEL": "warning"})`` starts the
service with extra ``POOLGRAD_*`` settings, waits until it answers, and stops it on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["STARTUP_SECONDS", "ServerProcess", "cpu_seconds_of", "free_port", "memory_of", "serve"]

STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class ServerProcess:
    """A process started by :func:`serve`; ``log`` holds its output when one was asked for."""

    base_url: str
    pid: int
    log: Path | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_of(pid: int, field_name: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def cpu_seconds_of(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used, in seconds: unlike wall
    time, hardly changed by other work on a shared machine."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces, so split after its ")"): the
    # state is field 3 of proc(5), utime and stime fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(
    command: Sequence[str],
    env: Mapping[str, str],
    log: Path | None = None,
    *,
    cwd: str | None = None,
    port: int | None = None,
    health: str = "/healthz",
) -> Iterator[ServerProcess]:
    """Run ``command`` (in ``cwd``) on ``port`` of 127.0.0.1, a free one by default, passed as
    ``POOLGRAD_HOST``/``POOLGRAD_PORT`` with ``env`` added; yield once ``health`` answers 200;
    stop it on exit.

    Its output goes to ``log`` (quoted when it fails to start), or nowhere.
    """
    port = port if port is not None else free_port()
    with log.open("wb") if log is not None else open(os.devnull, "wb") as sink:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **env, "POOLGRAD_HOST": "127.0.0.1", "POOLGRAD_PORT": str(port)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process.pid, log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                output = log.read_text(errors="replace") if log is not None else ""
                raise RuntimeError(
                    f"{' '.join(command)} did not start (exit {process.poll()})\n{output}"
                )
            try:
                if httpx.get(f"{server.base_url}{health}", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
