"""Fixtures for the SDK tests: anyio on asyncio, a clean environment, patched-out sleeping."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own configuration: the caller's POOLGRAD_* never leaks in."""
    monkeypatch.delenv("POOLGRAD_BASE_URL", raising=False)
    monkeypatch.delenv("POOLGRAD_API_KEY", raising=False)


@pytest.fixture
def sleeps() -> list[float]:
    """Delays the client asked to sleep (sleeping itself is patched out)."""
    return []


@pytest.fixture
def max_jitter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any], None]]:
    """Make the full-jitter draw return its upper bound, so backoffs are exact."""

    def apply(client: Any) -> None:
        monkeypatch.setattr(client._random, "uniform", lambda low, high: high)

    return apply
