"""Session stores: the :class:`SessionStore` interface and its backends, picked by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from service.stores.base import Limits, SaveMode, SaveOutcome, SessionRecord, SessionStore, Usage
from service.stores.memory import MemoryStore

__all__ = [
    "Limits",
    "MemoryStore",
    "SaveMode",
    "SaveOutcome",
    "SessionRecord",
    "SessionStore",
    "Usage",
    "store_from_url",
]


def store_from_url(url: str, limits: Limits) -> SessionStore:
    """The backend ``url`` names (``POOLGRAD_STORE_URL``); ``ValueError`` naming it otherwise."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(limits)
    raise ValueError(
        f"POOLGRAD_STORE_URL={url!r} is not supported: this build has only the embedded "
        f"in-memory store, 'memory://'"
    )
