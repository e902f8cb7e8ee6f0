"""The Open Inference Protocol (KServe v2, Triton HTTP) as a pure codec: bytes in, checked
values out, and back.

It parses an inference request (the JSON header and, with the binary tensor data extension,
the tensors after it), checks everything the protocol says about it before a byte of tensor
data is converted, and builds responses and error bodies. What the tensors *mean* (which
inputs a model takes, the layer spec) is the server's business; this module knows only the
protocol. NumPy and the standard library only.

The request, as Triton documents it::

    POST /v2/models/{name}[/versions/{v}]/infer
    Inference-Header-Content-Length: <n>      only when binary tensors follow the JSON
    {"id": "..", "parameters": {..},
     "inputs": [{"name", "shape", "datatype", "parameters": {"binary_data_size": <bytes>}}
                or {"name", "shape", "datatype", "data": [..flat or nested, row-major..]}],
     "outputs": [{"name", "parameters": {"binary_data": true}}]}   optional
    <binary tensors, in the order of the inputs that have binary_data_size>

The response has the same shape: JSON alone (``application/json``), or JSON followed by the
binary outputs (``application/octet-stream`` and ``Inference-Header-Content-Length``). Errors
are ``{"error": "<message>"}``.

Every failure raises a :class:`~poolgrad.protocol.errors.ProtocolError` naming the offending
value: :class:`MalformedTensor` (400) for a body that does not hold what it claims,
:class:`InvalidTensor` (422) for a datatype no one accepts, :class:`BadInferenceRequest` (400
``bad_request``) for parameters and requested outputs that make no sense.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from poolgrad.protocol.errors import InvalidTensor, MalformedTensor, ProtocolError, quote
from poolgrad.protocol.etags import DIGITS
from poolgrad.protocol.jsonio import dumps, kind, loads
from poolgrad.protocol.tensors import (
    JSON_NAMES,
    MAX_NDIM,
    Parts,
    _checked_shape,
    _raw_bytes,
    tensor_from_obj,
    tensor_to_obj,
)

__all__ = [
    "BINARY_MEDIA_TYPE",
    "DATATYPES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "ROOT",
    "BadInferenceRequest",
    "EncodedOutput",
    "InferInput",
    "InferRequest",
    "RequestedOutput",
    "SequenceRef",
    "datatype_of",
    "encode_output",
    "error_body",
    "is_protocol_path",
    "parse_header_length",
    "parse_request",
    "response_body",
    "response_parts",
]

#: The protocol's URL root: every path under it answers errors as ``{"error": ".."}``.
ROOT: Final = "/v2"
#: The request and response header giving the length of the JSON before binary tensors.
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
#: The media type of a response that carries binary tensors after its JSON.
BINARY_MEDIA_TYPE: Final = "application/octet-stream"
#: What server metadata lists: binary tensors, and sequences with uint64 or string ids.
EXTENSIONS: Final = ("binary_tensor_data", "sequence", "sequence(string_id)")


def _datatype_name(dtype_name: str) -> str:
    """The v2 name of a NumPy dtype name: ``float32`` -> ``FP32``, ``uint8`` -> ``UINT8``."""
    dtype = np.dtype(dtype_name)
    if dtype.kind == "b":
        return "BOOL"
    return {"f": "FP", "i": "INT", "u": "UINT"}[dtype.kind] + str(dtype.itemsize * 8)


#: v2 datatypes of the dtypes a JSON tensor may have (the engine then decides what it
#: accepts). BF16 and BYTES have no NumPy dtype here, so they are refused by name like any
#: unknown datatype.
DATATYPES: Final[dict[str, str]] = {_datatype_name(name): name for name in JSON_NAMES}
_DATATYPE_OF: Final = {name: datatype for datatype, name in DATATYPES.items()}

#: Request parameters the protocol defines; every other one belongs to the model.
_PROTOCOL_PARAMETERS: Final = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "binary_data_output", "priority", "timeout"}
)
_INPUT_FIELDS: Final = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS: Final = frozenset({"name", "parameters"})
_REQUEST_FIELDS: Final = frozenset({"id", "parameters", "inputs", "outputs"})
#: A string sequence id longer than this is refused (it is hashed, never stored, but a
#: megabyte of id is not an id).
MAX_SEQUENCE_ID_CHARS: Final = 256


class BadInferenceRequest(ProtocolError):
    """Request parameters or requested outputs that make no sense (400 ``bad_request``)."""

    code = "bad_request"


def is_protocol_path(path: str) -> bool:
    """Whether a request path is under :data:`ROOT` (``/v2`` itself included)."""
    return path == ROOT or path.startswith(ROOT + "/")


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name of a NumPy dtype (``float32`` -> ``FP32``)."""
    try:
        return _DATATYPE_OF[dtype.name]
    except KeyError:
        raise InvalidTensor(f"dtype {dtype} has no Open Inference Protocol datatype") from None


