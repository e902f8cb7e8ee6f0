"""A real ``redis-server`` on a free loopback port, for the tests that need one.

``make test`` installs Debian's ``redis-server`` when it is missing (the ``test-deps`` target);
without it these tests fail, never skip, so CI cannot pass without exercising Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

STARTUP_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str:
    """The path of a Debian-packaged tool the tests run, or a failure that says how to get it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: these tests run a real {name}. `make test` installs it "
            f"(`make test-deps`, Debian's package via apt-get), or install it yourself"
        )
    return path


class RedisServer:
    """One ``redis-server`` process: no persistence, loopback only, ``noeviction`` (the
    setting the Redis store needs). :meth:`stop` and :meth:`start` keep the port, so a stopped
    and restarted server is the same URL to its clients, and it comes back empty; with
    ``persistent`` it keeps an append-only file in ``directory``, synced on every write, and
    comes back with every write it acknowledged, even after :meth:`kill`."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.persistent = persistent
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.socket = directory / "redis.sock"
        self.unix_url = f"unix://{self.socket}?db=0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        append_only = ("yes", "--appendfsync", "always") if self.persistent else ("no",)
        self.process = subprocess.Popen(
            [
                binary("redis-server"),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--dir", str(self.directory)),
                *("--appendonly", *append_only),
                *("--maxmemory-policy", "noeviction"),
                *("--unixsocket", str(self.socket), "--unixsocketperm", "700"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}:\n{self.log()}"
                )
            if self.answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer in {STARTUP_SECONDS}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; what it acknowledged is only what it synced."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def answers(self) -> bool:
        """Whether it replies to PING (a raw RESP exchange: no client library involved)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""
