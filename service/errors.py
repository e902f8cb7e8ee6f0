"""Service errors: each carries its HTTP status, problem code and a detail naming the value.

The tree (codes and titles come from :data:`poolgrad.protocol.PROBLEMS`, the catalogue the
SDK maps back to exception classes)::

    ServiceError                  root; rendered as application/problem+json by one handler
    ├── BadRequest                400 bad_request
    ├── MalformedTensor           400 malformed_tensor
    ├── Unauthorized              401 unauthorized
    ├── SessionNotFound           404 session_not_found
    ├── NoForward                 409 no_forward
    ├── RequestTimeout            408 request_timeout
    ├── StaleStep                 412 stale_step
    ├── PayloadTooLarge           413 payload_too_large
    ├── UnsupportedMediaType      415 unsupported_media_type
    ├── NotAcceptable             406 not_acceptable
    ├── InvalidSpec               422 invalid_spec
    ├── InvalidTensor             422 invalid_tensor
    ├── ShapeMismatch             422 shape_mismatch
    ├── CapacityExceeded          429 capacity_exceeded   (Retry-After)
    ├── InternalError             500 internal_error      (detail never shows internals)
    └── StoreUnavailable          503 store_unavailable   (Retry-After)

Engine errors are translated into this tree where they are caught (:mod:`service.compute`),
protocol errors (:class:`poolgrad.protocol.ProtocolError`) by :func:`from_protocol_error`
wherever they are caught; nothing else reaches the handler except as a 500.
"""

from __future__ import annotations

from typing import ClassVar

from poolgrad.protocol import PROBLEMS, ProtocolError

__all__ = [
    "BadRequest",
    "CapacityExceeded",
    "InternalError",
    "InvalidSpec",
    "InvalidTensor",
    "MalformedTensor",
    "NoForward",
    "NotAcceptable",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceError",
    "SessionNotFound",
    "ShapeMismatch",
    "StaleStep",
    "StoreUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "from_protocol_error",
]


class ServiceError(Exception):
    """Root of every error the service answers with; ``code`` selects the catalogue row."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return PROBLEMS[self.code].status

    @property
    def title(self) -> str:
        return PROBLEMS[self.code].title


class BadRequest(ServiceError):
    code = "bad_request"


class MalformedTensor(ServiceError):
    code = "malformed_tensor"


class Unauthorized(ServiceError):
    code = "unauthorized"


class SessionNotFound(ServiceError):
    code = "session_not_found"


class NoForward(ServiceError):
    code = "no_forward"


class RequestTimeout(ServiceError):
    code = "request_timeout"


class StaleStep(ServiceError):
    code = "stale_step"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class NotAcceptable(ServiceError):
    code = "not_acceptable"


class InvalidSpec(ServiceError):
    code = "invalid_spec"


class InvalidTensor(ServiceError):
    code = "invalid_tensor"


class ShapeMismatch(ServiceError):
    code = "shape_mismatch"


class CapacityExceeded(ServiceError):
    code = "capacity_exceeded"


class InternalError(ServiceError):
    code = "internal_error"


class StoreUnavailable(ServiceError):
    code = "store_unavailable"


def from_protocol_error(exc: ProtocolError) -> ServiceError:
    """The service error for a protocol failure: the class whose code is ``exc.code``."""
    return _BY_CODE[exc.code](str(exc))


_BY_CODE: dict[str, type[ServiceError]] = {cls.code: cls for cls in ServiceError.__subclasses__()}
