"""The one code path behind every route: sessions, forward, backward, the stateless gradient.

It knows nothing of HTTP. Callers hand in how to decode the request tensor(s) and how to encode
the result (the HTTP routes pass :mod:`poolgrad.protocol` codecs for the negotiated media types;
other protocols can pass their own) and the step condition as data (:class:`IfMatch`, parsed at
the edge); decode, engine call and encode of one request run together in a worker thread, so
the event loop never waits on NumPy. Engine errors become service errors here; protocol errors
(a body that does not decode) pass through with their own problem code.

No lock is held while computing: a forward computes on its own X and then advances the session
in one atomic store step (state, step + 1, TTL), so one that fails at any point (bad tensor,
engine refusal, budget full) leaves the stored record exactly as it was, and a session deleted
or expired while its forward runs stays gone. A backward computes on one snapshot of the
session (the step and state of one complete forward), read in one store call.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from engine import PoolSpec, PoolState, backward, forward, gradient
from engine.errors import ShapeMismatchError, SpecError, StateError, TensorError
from engine.options import EngineOptions
from poolgrad.protocol import MEDIA_JSON, IfMatch, ProtocolError, SessionInfo, quote
from poolgrad.protocol.spec import FIELD_NAMES
from service.errors import (
    InternalError,
    InvalidSpec,
    InvalidTensor,
    NoForward,
    ServiceError,
    ShapeMismatch,
    StaleStep,
)
from service.metrics import Metrics
from service.settings import Settings
from service.stores import SessionRecord, SessionStore

__all__ = [
    "ENGINE_OPERATIONS",
    "NAMED_INPUTS",
    "Compute",
    "EngineCalls",
    "Stepped",
    "new_session_id",
    "parse_spec",
    "session_info",
    "spec_of",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Tensor names the stateless gradient accepts; ``dA`` is optional.
NAMED_INPUTS = ("X", "dA")

#: Request bodies under this size are decoded, pooled and encoded on the event loop instead of
#: in a worker thread. The hop to a thread and back costs 50-90 us on the 2-core machine
#: ``bench.service`` runs on, as much as the whole work of a (1, 8, 8, 1) gradient (about 75
#: us), while a binary body of 256 KiB takes about 0.15 ms: under that, the loop stalls other
#: connections for less than twice what the hop would have cost this one. Measured with
#: ``anyio.to_thread.run_sync`` against a direct call on safetensors gradients (1 x 8 x 8 x 1
#: to 16 x 32 x 32 x 32 float32).
INLINE_MAX_BYTES = 256 * 1024
#: The same bound for JSON bodies, which cost some 30 times more per byte to decode and
#: encode (5 us per KiB against 0.15): 32 KiB of JSON take about 0.2 ms.
INLINE_MAX_JSON_BYTES = 32 * 1024
#: Largest window (elements) that small-bodied work may still run on the event loop. A body
#: bounds the input but not the work: one call visits (output x window) elements, so a 64 KiB
#: X under 128 x 128 windows at stride 1 costs half a second of engine time, a stall for
#: every connection. Under this bound an inline call visits at most 16 x
#: ``INLINE_MAX_BYTES / 2`` (float16) elements, about 2 M: a few milliseconds.
INLINE_MAX_WINDOW = 16
#: The ``operation`` label values of ``poolgrad_engine_seconds``, one observation per engine
#: call: a session's forward or backward, or the stateless route's ``gradient`` (forward and
#: backward in one call when dA is sent; ``forward`` alone without it).
ENGINE_OPERATIONS = ("forward", "backward", "gradient")
#: Distinct specs whose validated :class:`PoolSpec` is kept (sessions share a handful).
SPEC_CACHE_SIZE = 256

#: Keys of a session-creation body: the spec's fields and the session's TTL.
_SESSION_FIELDS = frozenset({*FIELD_NAMES, "ttl_seconds"})


def new_session_id() -> str:
    """An unguessable session id: 192 random bits, URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)


def session_info(record: SessionRecord) -> SessionInfo:
    """The API's view of ``record`` just after its TTL was renewed; shapes and dtype are read
    from its cached state, the one place they are kept."""
    expires = datetime.now(UTC) + timedelta(seconds=record.ttl_seconds)
    state = None if record.state is None else _state_of(record.state)
    return SessionInfo(
        id=record.id,
        spec=record.spec.to_dict(),
        ttl_seconds=record.ttl_seconds,
        step=record.step,
        input_shape=None if state is None else state.input_shape,
        output_shape=None if state is None else state.output_shape,
        dtype=None if state is None else state.dtype.name,
        state_bytes=record.state_bytes,
        expires_at=expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )


