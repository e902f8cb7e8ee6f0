"""Everything the SDK raises, under one root, and the one function that maps answers to it.

The tree::

    PoolgradError
    ├── APIConnectionError              no HTTP answer: refused, reset, DNS, protocol
    │   └── APITimeoutError             connect, read, write or pool timeout
    ├── APIResponseError                an answer that cannot be used: its body or content
    │                                   encoding does not decode, or too many redirects
    └── APIError                        the server answered with a 4xx/5xx problem
        ├── BadRequestError             400
        │   └── MalformedTensorError        malformed_tensor
        ├── UnauthorizedError           401 unauthorized
        ├── NotFoundError               404
        │   └── SessionNotFoundError        session_not_found
        ├── NotAcceptableError          406 not_acceptable
        ├── ConflictError               409
        │   └── NoForwardError              no_forward
        ├── PreconditionFailedError     412
        │   └── StaleStepError              stale_step
        ├── PayloadTooLargeError        413 payload_too_large
        ├── UnsupportedMediaTypeError   415 unsupported_media_type
        ├── UnprocessableEntityError    422
        │   ├── InvalidSpecError            invalid_spec
        │   ├── InvalidTensorError          invalid_tensor
        │   └── ShapeMismatchError          shape_mismatch
        ├── CapacityError               429 capacity_exceeded
        └── InternalServerError         5xx
            └── ServiceUnavailableError     503
                └── StoreUnavailableError       store_unavailable

An answer is mapped by its problem ``code`` first (the contract's codes, see
:data:`poolgrad.protocol.PROBLEMS`), then by its status, then to :class:`APIError` itself.
No ``httpx`` exception escapes the SDK: every ``httpx.RequestError`` is translated and chained
(``raise APIConnectionError(...) from exc``), and a closed client raises :class:`PoolgradError`.
Every exception pickles (an :class:`APIError` without its ``response``), e.g. across processes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from poolgrad._constants import API_KEY_ENV, BASE_URL_ENV, REQUEST_ID_HEADER
from poolgrad.protocol import (
    MEDIA_JSON,
    MEDIA_PROBLEM,
    PROBLEMS,
    ProtocolError,
    loads,
    media_type_of,
)

# No __all__ here: ``poolgrad.__all__`` is the one list of public names (every class of this
# module is on it; tests/sdk/test_errors.py pins that).


class PoolgradError(Exception):
    """Root of every exception the SDK raises."""


class APIConnectionError(PoolgradError):
    """The request got no HTTP answer (connection refused or reset, DNS, protocol error)."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request
        self.request_id = request.headers.get(REQUEST_ID_HEADER) if request is not None else None


class APITimeoutError(APIConnectionError):
    """Connecting, sending, waiting for the answer or for a pooled connection timed out."""


class APIResponseError(PoolgradError):
    """An answer came but cannot be used: a body or content encoding that does not decode, a
    session answer without its fields, a redirect loop. Not retried: the request may have been
    applied."""


class APIError(PoolgradError):
    """The server answered with an error status; the fields come from its problem+json body.

    Attributes
    ----------
    status : int
        HTTP status.
    code : str | None
        The contract's problem code (``"stale_step"``, ...), ``None`` if the body had none.
    title, detail : str
        Short summary and the server's explanation naming the offending value.
    request_id : str | None
        The ``X-Request-ID`` of the request, for the server's logs: the one the answer echoes,
        else the one the client sent (a proxy's error page echoes none).
    body : object
        The decoded JSON body, or the raw text when it was not JSON.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None,
        title: str,
        detail: str,
        request_id: str | None,
        body: object,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.body = body
        self.response = response

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only fields defeat the default (cls(*args)); the response does not pickle.
        fields = {
            "status": self.status,
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
            "request_id": self.request_id,
            "body": self.body,
        }
        return _rebuild_api_error, (type(self), str(self), fields), self._extra_state()

    def _extra_state(self) -> dict[str, Any]:
        # Whatever else callers attached (``__notes__`` among them), minus the response.
        state = dict(self.__dict__)
        for name in ("status", "code", "title", "detail", "request_id", "body", "response"):
            state.pop(name, None)
        return state


def _rebuild_api_error(cls: type[APIError], message: str, fields: dict[str, Any]) -> APIError:
    return cls(message, **fields)


class BadRequestError(APIError):
    """400: the request could not be read."""


class MalformedTensorError(BadRequestError):
    """400 ``malformed_tensor``: a body not decodable as its type, truncated or pickled."""


class UnauthorizedError(APIError):
    """401 ``unauthorized``: API keys are configured and this request has none or a wrong one."""


class NotFoundError(APIError):
    """404: no such route or resource."""


class SessionNotFoundError(NotFoundError):
    """404 ``session_not_found``: unknown, expired, deleted, or another key's session."""


