"""The protocol's one error type: bytes, headers or query strings that do not parse.

Every failure in :mod:`poolgrad.protocol` raises a :class:`ProtocolError` whose ``code`` is the
contract's problem code (:data:`poolgrad.protocol.problems.PROBLEMS`), so the service renders it
and the SDK reports it without a table of its own::

    ProtocolError              (ValueError) root; ``code`` picks the problem
    ├── MalformedTensor        400 malformed_tensor  bytes that do not decode as their type
    ├── InvalidTensor          422 invalid_tensor    a decodable tensor of a dtype no one takes
    ├── InvalidSpec            422 invalid_spec      a spec query string that does not parse
    ├── UnsupportedMediaType   415 unsupported_media_type
    └── NotAcceptable          406 not_acceptable
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "InvalidSpec",
    "InvalidTensor",
    "MalformedTensor",
    "NotAcceptable",
    "ProtocolError",
    "UnsupportedMediaType",
]


class ProtocolError(ValueError):
    """Something on the wire that does not follow the protocol; the message names it."""

    code: ClassVar[str] = "malformed_tensor"


class MalformedTensor(ProtocolError):
    code = "malformed_tensor"


class InvalidTensor(ProtocolError):
    code = "invalid_tensor"


class InvalidSpec(ProtocolError):
    code = "invalid_spec"


class UnsupportedMediaType(ProtocolError):
    code = "unsupported_media_type"


class NotAcceptable(ProtocolError):
    code = "not_acceptable"
