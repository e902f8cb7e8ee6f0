"""Session stores: the :class:`SessionStore` interface and its backends, picked by URL."""

from __future__ import annotations

from typing import TypedDict, Unpack
from urllib.parse import parse_qsl, urlencode, urlsplit

from service.stores.base import (
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
    "RedisOptions",
    "SessionRecord",
    "SessionStore",
    "StoredSession",
    "Usage",
    "redacted_url",
    "store_from_url",
]


class RedisOptions(TypedDict, total=False):
    """The keyword arguments of :class:`~service.stores.redis.RedisStore`, which owns their
    defaults (the key prefix and the two timeouts)."""

    prefix: str
    connect_timeout_seconds: float
    timeout_seconds: float


def store_from_url(url: str, limits: Limits, **redis_options: Unpack[RedisOptions]) -> SessionStore:
    """The backend ``url`` names (``POOLGRAD_STORE_URL``); ``ValueError`` naming it otherwise.

    ``memory://`` is this process only; ``redis://``, ``rediss://`` and ``unix://`` are a Redis
    server shared by every process using it (``redis_options`` apply to Redis only). No
    connection is opened here: the first request, or ``/readyz``, finds out whether it answers.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(limits)
    if scheme in REDIS_SCHEMES:
        # Imported here so the memory store's users never load the Redis client.
        from service.stores.redis import RedisStore

        return RedisStore(url, limits, **redis_options)
    raise ValueError(
        f"POOLGRAD_STORE_URL={redacted_url(url)!r} is not supported: use 'memory://' (embedded, "
        "this process only) or a Redis URL, 'redis://[:password@]host:port/db', "
        "'rediss://...' (TLS) or 'unix:///path/to/redis.sock?db=0'"
    )


def redacted_url(url: str) -> str:
    """``url`` as it may be shown in a message or log: a password in it, in the authority
    (``redis://:***@host:6379/0``) or the query (``unix:///redis.sock?password=***``),
    replaced by ``***``; a URL that does not parse is shown by its scheme alone."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unbalanced IPv6 bracket, a port that is not a number
        return f"{url.partition(':')[0]}:<unparsable>"
    if password is not None:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        shown = [(name, "***" if name == "password" else value) for name, value in query]
        parts = parts._replace(query=urlencode(shown, safe="*"))
    shown_url = parts.geturl()
    if not parts.netloc and url.startswith(f"{parts.scheme}://"):  # unix:///path keeps its //
        shown_url = f"{parts.scheme}://{shown_url.removeprefix(parts.scheme + ':')}"
    return shown_url