@dataclass(frozen=True)
class EngineCalls:
    """The engine entry points compute calls. ``Compute.engine`` holds one: the supported
    place to swap them (a test that pauses or counts engine calls sets it on the app's
    compute), so no one patches module names."""

    # Called as ``forward(X, spec, options=...)``, ``backward(state, dA, options=...)`` and
    # ``gradient(X, dA, spec, options=...)`` (both at once: the stateless route with dA).
    forward: Callable[..., tuple[np.ndarray, PoolState]] = forward
    backward: Callable[..., np.ndarray] = backward
    gradient: Callable[..., tuple[np.ndarray, np.ndarray]] = gradient


@dataclass(frozen=True)
class Stepped(Generic[T]):
    """An encoded result and the session step it belongs to."""

    payload: T
    step: int


class Compute:
    """Sessions and gradients over one :class:`SessionStore`; shared by every protocol."""

    def __init__(
        self,
        store: SessionStore,
        settings: Settings,
        metrics: Metrics,
        engine: EngineCalls | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.engine = engine if engine is not None else EngineCalls()
        #: Bodies under this many bytes are computed on the event loop (see
        #: :data:`INLINE_MAX_BYTES`); 0 sends every computation to a worker thread (tests
        #: that pause the engine set it so).
        self.inline_max_bytes = INLINE_MAX_BYTES
        self._limiter = anyio.CapacityLimiter(settings.compute_threads)
        self.engine_options = EngineOptions(
            threads=settings.engine_threads, kernels=settings.engine_kernels
        )
        #: Work small enough to run on the loop also stays on one thread: splitting a
        #: (1, 8, 8, 1) call over two threads cost it 30-50% more (bench.service, 2 cores).
        self.inline_options = dataclasses.replace(self.engine_options, threads=1)
        # Bound once: ``labels()`` takes a lock and looks the child up on every call.
        self._engine_seconds = {
            operation: metrics.engine_seconds.labels(operation) for operation in ENGINE_OPERATIONS
        }

    def runs_inline(self, body_bytes: int, media_type: str) -> bool:
        """Whether a request of ``body_bytes`` in ``media_type`` is small enough to compute on
        the event loop; callers pass the answer to the methods below as ``inline=``, which
        run on the loop only when the spec's windows are small too (:data:`INLINE_MAX_WINDOW`)."""
        limit = self.inline_max_bytes
        if media_type == MEDIA_JSON:
            limit = min(limit, INLINE_MAX_JSON_BYTES)
        return body_bytes < limit

    # ----------------------------------------------------------------- sessions

    async def session_fields(
        self, decode: Callable[[], Any], *, inline: bool = False
    ) -> dict[str, Any]:
        """The session-creation fields ``decode`` parses (a request body, up to the JSON body
        limit), parsed and checked as tensor bodies are: in a worker thread, or on the event
        loop when ``inline`` (:meth:`runs_inline`, a small body). A JSON object of spec fields
        and ``ttl_seconds``, each valid; :class:`InvalidSpec` naming the first bad key or value,
        quoted within bounds."""

        def work() -> dict[str, Any]:
            fields = decode()
            if not isinstance(fields, dict):
                raise InvalidSpec(
                    "the session body must be a JSON object of spec fields, "
                    f"got {type(fields).__name__}"
                )
            unknown = sorted(set(fields) - _SESSION_FIELDS)
            if unknown:
                raise InvalidSpec(
                    f"unknown session field(s) {quote(unknown)} ({len(unknown)} in all); "
                    f"known: {', '.join(sorted(_SESSION_FIELDS))}"
                )
            spec_fields = dict(fields)
            self._ttl(spec_fields.pop("ttl_seconds", None))
            parse_spec(spec_fields)
            return fields

        return await self._run(work, inline)

    async def create_session(
        self, fields: Mapping[str, Any], owner: str, *, session_id: str | None = None
    ) -> SessionInfo:
        """A new session for ``fields`` (spec fields plus optional ``ttl_seconds``).

        ``session_id`` names it instead of a new random id, replacing any session of this
        owner under that id (a protocol whose clients name their own sequences derives it,
        see :mod:`service.v2`); the spec is checked before anything is replaced.
        """
        spec_fields = dict(fields)
        ttl_seconds = self._ttl(spec_fields.pop("ttl_seconds", None))
        spec = parse_spec(spec_fields)
        record = await self.store.create(
            session_id or new_session_id(), owner, spec, ttl_seconds, replace=session_id is not None
        )
        return session_info(record)

    async def get_session(self, session_id: str, owner: str) -> SessionInfo:
        return session_info(await self.store.get(session_id, owner))

    async def delete_session(self, session_id: str, owner: str) -> None:
        # Never waits for a forward in flight: that forward's advance finds no live session,
        # so it cannot write this one back (it answers 404).
        await self.store.delete(session_id, owner)

    # ------------------------------------------------------------------ compute

    async def forward(
        self,
        session_id: str,
        owner: str,
        decode: Callable[[], np.ndarray],
        encode: Callable[[np.ndarray], T],
        *,
        inline: bool = False,
    ) -> Stepped[T]:
        """Run forward on the decoded X, cache the new state (step + 1), return encoded A.

        ``inline``: compute on the event loop, not in a worker thread (:meth:`runs_inline`).
        """
        # Only the spec is needed (and the TTL renewed): the old state is not read.
        record = await self.store.get(session_id, owner, state=False)

        inline = self._inline(inline, record.spec)
        options = self._options(inline)

        def work() -> tuple[T, bytes, int]:
            X = decode()
            A, state = self._timed("forward", options, self.engine.forward, X, record.spec)
            return encode(A), state.to_bytes(), state.nbytes

        payload, blob, state_bytes = await self._run(work, inline)
        step = await self.store.advance(session_id, owner, blob, state_bytes)
        return Stepped(payload, step)

    async def backward(
        self,
        session_id: str,
        owner: str,
        decode: Callable[[], np.ndarray],
        encode: Callable[[np.ndarray], T],
        condition: IfMatch | None = None,
        *,
        inline: bool = False,
    ) -> Stepped[T]:
        """dX for the decoded dA against the cached state, which stays (backward repeats)."""
        # One snapshot: the step and the state of one forward, read together; no lock held.
        record = await self.store.get(session_id, owner)
        cached = record.state
        if cached is None:
            raise NoForward(
                f"session {quote(session_id)} has no cached forward state "
                f"(step {record.step}): run forward first"
            )
        if condition is not None and not condition.matches(record.step):
            raise StaleStep(
                f"If-Match {quote(condition.raw)} does not name step {record.step}, the step "
                f"session {quote(session_id)} caches now"
            )

        inline = self._inline(inline, record.spec)
        options = self._options(inline)

        def work() -> T:
            dA = decode()
            state = PoolState.from_bytes(cached)
            return encode(self._timed("backward", options, self.engine.backward, state, dA))

        return Stepped(await self._run(work, inline), record.step)

    async def gradient(
        self,
        spec_fields: Mapping[str, Any] | PoolSpec,
        decode: Callable[[], Mapping[str, np.ndarray]],
        encode: Callable[[dict[str, np.ndarray]], T],
        *,
        inline: bool = False,
    ) -> T:
        """Stateless forward, or forward and backward in one engine call
        (:func:`engine.gradient`) when ``dA`` is given: named ``A`` (and ``dX``).

        ``spec_fields``: the spec's fields, or a spec a caller already validated (and cached).
        """
        spec = spec_fields if isinstance(spec_fields, PoolSpec) else parse_spec(spec_fields)
        inline = self._inline(inline, spec)
        options = self._options(inline)

        def work() -> T:
            tensors = decode()
            unknown = tensors.keys() - NAMED_INPUTS
            if unknown:
                raise InvalidTensor(
                    f"unknown tensor name(s) {quote(sorted(unknown))}: send 'X' and optionally 'dA'"
                )
            if "X" not in tensors:
                raise InvalidTensor(f"no tensor named 'X' among {sorted(tensors)}")
            X = tensors["X"]
            if "dA" not in tensors:
                A, _ = self._timed("forward", options, self.engine.forward, X, spec)
                return encode({"A": A})
            # One engine call for both: no state built, per-call costs paid once.
            A, dX = self._timed("gradient", options, self.engine.gradient, X, tensors["dA"], spec)
            return encode({"A": A, "dX": dX})

        return await self._run(work, inline)

    # ------------------------------------------------------------------ helpers

    def _ttl(self, value: object) -> float:
        if value is None:
            return self.settings.session_ttl_seconds
        limit = self.settings.max_ttl_seconds
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 < value <= limit
        ):
            raise InvalidSpec(
                f"ttl_seconds must be a number > 0 and <= {limit:g}, got {quote(value)}"
            )
        return value

    @staticmethod
    def _inline(small_body: bool, spec: PoolSpec) -> bool:
        """Whether work whose body :meth:`runs_inline` found small also has windows small
        enough (:data:`INLINE_MAX_WINDOW`) to run on the event loop."""
        return small_body and math.prod(spec.pool_size) <= INLINE_MAX_WINDOW

    def _options(self, inline: bool) -> EngineOptions:
        """The engine options of a call: one thread for inline (small) work."""
        return self.inline_options if inline else self.engine_options

    def _timed(
        self, operation: str, options: EngineOptions, function: Callable[..., T], *args: Any
    ) -> T:
        """One engine call with ``options``, its duration observed."""
        started = time.perf_counter()
        try:
            return function(*args, options=options)
        finally:
            self._engine_seconds[operation].observe(time.perf_counter() - started)

    async def _run(self, work: Callable[[], T], inline: bool = False) -> T:
        """Run ``work`` in a worker thread, at most ``compute_threads`` at once, or on the
        event loop when ``inline`` (small work: :data:`INLINE_MAX_BYTES`), translating
        engine errors at this boundary."""
        try:
            if inline:
                return work()
            return await anyio.to_thread.run_sync(work, limiter=self._limiter)
        except (ServiceError, ProtocolError):
            raise
        except StateError as exc:
            raise _unreadable(exc) from exc
        except SpecError as exc:
            raise InvalidSpec(str(exc)) from exc
        except TensorError as exc:
            raise InvalidTensor(str(exc)) from exc
        except ShapeMismatchError as exc:
            raise ShapeMismatch(str(exc)) from exc


