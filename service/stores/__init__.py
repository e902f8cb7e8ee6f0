"""Session stores: the :class:`SessionStore` interface and its backends, picked by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from service.stores.base import (
    DEFAULT_PREFIX,
    Limits,
    SessionRecord,
    SessionStore,
    StoredSession,
    Usage,
)
from service.stores.memory import MemoryStore

#: URL schemes of the Redis store.
REDIS_SCHEMES = ("redis", "rediss", "unix")

__all__ = [
    "REDIS_SCHEMES",
    "Limits",
    "MemoryStore",
    "SessionRecord",
    "SessionStore",
    "StoredSession",
    "Usage",
    "store_from_url",
]


def store_from_url(
    url: str,
    limits: Limits,
    *,
    prefix: str = DEFAULT_PREFIX,
    connect_timeout_seconds: float = 1.0,
    timeout_seconds: float = 2.0,
) -> SessionStore:
    """The backend ``url`` names (``POOLGRAD_STORE_URL``); ``ValueError`` naming it otherwise.

    ``memory://`` is this process only; ``redis://``, ``rediss://`` and ``unix://`` are a Redis
    server shared by every process using it (the other arguments apply to Redis only). No
    connection is opened here: the first request, or ``/readyz``, finds out whether it answers.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(limits)
    if scheme in REDIS_SCHEMES:
        # Imported here so the memory store's users never load the Redis client.
        from service.stores.redis import RedisStore

        return RedisStore(
            url,
            limits,
            prefix=prefix,
            connect_timeout_seconds=connect_timeout_seconds,
            timeout_seconds=timeout_seconds,
        )
    raise ValueError(
        f"POOLGRAD_STORE_URL={url!r} is not supported: use 'memory://' (embedded, this process "
        "only) or a Redis URL, 'redis://[:password@]host:port/db', 'rediss://...' (TLS) or "
        "'unix:///path/to/redis.sock?db=0'"
    )
