"""Tensor codecs: the one place bytes become arrays, for the service and the SDK alike.

Both sides use these functions, so a tensor the SDK encodes is exactly what the service
decodes, and the other way round. NumPy and the standard library only (safetensors is parsed
here, under the same checks as ``.npy``; orjson is used for JSON when installed).

Formats (media types in :mod:`poolgrad.protocol.media`):

* ``application/x-npy``: one NumPy ``.npy`` file (format 1.0, 2.0 or 3.0). The header is
  parsed by our own strict parser (:mod:`poolgrad.protocol.npyheader`, never NumPy's
  ``literal_eval``) under a size limit, object and structured dtypes are refused,
  and the header's shape times the item size must equal the body's remaining
  length *before* anything is allocated. Never unpickled, never memory-mapped.
* ``application/json``: ``{"dtype": "float32", "shape": [..], "data": [..]}``,
  ``data`` flat and row-major; non-finite values as ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"``.
* Named tensors: ``application/vnd.safetensors`` (a safetensors file), or JSON
  ``{"X": <tensor>, "dA": <tensor>}``.

Decoders return arrays that may be read-only views of the body (no copy); callers
that need to write must copy. Each encoder comes in two forms with one owner: ``encode_*_parts``
returns the body as :data:`Parts` (the header, then views of the arrays' memory: nothing
copied, for a server to write piece by piece), and ``encode_*`` joins them into one ``bytes``
(one copy). Every failure is a
:class:`~poolgrad.protocol.errors.ProtocolError`: ``MalformedTensor`` for bytes that do not
decode, ``InvalidTensor`` for a decodable tensor of a dtype no one accepts,
``UnsupportedMediaType`` for a media type with no codec; the message names the value.
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
import sys
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from poolgrad.protocol.errors import InvalidTensor, MalformedTensor, UnsupportedMediaType, quote
from poolgrad.protocol.jsonio import dumps, kind, loads
from poolgrad.protocol.media import (
    MEDIA_JSON,
    MEDIA_NPY,
    MEDIA_SAFETENSORS,
    NAMED_MEDIA_TYPES,
    TENSOR_MEDIA_TYPES,
)
from poolgrad.protocol.npyheader import NpyHeader, parse_npy_header

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "JSON_NAMES",
    "MAX_NDIM",
    "Parts",
    "decode_json_tensor",
    "decode_named",
    "decode_npy",
    "decode_safetensors",
    "decode_tensor",
    "encode_json_tensor",
    "encode_named",
    "encode_named_parts",
    "encode_npy",
    "encode_npy_parts",
    "encode_safetensors",
    "encode_safetensors_parts",
    "encode_tensor",
    "encode_tensor_parts",
    "sniff_media_type",
    "tensor_from_obj",
    "tensor_to_obj",
]

#: Largest ``.npy`` or safetensors header accepted (NumPy's own default is 10 000).
DEFAULT_MAX_HEADER_BYTES: Final = 65_536

#: Most dimensions a tensor may have (NumPy 1's limit; NumPy 2 allows 64).
MAX_NDIM: Final = 32

#: dtype names accepted in JSON tensors; anything else is refused by name.
JSON_NAMES: Final = (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)  # fmt: skip

#: The JSON name of an array's dtype by its ``dtype.str``, either byte order (``dtype.name``
#: is computed in Python: 1.5 us a lookup).
_JSON_NAME_OF: Final = {
    dtype.str: name
    for name in JSON_NAMES
    for dtype in (np.dtype(name), np.dtype(name).newbyteorder(">"))
}

_SAFETENSORS_DTYPES: Final[dict[str, str]] = {
    "F16": "float16", "F32": "float32", "F64": "float64",
    "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
    "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "BOOL": "bool",
}  # fmt: skip
#: Each safetensors code's NumPy dtype, little-endian as the format stores it.
_SAFETENSORS_NUMPY: Final = {
    code: np.dtype(name).newbyteorder("<") for code, name in _SAFETENSORS_DTYPES.items()
}
#: The code of an array's dtype by its ``dtype.str`` (``'<f4'``, ``'>f4'``, ``'|b1'``: either
#: byte order), with the little-endian dtype its bytes are written in. Looked up by ``str``,
#: not by ``dtype.name``, which NumPy computes in Python (1.5 us, a tenth of a tiny call).
_SAFETENSORS_ENCODINGS: Final = {
    dtype.str: (code, little)
    for code, little in _SAFETENSORS_NUMPY.items()
    for dtype in (little, little.newbyteorder(">"))
}
#: The keys of one tensor's entry in a safetensors header.
_SAFETENSORS_ENTRY_KEYS: Final = frozenset({"dtype", "shape", "data_offsets"})
_U64: Final = struct.Struct("<Q")

#: An encoded body as the pieces it is written in: a header this module wrote, then (binary
#: formats) byte views of the arrays' own memory, no copy made; ``b"".join(parts)`` is the
#: body. A server writes the pieces one after the other, so a large answer is never copied
#: into one buffer; the views keep their arrays alive, and the arrays must not change until
#: the pieces are written.
Parts: TypeAlias = list[bytes | memoryview]

_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NPY_MAGIC: Final = b"\x93NUMPY"


# ----------------------------------------------------------------------------- npy


def encode_npy_parts(array: npt.ArrayLike) -> Parts:
    """Encode ``array`` as one ``.npy`` file (format 1.0, or 2.0 for a header over 64 KiB),
    returned as its two parts: the header, then a byte view of the array's own memory.

    Cost: the header only; the data is not copied (the view keeps the array alive), unless the
    array is in neither C nor Fortran order (then one copy, into a C-ordered array).
    """
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise MalformedTensor(f"dtype {arr.dtype} cannot be sent: object arrays are never pickled")
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    header = np.lib.format.header_data_from_array_1_0(arr)
    head = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(head, header)
    except ValueError:  # a header over 64 KiB (thousands of dims) needs format 2.0
        head = io.BytesIO()
        np.lib.format.write_array_header_2_0(head, header)
    # Fortran order is stored as the transpose's C order, exactly as NumPy writes it.
    data = arr.T if header["fortran_order"] else arr
    return [head.getvalue(), _raw_bytes(data)]


def encode_npy(array: npt.ArrayLike) -> bytes:
    """:func:`encode_npy_parts` joined into one ``bytes``: one copy of the data."""
    return b"".join(encode_npy_parts(array))


def _raw_bytes(arr: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes as a flat byte view (no copy), whatever the dtype's byte
    order (a memoryview of the array itself refuses to cast a non-native format to bytes):
    ``len`` of the view is the array's ``nbytes``. The buffer protocol's plain byte view
    (0.2 us; a reshape and a dtype view cost 0.6)."""
    return np.frombuffer(arr, np.uint8).data


