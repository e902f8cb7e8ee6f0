"""HTTP endpoints. Each does HTTP only (media types, body reading, headers) and delegates to
:class:`~service.compute.Compute`; the OpenAPI description of bodies and errors is here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from poolgrad import wire
from poolgrad.wire import WireError
from service.compute import SessionInfo
from service.deps import ComputeDep, MetricsDep, OwnerDep, SettingsDep, StoreDep, get_owner
from service.errors import BadRequest, InvalidSpec
from service.httpio import (
    negotiate,
    parse_if_match,
    read_body,
    request_media_type,
    spec_from_query,
)
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.problems import ProblemModel
from service.settings import Settings

__all__ = ["router"]

TENSOR_TYPES = wire.TENSOR_MEDIA_TYPES
NAMED_TYPES = wire.NAMED_MEDIA_TYPES

router = APIRouter()

# ------------------------------------------------------------------- OpenAPI models


class SpecFields(BaseModel):
    """A pooling layer spec (CONTRACT.md, "Layer spec"); every field has a default."""

    mode: Literal["max", "min", "avg"] = "max"
    pool_size: int | list[int] = Field(
        default=[2, 2], description="Window per spatial dim; an int means a 2-D square."
    )
    strides: int | list[int] | None = Field(
        default=None, description="Step per spatial dim; null means pool_size."
    )
    padding: Literal["valid", "same"] | list[list[int]] = Field(
        default="valid", description="valid, same, or [[before, after], ...] per spatial dim."
    )
    count_include_pad: bool = False
    layout: Literal["channels_last", "channels_first"] = "channels_last"
    ties: Literal["all", "first", "split"] = "all"
    nan: Literal["propagate", "reject"] = "propagate"


class SessionCreate(SpecFields):
    """Spec fields at top level, plus the session's idle TTL."""

    ttl_seconds: float | None = Field(
        default=None, description="Idle TTL; default POOLGRAD_SESSION_TTL_SECONDS."
    )


class SessionCreated(BaseModel):
    id: str
    spec: SpecFields
    ttl_seconds: float
    expires_at: str = Field(description="ISO 8601 UTC; renewed on every use.")
    step: int


class SessionModel(BaseModel):
    id: str
    spec: SpecFields
    ttl_seconds: float
    step: int = Field(description="Forward passes run; the ETag of the cached state.")
    input_shape: list[int] | None
    output_shape: list[int] | None
    dtype: str | None
    state_bytes: int
    expires_at: str = Field(description="ISO 8601 UTC; renewed on every use.")


