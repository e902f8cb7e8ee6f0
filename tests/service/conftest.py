"""Fixtures for the service tests: apps built with the settings and store a test wants, and
httpx clients on them over the ASGI transport (no network, no lifespan unless asked)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from service_helpers import client_for

from service import Settings, create_app
from service.stores import SessionStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the caller's POOLGRAD_* environment."""
    for name in [name for name in os.environ if name.startswith("POOLGRAD_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def make_app() -> Callable[..., FastAPI]:
    """``make_app(store=None, **settings)``: an app with those settings (fields by name)."""

    def make(store: SessionStore | None = None, **settings: Any) -> FastAPI:
        return create_app(Settings(**settings), store)

    return make


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http
