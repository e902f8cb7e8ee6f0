"""HTTP endpoints. Each does HTTP only (media types, body reading, headers) and delegates to
:class:`~service.compute.Compute`; their OpenAPI description lives in :mod:`service.openapi`,
the wire formats in :mod:`poolgrad.protocol`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import lru_cache, partial
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import QueryParams

from engine import PoolSpec
from poolgrad import protocol
from service import openapi
from service.compute import SPEC_CACHE_SIZE, Compute, Stepped, parse_spec
from service.deps import (
    ComputeDep,
    MetricsDep,
    OwnerDep,
    SettingsDep,
    StoreDep,
    compute_of,
    get_owner,
)
from service.errors import BadRequest
from service.httpio import encoded_response, read_body, request_media_type
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.settings import Settings

__all__ = ["router"]

TENSOR_TYPES = protocol.TENSOR_MEDIA_TYPES
NAMED_TYPES = protocol.NAMED_MEDIA_TYPES

router = APIRouter()

#: Query strings longer than this are parsed every time rather than kept (a valid spec's is
#: under 200 bytes).
QUERY_CACHE_MAX_BYTES = 1024


class StepRun(Protocol):
    """A session step (``Compute.forward`` or ``backward`` with its session bound): how to
    decode the request tensor and how to encode the answer in, and whether to compute on the
    loop; the encoded answer and its step out."""

    def __call__(
        self,
        decode: Callable[[], np.ndarray],
        encode: Callable[[np.ndarray], protocol.Parts],
        *,
        inline: bool = ...,
    ) -> Awaitable[Stepped[protocol.Parts]]: ...


# --------------------------------------------------------------------------- helpers


def _json(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(protocol.dumps(payload), status_code, headers, media_type=protocol.MEDIA_JSON)


async def _read(request: Request, settings: Settings, media_type: str) -> bytes | bytearray:
    """The body, under the limit for its media type: JSON parses into Python objects many times
    its size, so it has its own, smaller limit."""
    if media_type == protocol.MEDIA_JSON:
        return await read_body(
            request,
            limit=min(settings.max_body_bytes, settings.max_json_body_bytes),
            timeout=settings.body_timeout_seconds,
            hint=" for JSON; send large tensors as application/x-npy or safetensors",
        )
    return await read_body(
        request, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )


def _query_spec(query: bytes) -> PoolSpec:
    """The validated spec of a ``/v1/gradient`` query string: :class:`InvalidSpec` naming the
    offending parameter or field. Parsed once per distinct query string of up to
    :data:`QUERY_CACHE_MAX_BYTES` (clients repeat theirs; parsing and validating cost a small
    request some 15 us); refusals are not cached."""
    if len(query) > QUERY_CACHE_MAX_BYTES:
        return _parsed_query_spec.__wrapped__(query)
    return _parsed_query_spec(query)


@lru_cache(maxsize=SPEC_CACHE_SIZE)
def _parsed_query_spec(query: bytes) -> PoolSpec:
    return parse_spec(protocol.spec_from_query(QueryParams(query).multi_items()))


async def _spec_body(request: Request, settings: SettingsDep) -> bytes | bytearray:
    """The session-creation body, unparsed: JSON, or nothing at all for every default."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        request_media_type(request, (protocol.MEDIA_JSON,))
    body = await _read(request, settings, protocol.MEDIA_JSON)
    if content_type is None and body:
        request_media_type(request, (protocol.MEDIA_JSON,))
    return body


def _parse_spec_body(body: bytes | bytearray) -> Any:
    """The session body's JSON (``{}`` when empty); 400 ``bad_request`` when it is not JSON."""
    try:
        return protocol.loads(body) if body else {}
    except protocol.ProtocolError as exc:
        raise BadRequest(str(exc)) from exc


