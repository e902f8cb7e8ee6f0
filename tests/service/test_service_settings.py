"""Settings from the environment, the store URL, and the HTTP helpers' parsing tables."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from service import Settings
from service.errors import InvalidSpec, NotAcceptable
from service.httpio import negotiate, parse_if_match, spec_from_query
from service.settings import describe_errors
from service.stores import Limits, MemoryStore, store_from_url

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
    with pytest.raises(ValueError, match=r"POOLGRAD_STORE_URL='redis://db:6379/0'"):
        store_from_url("redis://db:6379/0", limits)


@pytest.mark.parametrize(
    ("accept", "default", "chosen"),
    [
        (None, JSON, JSON),
        ("", NPY, NPY),
        ("*/*", JSON, JSON),
        ("application/x-npy", JSON, NPY),
        ("APPLICATION/JSON", NPY, JSON),
        ("application/*;q=0.5, application/x-npy;q=0.4", JSON, JSON),
        ("application/*;q=0.5, application/x-npy;q=0.6", JSON, NPY),
        ("application/json;q=0, */*", JSON, NPY),
        ("text/plain, */*;q=0.01", NPY, NPY),
        ("application/json;q=bogus, application/x-npy", JSON, NPY),
        ("application/json;q=nan, application/x-npy;q=0.1", JSON, NPY),
        ("application/json;q=inf, application/x-npy;q=0.1", JSON, NPY),
        ("application/json;q=2, application/x-npy;q=0.1", JSON, NPY),
        ("application/json;q=-1, application/x-npy;q=0.1", JSON, NPY),
    ],
)
def test_negotiate(accept: str | None, default: str, chosen: str) -> None:
    assert negotiate(accept, (NPY, JSON), default) == chosen


@pytest.mark.parametrize(
    "accept",
    ["text/html", "application/json;q=0, application/x-npy;q=0", "*/*;q=nan", "*/*;q=NaN"],
)
def test_negotiate_refuses_naming_the_header(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="Accept"):
        negotiate(accept, (NPY, JSON), NPY)


@pytest.mark.parametrize(
    ("header", "steps"),
    [
        ('"3"', {3}),
        ('W/"3"', {3}),
        ('"1", W/"2" , "x"', {1, 2}),
        ("3", set()),
        ('"-1"', set()),
        ('"\N{SUPERSCRIPT TWO}"', set()),
        ('"\N{ARABIC-INDIC DIGIT THREE}"', set()),
        ('"' + "9" * 5000 + '"', set()),
        ('"' + "9" * 19 + '"', set()),
        ('"' + "9" * 18 + '"', {10**18 - 1}),
        ('"+3"', set()),
    ],
)
def test_if_match_steps(header: str, steps: set[int]) -> None:
    condition = parse_if_match(header)
    assert condition is not None
    assert condition.steps == steps


@pytest.mark.parametrize("header", [None, "*", " * "])
def test_if_match_any(header: str | None) -> None:
    assert parse_if_match(header) is None


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ([("pool_size", "2")], {"pool_size": 2}),
        ([("pool_size", "2,")], {"pool_size": [2]}),
        ([("pool_size", "2,3,4"), ("strides", "1")], {"pool_size": [2, 3, 4], "strides": 1}),
        ([("padding", "1:0,0:1")], {"padding": [[1, 0], [0, 1]]}),
        ([("padding", "same"), ("count_include_pad", "false")],
         {"padding": "same", "count_include_pad": False}),
        ([("mode", "avg"), ("layout", "channels_first"), ("ties", "first"), ("nan", "reject")],
         {"mode": "avg", "layout": "channels_first", "ties": "first", "nan": "reject"}),
    ],
)  # fmt: skip
def test_spec_from_query(query: list[tuple[str, str]], fields: dict[str, object]) -> None:
    assert spec_from_query(query) == fields


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ([("size", "2")], "'size'"),
        ([("pool_size", "")], "''"),
        ([("pool_size", ",")], "','"),
        ([("padding", "1:1:1")], "'1:1:1'"),
        ([("count_include_pad", "1")], "'1'"),
        ([("nan", "a"), ("nan", "b")], "more than once"),
    ],
)
def test_spec_from_query_refuses(query: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        spec_from_query(query)


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
