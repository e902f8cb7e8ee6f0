"""Every default the SDK uses, in one place (read by the clients, never copied)."""

from __future__ import annotations

from typing import Final

import httpx

#: Where the clients connect when neither ``base_url=`` nor ``POOLGRAD_BASE_URL`` is given.
DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000"
#: Environment variable read when ``base_url=`` is not passed.
BASE_URL_ENV: Final = "POOLGRAD_BASE_URL"
#: Environment variable read when ``api_key=`` is not passed.
API_KEY_ENV: Final = "POOLGRAD_API_KEY"

#: A forward or backward on a large tensor may take a while; connecting may not.
DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)
#: Deleting a session on leaving ``with``/``async with`` (or when a layer is collected): one
#: attempt bounded by this many seconds in all, so cleanup never holds up the caller for long.
CLEANUP_TIMEOUT: Final = 5.0
#: Retries after the first attempt (so at most ``1 + DEFAULT_MAX_RETRIES`` attempts).
DEFAULT_MAX_RETRIES: Final = 2

#: Backoff before retry ``n`` (0-based) is uniform in ``[0, min(MAX, INITIAL * 2**n)]``.
INITIAL_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
#: A server's ``Retry-After`` is honoured when in ``(0, MAX_RETRY_AFTER]`` seconds; a zero, past,
#: longer or unreadable one falls back to the normal backoff.
MAX_RETRY_AFTER: Final = 60.0
#: Statuses the server answers *before* applying anything, so any request may repeat.
RETRY_STATUSES: Final = frozenset({429, 503})

REQUEST_ID_HEADER: Final = "X-Request-ID"