async def _stepped_tensor(request: Request, compute: Compute, run: StepRun) -> Response:
    """A session's forward or backward: 415 and 406 before reading the body, then ``run``
    with the codecs of the request's and the answer's media types; ``ETag`` the step."""
    media_in = request_media_type(request, TENSOR_TYPES)
    media_out = protocol.negotiate(request.headers.get("accept"), TENSOR_TYPES, media_in)
    body = await _read(request, compute.settings, media_in)
    result = await run(
        partial(protocol.decode_tensor, body, media_in),
        partial(protocol.encode_tensor_parts, media_type=media_out),
        inline=compute.runs_inline(len(body), media_in),
    )
    etag = protocol.format_etag(result.step)
    return encoded_response(result.payload, media_out, {"ETag": etag})


# ---------------------------------------------------------------------------- routes


@router.post(
    "/v1/sessions",
    status_code=201,
    tags=["sessions"],
    **openapi.CREATE_SESSION,
)
async def create_session(
    request: Request, compute: ComputeDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    body = await _spec_body(request, settings)
    inline = compute.runs_inline(len(body), protocol.MEDIA_JSON)
    fields = await compute.session_fields(partial(_parse_spec_body, body), inline=inline)
    info = await compute.create_session(fields, owner)
    request.state.session_id = info.id
    payload = info.to_json()
    created = {key: payload[key] for key in protocol.session.CREATED_FIELDS}
    return _json(created, 201, {"Location": f"/v1/sessions/{info.id}"})


@router.get("/v1/sessions/{session_id}", tags=["sessions"], **openapi.GET_SESSION)
async def get_session(session_id: str, compute: ComputeDep, owner: OwnerDep) -> Response:
    info = await compute.get_session(session_id, owner)
    return _json(info.to_json(), headers={"ETag": protocol.format_etag(info.step)})


@router.delete(
    "/v1/sessions/{session_id}", status_code=204, tags=["sessions"], **openapi.DELETE_SESSION
)
async def delete_session(session_id: str, compute: ComputeDep, owner: OwnerDep) -> Response:
    await compute.delete_session(session_id, owner)
    return Response(status_code=204)


@router.post("/v1/sessions/{session_id}/forward", **openapi.FORWARD)
async def forward(session_id: str, request: Request, owner: OwnerDep) -> Response:
    compute = compute_of(request)
    run = partial(compute.forward, session_id, owner)
    return await _stepped_tensor(request, compute, run)


@router.post("/v1/sessions/{session_id}/backward", **openapi.BACKWARD)
async def backward(session_id: str, request: Request, owner: OwnerDep) -> Response:
    compute = compute_of(request)
    condition = protocol.parse_if_match(request.headers.get("if-match"))
    run = partial(compute.backward, session_id, owner, condition=condition)
    return await _stepped_tensor(request, compute, run)


@router.post(
    "/v1/gradient",
    tags=["gradient"],
    dependencies=[Depends(get_owner)],
    response_class=Response,
    **openapi.GRADIENT,
)
async def gradient(request: Request) -> Response:
    compute = compute_of(request)
    media_in = request_media_type(request, NAMED_TYPES)
    media_out = protocol.negotiate(request.headers.get("accept"), NAMED_TYPES, media_in)
    spec = _query_spec(request.scope["query_string"])
    body = await _read(request, compute.settings, media_in)
    payload = await compute.gradient(
        spec,
        partial(protocol.decode_named, body, media_in),
        partial(protocol.encode_named_parts, media_type=media_out),
        inline=compute.runs_inline(len(body), media_in),
    )
    return encoded_response(payload, media_out)


@router.get("/healthz", summary="Liveness: 200 while the process serves", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], **openapi.READYZ)
async def readyz(store: StoreDep, request: Request) -> dict[str, str]:
    await store.ping()
    # engine_kernels: "numpy" or "compiled", the kernel set this process runs.
    return {"status": "ready", "engine_kernels": request.app.state.engine_kernels}


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    **openapi.metrics_route(METRICS_CONTENT_TYPE),
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(await metrics.render(), media_type=METRICS_CONTENT_TYPE)
