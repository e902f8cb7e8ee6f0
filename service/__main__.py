"""``python -m service`` and ``poolgrad-server``: run the service under uvicorn.

Settings come from ``POOLGRAD_*`` environment variables (:class:`service.settings.Settings`).
"""

from __future__ import annotations

import logging

import uvicorn
from pydantic import ValidationError

from service.app import create_app, store_of
from service.settings import Settings, describe_errors
from service.stores import MemoryStore

__all__ = ["MAX_HEADER_BYTES", "main"]

#: Most bytes of request line and headers buffered for one request; more is a 400 and the
#: connection closes. uvicorn's httptools parser has no such bound (a 300 MiB header was read
#: whole), so the server runs h11, whose ``max_incomplete_event_size`` is this bound.
MAX_HEADER_BYTES = 64 * 1024


def main() -> None:
    """Start the server; exits with a message naming the setting when one is unusable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SystemExit(
            f"poolgrad-server: invalid POOLGRAD_* settings:\n{describe_errors(exc)}"
        ) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        store = store_of(settings)
    except ValueError as exc:
        raise SystemExit(f"poolgrad-server: {exc}") from None
    if settings.workers > 1 and isinstance(store, MemoryStore):
        raise SystemExit(
            f"poolgrad-server: POOLGRAD_WORKERS={settings.workers} is refused with the in-memory "
            f"store (POOLGRAD_STORE_URL={settings.store_url!r}): each worker process would hold "
            "its own sessions, and a request reaching another worker would not find its "
            "session. Several workers need the Redis store, which shares sessions between "
            "processes (POOLGRAD_STORE_URL=redis://host:6379/0), or POOLGRAD_WORKERS=1."
        )
    # Several workers each build their own app (and Redis connection pool) from the
    # environment: uvicorn needs the factory's import path for that.
    several = settings.workers > 1
    uvicorn.run(
        "service.app:create_app" if several else create_app(settings, store),
        factory=several,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # the request middleware logs one richer line per request
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


if __name__ == "__main__":
    main()
