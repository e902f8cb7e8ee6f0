"""The sync and async clients and their sessions: they only send and sleep.

Everything else (configuration, requests, the retry policy, parsing) lives in
:class:`poolgrad._base.BaseClient`, so the two twins cannot drift apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any, Unpack

import anyio
import httpx
import numpy as np
import numpy.typing as npt

from poolgrad._base import BaseClient, RequestOptions, session_info
from poolgrad._constants import CLEANUP_TIMEOUT
from poolgrad._exceptions import (
    APIResponseError,
    APITimeoutError,
    PoolgradError,
    SessionNotFoundError,
)
from poolgrad._types import PoolSpecKwargs
from poolgrad.protocol import SessionInfo, parse_etag

__all__ = ["AsyncClient", "AsyncSession", "AsyncSessionRequest", "Client", "Session"]


class _SessionState:
    """What a session handle knows: its id, normalized spec and the step of its last forward."""

    def __init__(self, created: Any) -> None:
        info = session_info(created)
        self.id: str = info.id
        self.spec: dict[str, Any] = info.spec
        self.ttl_seconds: int | None = created.get("ttl_seconds")
        self.expires_at: str | None = info.expires_at
        #: The step of the last forward through this handle (0 before any).
        self.step: int = info.step
        self._forward_step: int | None = None
        self.deleted = False

    def _record_forward(self, response: httpx.Response) -> None:
        step = parse_etag(response.headers.get("etag"))
        if step is None:
            raise APIResponseError(
                f"forward on session {self.id} answered without an ETag step "
                f"(got {response.headers.get('etag')!r}); the backward could not be pinned to it"
            )
        self.step = self._forward_step = step

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, step={self.step}, spec={self.spec!r})"


def _note_cleanup_failure(exc: BaseException | None, session_id: str, error: Exception) -> None:
    if exc is None:
        raise error
    # The block's own exception matters more; keep the cleanup failure visible on it.
    exc.add_note(f"deleting poolgrad session {session_id} on exit also failed: {error}")


def _cleanup_timed_out(session_id: str) -> APITimeoutError:
    return APITimeoutError(
        f"deleting poolgrad session {session_id} on exit took over {CLEANUP_TIMEOUT} s; "
        f"it expires on the server after its idle TTL"
    )


# ----------------------------------------------------------------------------- sync


class Session(_SessionState):
    """A server-side pooling layer: ``forward`` caches its state, ``backward`` uses it.

    Made by :meth:`Client.session` or :meth:`Client.create_session` (the same) or
    :meth:`Client.get_session`. ``with session:`` deletes it on exit, also when the block
    raises; without ``with``, :meth:`delete` ends it (else it expires after its idle TTL).
    """

    def __init__(self, client: Client, created: Any) -> None:
        super().__init__(created)
        self._client = client

    def forward(self, X: npt.ArrayLike) -> np.ndarray:
        """Pool ``X``; the server caches what backward needs and the step advances.

        Returns a new writable array of X's dtype (``A``).
        """
        response = self._client._request(self._client._forward_options(self.id, X))
        self._record_forward(response)
        return self._client._tensor(response)

    def backward(self, dA: npt.ArrayLike) -> np.ndarray:
        """Gradient of the last forward *through this handle* (``If-Match`` pins its step).

        Raises :class:`~poolgrad.StaleStepError` if another forward has replaced it, and
        :class:`~poolgrad.NoForwardError` if there was none. Repeatable: the state is kept.
        """
        options = self._client._backward_options(self.id, dA, self._forward_step)
        return self._client._tensor(self._client._request(options))

    def info(self) -> SessionInfo:
        """The server's description of the session (renews its idle TTL)."""
        response = self._client._request(self._client._session_options("GET", self.id))
        return session_info(self._client._json(response))

    def delete(self) -> None:
        """Delete the session on the server (a session already gone is not an error)."""
        self._delete(cleanup=False)

    def _delete(self, *, cleanup: bool) -> None:
        options = self._client._session_options("DELETE", self.id, cleanup=cleanup)
        with contextlib.suppress(SessionNotFoundError):
            self._client._request(options)
        self.deleted = True

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            # One short attempt: the caller (or its exception) is waiting on us.
            self._delete(cleanup=True)
        except PoolgradError as error:
            _note_cleanup_failure(exc, self.id, error)


