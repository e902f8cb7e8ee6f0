"""Settings from the environment and the store URL."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from service import Settings
from service.settings import describe_errors
from service.stores import Limits, MemoryStore, redacted_url, store_from_url
from service.stores.redis import RedisStore

NPY, JSON = "application/x-npy", "application/json"


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.store_url == "memory://"
    assert settings.max_body_bytes == 64 * 1024 * 1024
    assert settings.api_keys == ()
    assert settings.log_level == "info"


def test_every_field_has_a_default_and_a_docstring() -> None:
    for name, field in Settings.model_fields.items():
        assert not field.is_required(), name
        assert field.description, f"{name} has no docstring"


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLGRAD_PORT", "9001")
    monkeypatch.setenv("POOLGRAD_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("POOLGRAD_SESSION_TTL_SECONDS", "2.5")
    monkeypatch.setenv("POOLGRAD_API_KEYS", " first, second ,,")
    monkeypatch.setenv("POOLGRAD_LOG_LEVEL", "WARNING")
    settings = Settings()
    assert settings.port == 9001
    assert settings.max_body_bytes == 1024
    assert settings.session_ttl_seconds == 2.5
    assert [key.get_secret_value() for key in settings.api_keys] == ["first", "second"]
    assert settings.log_level == "warning"
    assert "first" not in repr(settings)


@pytest.mark.parametrize(
    ("keys", "number", "position"),
    [("good,caf\N{LATIN SMALL LETTER E WITH ACUTE}-secret", 2, 3), ("tab\there", 1, 3),
     ("\N{GREEK SMALL LETTER ALPHA}", 1, 0)],
)  # fmt: skip
def test_api_keys_must_be_visible_ascii_and_the_error_hides_them(
    monkeypatch: pytest.MonkeyPatch, keys: str, number: int, position: int
) -> None:
    monkeypatch.setenv("POOLGRAD_API_KEYS", keys)
    with pytest.raises(
        ValidationError, match=f"API key {number} of .* at position {position}"
    ) as info:
        Settings()
    for key in keys.split(","):
        assert key not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("POOLGRAD_PORT", "70000"), ("POOLGRAD_MAX_BODY_BYTES", "0"), ("POOLGRAD_WORKERS", "0"),
     ("POOLGRAD_SESSION_TTL_SECONDS", "-1"), ("POOLGRAD_LOG_LEVEL", "loud")],
)  # fmt: skip
def test_bad_environment_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("POOLGRAD_").lower()):
        Settings()


def test_store_url_picks_the_backend() -> None:
    limits = Limits(max_sessions=1, max_state_bytes=1)
    assert isinstance(store_from_url("memory://", limits), MemoryStore)
    for url in ("redis://db:6379/0", "rediss://:pw@db:6380/1", "unix:///run/redis.sock?db=2"):
        assert isinstance(store_from_url(url, limits), RedisStore)  # connects on first use
    with pytest.raises(ValueError, match=r"POOLGRAD_STORE_URL='memcached://db:11211'"):
        store_from_url("memcached://db:11211", limits)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POOLGRAD_ENGINE_THREADS", "0"),
        ("POOLGRAD_ENGINE_THREADS", "many"),
        ("POOLGRAD_ENGINE_KERNELS", "fortran"),
    ],
)
def test_engine_settings_are_refused_at_start_up_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert f"{name}: " in describe_errors(info.value)
    assert repr(value) in describe_errors(info.value)


def test_engine_threads_default_to_four_or_the_cores() -> None:
    assert Settings().engine_threads == min(4, os.cpu_count() or 1)
    assert Settings().engine_kernels == "auto"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:pw@cache/1", "rediss://user:***@cache/1"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache/0", "redis://user@cache/0"),
        ("redis://cache/0?password=pw&db=1", "redis://cache/0?password=***&db=1"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://:pw@[::1:6379/0", "redis:<unparsable>"),
        ("memory://", "memory://"),
    ],
)
def test_store_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_an_unsupported_store_url_is_named_without_its_password() -> None:
    with pytest.raises(ValueError, match=r"'redis\+sentinel://:\*\*\*@cache/0'") as info:
        store_from_url(
            "redis+sentinel://:hunter2@cache/0", Limits(max_sessions=1, max_state_bytes=1)
        )
    assert "hunter2" not in str(info.value)


def test_settings_that_do_not_fit_are_described_by_their_message_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POOLGRAD_API_KEYS", "a-secret-key-of-24-chars")
    with pytest.raises(ValidationError) as info:
        Settings(max_body_bytes=2048, max_inflight_body_bytes=1024)
    described = describe_errors(info.value)
    assert described.strip() == (
        "max_inflight_body_bytes (1024) must be at least max_body_bytes (2048): raise it, or "
        "lower max_body_bytes"
    ).join(["Value error, ", ""])
    assert "a-secret-key" not in described