class NotAcceptableError(APIError):
    """406 ``not_acceptable``: the server cannot answer in the ``Accept``-ed media type."""


class ConflictError(APIError):
    """409: the resource is not in a state that allows the request."""


class NoForwardError(ConflictError):
    """409 ``no_forward``: backward before any forward on the session."""


class PreconditionFailedError(APIError):
    """412: an ``If-Match`` precondition failed."""


class StaleStepError(PreconditionFailedError):
    """412 ``stale_step``: the forward this backward belongs to is no longer cached."""


class PayloadTooLargeError(APIError):
    """413 ``payload_too_large``: the body is over the server's limit."""


class UnsupportedMediaTypeError(APIError):
    """415 ``unsupported_media_type``: the server does not read this ``Content-Type``."""


class UnprocessableEntityError(APIError):
    """422: the request was read but refused."""


class InvalidSpecError(UnprocessableEntityError):
    """422 ``invalid_spec``: a layer spec field is invalid."""


class InvalidTensorError(UnprocessableEntityError):
    """422 ``invalid_tensor``: rank, dtype, size or NaN refused."""


class ShapeMismatchError(UnprocessableEntityError):
    """422 ``shape_mismatch``: dA's shape differs from A's."""


class CapacityError(APIError):
    """429 ``capacity_exceeded``: session count or state budget full; retried by default."""


class InternalServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailableError(InternalServerError):
    """503: the service cannot answer right now; retried by default."""


class StoreUnavailableError(ServiceUnavailableError):
    """503 ``store_unavailable``: the session store cannot be reached."""


_BY_CODE: dict[str, type[APIError]] = {
    "malformed_tensor": MalformedTensorError,
    "unauthorized": UnauthorizedError,
    "session_not_found": SessionNotFoundError,
    "not_acceptable": NotAcceptableError,
    "no_forward": NoForwardError,
    "stale_step": StaleStepError,
    "payload_too_large": PayloadTooLargeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "invalid_spec": InvalidSpecError,
    "invalid_tensor": InvalidTensorError,
    "shape_mismatch": ShapeMismatchError,
    "capacity_exceeded": CapacityError,
    "store_unavailable": StoreUnavailableError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    406: NotAcceptableError,
    409: ConflictError,
    412: PreconditionFailedError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: CapacityError,
    503: ServiceUnavailableError,
}


def _error_class(status: int, code: str | None) -> type[APIError]:
    """The class for a problem: by its code when the catalogue agrees on the status."""
    problem = PROBLEMS.get(code) if code is not None else None
    if code is not None and problem is not None and problem.status == status:
        by_code = _BY_CODE.get(code)
        if by_code is not None:
            return by_code
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return InternalServerError
    return APIError


def _make_status_error(response: httpx.Response) -> APIError:
    """Turn an error answer into the matching :class:`APIError` subclass (reads the body)."""
    status = response.status_code
    body: object = response.text
    problem: dict[str, Any] = {}
    if media_type_of(response.headers.get("content-type")) in (MEDIA_PROBLEM, MEDIA_JSON):
        with contextlib.suppress(ProtocolError):
            body = loads(response.content)
        if isinstance(body, dict):
            problem = body
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    catalogued = PROBLEMS.get(code) if code is not None else None
    title = str(
        problem.get("title") or (catalogued.title if catalogued else response.reason_phrase)
    )
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = body.strip()[:500] if isinstance(body, str) and body.strip() else title
    request_id = (
        response.headers.get(REQUEST_ID_HEADER)
        or (str(problem["request_id"]) if problem.get("request_id") else None)
        or _sent_request_id(response)
    )
    cls = _error_class(status, code)
    message = f"{status} {code or title}: {detail}"
    if cls is UnauthorizedError:
        message += f" (pass api_key= to the client or set {API_KEY_ENV})"
    if request_id:
        message += f" [request id {request_id}]"
    return cls(
        message,
        status=status,
        code=code,
        title=title,
        detail=detail,
        request_id=request_id,
        body=body,
        response=response,
    )


def _sent_request_id(response: httpx.Response) -> str | None:
    try:
        request = response.request
    except RuntimeError:  # a response built by hand, never sent
        return None
    sent = request.headers.get(REQUEST_ID_HEADER)
    return str(sent) if sent is not None else None


def _connection_message(request: httpx.Request, exc: httpx.TransportError) -> str:
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    reason = str(exc) or type(exc).__name__
    return (
        f"{request.method} {request.url} {what}: {reason} (is the server running? "
        f"pass base_url= to the client or set {BASE_URL_ENV})"
    )
