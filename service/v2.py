"""The Open Inference Protocol (KServe v2 / Triton HTTP) endpoints: server and model metadata,
health, and ``infer`` for the models ``maxpool``, ``minpool`` and ``avgpool``.

Thin endpoints, as in :mod:`service.routes`: they read the body under the same limits, parse
it with the pure codec :mod:`poolgrad.protocol.inference`, read the spec from the request
``parameters`` with the query-string parser of ``/v1/gradient`` (values are the query
string's text), and delegate to :class:`~service.compute.Compute`, the one path to the engine
and the store. Errors are rendered by the app's one handler, as ``{"error": ".."}`` under
``/v2`` (:mod:`service.problems`).

What the inputs mean (CONTRACT.md, "Open Inference Protocol")::

    X          -> A         forward; in a sequence, caches the state (step + 1)
    dA         -> dX        backward against the sequence's cached state
    X and dA   -> A and dX  stateless without a sequence; in one, forward then backward

A sequence (``parameters.sequence_id``, a uint64 or a string) is a session in the store
under the caller's key: its id is a keyed hash of (owner, model, sequence id), so any replica
on a shared store finds it. ``sequence_start`` creates it, replacing a sequence of the same
id, with the spec of that request; ``sequence_end`` deletes it once the request succeeded.
A refused ``sequence_start`` leaves no sequence behind.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import Callable, Mapping
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from poolgrad import protocol
from poolgrad._version import __version__
from poolgrad.protocol import ProtocolError, inference, quote, spec_from_query
from poolgrad.protocol.inference import EncodedOutput, InferRequest, SequenceRef
from service import openapi
from service.compute import NAMED_INPUTS, Compute
from service.deps import ComputeDep, OwnerDep, SettingsDep, StoreDep
from service.errors import (
    BadRequest,
    InvalidSpec,
    InvalidTensor,
    PayloadTooLarge,
    ServiceError,
    SessionNotFound,
    UnsupportedMediaType,
)
from service.httpio import encoded_response, read_body
from service.settings import Settings

__all__ = ["MODELS", "MODEL_VERSION", "router", "sequence_session_id"]

#: The models served, and the pooling mode each one is.
MODELS = {"maxpool": "max", "minpool": "min", "avgpool": "avg"}
#: The one version of every model.
MODEL_VERSION = "1"
#: The output each input gives.
OUTPUT_OF = {"X": "A", "dA": "dX"}
_FLOAT_DATATYPES = [name for name, dtype in inference.DATATYPES.items() if "float" in dtype]

router = APIRouter(tags=["open inference protocol"])


class ModelNotFound(ServiceError):
    """A model name or version this server does not serve (404 ``not_found``)."""

    code = "not_found"


# --------------------------------------------------------------------- dependencies


async def get_mode(model_name: str) -> str:
    """The pooling mode of the model named in the path; 404 naming the models served."""
    mode = MODELS.get(model_name)
    if mode is None:
        raise ModelNotFound(
            f"model {quote(model_name)} is not served here; the models are {', '.join(MODELS)}"
        )
    return mode


async def check_version(model_version: str) -> None:
    if model_version != MODEL_VERSION:
        raise ModelNotFound(
            f"model version {quote(model_version)} is not served; "
            f"the one version is {MODEL_VERSION!r}"
        )


ModeDep = Annotated[str, Depends(get_mode)]


def _model_route(method: str, suffix: str, **kwargs: Any) -> Callable[[Any], Any]:
    """Register an endpoint at ``/v2/models/{model_name}<suffix>`` and at the same path with
    ``/versions/{model_version}`` (checked against :data:`MODEL_VERSION`)."""

    def register(endpoint: Any) -> Any:
        router.add_api_route(
            f"/v2/models/{{model_name}}{suffix}", endpoint, methods=[method], **kwargs
        )
        router.add_api_route(
            f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}",
            endpoint,
            methods=[method],
            **{**kwargs, "dependencies": [Depends(check_version), *kwargs.get("dependencies", ())]},
        )
        return endpoint

    return register


# ---------------------------------------------------------------------- endpoints


@router.get("/v2", **openapi.V2_SERVER_METADATA)
async def server_metadata() -> dict[str, Any]:
    return {"name": "poolgrad", "version": __version__, "extensions": list(inference.EXTENSIONS)}


@router.get("/v2/health/live", **openapi.V2_LIVE)
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", **openapi.V2_READY)
async def ready(store: StoreDep) -> Response:
    await store.ping()
    return Response(status_code=200)


@_model_route("GET", "", **openapi.V2_MODEL_METADATA)
async def model_metadata(model_name: str, _mode: ModeDep) -> dict[str, Any]:
    return {
        "name": model_name,
        "versions": [MODEL_VERSION],
        "platform": "poolgrad",
        "inputs": [_tensor_metadata(name) for name in NAMED_INPUTS],
        "outputs": [_tensor_metadata(OUTPUT_OF[name]) for name in NAMED_INPUTS],
    }


@_model_route("GET", "/ready", **openapi.V2_MODEL_READY)
async def model_ready(_mode: ModeDep, store: StoreDep) -> Response:
    await store.ping()
    return Response(status_code=200)


@_model_route("POST", "/infer", response_class=Response, **openapi.V2_INFER)
async def infer(
    model_name: str,
    mode: ModeDep,
    request: Request,
    compute: ComputeDep,
    settings: SettingsDep,
    owner: OwnerDep,
) -> Response:
    body, header_length = await _infer_body(request, settings)
    parsed = await _parse(compute, body, header_length)
    # The rule of /v1 (Compute.runs_inline): small requests are computed on the event loop.
    media_type = protocol.MEDIA_JSON if header_length is None else inference.BINARY_MEDIA_TYPE
    inline = compute.runs_inline(len(body), media_type)
    sequence = parsed.sequence()
    parameters = parsed.model_parameters()
    if any(name == "mode" for name, _ in parameters):
        raise InvalidSpec(
            f"parameters.mode cannot be set: the model {quote(model_name)} is mode {quote(mode)} "
            f"(models: {', '.join(MODELS)})"
        )
    spec_fields = {"mode": mode, **spec_from_query(parameters, source="request parameter")}
    wanted = _wanted_outputs(parsed)
    if sequence is None:
        encoded = await _stateless(compute, parsed, spec_fields, wanted, inline)
    else:
        session_id = sequence_session_id(owner, model_name, sequence.id)
        request.state.session_id = session_id
        encoded = await _in_sequence(
            compute, parsed, sequence, session_id, owner, model_name, spec_fields, wanted, inline
        )
    parts, json_length = inference.response_parts(
        model_name, MODEL_VERSION, parsed.id, [encoded[name] for name in wanted]
    )
    if json_length is None:
        return encoded_response(parts, protocol.MEDIA_JSON)
    return encoded_response(
        parts, inference.BINARY_MEDIA_TYPE, {inference.HEADER_LENGTH: str(json_length)}
    )


# ------------------------------------------------------------------------- helpers


def sequence_session_id(owner: str, model_name: str, sequence_id: int | str) -> str:
    """The store session id of a sequence: an HMAC keyed by the owner over the model and the
    typed sequence id (uint64 42 and string "42" are different sequences), so every replica
    derives the same id, and one key's sequences never meet another's. The same form as a
    random session id (32 URL-safe characters)."""
    kind = "u" if isinstance(sequence_id, int) else "s"
    message = f"{model_name}\0{kind}:{sequence_id}".encode()
    digest = hmac.new(owner.encode(), message, hashlib.sha256).digest()[:24]
    return base64.urlsafe_b64encode(digest).decode()


def _tensor_metadata(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": [-1, -1, -1, -1],
        "parameters": {
            "datatypes": _FLOAT_DATATYPES,
            "rank": "3 to 5: (m, *spatial, d) channels_last, (m, d, *spatial) channels_first",
        },
    }


async def _infer_body(request: Request, settings: Settings) -> tuple[bytes | bytearray, int | None]:
    """The body and the JSON header's length, under the limits of ``/v1``: JSON has its own,
    smaller limit (the whole body without binary tensors, else the header), checked before a
    byte is read when the lengths are declared."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {quote(encoding)} is not supported; send the body uncompressed"
        )
    header_length = inference.parse_header_length(request.headers.get(inference.HEADER_LENGTH))
    json_limit = min(settings.max_body_bytes, settings.max_json_body_bytes)
    if header_length is None:
        body = await read_body(
            request,
            limit=json_limit,
            timeout=settings.body_timeout_seconds,
            hint=" for a JSON inference request; send large tensors as binary data",
        )
        return body, None
    if header_length > json_limit:
        raise PayloadTooLarge(
            f"{inference.HEADER_LENGTH} {header_length} exceeds the limit of {json_limit} bytes "
            "for the JSON header"
        )
    body = await read_body(
        request, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    return body, header_length


async def _parse(
    compute: Compute, body: bytes | bytearray, header_length: int | None
) -> InferRequest:
    """The checked request. A JSON part too large to parse on the event loop
    (:meth:`Compute.runs_inline`, the bound of ``/v1``'s JSON bodies) is parsed in a worker
    thread, so the loop never waits on megabytes of JSON (binary tensors cost nothing to
    parse: they are sliced, not read)."""
    json_bytes = len(body) if header_length is None else header_length
    if compute.runs_inline(json_bytes, protocol.MEDIA_JSON):
        return inference.parse_request(body, header_length)
    return await anyio.to_thread.run_sync(inference.parse_request, body, header_length)


def _wanted_outputs(parsed: InferRequest) -> list[str]:
    """The outputs to answer with, in order: those requested, else every one the inputs give."""
    unknown = sorted(set(parsed.inputs) - set(OUTPUT_OF))
    if unknown:
        raise InvalidTensor(
            f"unknown input(s) {unknown}: the models take X (forward) and dA (backward)"
        )
    produced = [OUTPUT_OF[name] for name in NAMED_INPUTS if name in parsed.inputs]
    if not parsed.outputs:  # none named (absent, or an empty list): all of them
        return produced
    for output in parsed.outputs:
        if output.name not in produced:
            raise BadRequest(
                f"output {quote(output.name)} is not produced by this request: inputs "
                f"{sorted(parsed.inputs)} give {produced}"
            )
    return [output.name for output in parsed.outputs]


def _encoder(parsed: InferRequest, name: str) -> Callable[[np.ndarray], EncodedOutput]:
    return partial(inference.encode_output, name, binary=parsed.binary_output(name))


async def _stateless(
    compute: ComputeDep,
    parsed: InferRequest,
    spec_fields: Mapping[str, Any],
    wanted: list[str],
    inline: bool,
) -> dict[str, EncodedOutput]:
    if "X" not in parsed.inputs:
        raise InvalidTensor(
            "input dA alone needs the state of a forward pass: send X too, or set "
            "parameters.sequence_id of a sequence that ran X"
        )
    encoders = {name: _encoder(parsed, name) for name in wanted}

    def encode(results: dict[str, np.ndarray]) -> dict[str, EncodedOutput]:
        return {name: encoders[name](results[name]) for name in wanted}

    return await compute.gradient(spec_fields, parsed.decode_inputs, encode, inline=inline)


async def _in_sequence(
    compute: ComputeDep,
    parsed: InferRequest,
    sequence: SequenceRef,
    session_id: str,
    owner: str,
    model_name: str,
    spec_fields: Mapping[str, Any],
    wanted: list[str],
    inline: bool,
) -> dict[str, EncodedOutput]:
    """Run the request's inputs in its sequence; start and end as its flags say."""
    if not sequence.start and len(spec_fields) > 1:
        raise InvalidSpec(
            f"spec parameters {sorted(set(spec_fields) - {'mode'})} can only come with "
            f"sequence_start: sequence {quote(sequence.id)} keeps the spec it started with"
        )
    if sequence.start:
        await compute.create_session(spec_fields, owner, session_id=session_id)
    encoded: dict[str, EncodedOutput] = {}
    try:
        if "X" in parsed.inputs:
            stepped = await compute.forward(
                session_id, owner, parsed.inputs["X"].decode, _encoder(parsed, "A"), inline=inline
            )
            encoded["A"] = stepped.payload
        if "dA" in parsed.inputs:
            stepped = await compute.backward(
                session_id,
                owner,
                parsed.inputs["dA"].decode,
                _encoder(parsed, "dX"),
                inline=inline,
            )
            encoded["dX"] = stepped.payload
    except SessionNotFound as exc:
        if sequence.start:
            raise
        raise SessionNotFound(
            f"sequence {quote(sequence.id)} of model {quote(model_name)} is unknown or has "
            "ended: start it with parameters.sequence_start"
        ) from exc
    except (ServiceError, ProtocolError):
        if sequence.start:
            # Refused requests change nothing: a start that fails leaves no sequence.
            with contextlib.suppress(SessionNotFound):
                await compute.delete_session(session_id, owner)
        raise
    if sequence.end:
        with contextlib.suppress(SessionNotFound):
            await compute.delete_session(session_id, owner)
    return {name: encoded[name] for name in wanted}
