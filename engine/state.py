"""What forward keeps for backward, and its versioned binary form.

A :class:`PoolState` never holds X, A or materialized windows:

- max/min: ``winners``, one bit-plane per window offset (row-major window order), each plane a
  bit-packed boolean over the output positions in C order: bit set when the input element at
  that offset of that window receives gradient under the spec's tie rule. Padding bits are never
  set. Size: ``prod(pool_size) * A.size / 8`` bytes (non-overlapping float32: ``X.nbytes / 32``).
- avg: nothing but shapes, plus ``nan_windows`` (one bit per output position, set where the
  window holds a NaN) only when X held NaN under ``nan="propagate"``.

Wire format (little-endian), version 1::

    b"PGSTATE" | u8 version | u32 header length | header (UTF-8 JSON) | array bytes | u32 CRC32

The JSON header holds ``spec`` (``PoolSpec.to_dict()``), ``input_shape``, ``output_shape``,
``dtype`` and ``arrays``: a list of ``{"name", "dtype", "shape"}`` whose raw bytes follow in order.
The CRC32 covers every byte before it. Never pickle.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from collections.abc import Mapping

import numpy as np

from engine.errors import EngineError, StateError
from engine.geometry import make_plan
from engine.spec import PoolSpec

__all__ = ["SUPPORTED_DTYPES", "PoolState"]

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: Each supported dtype's name, as the header writes it (NumPy computes ``dtype.name`` in
#: Python: 1.5 us a lookup).
_DTYPE_NAMES = {dtype: dtype.name for dtype in SUPPORTED_DTYPES}

_MAGIC = b"PGSTATE"
_VERSION = 1
_PREFIX = struct.Struct("<7sBI")
_CRC = struct.Struct("<I")
# The JSON header holds a spec and two shapes: a few hundred bytes.
_MAX_HEADER_BYTES = 65_536


def packed_plane_bytes(output_shape: tuple[int, ...]) -> int:
    """Bytes of one bit-packed plane over the output positions."""
    return -(-math.prod(output_shape) // 8)


class PoolState:
    """What :func:`engine.backward` needs from one :func:`engine.forward` call, nothing more.

    Read-only: ``spec``, ``input_shape``, ``output_shape``, ``dtype``; the bit arrays are
    read-only views. ``nbytes`` counts the array bytes held (shapes and spec are a few hundred
    bytes of metadata on top, as in ``to_bytes()``).
    """

    __slots__ = ("_dtype", "_input_shape", "_nan_windows", "_output_shape", "_spec", "_winners")

    def __init__(
        self,
        spec: PoolSpec,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        dtype: np.dtype[np.floating],
        winners: np.ndarray | None = None,
        nan_windows: np.ndarray | None = None,
    ) -> None:
        self._spec = spec
        self._input_shape = tuple(map(int, input_shape))
        self._output_shape = tuple(map(int, output_shape))
        self._dtype = np.dtype(dtype)
        self._winners = _frozen(winners)
        self._nan_windows = _frozen(nan_windows)

    @property
    def spec(self) -> PoolSpec:
        """The spec of the forward call."""
        return self._spec

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of X (and of dX)."""
        return self._input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of A (and of dA)."""
        return self._output_shape

    @property
    def dtype(self) -> np.dtype[np.floating]:
        """dtype of X, A and dX."""
        return self._dtype

    @property
    def winners(self) -> np.ndarray | None:
        """max/min: uint8 array ``(prod(pool_size), ceil(A.size / 8))`` of bit-packed planes."""
        return self._winners

    @property
    def nan_windows(self) -> np.ndarray | None:
        """avg with NaN in X: uint8 array ``(ceil(A.size / 8),)``, bit set for NaN windows."""
        return self._nan_windows

    @property
    def nbytes(self) -> int:
        """Bytes of array data held (0 for avg without NaN)."""
        return sum(a.nbytes for a in (self._winners, self._nan_windows) if a is not None)

    def __repr__(self) -> str:
        return (
            f"PoolState(mode={self._spec.mode!r}, input_shape={self._input_shape}, "
            f"output_shape={self._output_shape}, dtype={self._dtype.name}, nbytes={self.nbytes})"
        )

    def to_bytes(self) -> bytes:
        """Serialize to the versioned binary format of this module (a copy, ``~nbytes`` + header).

        ``PoolState.from_bytes(state.to_bytes())`` gives an equal state.
        """
        arrays = [
            (name, array)
            for name, array in (("winners", self._winners), ("nan_windows", self._nan_windows))
            if array is not None
        ]
        header_bytes = _header_bytes(
            self._spec,
            self._input_shape,
            self._output_shape,
            _DTYPE_NAMES.get(self._dtype) or self._dtype.name,
            tuple((name, array.shape) for name, array in arrays),
        )
        parts = [_PREFIX.pack(_MAGIC, _VERSION, len(header_bytes)), header_bytes]
        parts.extend(np.ascontiguousarray(array, dtype="<u1").tobytes() for _, array in arrays)
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> PoolState:
        """Rebuild a state from :meth:`to_bytes` output; the arrays are copied out of ``blob``.

        Raises
        ------
        StateError
            If the blob is truncated, corrupt (CRC mismatch), of another version, or its header
            is inconsistent with the spec and shapes it names.
        """
        data = bytes(blob)
        minimum = _PREFIX.size + _CRC.size
        if len(data) < minimum:
            raise StateError(f"state blob is truncated: {len(data)} bytes, need at least {minimum}")
        magic, version, header_length = _PREFIX.unpack_from(data)
        if magic != _MAGIC:
            raise StateError(f"state blob has magic {magic!r}, expected {_MAGIC!r}")
        if version != _VERSION:
            raise StateError(f"state blob has version {version}, this engine reads {_VERSION}")
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        body = data[: len(data) - _CRC.size]
        if zlib.crc32(body) != crc:
            raise StateError(
                f"state blob is corrupt or truncated: CRC32 {zlib.crc32(body):#010x} "
                f"does not match the stored {crc:#010x} ({len(data)} bytes)"
            )
        if header_length > _MAX_HEADER_BYTES:
            raise StateError(
                f"state blob header length {header_length} exceeds the {_MAX_HEADER_BYTES} limit"
            )
        header_end = _PREFIX.size + header_length
        if header_end > len(body):
            raise StateError(
                f"state blob header length {header_length} runs past the blob ({len(data)} bytes)"
            )
        header = body[_PREFIX.size : header_end]
        layout = _layout if header_length > LAYOUT_CACHE_HEADER_BYTES else _cached_layout
        spec, input_shape, output_shape, dtype, arrays = layout(header, len(body))
        copies = {
            name: np.frombuffer(body, dtype=np.uint8, count=size, offset=offset)
            .reshape(shape)
            .copy()
            for name, shape, offset, size in arrays
        }
        return cls(
            spec,
            input_shape,
            output_shape,
            dtype,
            winners=copies.get("winners"),
            nan_windows=copies.get("nan_windows"),
        )


#: Distinct state headers whose bytes are kept for :meth:`PoolState.to_bytes` (a session's
#: every forward writes the same one): at most this many, a few hundred bytes each.
HEADER_CACHE_SIZE = 64


@functools.lru_cache(maxsize=HEADER_CACHE_SIZE)
def _header_bytes(
    spec: PoolSpec,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    dtype_name: str,
    arrays: tuple[tuple[str, tuple[int, ...]], ...],
) -> bytes:
    """The JSON header of a state: its spec, shapes, dtype and array descriptors."""
    header = {
        "spec": spec.to_dict(),
        "input_shape": list(input_shape),
        "output_shape": list(output_shape),
        "dtype": dtype_name,
        "arrays": [
            {"name": name, "dtype": "uint8", "shape": list(shape)} for name, shape in arrays
        ],
    }
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


#: What a state header says, checked: spec, input and output shapes, dtype, and per array its
#: name, shape, offset in the blob's body and size.
_Layout = tuple[
    PoolSpec,
    tuple[int, ...],
    tuple[int, ...],
    "np.dtype[np.floating]",
    tuple[tuple[str, tuple[int, ...], int, int], ...],
]

#: State headers of at most this many bytes (a spec and two short shapes: about 250) have
#: their checked layout kept, so a session's backward skips parsing and validating its spec
#: again (most of a tiny state's 17 us).
LAYOUT_CACHE_HEADER_BYTES = 1024
#: Layouts kept, the least recently used dropped first.
LAYOUT_CACHE_SIZE = 64


def _layout(header_bytes: bytes, body_length: int) -> _Layout:
    """The state a header describes, checked against the ``body_length`` bytes of the blob
    before its CRC; :class:`StateError` naming the first fault."""
    try:
        header = json.loads(header_bytes.decode())
    # ValueError covers malformed JSON and Python's digit limit on huge ints; a forged
    # header can also nest deep enough to exhaust the recursion limit.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateError(f"state blob header is not valid JSON: {exc}") from exc
    if not isinstance(header, Mapping):
        raise StateError(f"state header must be a JSON object, got {header!r}")
    expected = {"spec", "input_shape", "output_shape", "dtype", "arrays"}
    if set(header) != expected:
        raise StateError(f"state header has keys {sorted(header)}, expected {sorted(expected)}")
    spec_dict = header["spec"]
    if not isinstance(spec_dict, Mapping):
        raise StateError(f"state header spec must be an object, got {spec_dict!r}")
    try:
        spec = PoolSpec.from_dict(spec_dict)
    except EngineError as exc:
        raise StateError(f"state header holds an invalid spec: {exc}") from exc
    input_shape = _shape("input_shape", header["input_shape"])
    try:
        plan = make_plan(spec, input_shape)
    except EngineError as exc:
        raise StateError(
            f"state header input_shape {input_shape} does not fit its spec: {exc}"
        ) from exc
    output_shape = _shape("output_shape", header["output_shape"])
    if output_shape != plan.output_shape:
        raise StateError(
            f"state header output_shape {output_shape} does not match {plan.output_shape} "
            f"computed from input_shape {input_shape} and the spec"
        )
    dtype_name = header["dtype"]
    if dtype_name not in _DTYPE_NAMES.values():
        raise StateError(f"state header dtype {dtype_name!r} is not float16/32/64")

    plane = packed_plane_bytes(output_shape)
    allowed = (
        {"winners": (plan.window_size, plane)} if spec.mode != "avg" else {"nan_windows": (plane,)}
    )
    descriptors = header["arrays"]
    if not isinstance(descriptors, list):
        raise StateError(f"state header arrays must be a list, got {descriptors!r}")
    position = _PREFIX.size + len(header_bytes)
    arrays: dict[str, tuple[tuple[int, ...], int, int]] = {}
    for descriptor in descriptors:
        if not isinstance(descriptor, Mapping) or set(descriptor) != {"name", "dtype", "shape"}:
            raise StateError(f"state array descriptor is malformed: {descriptor!r}")
        name = descriptor["name"]
        if not isinstance(name, str) or name not in allowed or name in arrays:
            raise StateError(
                f"state array {name!r} is unexpected or repeated for mode {spec.mode!r}"
            )
        shape = _shape(f"arrays[{name}].shape", descriptor["shape"], allow_zero=True)
        if descriptor["dtype"] != "uint8" or shape != allowed[name]:
            raise StateError(
                f"state array {name!r} is {descriptor['dtype']} {shape}, expected uint8 "
                f"{allowed[name]}"
            )
        size = math.prod(shape)
        if position + size > body_length:
            raise StateError(
                f"state blob is truncated: array {name!r} needs {size} bytes at offset "
                f"{position}, blob body has {body_length}"
            )
        arrays[name] = (shape, position, size)
        position += size
    if spec.mode != "avg" and "winners" not in arrays:
        raise StateError(f"state for mode {spec.mode!r} lacks its winners array")
    if position != body_length:
        raise StateError(f"state blob has {body_length - position} trailing bytes after its arrays")
    return (
        spec,
        input_shape,
        output_shape,
        np.dtype(dtype_name),
        tuple((name, *array) for name, array in arrays.items()),
    )


# Keyed on the header's bytes and the body's length, all a layout depends on: a refusal is
# raised, never kept, and a hit returns exactly what checking again would.
_cached_layout = functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)(_layout)


def _frozen(array: np.ndarray | None) -> np.ndarray | None:
    if array is None:
        return None
    view = array.view()
    view.setflags(write=False)
    return view


def _shape(field: str, value: object, *, allow_zero: bool = False) -> tuple[int, ...]:
    lowest = 0 if allow_zero else 1
    if not isinstance(value, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= lowest for n in value
    ):
        raise StateError(f"state header {field} must be a list of positive ints, got {value!r}")
    return tuple(value)