class Client(BaseClient[httpx.Client]):
    """Synchronous client. Use it as a context manager, or call :meth:`close`.

    ``http_client`` lets you bring a configured ``httpx.Client`` (proxies, transports); it is
    then yours to close. See :class:`~poolgrad._base.BaseClient` for the arguments.
    """

    def _make_http(self) -> httpx.Client:
        return httpx.Client()

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _request(self, options: RequestOptions) -> httpx.Response:
        request = self._build_request(options)
        attempt = 0
        while True:
            try:
                response = self._http.send(request)
            except httpx.RequestError as exc:
                delay = self._retry_delay(options, attempt, error=exc)
                if delay is None:
                    raise self._request_error(request, exc) from exc
            else:
                delay = self._retry_delay(options, attempt, response=response)
                if delay is None:
                    return self._final(response)
                response.close()
            self._sleep(delay)
            attempt += 1

    def create_session(
        self, *, ttl_seconds: int | None = None, **spec: Unpack[PoolSpecKwargs]
    ) -> Session:
        """Create a session now; delete it with :meth:`Session.delete` or ``with``."""
        response = self._request(self._create_session_options(spec, ttl_seconds))
        return Session(self, self._json(response))

    def get_session(self, session_id: str) -> Session:
        """A handle on an existing session (e.g. made by another process with the same key).

        Its :meth:`Session.backward` pins no step until it has made a forward itself.
        """
        response = self._request(self._session_options("GET", session_id))
        return Session(self, self._json(response))

    def session(self, *, ttl_seconds: int | None = None, **spec: Unpack[PoolSpecKwargs]) -> Session:
        """A new session, created now, as :class:`httpx.Client` is: use it as it is
        (``s = client.session(mode="max"); s.forward(X); s.delete()``) or in a block
        (``with client.session(mode="max") as s:``), which deletes it on exit, also when the
        block raises. The same as :meth:`create_session`."""
        return self.create_session(ttl_seconds=ttl_seconds, **spec)

    def gradient(
        self, X: npt.ArrayLike, dA: npt.ArrayLike, **spec: Unpack[PoolSpecKwargs]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward in one stateless request: ``A, dX`` (``dA`` is required; the
        forward alone is :meth:`pool`)."""
        tensors = self._named(self._request(self._gradient_options(X, _needed(dA), spec)))
        return _pick(tensors, "A"), _pick(tensors, "dX")

    def pool(self, X: npt.ArrayLike, **spec: Unpack[PoolSpecKwargs]) -> np.ndarray:
        """Forward only, stateless: ``A``."""
        return _pick(self._named(self._request(self._gradient_options(X, None, spec))), "A")

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the server's answer; raises if it cannot be reached."""
        return self._health(self._request(self._health_options()))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- async


class AsyncSession(_SessionState):
    """The async twin of :class:`Session`: ``await s.forward(X)``, ``async with``."""

    def __init__(self, client: AsyncClient, created: Any) -> None:
        super().__init__(created)
        self._client = client

    async def forward(self, X: npt.ArrayLike) -> np.ndarray:
        """See :meth:`Session.forward`."""
        response = await self._client._request(self._client._forward_options(self.id, X))
        self._record_forward(response)
        return self._client._tensor(response)

    async def backward(self, dA: npt.ArrayLike) -> np.ndarray:
        """See :meth:`Session.backward`."""
        options = self._client._backward_options(self.id, dA, self._forward_step)
        return self._client._tensor(await self._client._request(options))

    async def info(self) -> SessionInfo:
        """See :meth:`Session.info`."""
        response = await self._client._request(self._client._session_options("GET", self.id))
        return session_info(self._client._json(response))

    async def delete(self) -> None:
        """See :meth:`Session.delete`."""
        await self._delete(cleanup=False)

    async def _delete(self, *, cleanup: bool) -> None:
        options = self._client._session_options("DELETE", self.id, cleanup=cleanup)
        with contextlib.suppress(SessionNotFoundError):
            await self._client._request(options)
        self.deleted = True

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            # Shielded: a cancelled block must still release its server-side state; bounded:
            # one attempt, CLEANUP_TIMEOUT in all, or the cancellation would wait on us.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT) as bound:
                await self._delete(cleanup=True)
            if bound.cancelled_caught:
                raise _cleanup_timed_out(self.id)
        except PoolgradError as error:
            _note_cleanup_failure(exc, self.id, error)


class AsyncSessionRequest:
    """What :meth:`AsyncClient.session` returns: a session not created yet (creating one needs
    an ``await``), its spec already checked. ``await`` it for the session
    (``s = await client.session(mode="max")``, then ``await s.delete()``), or enter it
    (``async with client.session(mode="max") as s:``): created on enter, deleted on exit."""

    def __init__(self, client: AsyncClient, spec: Mapping[str, Any], ttl_seconds: int | None):
        self._client = client
        # Checked here, at the call, not when awaited or entered (the mistake is the call's).
        self._options = client._create_session_options(spec, ttl_seconds)
        self._session: AsyncSession | None = None

    async def _create(self) -> AsyncSession:
        response = await self._client._request(self._options)
        return AsyncSession(self._client, self._client._json(response))

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._create().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._create()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.__aexit__(exc_type, exc, traceback)


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """Asynchronous twin of :class:`Client` (asyncio or trio): ``async with``, ``await``."""

    def _make_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    async def _sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def _request(self, options: RequestOptions) -> httpx.Response:
        request = self._build_request(options)
        attempt = 0
        while True:
            try:
                response = await self._http.send(request)
            except httpx.RequestError as exc:
                delay = self._retry_delay(options, attempt, error=exc)
                if delay is None:
                    raise self._request_error(request, exc) from exc
            else:
                delay = self._retry_delay(options, attempt, response=response)
                if delay is None:
                    return self._final(response)
                await response.aclose()
            await self._sleep(delay)
            attempt += 1

    async def create_session(
        self, *, ttl_seconds: int | None = None, **spec: Unpack[PoolSpecKwargs]
    ) -> AsyncSession:
        """See :meth:`Client.create_session`."""
        return await self.session(ttl_seconds=ttl_seconds, **spec)

    async def get_session(self, session_id: str) -> AsyncSession:
        """See :meth:`Client.get_session`."""
        response = await self._request(self._session_options("GET", session_id))
        return AsyncSession(self, self._json(response))

    def session(
        self, *, ttl_seconds: int | None = None, **spec: Unpack[PoolSpecKwargs]
    ) -> AsyncSessionRequest:
        """``async with client.session(...) as s:`` (created on enter, deleted on exit) or
        ``s = await client.session(...)`` (then ``await s.delete()``); the spec is checked
        at this call. See :class:`AsyncSessionRequest`."""
        return AsyncSessionRequest(self, spec, ttl_seconds)

    async def gradient(
        self, X: npt.ArrayLike, dA: npt.ArrayLike, **spec: Unpack[PoolSpecKwargs]
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Client.gradient`."""
        options = self._gradient_options(X, _needed(dA), spec)
        tensors = self._named(await self._request(options))
        return _pick(tensors, "A"), _pick(tensors, "dX")

    async def pool(self, X: npt.ArrayLike, **spec: Unpack[PoolSpecKwargs]) -> np.ndarray:
        """See :meth:`Client.pool`."""
        tensors = self._named(await self._request(self._gradient_options(X, None, spec)))
        return _pick(tensors, "A")

    async def health(self) -> dict[str, Any]:
        """See :meth:`Client.health`."""
        return self._health(await self._request(self._health_options()))

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _needed(dA: npt.ArrayLike | None) -> npt.ArrayLike:
    if dA is None:
        raise ValueError(
            "gradient() needs dA, the upstream gradient; for the forward alone (A, no dX) "
            "call pool(X, **spec)"
        )
    return dA


def _pick(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return tensors[name]
    except KeyError:
        raise APIResponseError(
            f"the server's answer holds tensors {sorted(tensors)} but not {name!r}"
        ) from None