_JSON_TENSOR = {
    "type": "object",
    "required": ["dtype", "shape", "data"],
    "properties": {
        "dtype": {"type": "string", "enum": ["float16", "float32", "float64"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {
            "type": "array",
            "description": 'Flat, row-major; non-finite as "NaN", "Infinity", "-Infinity".',
            "items": {"oneOf": [{"type": "number"}, {"type": "string"}]},
        },
    },
}
_PROBLEM_SCHEMA = ProblemModel.model_json_schema()
_BINARY = {"type": "string", "format": "binary"}
_TENSOR_CONTENT = {wire.MEDIA_NPY: {"schema": _BINARY}, wire.MEDIA_JSON: {"schema": _JSON_TENSOR}}


def _named_content(names: tuple[str, ...]) -> dict[str, Any]:
    properties = dict.fromkeys(names, _JSON_TENSOR)
    return {
        wire.MEDIA_SAFETENSORS: {"schema": _BINARY},
        wire.MEDIA_JSON: {"schema": {"type": "object", "properties": properties}},
    }


def _body(content: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": content}}


def _errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the problem codes a route can answer with, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(wire.PROBLEMS[code].status, []).append(code)
    return {
        status: {
            "description": ", ".join(f"`{code}`" for code in status_codes),
            "content": {wire.MEDIA_PROBLEM: {"schema": _PROBLEM_SCHEMA}},
        }
        for status, status_codes in sorted(by_status.items())
    }


_AUTH = ("unauthorized",)
_STORE = ("store_unavailable",)
_BODY = ("payload_too_large", "request_timeout")
_SESSION = (*_AUTH, "session_not_found", *_STORE)
_TENSOR_IO = ("malformed_tensor", "unsupported_media_type", "not_acceptable", *_BODY)

# --------------------------------------------------------------------------- helpers


def _json(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(wire.dumps(payload), status_code, headers, media_type=wire.MEDIA_JSON)


def _session_payload(info: SessionInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


async def _read(request: Request, settings: Settings, media_type: str) -> bytes:
    """The body, under the limit for its media type: JSON parses into Python objects many times
    its size, so it has its own, smaller limit."""
    if media_type == wire.MEDIA_JSON:
        return await read_body(
            request,
            limit=min(settings.max_body_bytes, settings.max_json_body_bytes),
            timeout=settings.body_timeout_seconds,
            hint=" for JSON; send large tensors as application/x-npy or safetensors",
        )
    return await read_body(
        request, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )


async def _spec_body(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """The session-creation body: a JSON object, or nothing at all for every default."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        request_media_type(request, (wire.MEDIA_JSON,))
    body = await _read(request, settings, wire.MEDIA_JSON)
    if content_type is None and body:
        request_media_type(request, (wire.MEDIA_JSON,))
    try:
        fields = wire.loads(body) if body else {}
    except WireError as exc:
        raise BadRequest(str(exc)) from exc
    if not isinstance(fields, dict):
        raise InvalidSpec(
            f"the session body must be a JSON object of spec fields, got {type(fields).__name__}"
        )
    return fields


async def _tensor_body(request: Request, settings: SettingsDep) -> tuple[bytes, str, str]:
    """Body, its media type and the answer's media type: 415 and 406 before reading."""
    media_in = request_media_type(request, TENSOR_TYPES)
    media_out = negotiate(request.headers.get("accept"), TENSOR_TYPES, media_in)
    body = await _read(request, settings, media_in)
    return body, media_in, media_out


# ---------------------------------------------------------------------------- routes


@router.post(
    "/v1/sessions",
    status_code=201,
    response_model=SessionCreated,
    summary="Create a session",
    tags=["sessions"],
    openapi_extra=_body(
        {wire.MEDIA_JSON: {"schema": SessionCreate.model_json_schema()}},
        "Spec fields at top level plus optional ttl_seconds; an empty body takes every default.",
    ),
    responses={
        201: {"headers": {"Location": {"description": "URL of the new session."}}},
        **_errors(
            "bad_request",
            *_AUTH,
            "unsupported_media_type",
            *_BODY,
            "invalid_spec",
            "capacity_exceeded",
            *_STORE,
        ),
    },
)
async def create_session(
    request: Request, compute: ComputeDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    fields = await _spec_body(request, settings)
    info = await compute.create_session(fields, owner)
    request.state.session_id = info.id
    payload = {key: _session_payload(info)[key] for key in SessionCreated.model_fields}
    return _json(payload, 201, {"Location": f"/v1/sessions/{info.id}"})


@router.get(
    "/v1/sessions/{session_id}",
    response_model=SessionModel,
    summary="Describe a session (renews its TTL)",
    tags=["sessions"],
    responses=_errors(*_SESSION),
)
async def get_session(session_id: str, compute: ComputeDep, owner: OwnerDep) -> Response:
    info = await compute.get_session(session_id, owner)
    return _json(_session_payload(info), headers={"ETag": f'"{info.step}"'})


@router.delete(
    "/v1/sessions/{session_id}",
    status_code=204,
    summary="Delete a session and its cached state",
    tags=["sessions"],
    responses=_errors(*_SESSION),
)
async def delete_session(session_id: str, compute: ComputeDep, owner: OwnerDep) -> Response:
    await compute.delete_session(session_id, owner)
    return Response(status_code=204)


@router.post(
    "/v1/sessions/{session_id}/forward",
    summary="Forward pass: tensor X in, tensor A out; caches the state (step + 1)",
    tags=["sessions"],
    openapi_extra=_body(_TENSOR_CONTENT, "X: a .npy file or a JSON tensor (Content-Type)."),
    response_class=Response,
    responses={
        200: {
            "description": "A, as Accept asks (else as X came); ETag is the new step.",
            "content": _TENSOR_CONTENT,
            "headers": {"ETag": {"description": 'The new step, quoted: "1".'}},
        },
        **_errors(*_SESSION, *_TENSOR_IO, "invalid_spec", "invalid_tensor", "capacity_exceeded"),
    },
)
async def forward(
    session_id: str,
    request: Request,
    compute: ComputeDep,
    settings: SettingsDep,
    owner: OwnerDep,
) -> Response:
    body, media_in, media_out = await _tensor_body(request, settings)
    result = await compute.forward(
        session_id,
        owner,
        partial(wire.decode_tensor, body, media_in),
        partial(wire.encode_tensor, media_type=media_out),
    )
    return Response(result.payload, media_type=media_out, headers={"ETag": f'"{result.step}"'})


@router.post(
    "/v1/sessions/{session_id}/backward",
    summary="Backward pass: tensor dA in, tensor dX out; the cached state is kept",
    tags=["sessions"],
    openapi_extra={
        **_body(_TENSOR_CONTENT, "dA, shaped like A: a .npy file or a JSON tensor."),
        "parameters": [
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": 'Only if this step is cached: "<step>", W/"<step>" or *.',
                "schema": {"type": "string"},
            }
        ],
    },
    response_class=Response,
    responses={
        200: {
            "description": "dX, shaped like X, as Accept asks (else as dA came).",
            "content": _TENSOR_CONTENT,
            "headers": {"ETag": {"description": "The step whose state was used."}},
        },
        **_errors(
            *_SESSION, *_TENSOR_IO, "no_forward", "stale_step", "invalid_tensor", "shape_mismatch"
        ),
    },
)
async def backward(
    session_id: str,
    request: Request,
    compute: ComputeDep,
    settings: SettingsDep,
    owner: OwnerDep,
) -> Response:
    body, media_in, media_out = await _tensor_body(request, settings)
    result = await compute.backward(
        session_id,
        owner,
        partial(wire.decode_tensor, body, media_in),
        partial(wire.encode_tensor, media_type=media_out),
        parse_if_match(request.headers.get("if-match")),
    )
    return Response(result.payload, media_type=media_out, headers={"ETag": f'"{result.step}"'})


@router.post(
    "/v1/gradient",
    summary="Stateless forward (and backward when dA is sent): named X, dA in; A, dX out",
    tags=["gradient"],
    dependencies=[Depends(get_owner)],
    openapi_extra={
        **_body(_named_content(("X", "dA")), "Named tensors X and optional dA."),
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": description,
            }
            for name, description in (
                ("mode", "max, min or avg"),
                ("pool_size", "2 (a 2-D square) or comma-separated ints: 2,2"),
                ("strides", "an int for every dim, or comma-separated ints"),
                ("padding", "valid, same, or before:after pairs per dim: 1:1,0:1"),
                ("count_include_pad", "true or false"),
                ("layout", "channels_last or channels_first"),
                ("ties", "all, first or split"),
                ("nan", "propagate or reject"),
            )
        ],
    },
    response_class=Response,
    responses={
        200: {
            "description": "Named A (and dX when dA came), as Accept asks (else as sent).",
            "content": _named_content(("A", "dX")),
        },
        **_errors(*_AUTH, *_TENSOR_IO, "invalid_spec", "invalid_tensor", "shape_mismatch"),
    },
)
async def gradient(request: Request, compute: ComputeDep, settings: SettingsDep) -> Response:
    media_in = request_media_type(request, NAMED_TYPES)
    media_out = negotiate(request.headers.get("accept"), NAMED_TYPES, media_in)
    spec_fields = spec_from_query(request.query_params.multi_items())
    body = await _read(request, settings, media_in)
    payload = await compute.gradient(
        spec_fields,
        partial(wire.decode_named, body, media_in),
        partial(wire.encode_named, media_type=media_out),
    )
    return Response(payload, media_type=media_out)


@router.get("/healthz", summary="Liveness: 200 while the process serves", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: 200 while the session store answers, else 503",
    tags=["operations"],
    responses=_errors(*_STORE),
)
async def readyz(store: StoreDep, request: Request) -> dict[str, str]:
    await store.ping()
    # engine_kernels: "numpy" or "compiled", the kernel set this process runs.
    return {"status": "ready", "engine_kernels": request.app.state.engine_kernels}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(await metrics.render(), media_type=METRICS_CONTENT_TYPE)
