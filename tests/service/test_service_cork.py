"""The corked transport: a response's head and body leave in one write, nothing is held past
the loop turn, and closing writes what is held first."""

from __future__ import annotations

import asyncio
from typing import Any

from service.server import CORK_MAX_BYTES, CorkedTransport


class RecordingTransport:
    """Records the calls a transport receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, lines: list[bytes]) -> None:
        self.calls.append(("writelines", list(lines)))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def corked() -> tuple[CorkedTransport, RecordingTransport]:
    recording = RecordingTransport()
    return CorkedTransport(recording, asyncio.get_running_loop()), recording  # type: ignore[arg-type]


async def next_turn() -> None:
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_together() -> None:
    async def main() -> list[tuple[str, Any]]:
        transport, recording = corked()
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        assert recording.calls == []  # held until the turn ends
        await next_turn()
        return recording.calls

    assert asyncio.run(main()) == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body"])]


def test_a_write_in_a_later_turn_is_written_on_its_own() -> None:
    async def main() -> list[tuple[str, Any]]:
        transport, recording = corked()
        transport.write(b"head")
        await next_turn()
        transport.write(b"more")
        await next_turn()
        return recording.calls

    assert asyncio.run(main()) == [("write", b"head"), ("write", b"more")]


def test_a_large_write_is_not_held_and_follows_what_is() -> None:
    large = b"x" * (CORK_MAX_BYTES + 1)

    async def main() -> list[tuple[str, Any]]:
        transport, recording = corked()
        transport.write(b"head")
        transport.write(large)
        calls = list(recording.calls)  # at once, not at the end of the turn
        await next_turn()
        assert recording.calls == calls
        return calls

    assert asyncio.run(main()) == [("write", b"head"), ("write", large)]


def test_close_writes_what_is_held_first() -> None:
    async def main() -> list[tuple[str, Any]]:
        transport, recording = corked()
        transport.write(b"refusal")
        transport.close()
        await next_turn()  # the scheduled flush finds nothing left
        return recording.calls

    assert asyncio.run(main()) == [("write", b"refusal"), ("close", None)]


def test_other_calls_reach_the_transport() -> None:
    async def main() -> str:
        transport, _ = corked()
        return str(transport.get_extra_info("peername"))

    assert asyncio.run(main()) == "info peername"