def error_body(message: str) -> bytes:
    """The protocol's error body: ``{"error": message}``."""
    return dumps({"error": message})


# ------------------------------------------------------------------------- request


@dataclass(frozen=True)
class SequenceRef:
    """A request's place in a sequence: ``id`` is a non-zero uint64 or a non-empty string."""

    id: int | str
    start: bool
    end: bool


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` is None when it did not say how."""

    name: str
    binary: bool | None


@dataclass(frozen=True)
class InferInput:
    """One input tensor as the request declared it, its values not yet converted.

    ``source`` is the JSON ``data`` as a flat, row-major list (its length already checked
    against the shape), or the tensor's slice of the body (binary data, its size already
    checked against shape and datatype).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    source: list[Any] | memoryview

    def decode(self) -> np.ndarray:
        """The tensor as an array: a read-only view of the body for binary data (no copy),
        a new array for JSON data, each value checked (numbers only, nothing lossy but
        rounding). Cost: for JSON, one pass over the values."""
        dtype = np.dtype(DATATYPES[self.datatype])
        if isinstance(self.source, memoryview):
            count = math.prod(self.shape)
            flat = np.frombuffer(self.source, dtype=dtype.newbyteorder("<"), count=count)
            return flat.reshape(self.shape)
        obj = {"dtype": dtype.name, "shape": list(self.shape), "data": self.source}
        return tensor_from_obj(obj, name=f"input {quote(self.name)}")


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: every field and every tensor's extent checked, no value
    converted yet."""

    id: str | None
    parameters: Mapping[str, Any]
    inputs: Mapping[str, InferInput]
    outputs: tuple[RequestedOutput, ...] | None

    def decode_inputs(self) -> dict[str, np.ndarray]:
        """Every input as an array, by name (see :meth:`InferInput.decode`)."""
        return {name: tensor.decode() for name, tensor in self.inputs.items()}

    def sequence(self) -> SequenceRef | None:
        """The sequence this request belongs to, or None (no ``sequence_id``, or 0 or "")."""
        sequence_id = self.parameters.get("sequence_id", 0)
        start = _flag(self.parameters, "sequence_start")
        end = _flag(self.parameters, "sequence_end")
        if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
            raise BadInferenceRequest(
                f"parameters.sequence_id must be a uint64 or a string, got {quote(sequence_id)}"
            )
        if isinstance(sequence_id, int) and not 0 <= sequence_id < 2**64:
            raise BadInferenceRequest(f"parameters.sequence_id {sequence_id} is not a uint64")
        if isinstance(sequence_id, str) and len(sequence_id) > MAX_SEQUENCE_ID_CHARS:
            raise BadInferenceRequest(
                f"parameters.sequence_id of {len(sequence_id)} characters is longer than "
                f"{MAX_SEQUENCE_ID_CHARS}"
            )
        if sequence_id in (0, ""):
            if start or end:
                flag = "sequence_start" if start else "sequence_end"
                raise BadInferenceRequest(
                    f"parameters.{flag} is true but sequence_id is {quote(sequence_id)}: a "
                    "sequence needs a non-zero uint64 or a non-empty string id"
                )
            return None
        return SequenceRef(sequence_id, start, end)

    def model_parameters(self) -> list[tuple[str, str]]:
        """The request parameters the protocol does not define, as ``(name, text)`` pairs in
        query-string form: strings as they are, ints in decimal, bools as ``true``/``false``."""
        items = []
        for name, value in self.parameters.items():
            if name in _PROTOCOL_PARAMETERS:
                continue
            if isinstance(value, bool):
                items.append((name, "true" if value else "false"))
            elif isinstance(value, int | str):
                items.append((name, str(value)))
            else:
                raise BadInferenceRequest(
                    f"parameters.{name} must be a string, an int or a bool, got {quote(value)}"
                )
        return items

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data: its own ``binary_data`` when
        requested with one, else the request's ``binary_data_output`` (default false)."""
        for output in self.outputs or ():
            if output.name == name and output.binary is not None:
                return output.binary
        return _flag(self.parameters, "binary_data_output")


def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as a byte count (None when absent)."""
    if value is None:
        return None
    if DIGITS.fullmatch(value.strip()) is None:
        raise BadInferenceRequest(f"{HEADER_LENGTH} {quote(value)} is not a byte count")
    return int(value)


def parse_request(body: bytes | bytearray, header_length: int | None) -> InferRequest:
    """Parse and check an inference request; nothing of the tensor data is converted.

    ``header_length`` is the JSON's length when binary tensors follow it, else None (the
    whole body is JSON). Checked here, before any tensor is built: the header length against
    the body, every field's type, duplicate input names, datatypes, shapes, and each binary
    tensor's size against its shape and against what the body holds (the binary sizes must
    add up to exactly the bytes after the JSON).
    """
    if header_length is None:
        header, tail = body, memoryview(b"")
    else:
        if header_length > len(body):
            raise MalformedTensor(
                f"{HEADER_LENGTH} {header_length} is past the end of the {len(body)}-byte body"
            )
        # Read-only, so binary inputs are read-only views over a bytearray body too.
        header, tail = body[:header_length], memoryview(body).toreadonly()[header_length:]
    try:
        obj = loads(header)
    except MalformedTensor as exc:
        if header_length is None:
            raise
        raise MalformedTensor(
            f"the first {header_length} bytes ({HEADER_LENGTH}) are not the JSON header: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise MalformedTensor(f"the inference request must be a JSON object, got {kind(obj)}")
    unknown = sorted(set(obj) - _REQUEST_FIELDS)
    if unknown:
        raise MalformedTensor(
            f"the inference request has unknown field(s) {unknown}; expected "
            f"{sorted(_REQUEST_FIELDS)}"
        )
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedTensor(f"id must be a string, got {quote(request_id)}")
    parameters = _parameters(obj.get("parameters"), "parameters")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedTensor(f"inputs must be a non-empty list of tensors, got {kind(raw_inputs)}")
    inputs: dict[str, InferInput] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor = _input(raw, index, tail, offset, header_length is not None)
        if tensor.name in inputs:
            raise MalformedTensor(
                f"inputs[{index}]: input {quote(tensor.name)} is given more than once"
            )
        inputs[tensor.name] = tensor
        if isinstance(tensor.source, memoryview):
            offset += len(tensor.source)
    if offset != len(tail):
        raise MalformedTensor(
            f"the {len(tail)} bytes after the JSON header ({HEADER_LENGTH} {header_length}) "
            f"are not the {offset} bytes the inputs' binary_data_size add up to"
        )
    return InferRequest(request_id, parameters, inputs, _outputs(obj.get("outputs")))


def _input(
    raw: Any, index: int, tail: memoryview, offset: int, has_header_length: bool
) -> InferInput:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise MalformedTensor(f"{where} must be a JSON object, got {kind(raw)}")
    unknown = sorted(set(raw) - _INPUT_FIELDS)
    if unknown:
        raise MalformedTensor(f"{where} has unknown field(s) {unknown}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedTensor(f"{where}.name must be a non-empty string, got {quote(name)}")
    where = f"input {quote(name)}"
    datatype = raw.get("datatype")
    # A JSON list or object is unhashable: test the type before looking it up.
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidTensor(f"{where} has datatype {quote(datatype)}; send FP16, FP32 or FP64")
    dtype = np.dtype(DATATYPES[datatype])
    raw_shape = raw.get("shape")
    if (
        not isinstance(raw_shape, list)
        or len(raw_shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw_shape)
    ):
        raise MalformedTensor(
            f"{where}.shape must be a list of at most {MAX_NDIM} non-negative ints, "
            f"got {quote(raw_shape)}"
        )
    shape = _checked_shape(raw_shape, dtype, where)
    parameters = _parameters(raw.get("parameters"), f"{where}.parameters")
    extra = sorted(set(parameters) - {"binary_data_size"})
    if extra:
        raise MalformedTensor(
            f"{where} has parameter(s) {extra}: only binary_data_size is supported "
            "(no shared memory)"
        )
    size = parameters.get("binary_data_size")
    data = raw.get("data")
    if size is None:
        if not isinstance(data, list):
            raise MalformedTensor(
                f"{where} has neither data (a list) nor parameters.binary_data_size; "
                f"data is {kind(data)}"
            )
        return InferInput(name, datatype, shape, _flat_data(data, shape, where))
    if data is not None:
        raise MalformedTensor(f"{where} has both data and parameters.binary_data_size; send one")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise MalformedTensor(
            f"{where}.parameters.binary_data_size must be a byte count, got {quote(size)}"
        )
    if not has_header_length:
        raise MalformedTensor(
            f"{where} has binary_data_size {size} but the request has no {HEADER_LENGTH} "
            "header to say where the binary data starts"
        )
    needed = math.prod(shape) * dtype.itemsize
    if size != needed:
        raise MalformedTensor(
            f"{where}: shape {list(shape)} of {datatype} needs {needed} bytes, "
            f"binary_data_size says {size}"
        )
    if offset + size > len(tail):
        raise MalformedTensor(
            f"{where}: binary_data_size {size} at offset {offset} runs past the "
            f"{len(tail)} bytes after the JSON header"
        )
    return InferInput(name, datatype, shape, tail[offset : offset + size])


def _outputs(raw: Any) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadInferenceRequest(f"outputs must be a list, got {kind(raw)}")
    outputs: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not set(item) <= _OUTPUT_FIELDS:
            raise BadInferenceRequest(
                f"outputs[{index}] must be an object with name and parameters: {quote(item)}"
            )
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadInferenceRequest(
                f"outputs[{index}].name must be a non-empty string, got {quote(name)}"
            )
        if any(output.name == name for output in outputs):
            raise BadInferenceRequest(f"output {quote(name)} is requested more than once")
        parameters = _parameters(item.get("parameters"), f"output {quote(name)} parameters")
        extra = sorted(set(parameters) - {"binary_data"})
        if extra:
            raise BadInferenceRequest(
                f"output {quote(name)} has parameter(s) {extra}: only binary_data is supported"
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise BadInferenceRequest(
                f"output {quote(name)} parameters.binary_data must be a bool, got {quote(binary)}"
            )
        outputs.append(RequestedOutput(name, binary))
    return tuple(outputs)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInferenceRequest(f"{where} must be a JSON object, got {kind(raw)}")
    return raw


def _flag(parameters: Mapping[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise BadInferenceRequest(f"parameters.{name} must be true or false, got {quote(value)}")
    return value


def _flat_data(data: list[Any], shape: Sequence[int], where: str) -> list[Any]:
    """JSON ``data`` as one flat, row-major list of ``prod(shape)`` items: flat data as it
    is, nested data nesting exactly as ``shape`` says. The items themselves are checked when
    converted (:meth:`InferInput.decode`)."""
    if any(isinstance(item, list) for item in data):
        flat: list[Any] = []
        _walk(data, shape, 0, "", where, flat)
        return flat
    count = math.prod(shape)
    if len(data) != count:
        raise MalformedTensor(
            f"{where} data holds {len(data)} values but shape {list(shape)} needs {count}"
        )
    return data


def _walk(
    node: Any, shape: Sequence[int], depth: int, path: str, where: str, flat: list[Any]
) -> None:
    """Append the leaves of ``node`` (at ``depth`` of the nesting) to ``flat``; the depth is
    bounded by the shape's rank (at most MAX_NDIM), so the recursion is too."""
    here = f"{where} data{path}"
    if depth == len(shape):
        raise MalformedTensor(f"{here} is a list, nested deeper than shape {list(shape)}")
    if not isinstance(node, list):
        raise MalformedTensor(
            f"{here} is {quote(node)} where shape {list(shape)} needs a list of {shape[depth]}"
        )
    if len(node) != shape[depth]:
        raise MalformedTensor(
            f"{here} has {len(node)} items; shape {list(shape)} needs {shape[depth]} in dim {depth}"
        )
    if depth == len(shape) - 1:
        deeper = next((i for i, item in enumerate(node) if isinstance(item, list)), None)
        if deeper is not None:
            raise MalformedTensor(
                f"{here}[{deeper}] is a list, nested deeper than shape {list(shape)}"
            )
        flat.extend(node)
        return
    for index, child in enumerate(node):
        _walk(child, shape, depth + 1, f"{path}[{index}]", where, flat)


# ------------------------------------------------------------------------ response


@dataclass(frozen=True)
class EncodedOutput:
    """One output tensor ready for the response: its JSON object, and its bytes when it
    travels as binary data after the JSON (a view of the little-endian array's memory)."""

    header: bytes
    binary: memoryview | None


def encode_output(name: str, array: np.ndarray, *, binary: bool) -> EncodedOutput:
    """Encode one output tensor: JSON ``data`` (flat, row-major; non-finite values as
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``) or little-endian bytes. Binary data is a view
    of the array's own memory (no copy) when it is little-endian and C-ordered, else of one
    converted copy."""
    obj: dict[str, Any] = {
        "name": name,
        "datatype": datatype_of(array.dtype),
        "shape": list(array.shape),
    }
    if not binary:
        obj["data"] = tensor_to_obj(array)["data"]
        return EncodedOutput(dumps(obj), None)
    raw = _raw_bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")))
    obj["parameters"] = {"binary_data_size": len(raw)}
    return EncodedOutput(dumps(obj), raw)


def response_parts(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Iterable[EncodedOutput],
) -> tuple[Parts, int | None]:
    """The response body as :data:`~poolgrad.protocol.tensors.Parts` (the JSON, then each
    binary output's bytes, not copied) and, when binary outputs follow the JSON, the JSON's
    length (for ``Inference-Header-Content-Length``; None when the body is JSON alone).

    The outputs' JSON objects are spliced in as encoded, so a large JSON output is
    serialized once, where it was encoded.
    """
    outputs = list(outputs)
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    prefix = dumps(head)[:-1] + b',"outputs":['
    header = prefix + b",".join(output.header for output in outputs) + b"]}"
    binaries = [output.binary for output in outputs if output.binary is not None]
    return [header, *binaries], len(header) if binaries else None


def response_body(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Iterable[EncodedOutput],
) -> tuple[bytes, int | None]:
    """:func:`response_parts` joined into one ``bytes`` (one copy of the binary outputs)."""
    parts, json_length = response_parts(model_name, model_version, request_id, outputs)
    return b"".join(parts), json_length
