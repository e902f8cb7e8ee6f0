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

Messages quote the client's values with :func:`quote`, never a bare ``!r``: a value is cut to
:data:`QUOTE_CHARS` characters, so a multi-megabyte body cannot come back in its own refusal.
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "QUOTE_CHARS",
    "InvalidSpec",
    "InvalidTensor",
    "MalformedTensor",
    "NotAcceptable",
    "ProtocolError",
    "UnsupportedMediaType",
    "quote",
    "shorten",
]

#: Most characters of one client value an error message quotes (its ``repr``); the rest is
#: replaced by ``...`` and the count of characters left out.
QUOTE_CHARS: Final = 200


def shorten(text: str, limit: int) -> str:
    """``text`` itself when it has at most ``limit`` characters, else its first ``limit``
    followed by ``...`` and how many characters were left out (so the reader knows the size)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A client's ``value`` for an error message: its ``repr``, shortened to ``limit``
    characters (:func:`shorten`). Strings and bytes are cut before ``repr`` runs, so quoting
    a huge one costs no more than the quote."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value) - limit} more characters)"
    return shorten(repr(value), limit)


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
