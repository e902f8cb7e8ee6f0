"""The server runtime: uvicorn with a bounded httptools parser, uvloop, connection limits and a
graceful stop.

:func:`serve` binds the listening socket itself, before the app or its lifespan exist, so a port
that is taken ends the command before anything says it started; the socket is then handed to
uvicorn, in this process (one worker) or in each spawned worker process.

The HTTP protocol is uvicorn's httptools protocol with three additions that uvicorn lacks
(:class:`BoundedHttpToolsProtocol`):

- a bound on the bytes of request line and headers (``max_header_bytes``): past it, 431 and the
  connection closes, so a client cannot make the server buffer an endless header;
- a header timeout (``header_timeout_seconds``): a connection that has not completed its request
  headers in time is closed, with 408 when part of a request arrived, silently when nothing did.
  uvicorn's keep-alive timeout only starts after a first response and stops at the first byte,
  so without it idle sockets and slowloris clients (one byte now and then) were held forever;
- a cap on open connections (``max_connections``): at the cap, the connection that has waited
  longest for its headers makes room for the new one, and when every connection is busy with a
  request, the new one gets 503 and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.util
import logging
import signal
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from service.app import create_app
from service.httpio import BODY_RECEIVED
from service.settings import Settings
from service.stores import SessionStore

__all__ = [
    "CORK_MAX_BYTES",
    "BoundedHttpToolsProtocol",
    "CorkedTransport",
    "ServerConfig",
    "bind",
    "configure_logging",
    "serve",
]

logger = logging.getLogger(__name__)


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the limits :class:`BoundedHttpToolsProtocol` reads.

    A plain module-level class holding plain values, so it pickles into spawned workers.
    """

    def __init__(
        self,
        app: Any,
        *,
        max_header_bytes: int,
        header_timeout_seconds: float,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout_seconds = header_timeout_seconds
        self.max_connections = max_connections


#: Writes larger than this are not held (:class:`CorkedTransport`): one system call more is
#: nothing next to copying them, and they leave as soon as they are written, as before.
CORK_MAX_BYTES = 64 * 1024


class CorkedTransport:
    """A transport whose writes made in one turn of the event loop leave in one system call.

    uvicorn writes a response's status line and headers, then its body, each with its own
    ``transport.write``: two ``send`` calls per small response, and two wake-ups of the client,
    which first reads only the head. Here the writes are held until the end of the current
    loop turn (one ``call_soon``) and then written together (``writelines``, a gathered write
    without joining the bytes). Nothing waits longer than that turn: an app that awaits between
    head and body sends its head alone, as before. ``close`` writes what is held first.
    Writes over :data:`CORK_MAX_BYTES` are not held. Everything else is the wrapped
    transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) > CORK_MAX_BYTES:
            # A large write gains nothing from company: what is held leaves first, then it.
            self.flush()
            self.transport.write(data)
            return
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now (the end of the loop turn calls it)."""
        held, self.held = self.held, []
        if not held or self.transport.is_closing():
            return
        if len(held) == 1:
            self.transport.write(held[0])
        else:
            self.transport.writelines(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = []
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header byte bound, a header timeout and a
    connection cap (see the module docstring); it needs a :class:`ServerConfig`.

    Bytes are counted from the start of a request (connection made, or previous request
    complete) until its headers are complete. A chunk that would cross the bound is fed only up
    to it, so at most ``max_header_bytes`` reach the parser; bytes of the next request that
    arrive in the same chunk as the end of a body are the exception, at most one read (256 KiB).
    """

    config: ServerConfig

    def __init__(self, config: ServerConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_header_bytes = config.max_header_bytes
        self.header_timeout_seconds = config.header_timeout_seconds
        self.max_connections = config.max_connections
        # Per request: True from its first possible byte until its headers are complete.
        self.awaiting_headers = True
        self.header_bytes = 0
        # When the connection last became idle (the event loop's clock): the header timeout
        # counts from there. One timer per connection checks it (_arm_header_timer).
        self.waiting_since = 0.0
        self.header_timer: asyncio.TimerHandle | None = None

    # Connection lifetime

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections and not self._make_room():
            self._refuse(503, "Too many open connections; try again shortly.")
            return
        self.waiting_since = self.loop.time()
        self._arm_header_timer(self.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its headers; False if none waits.

        Scans the open connections: only done at the cap, where the scan is the price of
        keeping every busy connection."""
        waiting = [
            other
            for other in self.connections
            if isinstance(other, BoundedHttpToolsProtocol) and other is not self and other.idle
        ]
        if not waiting:
            return False
        min(waiting, key=lambda other: other.waiting_since)._close_waiting()
        return True

    # Header bound

    def data_received(self, data: bytes) -> None:
        if not self.awaiting_headers:
            super().data_received(data)
            return
        room = self.max_header_bytes - self.header_bytes
        if len(data) <= room:
            self.header_bytes += len(data)
            super().data_received(data)
            return
        head, rest = data[:room], data[room:]
        self.header_bytes += len(head)
        super().data_received(head)
        if self.transport.is_closing():
            return
        if self.awaiting_headers:
            self._refuse(431, f"Request line and headers exceed {self.max_header_bytes} bytes.")
            return
        self.data_received(rest)

    def on_headers_complete(self) -> None:
        self.awaiting_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None and not self.cycle.response_complete:
            # The app may read the body without a deadline: it is all here (service.httpio).
            self.cycle.scope.setdefault("extensions", {})[BODY_RECEIVED] = {}
        # Whatever follows belongs to the next request: count it from zero. Its timer starts
        # once this response is complete, so a long computation is never cut short.
        self.awaiting_headers = True
        self.header_bytes = 0
        self._wait_for_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._wait_for_headers()

    def _wait_for_headers(self) -> None:
        """Start the next request's header timeout once its request is read and its response
        sent, whichever comes last (an early refusal can precede the end of its body): both
        call this, so the later call sets the time. No timer is set or cancelled per request
        (two heap operations and an allocation, 4% of a tiny request): the connection's one
        timer finds the time when it fires."""
        self.waiting_since = self.loop.time()

    # Header timeout

    def _arm_header_timer(self, delay: float) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(delay, self.header_timeout_handler)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    @property
    def idle(self) -> bool:
        """Open, waiting for request headers, and no response pending."""
        return (
            self.awaiting_headers
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        )

    def header_timeout_handler(self) -> None:
        """Close a connection whose request headers did not arrive in time: 408 when part of a
        request did arrive, a plain close when nothing did. Never touches a request in flight.

        The connection's one timer: it fires at most ``header_timeout_seconds`` after it was
        set, so never after the deadline of a wait that began since; a connection busy with a
        request, or idle for less than the timeout, sets it again (for the time left)."""
        self.header_timer = None
        if self.transport.is_closing():
            return
        if not self.idle:
            self._arm_header_timer(self.header_timeout_seconds)
            return
        left = self.waiting_since + self.header_timeout_seconds - self.loop.time()
        if left > 0:
            self._arm_header_timer(left)
            return
        self._close_waiting()

    def _close_waiting(self) -> None:
        """Close this idle connection: 408 when part of a request arrived, a plain close when
        nothing did."""
        self._cancel_header_timer()
        if self.header_bytes:
            self._refuse(
                408, f"Request headers not received within {self.header_timeout_seconds:g} s."
            )
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` as plain text, then close the connection."""
        self.logger.info("Refused a connection with %d: %s", status, message)
        body = message.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server, except that a signal that stopped it cleanly ends in exit status 0.

    uvicorn re-raises the captured SIGTERM/SIGINT once shut down, so the process dies of the
    signal; a process manager reads a clean, requested stop as status 0 instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        stops = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def configure_logging(settings: Settings) -> None:
    """The ``service`` and uvicorn loggers at ``settings.log_level``, one line per record."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _worker_app(settings: Settings, store: SessionStore | None) -> Any:
    """The app of one worker process, on ``store`` or, when None, on its own store connection
    (``settings.store_url``)."""
    configure_logging(settings)
    app = create_app(settings, store)
    # What exists now (modules, the app, compiled kernels: some 150,000 objects) lives as long
    # as the process: out of the collector's sight, a full collection no longer walks it, a
    # pause of about 60 ms every few thousand small requests (bench.service).
    gc.collect()
    gc.freeze()
    return app


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6), not yet listening.

    Raises ``OSError`` (port taken, address not local, name unknown) with the OS's reason.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted server bind while old connections sit in TIME_WAIT; never lets two
        # live servers share the port (that would be SO_REUSEPORT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def event_loop() -> str:
    """``uvloop`` where it is installed (not on Windows or PyPy), else ``asyncio``."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def server_config(settings: Settings, store: SessionStore | None = None) -> ServerConfig:
    """The uvicorn configuration the settings ask for.

    The app is a factory (a ``functools.partial``), so spawned worker processes build their own
    app and store from the same settings; it pickles when ``store`` is None.
    """
    return ServerConfig(
        functools.partial(_worker_app, settings, store),
        factory=True,
        max_header_bytes=settings.max_header_bytes,
        header_timeout_seconds=settings.header_timeout_seconds,
        max_connections=settings.max_connections,
        http=BoundedHttpToolsProtocol,
        loop=event_loop(),
        ws="none",
        lifespan="on",
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # the request middleware logs one richer line per request
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )


def serve(settings: Settings, sock: socket.socket, store: SessionStore | None = None) -> None:
    """Serve on ``sock`` (from :func:`bind`) until SIGTERM or SIGINT, then stop gracefully.

    ``store`` serves one worker; several workers need None (each builds its own store).
    A stop lets requests in flight finish (up to ``shutdown_timeout_seconds``) while the closed
    listening socket refuses new connections; returns normally after a clean stop.
    """
    if settings.workers > 1 and store is not None:
        raise ValueError(f"{settings.workers} worker processes cannot share one store object")
    configure_logging(settings)
    config = server_config(settings, store)
    host, port = sock.getsockname()[:2]
    logger.info(
        "Listening on http://%s:%d with %d worker%s (bounded httptools parser, %s event loop)",
        f"[{host}]" if ":" in host else host,
        port,
        settings.workers,
        "" if settings.workers == 1 else "s",
        config.loop,
    )
    if settings.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        _Server(config).run(sockets=[sock])