def decode_npy(
    body: bytes | bytearray, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> np.ndarray:
    """Decode one ``.npy`` file without pickling, memory-mapping or over-allocating.

    Returns a read-only view of ``body`` (no copy; read-only over a ``bytearray`` too) in C or
    Fortran order as the header says. Cost: parsing the header; the data is not touched.
    """
    if len(body) < 10 or not body.startswith(_NPY_MAGIC):
        raise MalformedTensor(
            f"body is not a .npy file: expected magic {_NPY_MAGIC!r}, got {bytes(body[:6])!r}"
        )
    major = body[6]
    if major == 1:
        (header_len,) = struct.unpack_from("<H", body, 8)
        data_start = 10 + header_len
    elif major in (2, 3):
        if len(body) < 12:
            raise MalformedTensor(
                f".npy body of {len(body)} bytes is truncated inside its preamble"
            )
        (header_len,) = struct.unpack_from("<I", body, 8)
        data_start = 12 + header_len
    else:
        raise MalformedTensor(f".npy format version {major}.{body[7]} is not supported")
    if header_len > max_header_bytes:
        raise MalformedTensor(
            f".npy header of {header_len} bytes exceeds the {max_header_bytes} limit"
        )
    if data_start > len(body):
        raise MalformedTensor(
            f".npy body of {len(body)} bytes is truncated: its header ends at byte {data_start}"
        )
    header = bytes(body[data_start - header_len : data_start])
    parse = _npy_header if header_len > NPY_CACHE_HEADER_BYTES else _cached_npy_header
    shape, fortran, dtype = parse(header, major)
    count = math.prod(shape)
    expected = count * dtype.itemsize
    actual = len(body) - data_start
    if actual != expected:
        what = "truncated" if actual < expected else "followed by extra bytes"
        raise MalformedTensor(
            f".npy data is {what}: shape {tuple(shape)} of {dtype} needs {expected} bytes, "
            f"body holds {actual}"
        )
    return np.ndarray(shape, dtype, _readonly(body), data_start, order="F" if fortran else "C")


def _readonly(body: bytes | bytearray) -> bytes | memoryview:
    """``body`` as a buffer arrays built over it cannot write to (``bytes`` already is)."""
    return body if isinstance(body, bytes) else memoryview(body).toreadonly()


#: ``.npy`` headers of at most this many bytes (NumPy pads a header of up to 4 dims to 118)
#: have what they say kept, so a client sending like tensors again skips the parser (16 of a
#: tiny decoding's 18 us).
NPY_CACHE_HEADER_BYTES: Final = 512
#: Parsed ``.npy`` headers kept, the least recently used dropped first.
NPY_CACHE_SIZE: Final = 64


def _npy_header(header: bytes, major: int) -> NpyHeader:
    """What a ``.npy`` header of format ``major`` says, every check that needs no data done:
    ``(shape, fortran_order, dtype)`` of a plain numeric dtype and a shape an array can have."""
    try:
        # Versions 1 and 2 are latin-1 (every byte decodes), version 3 is UTF-8.
        text = header.decode("utf-8" if major == 3 else "latin-1")
    except UnicodeDecodeError as exc:
        raise MalformedTensor(f".npy 3.0 header is not UTF-8: {exc}") from exc
    shape, fortran, dtype = parse_npy_header(text)
    _check_plain_dtype(dtype)
    return _checked_shape(shape, dtype, ".npy header"), fortran, dtype


# Keyed on all the parse depends on; a refusal is raised, never kept.
_cached_npy_header = functools.lru_cache(maxsize=NPY_CACHE_SIZE)(_npy_header)


def _checked_shape(
    shape: Any, dtype: np.dtype[Any], name: str, *, quoted: str | None = None
) -> tuple[int, ...]:
    """``shape`` (non-negative ints, already checked) as a tuple NumPy can build, or
    :class:`MalformedTensor` naming it as ``name``, followed by ``quoted`` (a client's tensor
    name) quoted: formatted only for a refusal, never on the way to an accepted tensor.

    A zero-size shape needs no bytes, so its other dims escape the body-length check; NumPy
    still refuses more than 32 (or 64) dims, or dims whose product, zeros aside, overflows
    ``sys.maxsize`` bytes, with a ``ValueError`` of its own. Both are refused here first.
    """
    if len(shape) > MAX_NDIM:
        label = name if quoted is None else f"{name} {quote(quoted)}"
        raise MalformedTensor(
            f"{label} shape has {len(shape)} dims; at most {MAX_NDIM} are allowed"
        )
    count = math.prod(shape)
    nbytes = (count or math.prod(max(dim, 1) for dim in shape)) * dtype.itemsize
    if nbytes > sys.maxsize:
        label = name if quoted is None else f"{name} {quote(quoted)}"
        raise MalformedTensor(
            f"{label} shape {list(shape)} of {dtype} spans {nbytes} bytes, "
            f"more than any array can (sys.maxsize = {sys.maxsize})"
        )
    return tuple(shape)


def _check_plain_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.hasobject:
        raise MalformedTensor(f"dtype {dtype} holds Python objects: pickled arrays are refused")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise MalformedTensor(f"structured dtype {dtype} is refused: send a plain numeric array")
    if dtype.kind not in "biuf":
        raise InvalidTensor(f"dtype {dtype} is not numeric: send float16, float32 or float64")


# ---------------------------------------------------------------------- JSON tensor


def tensor_to_obj(array: npt.ArrayLike) -> dict[str, Any]:
    """The JSON object for one tensor (``dtype``, ``shape``, flat row-major ``data``)."""
    arr = np.asarray(array)
    name = _JSON_NAME_OF.get(arr.dtype.str)
    if name is None:
        raise InvalidTensor(f"dtype {arr.dtype} cannot be sent as JSON")
    data: list[Any] = arr.ravel(order="C").tolist()
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        data = [_finite_or_name(value) for value in data]
    return {"dtype": name, "shape": list(arr.shape), "data": data}


def _finite_or_name(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def tensor_from_obj(obj: Any, *, name: str = "tensor") -> np.ndarray:
    """Build an array from one JSON tensor object, checking every field by name."""
    if not isinstance(obj, Mapping):
        raise MalformedTensor(
            f"{name} must be a JSON object with dtype, shape, data; got {kind(obj)}"
        )
    unknown = sorted(set(obj) - {"dtype", "shape", "data"})
    if unknown:
        raise MalformedTensor(f"{name} has unknown field(s) {unknown}; expected dtype, shape, data")
    dtype_name = obj.get("dtype", "float32")
    if dtype_name not in JSON_NAMES:
        raise InvalidTensor(
            f"{name}.dtype {quote(dtype_name)} is not supported; use float16, float32 or float64"
        )
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise MalformedTensor(
            f"{name}.shape must be a list of non-negative ints, got {quote(shape)}"
        )
    dtype = np.dtype(dtype_name)
    checked = _checked_shape(shape, dtype, name)
    data = obj.get("data")
    if not isinstance(data, list):
        raise MalformedTensor(f"{name}.data must be a flat list of numbers, got {kind(data)}")
    if data and isinstance(data[0], list):
        data = _flatten_nested(data, checked, name)
    count = math.prod(checked)
    if len(data) != count:
        raise MalformedTensor(
            f"{name}.data holds {len(data)} values but shape {shape} needs {count}: "
            "data must be flat, row-major (or nested exactly as shape)"
        )
    return _flat_array(data, dtype, name).reshape(checked)


def _flatten_nested(data: list[Any], shape: tuple[int, ...], name: str) -> list[Any]:
    """Nested ``data`` (as the Open Inference Protocol allows) as one flat row-major list,
    every level's length checked against ``shape`` on the way down. A level at a time, so
    the depth followed is the shape's (at most :data:`MAX_NDIM`), never the body's; lists
    nested deeper than the shape are left for :func:`_flat_array` to refuse."""
    level: list[Any] = [data]
    for depth, dim in enumerate(shape):
        flat: list[Any] = []
        for item in level:
            if not isinstance(item, list) or len(item) != dim:
                got = f"a list of {len(item)}" if isinstance(item, list) else kind(item)
                raise MalformedTensor(
                    f"{name}.data is nested, but holds {got} at depth {depth} where shape "
                    f"{list(shape)} needs a list of {dim}: data must be flat, row-major, "
                    "or nested exactly as shape"
                )
            flat.extend(item)
        level = flat
    return level


def _flat_array(data: list[Any], dtype: np.dtype[Any], name: str) -> np.ndarray:
    """Numbers (and the non-finite names) to a 1-D array, refusing anything lossy."""
    try:
        inferred = np.array(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise MalformedTensor(f"{name}.data must be a flat list of numbers: {exc}") from exc
    if inferred.ndim != 1:
        raise MalformedTensor(
            f"{name}.data must be flat, row-major (or nested exactly as shape); "
            "got lists nested deeper"
        )
    if inferred.size == 0:
        return np.zeros(0, dtype=dtype)
    if dtype.kind != "b":
        boolean = next((i for i, v in enumerate(data) if v is True or v is False), None)
        if boolean is not None:
            raise MalformedTensor(
                f"{name}.data[{boolean}] = {quote(data[boolean])} is not a number"
            )
    if inferred.dtype.kind not in "biuf":
        return _slow_flat(data, dtype, name)
    with np.errstate(invalid="ignore", over="ignore"):
        flat = inferred.astype(dtype)
    if dtype.kind in "biu" and not np.array_equal(flat, inferred):
        index = int(np.flatnonzero(flat != inferred)[0])
        raise MalformedTensor(
            f"{name}.data[{index}] = {quote(data[index])} does not fit dtype {dtype}"
        )
    if dtype.kind == "f":
        _check_no_overflow(inferred, flat, data, name)
    return flat


def _check_no_overflow(wide: np.ndarray, narrow: np.ndarray, data: list[Any], name: str) -> None:
    """Refuse a finite value that became infinite in ``narrow``'s dtype (1e10 in float16):
    rounding is the only loss a JSON tensor may suffer."""
    overflowed = np.isinf(narrow) & np.isfinite(wide)
    if overflowed.any():
        index = int(np.flatnonzero(overflowed)[0])
        raise MalformedTensor(
            f"{name}.data[{index}] = {quote(data[index])} overflows dtype {narrow.dtype} "
            f"(largest finite value {np.finfo(narrow.dtype).max})"
        )


def _slow_flat(data: list[Any], dtype: np.dtype[Any], name: str) -> np.ndarray:
    """The path for lists holding non-finite names (or values numpy cannot infer)."""
    values: list[float] = []
    for index, value in enumerate(data):
        if dtype.kind == "f" and isinstance(value, str) and value in _NON_FINITE:
            values.append(_NON_FINITE[value])
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                values.append(float(value))
                continue
            except OverflowError:
                pass
        raise MalformedTensor(
            f"{name}.data[{index}] = {quote(value)} is not a number of dtype {dtype}"
            ' (non-finite floats are "NaN", "Infinity", "-Infinity")'
        )
    if dtype.kind != "f":
        # Every value was a number but numpy could not infer a dtype: out of range.
        raise MalformedTensor(f"{name}.data holds values that do not fit dtype {dtype}")
    wide = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        flat = wide.astype(dtype)
    _check_no_overflow(wide, flat, data, name)
    return flat


def encode_json_tensor(array: npt.ArrayLike) -> bytes:
    """Encode one tensor as JSON bytes."""
    return dumps(tensor_to_obj(array))


def decode_json_tensor(body: bytes | bytearray) -> np.ndarray:
    """Decode one JSON tensor (a new, writable array)."""
    return tensor_from_obj(loads(body))


# ---------------------------------------------------------------------- safetensors


def encode_safetensors_parts(tensors: Mapping[str, npt.ArrayLike]) -> Parts:
    """Encode named tensors as a safetensors file (little-endian, 8-byte aligned header),
    returned as its parts: the length prefix and header, then each tensor's bytes in order.

    The header is the compact JSON ``json.dumps`` writes (ASCII, keys in the mapping's order),
    written here entry by entry. Cost: the header only; each tensor's bytes are a view of the
    array's own memory (no copy) when it is little-endian (or single-byte) and C-ordered, else
    of a converted copy (a byte swap for big-endian arrays, a copy for arrays not in C order).
    """
    entries: list[str] = []
    chunks: list[memoryview] = []
    offset = 0
    for name, value in tensors.items():
        arr = np.asarray(value)
        encoding = _SAFETENSORS_ENCODINGS.get(arr.dtype.str)
        if encoding is None:
            raise MalformedTensor(
                f"tensor {quote(name)} of dtype {arr.dtype} cannot go in safetensors"
            )
        code, little = encoding
        raw = np.ascontiguousarray(arr, dtype=little)
        stop = offset + raw.nbytes
        entries.append(f"{_entry_head(name, code, arr.shape)}{offset},{stop}]}}")
        chunks.append(_raw_bytes(raw))
        offset = stop
    head = f"{{{','.join(entries)}}}".encode()
    head += b" " * (-len(head) % 8)
    return [_U64.pack(len(head)) + head, *chunks]


def encode_safetensors(tensors: Mapping[str, npt.ArrayLike]) -> bytes:
    """:func:`encode_safetensors_parts` joined into one ``bytes``: one copy of the data."""
    return b"".join(encode_safetensors_parts(tensors))


#: Distinct (name, dtype, shape) whose header text is kept: a handful in any real use.
ENTRY_CACHE_SIZE: Final = 256


# typed: 1, 1.0 and True are equal keys but different JSON.
@functools.lru_cache(maxsize=ENTRY_CACHE_SIZE, typed=True)
def _entry_head(name: object, code: str, shape: tuple[int, ...]) -> str:
    """One tensor's header entry as ``json.dumps`` writes it, up to its data offsets: the name
    as a JSON key (a str escaped to ASCII; an int, float, bool or None converted as JSON
    converts keys, a TypeError for anything else, as from json), dtype and shape."""
    key = (
        encode_basestring_ascii(name)
        if isinstance(name, str)
        else json.dumps({name: None}, separators=(",", ":"))[1:-6]
    )
    return f'{key}:{{"dtype":"{code}","shape":[{",".join(map(str, shape))}],"data_offsets":['


def decode_safetensors(
    body: bytes | bytearray, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> dict[str, np.ndarray]:
    """Decode a safetensors file into read-only views of ``body`` (a ``bytearray`` too),
    checking every offset.

    Cost: parsing and checking the header (once per distinct small header and body length,
    see :data:`LAYOUT_CACHE_SIZE`); the data is not touched.
    """
    if len(body) < 8:
        raise MalformedTensor(
            f"safetensors body of {len(body)} bytes is shorter than its 8-byte prefix"
        )
    (header_len,) = _U64.unpack_from(body, 0)
    if header_len > max_header_bytes:
        raise MalformedTensor(
            f"safetensors header of {header_len} bytes exceeds the {max_header_bytes} limit"
        )
    data_start = 8 + header_len
    if data_start > len(body):
        raise MalformedTensor(
            f"safetensors body of {len(body)} bytes is truncated: header claims {header_len} bytes"
        )
    header = bytes(body[8:data_start])
    buffer_bytes = len(body) - data_start
    layout = _layout if header_len > LAYOUT_CACHE_HEADER_BYTES else _cached_layout
    buffer = _readonly(body)
    return {
        name: np.ndarray(shape, dtype, buffer, data_start + start)
        for name, dtype, shape, start in layout(header, buffer_bytes)
    }


#: What a safetensors header says, checked: per tensor its name, dtype, shape and the offset
#: of its bytes in the buffer after the header.
_Layout = tuple[tuple[str, "np.dtype[Any]", tuple[int, ...], int], ...]

#: Headers of at most this many bytes (a few tensors) have their checked layout kept, so a
#: client sending like tensors again skips parsing and checking (3 of a tiny call's 4 us).
LAYOUT_CACHE_HEADER_BYTES: Final = 512
#: Layouts kept, the least recently used dropped first: at most this many small headers.
LAYOUT_CACHE_SIZE: Final = 64


def _layout(header_bytes: bytes, buffer_bytes: int) -> _Layout:
    """The tensors a safetensors header describes, every one checked against the
    ``buffer_bytes`` that follow the header; :class:`MalformedTensor` or
    :class:`InvalidTensor` naming the first fault."""
    header = loads(header_bytes)
    if not isinstance(header, dict):
        raise MalformedTensor(f"safetensors header must be a JSON object, got {kind(header)}")
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.keys() != _SAFETENSORS_ENTRY_KEYS:
            raise MalformedTensor(
                f"safetensors entry {quote(name)} must hold dtype, shape, data_offsets"
            )
        code = entry["dtype"]
        dtype = _SAFETENSORS_NUMPY.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise InvalidTensor(
                f"safetensors tensor {quote(name)} has unsupported dtype {quote(entry['dtype'])}"
            )
        shape, offsets = entry["shape"], entry["data_offsets"]
        # JSON gives plain ints (bool is the one int subclass it makes, and is refused).
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise MalformedTensor(
                f"safetensors tensor {quote(name)} has a bad shape {quote(shape)}"
            )
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or type(offsets[0]) is not int
            or type(offsets[1]) is not int
            or not 0 <= offsets[0] <= offsets[1] <= buffer_bytes
        ):
            raise MalformedTensor(
                f"safetensors tensor {quote(name)} has offsets {quote(offsets)} outside its "
                f"{buffer_bytes}-byte buffer"
            )
        checked = _checked_shape(shape, dtype, "safetensors tensor", quoted=name)
        count = math.prod(checked)
        if offsets[1] - offsets[0] != count * dtype.itemsize:
            raise MalformedTensor(
                f"safetensors tensor {quote(name)}: shape {shape} of {_SAFETENSORS_DTYPES[code]} "
                f"needs {count * dtype.itemsize} bytes, offsets span {offsets[1] - offsets[0]}"
            )
        tensors.append((name, dtype, checked, offsets[0]))
    return tuple(tensors)


# Keyed on the header's bytes and the buffer's length, all a layout depends on: a refusal is
# raised, never kept, and a hit returns exactly what checking again would.
_cached_layout = functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)(_layout)


# ----------------------------------------------------------------- by media type


#: What each body format is called in a message, and what an empty body was expected to be.
_FORMAT_NAMES: Final = {
    MEDIA_NPY: ".npy file",
    MEDIA_SAFETENSORS: "safetensors file",
    MEDIA_JSON: "JSON document",
}
_EXPECTED: Final = {
    (MEDIA_NPY, False): "a .npy file (application/x-npy)",
    (MEDIA_JSON, False): 'a JSON tensor {"dtype", "shape", "data"}',
    (MEDIA_SAFETENSORS, True): "a safetensors file (application/vnd.safetensors)",
    (MEDIA_JSON, True): 'a JSON object of named tensors {"X": <tensor>, "dA": <tensor>}',
}


def sniff_media_type(body: bytes | bytearray) -> str | None:
    """The format ``body`` plainly is, from its first bytes, or ``None``: a ``.npy`` magic,
    a safetensors length prefix followed by its JSON header, or JSON's opening bracket. Only
    used to explain a body that does not decode as its declared type."""
    if body.startswith(_NPY_MAGIC):
        return MEDIA_NPY
    if len(body) > 8 and body[8:9] == b"{":
        (header_len,) = struct.unpack_from("<Q", body, 0)
        if header_len <= len(body) - 8:
            return MEDIA_SAFETENSORS
    if body[:64].lstrip(b" \t\r\n")[:1] in (b"{", b"["):  # a slice: never copy the body
        return MEDIA_JSON
    return None


def _check_body(body: bytes | bytearray, media_type: str, accepted: tuple[str, ...]) -> None:
    """Name an empty body, and a body of another format than its ``Content-Type`` says (a
    ``.npy`` sent as JSON would otherwise fail as "not valid UTF-8"), before decoding."""
    named = accepted == NAMED_MEDIA_TYPES
    if not body:
        raise MalformedTensor(f"the body is empty; expected {_EXPECTED[media_type, named]}")
    sniffed = sniff_media_type(body)
    if sniffed is None or sniffed == media_type:
        return
    what = _FORMAT_NAMES[sniffed]
    if sniffed in accepted:
        fix = f"send it as Content-Type: {sniffed}"
    else:
        fix = f"a {what} is not accepted here; send one of {', '.join(accepted)}"
    raise MalformedTensor(f"the body looks like a {what}, not {media_type}; {fix}")


def decode_tensor(body: bytes | bytearray, media_type: str) -> np.ndarray:
    """Decode one tensor of ``media_type`` (``MEDIA_NPY`` or ``MEDIA_JSON``)."""
    if media_type in TENSOR_MEDIA_TYPES:
        _check_body(body, media_type, TENSOR_MEDIA_TYPES)
    if media_type == MEDIA_NPY:
        return decode_npy(body)
    if media_type == MEDIA_JSON:
        return decode_json_tensor(body)
    raise UnsupportedMediaType(f"no tensor decoder for media type {quote(media_type)}")


def encode_tensor_parts(array: npt.ArrayLike, media_type: str) -> Parts:
    """Encode one tensor as ``media_type`` (``MEDIA_NPY`` or ``MEDIA_JSON``), as parts: a
    ``.npy`` file's header and a view of the array's bytes (:func:`encode_npy_parts`), or one
    JSON document."""
    if media_type == MEDIA_NPY:
        return encode_npy_parts(array)
    if media_type == MEDIA_JSON:
        return [encode_json_tensor(array)]
    raise UnsupportedMediaType(f"no tensor encoder for media type {quote(media_type)}")


def encode_tensor(array: npt.ArrayLike, media_type: str) -> bytes:
    """Encode one tensor as ``media_type`` (``MEDIA_NPY`` or ``MEDIA_JSON``), in one ``bytes``
    (:func:`encode_tensor_parts` joined)."""
    return b"".join(encode_tensor_parts(array, media_type))


def decode_named(body: bytes | bytearray, media_type: str) -> dict[str, np.ndarray]:
    """Decode named tensors (``MEDIA_SAFETENSORS`` or a JSON object of tensors)."""
    if media_type in NAMED_MEDIA_TYPES:
        _check_body(body, media_type, NAMED_MEDIA_TYPES)
    if media_type == MEDIA_SAFETENSORS:
        return decode_safetensors(body)
    if media_type == MEDIA_JSON:
        obj = loads(body)
        if not isinstance(obj, dict):
            raise MalformedTensor(
                f"named tensors must be a JSON object of tensors, got {kind(obj)}"
            )
        return {name: tensor_from_obj(value, name=name) for name, value in obj.items()}
    raise UnsupportedMediaType(f"no named-tensor decoder for media type {quote(media_type)}")


def encode_named_parts(tensors: Mapping[str, npt.ArrayLike], media_type: str) -> Parts:
    """Encode named tensors as ``media_type`` (``MEDIA_SAFETENSORS`` or ``MEDIA_JSON``), as
    parts: a safetensors file's header and a view of each tensor's bytes
    (:func:`encode_safetensors_parts`), or one JSON document."""
    if media_type == MEDIA_SAFETENSORS:
        return encode_safetensors_parts(tensors)
    if media_type == MEDIA_JSON:
        return [dumps({name: tensor_to_obj(value) for name, value in tensors.items()})]
    raise UnsupportedMediaType(f"no named-tensor encoder for media type {quote(media_type)}")


def encode_named(tensors: Mapping[str, npt.ArrayLike], media_type: str) -> bytes:
    """Encode named tensors as ``media_type`` (``MEDIA_SAFETENSORS`` or ``MEDIA_JSON``), in one
    ``bytes`` (:func:`encode_named_parts` joined)."""
    return b"".join(encode_named_parts(tensors, media_type))
