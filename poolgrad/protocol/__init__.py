"""The wire protocol shared by the service and the SDK; NumPy and the standard library only.

It stands alone: the server imports this subpackage and nothing else of :mod:`poolgrad`, so
it never loads httpx or the SDK's client. One module per fact:

=================  ==========================================================================
``errors``         :class:`ProtocolError`, the one error type, ``code`` = the problem code;
                   :func:`quote`, how every message quotes a client's value (bounded)
``tensors``        tensor codecs: ``.npy``, JSON, safetensors, named tensors
``npyheader``      the strict parser of a ``.npy`` header dict (never NumPy's ``literal_eval``)
``media``          media types, ``Content-Type`` checks, ``Accept`` negotiation
``problems``       the problem catalogue (status, code, title of every error)
``spec``           the layer spec's schema (fields, defaults, choices) and query-string codec
``etags``          the entity-tag grammar of a session step (``ETag``, ``If-Match``)
``session``        the session's public shape (:class:`SessionInfo`)
``jsonio``         compact JSON (orjson when installed)
``inference``      the Open Inference Protocol (KServe v2, Triton HTTP): requests, responses
=================  ==========================================================================

Everything is re-exported here: ``from poolgrad import protocol; protocol.decode_npy(...)``.
"""

from poolgrad.protocol import session, spec  # noqa: F401  (protocol.spec.FIELDS, ...)
from poolgrad.protocol.errors import (
    InvalidSpec,
    InvalidTensor,
    MalformedTensor,
    NotAcceptable,
    ProtocolError,
    UnsupportedMediaType,
    quote,
    shorten,
)
from poolgrad.protocol.etags import DIGITS, IfMatch, format_etag, parse_etag, parse_if_match
from poolgrad.protocol.jsonio import dumps, loads
from poolgrad.protocol.media import (
    MEDIA_JSON,
    MEDIA_NPY,
    MEDIA_PROBLEM,
    MEDIA_SAFETENSORS,
    NAMED_MEDIA_TYPES,
    TENSOR_MEDIA_TYPES,
    media_type_of,
    negotiate,
    require_media_type,
)
from poolgrad.protocol.problems import PROBLEMS, Problem
from poolgrad.protocol.session import SessionInfo
from poolgrad.protocol.spec import FIELDS, SpecField, spec_from_query, spec_to_query
from poolgrad.protocol.tensors import (
    DEFAULT_MAX_HEADER_BYTES,
    JSON_NAMES,
    Parts,
    decode_json_tensor,
    decode_named,
    decode_npy,
    decode_safetensors,
    decode_tensor,
    encode_json_tensor,
    encode_named,
    encode_named_parts,
    encode_npy,
    encode_npy_parts,
    encode_safetensors,
    encode_safetensors_parts,
    encode_tensor,
    encode_tensor_parts,
    tensor_from_obj,
    tensor_to_obj,
)

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "DIGITS",
    "FIELDS",
    "JSON_NAMES",
    "MEDIA_JSON",
    "MEDIA_NPY",
    "MEDIA_PROBLEM",
    "MEDIA_SAFETENSORS",
    "NAMED_MEDIA_TYPES",
    "PROBLEMS",
    "TENSOR_MEDIA_TYPES",
    "IfMatch",
    "InvalidSpec",
    "InvalidTensor",
    "MalformedTensor",
    "NotAcceptable",
    "Parts",
    "Problem",
    "ProtocolError",
    "SessionInfo",
    "SpecField",
    "UnsupportedMediaType",
    "decode_json_tensor",
    "decode_named",
    "decode_npy",
    "decode_safetensors",
    "decode_tensor",
    "dumps",
    "encode_json_tensor",
    "encode_named",
    "encode_named_parts",
    "encode_npy",
    "encode_npy_parts",
    "encode_safetensors",
    "encode_safetensors_parts",
    "encode_tensor",
    "encode_tensor_parts",
    "format_etag",
    "loads",
    "media_type_of",
    "negotiate",
    "parse_etag",
    "parse_if_match",
    "quote",
    "require_media_type",
    "shorten",
    "spec_from_query",
    "spec_to_query",
    "tensor_from_obj",
    "tensor_to_obj",
]
