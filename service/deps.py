"""FastAPI dependencies as typed aliases: the app's collaborators and the caller's identity.

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hop per dependency per request for what is an attribute lookup. FastAPI
solves every ``Depends`` of a request anew (cached ones too, recursively), some 8 us each on
the 2-core bench machine, so the tree stays flat: the owner reads the settings from the app
itself, and routes that have ``Compute`` read the settings from it (``compute.settings``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.compute import Compute
from service.errors import Unauthorized
from service.httpio import hold_bodies
from service.metrics import Metrics
from service.settings import Settings
from service.stores import SessionStore

__all__ = [
    "HOLDS_BODY",
    "ComputeDep",
    "MetricsDep",
    "OwnerDep",
    "SettingsDep",
    "StoreDep",
    "owner_of",
]

_bearer = HTTPBearer(
    auto_error=False,
    description="Required when the server sets POOLGRAD_API_KEYS: `Authorization: Bearer <key>`.",
)


def settings_of(request: Request) -> Settings:
    """The app's settings (what :data:`SettingsDep` gives), for a dependency of its own."""
    return cast(Settings, request.app.state.settings)


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_store(request: Request) -> SessionStore:
    return cast(SessionStore, request.app.state.store)


async def get_compute(request: Request) -> Compute:
    return cast(Compute, request.app.state.compute)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SessionStore, Depends(get_store)]
ComputeDep = Annotated[Compute, Depends(get_compute)]


def owner_of(key: str) -> str:
    """What a session records as its owner: a hash of the key, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


async def get_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's owner id: ``""`` without API keys; with keys, a valid bearer key or 401."""
    settings = settings_of(request)
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


OwnerDep = Annotated[str, Depends(get_owner)]


async def get_metrics(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Metrics:
    """The app's metrics, for a caller with a valid API key when ``metrics_require_key`` is set
    (else 401, as :func:`get_owner` refuses)."""
    if settings.metrics_require_key:
        await get_owner(request, credentials)
    return cast(Metrics, request.app.state.metrics)


MetricsDep = Annotated[Metrics, Depends(get_metrics)]

#: The dependencies of every route that reads a body: the bytes it holds of the process's body
#: budget are released when the request ends (:func:`service.httpio.hold_bodies`).
HOLDS_BODY = [Depends(hold_bodies)]
