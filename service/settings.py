"""Service settings: one pydantic-settings class read from ``POOLGRAD_*`` environment variables.

Every field has a default, so ``Settings()`` with an empty environment serves on
``127.0.0.1:8000`` with the embedded in-memory store. Tests build ``Settings(...)`` with the
short limits they need instead of touching the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine import compiled
from engine.options import KernelChoice, default_threads
from service.stores import redacted_url

__all__ = ["MIB", "Settings", "describe_errors"]

MIB = 1024 * 1024


class Settings(BaseSettings):
    """How one service process runs; environment variables are ``POOLGRAD_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="POOLGRAD_",
        case_sensitive=False,
        extra="ignore",
        use_attribute_docstrings=True,
        frozen=True,
        # str(error) never shows values (one may be an API key): describe_errors does, but
        # never an API key's.
        hide_input_in_errors=True,
    )

    host: str = "127.0.0.1"
    """Interface to bind. Loopback by default; containers set ``0.0.0.0``."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on."""

    workers: int = Field(default=1, ge=1)
    """uvicorn worker processes. More than one needs a shared store (Redis): with the in-memory
    store each process would hold a different set of sessions, so start-up refuses it."""

    store_url: str = "memory://"
    """Where sessions live: ``memory://`` (embedded, this process only), or a Redis server
    shared by every worker and replica: ``redis://[:password@]host:port/db``, ``rediss://``
    (TLS), ``unix:///path/to/redis.sock?db=0``."""

    store_prefix: str = Field(default="poolgrad:", min_length=1)
    """Prefix of every Redis key, so deployments can share one Redis server. Each session's
    keys carry its id as a hash tag; a prefix with a hash tag (``{poolgrad}:``) puts every key
    in one Redis Cluster slot."""

    store_connect_timeout_seconds: float = Field(default=1.0, gt=0)
    """Longest wait to open a Redis connection; past it the request is a 503
    ``store_unavailable`` and ``/readyz`` says 503."""

    store_timeout_seconds: float = Field(default=2.0, gt=0)
    """Longest wait for one Redis command's reply; past it the request is a 503
    ``store_unavailable`` (a dead pooled connection is replaced and retried once first)."""

    session_ttl_seconds: float = Field(default=600.0, gt=0)
    """Idle time after which a session and its cached state are dropped; every use renews it.
    A client may ask for another value per session, up to ``max_ttl_seconds``."""

    max_ttl_seconds: float = Field(default=86_400.0, gt=0)
    """Largest ``ttl_seconds`` a client may ask for when creating a session."""

    max_sessions: int = Field(default=10_000, ge=1)
    """Most sessions held at once; creating one more is a 429 ``capacity_exceeded``."""

    max_state_bytes: int = Field(default=1024 * MIB, ge=1)
    """Budget for the cached forward state of all sessions together, in bytes; a forward whose
    state would exceed it is a 429 ``capacity_exceeded`` and leaves the previous state intact."""

    max_body_bytes: int = Field(default=64 * MIB, ge=1)
    """Largest request body, in bytes; larger bodies are refused with 413 while being read,
    before they are held in memory, whether or not ``Content-Length`` is sent."""

    max_json_body_bytes: int = Field(default=16 * MIB, ge=1)
    """Largest JSON request body, in bytes (also bounded by ``max_body_bytes``). Parsing JSON
    builds a Python object per number, some 10 to 30 times the body's size in memory, so JSON
    gets a smaller limit than binary bodies; large tensors belong in ``.npy`` or safetensors."""

    max_inflight_body_bytes: int = Field(default=256 * MIB, ge=1)
    """Most request-body bytes held at once by the whole process, at least ``max_body_bytes``:
    bodies being received or waiting for a compute thread. A body is reserved from its declared
    ``Content-Length`` before a byte is read (chunked bodies as their bytes arrive) and released
    when its request ends; one that does not fit is a 429 ``capacity_exceeded`` with
    ``Retry-After``, and its connection closes. Bounds what bodies can cost whatever
    ``max_connections`` is."""

    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Time allowed to receive a whole request body; slower bodies get a 408, so a client that
    trickles bytes cannot hold a connection and a buffer forever."""

    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Most bytes of request line and headers in one request; past it the answer is 431 and
    the connection closes, before more is buffered."""

    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time a connection has to complete its request headers, from when it opens or its last
    response ends; past it the connection closes (408 if part of a request arrived). Idle and
    slowloris connections cannot pile up."""

    max_connections: int = Field(default=1000, ge=1)
    """Most open connections per worker, below the process's file limit. At the cap the
    connection that has waited longest for its headers is closed to make room; if every one is
    busy, the new connection gets 503."""

    shutdown_timeout_seconds: float = Field(default=30.0, gt=0)
    """On SIGTERM or SIGINT, time requests in flight get to finish before they are cancelled;
    new connections are refused at once."""

    compute_threads: int = Field(default=4, ge=1)
    """Requests decoded, pooled and encoded at once, each in a worker thread; others wait their
    turn. The work is CPU-bound, so more threads than cores add only memory (one call may hold
    hundreds of MiB at the engine's limits) and latency, not throughput."""

    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Comma-separated bearer keys of visible ASCII (``!`` to ``~``). Empty: no authentication.
    Set: every ``/v1`` request needs ``Authorization: Bearer <key>`` and sees only the sessions
    its key created."""

    max_error_detail_chars: int = Field(default=2000, ge=100)
    """Longest ``detail`` of an error answer, in characters; a longer one is cut and ends with
    ``...`` and the count left out. Each client value a detail quotes is already cut to 200
    characters (``poolgrad.protocol.QUOTE_CHARS``); this bounds the whole, whatever it quotes."""
    metrics_require_key: bool = False
    """Put ``/metrics`` behind the API keys: when set (and ``api_keys`` too), a scrape needs
    ``Authorization: Bearer <key>`` with any of the keys, else 401. Off: ``/metrics`` is open like
    ``/healthz``; its labels never hold a client's values, only route templates and methods."""

    retry_after_seconds: int = Field(default=1, ge=0)
    """``Retry-After`` sent with 429 (capacity) and 503 (store unavailable)."""

    reap_interval_seconds: float = Field(default=5.0, gt=0)
    """How often the background reaper reclaims expired sessions and their state bytes."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Level of the ``service`` loggers and uvicorn's; one line per request at ``info``."""

    engine_threads: int = Field(default_factory=default_threads, ge=1)
    """Threads one large engine call is spread over (default ``min(4, cores)``); ``1`` runs
    every call on its request's worker thread. Up to ``compute_threads`` calls run at once."""

    engine_kernels: KernelChoice = "auto"
    """The engine's kernels for max/min: ``numpy`` (pure NumPy), ``compiled`` (Numba, the
    ``fast`` extra; compiled at start-up), or ``auto`` (compiled when Numba is installed, per
    call for ``channels_last`` inputs with more than one channel; NumPy for the others, where
    it is faster: ``engine.compiled.kernel_set``).
    Results are bit-identical; the choice is reported by ``/readyz`` and logged at start-up."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Accept the comma-separated environment form as well as a sequence."""
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("api_keys")
    @classmethod
    def _visible_ascii_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """Keys of visible ASCII only: a header arrives as latin-1 and a key is compared as
        UTF-8, so any other character could never match. The error names the key's number and
        the position, never the key."""
        for number, key in enumerate(keys, start=1):
            secret = key.get_secret_value()
            bad = next((i for i, char in enumerate(secret) if not "!" <= char <= "~"), None)
            if bad is not None:
                raise ValueError(
                    f"API key {number} of {len(keys)} has a character that is not visible ASCII "
                    f"at position {bad}: keys may use only the characters ! to ~"
                )
        return keys

    @field_validator("engine_kernels")
    @classmethod
    def _kernels_installed(cls, value: KernelChoice) -> KernelChoice:
        """``compiled`` without Numba is refused at start-up, not at the first request."""
        if value == "compiled" and not compiled.available():
            raise ValueError("compiled kernels need Numba: install poolgrad[fast], or use auto")
        return value

    @model_validator(mode="after")
    def _largest_body_fits(self) -> Settings:
        """A budget under the body limit would refuse the largest allowed bodies forever."""
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be at least "
                f"max_body_bytes ({self.max_body_bytes}): raise it, or lower max_body_bytes"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


#: Fields whose values are secret: their errors never quote what was given.
_SECRET_FIELDS = frozenset({"api_keys"})


def describe_errors(exc: ValidationError) -> str:
    """One line per invalid setting, naming its variable and the value given, unless secret
    (a store URL is shown without its password). An error of no one field (two settings that
    do not fit together) is its message alone, which names them and their values: its input is
    every setting, secrets included."""
    lines = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:
            lines.append(f"  {error['msg']}")
            continue
        field = str(error["loc"][0])
        given = error.get("input")
        if field == "store_url" and isinstance(given, str):
            given = redacted_url(given)
        shown = "" if field in _SECRET_FIELDS else f" (got {given!r})"
        lines.append(f"  POOLGRAD_{field.upper()}: {error['msg']}{shown}")
    return "\n".join(lines)