def parse_spec(fields: Mapping[str, Any]) -> PoolSpec:
    """A validated spec from JSON-like fields; :class:`InvalidSpec` naming the bad one."""
    try:
        return spec_of(fields)
    except SpecError as exc:
        raise InvalidSpec(str(exc)) from exc


def spec_of(fields: Mapping[str, Any]) -> PoolSpec:
    """``PoolSpec.from_dict(fields)``, validated once per distinct spec rather than once per
    request (:data:`SPEC_CACHE_SIZE` kept; a ``PoolSpec`` is immutable, so sharing it is
    safe). Raises what ``from_dict`` raises; refusals are not cached."""
    try:
        key = tuple(sorted((str(name), _frozen(value)) for name, value in fields.items()))
    except TypeError:  # a value no spec field takes (a dict, a set): let from_dict name it
        return PoolSpec.from_dict(fields)
    return _cached_spec(key)


@functools.lru_cache(maxsize=SPEC_CACHE_SIZE)
def _cached_spec(key: tuple[tuple[str, Any], ...]) -> PoolSpec:
    return PoolSpec.from_dict({name: _thawed(value) for name, value in key})


def _frozen(value: Any) -> Any:
    """JSON-like spec values as a hashable key; lists and tuples alike (as from_dict reads
    them), types kept apart (``True`` and ``1``, ``2`` and ``2.0`` are different keys)."""
    if isinstance(value, list | tuple):
        return ("list", tuple(_frozen(item) for item in value))
    if value is None or isinstance(value, str | int | float):
        return (type(value).__name__, value)
    raise TypeError(f"{type(value).__name__} is not a spec value")


def _thawed(value: Any) -> Any:
    kind, item = value
    if kind == "list":
        return [_thawed(element) for element in item]
    return item


def _state_of(blob: bytes | memoryview) -> PoolState:
    """A cached state read back; one that does not parse is the store's fault (500)."""
    try:
        return PoolState.from_bytes(blob)
    except StateError as exc:
        raise _unreadable(exc) from exc


def _unreadable(exc: StateError) -> InternalError:
    logger.error("cached state could not be read: %s", exc)
    return InternalError("the cached forward state could not be read")
