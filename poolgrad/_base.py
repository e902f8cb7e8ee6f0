"""What the sync and async clients share, with no I/O: configuration, requests, retry
decisions and response parsing. The clients in :mod:`poolgrad._client` only send and sleep.

Retry policy (``max_retries`` retries after the first attempt, capped exponential backoff
with full jitter; a ``Retry-After`` in ``(0, MAX_RETRY_AFTER]`` seconds is honoured, any other
falls back to the backoff):

* 429 and 503 are retried for every request: the server answers them before applying anything.
* Transport failures (refused, reset, timeouts) are retried for every request that is safe to
  repeat: ``GET``, ``DELETE``, ``/healthz``, ``/v1/gradient`` (stateless), backward (the state is
  kept and ``If-Match`` pins the forward it belongs to) and forward (a repeat caches the same
  input again; the step we use is the one in the answer we read, so a backward can never be
  applied to another forward: at worst it is refused with ``stale_step``).
* Session creation is retried on transport failures only when the request was certainly never
  sent (connect errors, connect and pool timeouts): a read timeout may have created a session,
  and a repeat would leak one.
* Every other status is final and raised as its :class:`~poolgrad.APIError` subclass, and so is
  an answer that cannot be used (:class:`~poolgrad.APIResponseError`).
* Cleanup (deleting a session on leaving ``with``) is one attempt with the short
  :data:`~poolgrad._constants.CLEANUP_TIMEOUT`: it runs while an error or a cancellation is
  on its way to the caller, and must not hold it up for minutes.
"""

from __future__ import annotations

import enum
import math
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from poolgrad import protocol
from poolgrad._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    CLEANUP_TIMEOUT,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    REQUEST_ID_HEADER,
    RETRY_STATUSES,
)
from poolgrad._exceptions import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    PoolgradError,
    _connection_message,
    _make_status_error,
)
from poolgrad._types import NOT_GIVEN, NotGiven, TensorFormat
from poolgrad._version import __version__
from poolgrad.protocol import SessionInfo
from poolgrad.protocol import spec as spec_schema

# Failures that prove the request never reached the server.
_UNSENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_HttpT = TypeVar("_HttpT", httpx.Client, httpx.AsyncClient)


class Retry(enum.Enum):
    """Which failures a request may be repeated after (see the module docstring)."""

    SAFE = "safe"  # 429, 503 and every transport failure
    UNSENT = "unsent"  # 429, 503 and failures before the request was sent


@dataclass(frozen=True)
class RequestOptions:
    """One logical request: the same options, and the same request id, for every attempt."""

    method: str
    path: str
    retry: Retry
    content: bytes | None = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Cleanup: one attempt with :data:`CLEANUP_TIMEOUT`, whatever the client's configuration.
    cleanup: bool = False


# ------------------------------------------------------------------------------- spec


def _plain(value: Any) -> Any:
    """Tuples to lists and NumPy scalars to Python ones, recursively (JSON-able)."""
    if isinstance(value, np.generic):  # np.int64(2), np.False_, np.str_("max")
        value = value.item()
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    raise TypeError(f"spec value {value!r} of type {type(value).__name__} is not JSON-able")


def checked_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec keywords as plain JSON-like values, checked against the schema before any
    request (:func:`poolgrad.protocol.spec.check_spec`: ``TypeError`` for an unknown name,
    ``ValueError`` naming the field and its allowed values); ``None`` fields left out."""
    spec_schema.check_names(spec)
    plain = {name: _plain(value) for name, value in spec.items() if value is not None}
    spec_schema.check_spec(plain)
    return plain


def spec_to_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The session body's spec fields; ``None`` fields are left to the server's default."""
    return checked_spec(spec)


def spec_to_query(spec: Mapping[str, Any]) -> dict[str, str]:
    """The spec as ``/v1/gradient`` query parameters (:func:`poolgrad.protocol.spec_to_query`
    after NumPy values became plain ones: ``np.False_`` must read "false", as False does)."""
    return protocol.spec_to_query(checked_spec(spec))


# -------------------------------------------------------------------------- parsing


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), else ``None``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(seconds, 0.0)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _writable(array: np.ndarray) -> np.ndarray:
    # protocol decoders may return read-only views of the body; users expect to write.
    return array if array.flags.writeable else array.copy(order="K")


def session_info(body: Any) -> SessionInfo:
    """Build :class:`SessionInfo` from a session answer."""
    try:
        return SessionInfo.from_json(body)
    except protocol.ProtocolError as exc:
        raise APIResponseError(f"the server answered a session request with {body!r}") from exc


