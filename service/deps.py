"""FastAPI dependencies as typed aliases: the app's collaborators and the caller's identity.

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hop per dependency per request for what is an attribute lookup. FastAPI
solves every ``Depends`` of a request anew (cached ones too, recursively), some 8 us each on
the 2-core bench machine, so the tree stays flat: the owner is one dependency that is also the
bearer scheme (:class:`OwnerBearer`) and reads the settings from the app itself, routes that
have ``Compute`` read the settings from it (``compute.settings``), and the hot routes read
``Compute`` with :func:`compute_of` rather than through a dependency.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.compute import Compute
from service.errors import Unauthorized
from service.metrics import Metrics
from service.settings import Settings
from service.stores import SessionStore

__all__ = [
    "ComputeDep",
    "MetricsDep",
    "OwnerBearer",
    "OwnerDep",
    "SettingsDep",
    "StoreDep",
    "compute_of",
    "get_owner",
    "owner_of",
]

_BEARER_HELP = "Required when the server sets POOLGRAD_API_KEYS: `Authorization: Bearer <key>`."
_bearer = HTTPBearer(auto_error=False, description=_BEARER_HELP)


def settings_of(request: Request) -> Settings:
    """The app's settings (what :data:`SettingsDep` gives), for a dependency of its own."""
    return cast(Settings, request.app.state.settings)


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_store(request: Request) -> SessionStore:
    return cast(SessionStore, request.app.state.store)


def compute_of(request: Request) -> Compute:
    """The app's :class:`Compute`, read in the route itself on the hot routes (a ``Depends``
    for an attribute read costs more than the read)."""
    return cast(Compute, request.app.state.compute)


async def get_compute(request: Request) -> Compute:
    return compute_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SessionStore, Depends(get_store)]
ComputeDep = Annotated[Compute, Depends(get_compute)]


def owner_of(key: str) -> str:
    """What a session records as its owner: a hash of the key, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


def _checked_owner(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The owner id of ``credentials``: ``""`` without API keys; with keys, a valid bearer key
    or 401 with the ``WWW-Authenticate`` challenge."""
    if not settings.api_keys:
        return ""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise Unauthorized(
            "this server requires an API key: send 'Authorization: Bearer <key>'",
            headers=challenge,
        )
    presented = credentials.credentials.encode()
    valid = False
    for key in settings.api_keys:
        # No early exit: the time taken does not tell which key, or how much of it, matched.
        valid |= hmac.compare_digest(presented, key.get_secret_value().encode())
    if not valid:
        raise Unauthorized(
            f"the bearer key presented ({len(presented)} bytes) is not a valid API key",
            headers=challenge,
        )
    return owner_of(credentials.credentials)


class OwnerBearer(HTTPBearer):
    """The caller's owner id, as one dependency: ``""`` without API keys; with keys, a valid
    bearer key or 401. An ``HTTPBearer`` itself, so OpenAPI documents the same bearer scheme
    (named ``HTTPBearer``), while a request solves one dependency instead of a bearer and an
    owner over it (each ``Depends`` costs a small request some 8 us)."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        settings = settings_of(request)
        if not settings.api_keys:
            return ""
        return _checked_owner(settings, await super().__call__(request))


get_owner = OwnerBearer(auto_error=False, scheme_name="HTTPBearer", description=_BEARER_HELP)

OwnerDep = Annotated[str, Depends(get_owner)]


async def get_metrics(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Metrics:
    """The app's metrics, for a caller with a valid API key when ``metrics_require_key`` is set
    (else 401, as :data:`get_owner` refuses)."""
    if settings.metrics_require_key:
        _checked_owner(settings, credentials)
    return cast(Metrics, request.app.state.metrics)


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