def session_path(session_id: str, action: str | None = None) -> str:
    """``/v1/sessions/{id}[/action]``, the id percent-encoded (``a/b``, ``..`` stay one segment)."""
    path = f"/v1/sessions/{quote(session_id, safe='')}"
    return f"{path}/{action}" if action is not None else path


# ----------------------------------------------------------------------------- base


class BaseClient(Generic[_HttpT]):
    """Configuration, request building, retry decisions and parsing; no I/O.

    Parameters
    ----------
    base_url : str, optional
        The service, e.g. ``"http://127.0.0.1:8000"``; else ``POOLGRAD_BASE_URL``, else
        :data:`~poolgrad._constants.DEFAULT_BASE_URL`.
    api_key : str, optional
        Sent as ``Authorization: Bearer <key>``; else ``POOLGRAD_API_KEY``, else none.
    timeout : float or httpx.Timeout or None
        Per attempt; ``None`` waits forever. Left out: the ``http_client``'s own timeout when
        one is given, else ``httpx.Timeout(60.0, connect=5.0)``.
    max_retries : int
        Retries after the first attempt (see the module docstring for which requests).
    tensor_format : {"npy", "json"}
        ``"npy"`` sends ``.npy`` tensors and safetensors named tensors; ``"json"`` sends JSON.
    headers : mapping, optional
        Extra headers on every request.
    http_client : httpx.Client or httpx.AsyncClient, optional
        A configured client (proxies, transports); it is then yours to close. By default the
        client makes its own (:meth:`_make_http`) and closes it in ``close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | NotGiven | None = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        tensor_format: TensorFormat = "npy",
        headers: Mapping[str, str] | None = None,
        http_client: _HttpT | None = None,
    ) -> None:
        url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            source = "base_url=" if base_url is not None else BASE_URL_ENV
            raise ValueError(
                f"base URL {url!r} (from {source}) is not an http:// or https:// URL; "
                f"pass base_url='http://host:port' to the client or set {BASE_URL_ENV}"
            )
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if tensor_format not in ("npy", "json"):
            raise ValueError(f"tensor_format must be 'npy' or 'json', got {tensor_format!r}")
        if timeout is NOT_GIVEN:
            timeout = http_client.timeout if http_client is not None else DEFAULT_TIMEOUT
        self.base_url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout: float | httpx.Timeout | None = timeout
        self.max_retries = max_retries
        self.tensor_format: TensorFormat = tensor_format
        self._extra_headers = dict(headers or {})
        self._random = random.Random()
        self._owns_http = http_client is None
        self._http: _HttpT = http_client if http_client is not None else self._make_http()

    def _make_http(self) -> _HttpT:
        """The HTTP client to use when the caller brought none (closed by ``close()``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -------------------------------------------------------------------- headers

    @property
    def _tensor_media(self) -> str:
        return protocol.MEDIA_NPY if self.tensor_format == "npy" else protocol.MEDIA_JSON

    @property
    def _named_media(self) -> str:
        return protocol.MEDIA_SAFETENSORS if self.tensor_format == "npy" else protocol.MEDIA_JSON

    def _default_headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"poolgrad-python/{__version__}", **self._extra_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _build_request(self, options: RequestOptions) -> httpx.Request:
        """The request every attempt sends: one request id for the whole logical request."""
        if self._http.is_closed:
            whose = "this poolgrad client" if self._owns_http else "the http_client= it was given"
            raise PoolgradError(
                f"{options.method} {options.path}: {whose} is closed; make a new client "
                f"(or use it inside its `with` block)"
            )
        headers = {
            **self._default_headers(),
            REQUEST_ID_HEADER: uuid.uuid4().hex,
            **options.headers,
        }
        return self._http.build_request(
            options.method,
            f"{self.base_url}{options.path}",
            content=options.content,
            params=options.params,
            headers=headers,
            timeout=httpx.Timeout(CLEANUP_TIMEOUT) if options.cleanup else self.timeout,
        )

    # ------------------------------------------------------------------- retries

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in ``[0, min(MAX_RETRY_DELAY, INITIAL_RETRY_DELAY * 2**n)]``."""
        return self._random.uniform(0.0, min(MAX_RETRY_DELAY, INITIAL_RETRY_DELAY * 2.0**attempt))

    def _retry_delay(
        self,
        options: RequestOptions,
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: httpx.RequestError | None = None,
    ) -> float | None:
        """Seconds to wait before retrying after ``attempt`` (0-based), or ``None``: give up."""
        if options.cleanup or attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None and 0.0 < retry_after <= MAX_RETRY_AFTER:
                return retry_after
            return self._backoff(attempt)
        # An answer that arrived but does not decode, or a redirect loop, is not transient.
        if not isinstance(error, httpx.TransportError):
            return None
        if options.retry is Retry.UNSENT and not isinstance(error, _UNSENT_ERRORS):
            return None
        return self._backoff(attempt)

    @staticmethod
    def _final(response: httpx.Response) -> httpx.Response:
        """The response when it succeeded, else its error raised."""
        if response.is_success:
            return response
        raise _make_status_error(response)

    @staticmethod
    def _request_error(request: httpx.Request, exc: httpx.RequestError) -> PoolgradError:
        """The SDK's exception for an ``httpx`` failure (the caller chains it ``from exc``)."""
        if isinstance(exc, httpx.TransportError):
            cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
            return cls(_connection_message(request, exc), request=request)
        reason = str(exc) or type(exc).__name__
        return APIResponseError(f"{request.method} {request.url} answered unusably: {reason}")

    # ------------------------------------------------------------------ requests

    def _create_session_options(
        self, spec: Mapping[str, Any], ttl_seconds: int | None
    ) -> RequestOptions:
        body = spec_to_json(spec)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return RequestOptions(
            "POST",
            "/v1/sessions",
            Retry.UNSENT,
            content=protocol.dumps(body),
            headers={"Content-Type": protocol.MEDIA_JSON, "Accept": protocol.MEDIA_JSON},
        )

    @staticmethod
    def _session_options(method: str, session_id: str, *, cleanup: bool = False) -> RequestOptions:
        return RequestOptions(method, session_path(session_id), Retry.SAFE,
                              headers={"Accept": protocol.MEDIA_JSON}, cleanup=cleanup)  # fmt: skip

    def _forward_options(self, session_id: str, X: npt.ArrayLike) -> RequestOptions:
        media = self._tensor_media
        return RequestOptions(
            "POST",
            session_path(session_id, "forward"),
            Retry.SAFE,
            content=protocol.encode_tensor(np.asarray(X), media),
            headers={"Content-Type": media, "Accept": media},
        )

    def _backward_options(
        self, session_id: str, dA: npt.ArrayLike, step: int | None
    ) -> RequestOptions:
        media = self._tensor_media
        headers = {"Content-Type": media, "Accept": media}
        if step is not None:
            headers["If-Match"] = protocol.format_etag(step)
        return RequestOptions(
            "POST",
            session_path(session_id, "backward"),
            Retry.SAFE,
            content=protocol.encode_tensor(np.asarray(dA), media),
            headers=headers,
        )

    def _gradient_options(
        self, X: npt.ArrayLike, dA: npt.ArrayLike | None, spec: Mapping[str, Any]
    ) -> RequestOptions:
        media = self._named_media
        tensors = {"X": np.asarray(X)}
        if dA is not None:
            tensors["dA"] = np.asarray(dA)
        return RequestOptions(
            "POST",
            "/v1/gradient",
            Retry.SAFE,
            content=protocol.encode_named(tensors, media),
            params=spec_to_query(spec),
            headers={"Content-Type": media, "Accept": media},
        )

    @staticmethod
    def _health_options() -> RequestOptions:
        return RequestOptions("GET", "/healthz", Retry.SAFE)

    # ------------------------------------------------------------------- answers

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return protocol.loads(response.content)
        except protocol.ProtocolError as exc:
            raise APIResponseError(
                f"{response.request.method} {response.request.url} answered "
                f"{response.status_code} with a body that is not JSON: {exc}"
            ) from exc

    @staticmethod
    def _tensor(response: httpx.Response) -> np.ndarray:
        media = protocol.media_type_of(response.headers.get("content-type"))
        try:
            return _writable(protocol.decode_tensor(response.content, media))
        except protocol.ProtocolError as exc:  # bad bytes, or a media type no decoder reads
            raise APIResponseError(
                f"{response.request.method} {response.request.url} answered a tensor "
                f"that does not decode ({media or 'no Content-Type'}): {exc}"
            ) from exc

    @staticmethod
    def _named(response: httpx.Response) -> dict[str, np.ndarray]:
        media = protocol.media_type_of(response.headers.get("content-type"))
        try:
            tensors = protocol.decode_named(response.content, media)
        except protocol.ProtocolError as exc:
            raise APIResponseError(
                f"{response.request.method} {response.request.url} answered named tensors "
                f"that do not decode ({media or 'no Content-Type'}): {exc}"
            ) from exc
        return {name: _writable(array) for name, array in tensors.items()}

    @staticmethod
    def _health(response: httpx.Response) -> dict[str, Any]:
        if protocol.media_type_of(response.headers.get("content-type")) == protocol.MEDIA_JSON:
            body = BaseClient._json(response)
            if isinstance(body, dict):
                return body
        return {"status": "ok"}
