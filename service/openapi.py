"""The OpenAPI description of the HTTP API: models, bodies and error responses of each route,
kept here so :mod:`service.routes` reads as thin endpoints (MLServer's ``rest/openapi.py``).

The spec model and the query-parameter docs are derived from the protocol's schema
(:data:`poolgrad.protocol.spec.FIELDS`); error responses from its problem catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from fastapi import Response
from pydantic import BaseModel, Field, create_model

from poolgrad.protocol import (
    MEDIA_JSON,
    MEDIA_NPY,
    MEDIA_PROBLEM,
    MEDIA_SAFETENSORS,
    PROBLEMS,
    inference,
)
from poolgrad.protocol.spec import FIELDS, SpecField, query_doc

__all__ = [
    "BACKWARD",
    "CREATE_SESSION",
    "DELETE_SESSION",
    "FORWARD",
    "GET_SESSION",
    "GRADIENT",
    "READYZ",
    "V2_INFER",
    "V2_LIVE",
    "V2_MODEL_METADATA",
    "V2_MODEL_READY",
    "V2_READY",
    "V2_SERVER_METADATA",
    "ProblemModel",
    "SessionCreated",
    "SessionModel",
    "SpecFields",
    "metrics_route",
    "with_head",
]


def _annotation(field: SpecField) -> Any:
    """The Python type of one spec field, as pydantic documents it."""
    if field.kind == "choice":
        return Literal[field.choices]
    if field.kind == "ints":
        return int | list[int]
    if field.kind == "ints_or_null":
        return int | list[int] | None
    if field.kind == "padding":
        return Literal[field.choices] | list[list[int]]
    return bool


#: A pooling layer spec (CONTRACT.md, "Layer spec"); every field has a default.
SpecFields: type[BaseModel] = create_model(
    "SpecFields",
    __doc__='A pooling layer spec (CONTRACT.md, "Layer spec"); every field has a default.',
    **{
        field.name: (
            _annotation(field),
            Field(default=field.default, description=field.description),
        )
        for field in FIELDS
    },
)  # type: ignore[call-overload]

SessionCreate: type[BaseModel] = create_model(
    "SessionCreate",
    __base__=SpecFields,
    __doc__="Spec fields at top level, plus the session's idle TTL.",
    ttl_seconds=(
        float | None,
        Field(default=None, description="Idle TTL; default POOLGRAD_SESSION_TTL_SECONDS."),
    ),
)


class SessionCreated(BaseModel):
    id: str
    spec: SpecFields  # type: ignore[valid-type]
    ttl_seconds: float
    expires_at: str = Field(description="ISO 8601 UTC; renewed on every use.")
    step: int


class SessionModel(BaseModel):
    id: str
    spec: SpecFields  # type: ignore[valid-type]
    ttl_seconds: float
    step: int = Field(description="Forward passes run; the ETag of the cached state.")
    input_shape: list[int] | None
    output_shape: list[int] | None
    dtype: str | None
    state_bytes: int
    expires_at: str = Field(description="ISO 8601 UTC; renewed on every use.")


class ProblemModel(BaseModel):
    """An error, as every non-2xx answer carries it (``application/problem+json``)."""

    type: str = Field(default="about:blank", examples=["about:blank"])
    status: int = Field(examples=[404])
    code: str = Field(description="Stable machine-readable code.", examples=["session_not_found"])
    title: str = Field(examples=["Session not found"])
    detail: str = Field(description="What was wrong, naming the offending value.")
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request.")


_JSON_TENSOR: Final = {
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
_PROBLEM_SCHEMA: Final = ProblemModel.model_json_schema()
_BINARY: Final = {"type": "string", "format": "binary"}
_TENSOR_CONTENT: Final = {MEDIA_NPY: {"schema": _BINARY}, MEDIA_JSON: {"schema": _JSON_TENSOR}}


def _named_content(names: tuple[str, ...]) -> dict[str, Any]:
    properties = dict.fromkeys(names, _JSON_TENSOR)
    return {
        MEDIA_SAFETENSORS: {"schema": _BINARY},
        MEDIA_JSON: {"schema": {"type": "object", "properties": properties}},
    }


def _body(content: Mapping[str, Any], description: str, *, required: bool = True) -> dict[str, Any]:
    return {"requestBody": {"required": required, "description": description, "content": content}}


def _errors(
    *codes: str, media_type: str = MEDIA_PROBLEM, schema: Mapping[str, Any] = _PROBLEM_SCHEMA
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the problem codes a route can answer with, grouped by status
    (as problems, unless another body is named: the Open Inference Protocol's)."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):  # once each, however many groups name it
        by_status.setdefault(PROBLEMS[code].status, []).append(code)
    return {
        status: {
            "description": ", ".join(f"`{code}`" for code in status_codes),
            "content": {media_type: {"schema": schema}},
        }
        for status, status_codes in sorted(by_status.items())
    }


_AUTH = ("unauthorized",)
_STORE = ("store_unavailable",)
_BODY = ("payload_too_large", "request_timeout", "capacity_exceeded")
_SESSION = (*_AUTH, "session_not_found", *_STORE)
_TENSOR_IO = ("malformed_tensor", "unsupported_media_type", "not_acceptable", *_BODY)

# Keyword arguments of each route's decorator (summary, bodies, responses).

CREATE_SESSION: Final[dict[str, Any]] = {
    "response_model": SessionCreated,
    "summary": "Create a session",
    "openapi_extra": _body(
        {MEDIA_JSON: {"schema": SessionCreate.model_json_schema()}},
        "Spec fields at top level plus optional ttl_seconds; an empty body takes every default.",
        required=False,
    ),
    "responses": {
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
}

GET_SESSION: Final[dict[str, Any]] = {
    "response_model": SessionModel,
    "summary": "Describe a session (renews its TTL)",
    "responses": _errors(*_SESSION),
}

DELETE_SESSION: Final[dict[str, Any]] = {
    "summary": "Delete a session and its cached state",
    "responses": _errors(*_SESSION),
}


def _tensor_route(
    summary: str, body: str, answer: str, etag: str, *codes: str, **extra: Any
) -> dict[str, Any]:
    """A session route with a tensor in and a tensor out, ``ETag`` on the answer."""
    return {
        "summary": summary,
        "tags": ["sessions"],
        "response_class": Response,
        "openapi_extra": {**_body(_TENSOR_CONTENT, body), **extra},
        "responses": {
            200: {
                "description": answer,
                "content": _TENSOR_CONTENT,
                "headers": {"ETag": {"description": etag}},
            },
            **_errors(*_SESSION, *_TENSOR_IO, "invalid_tensor", *codes),
        },
    }


FORWARD: Final = _tensor_route(
    "Forward pass: tensor X in, tensor A out; caches the state (step + 1)",
    "X: a .npy file or a JSON tensor (Content-Type).",
    "A, as Accept asks (else as X came); ETag is the new step.",
    'The new step, quoted: "1".',
    "invalid_spec",
    "capacity_exceeded",
)

BACKWARD: Final = _tensor_route(
    "Backward pass: tensor dA in, tensor dX out; the cached state is kept",
    "dA, shaped like A: a .npy file or a JSON tensor.",
    "dX, shaped like X, as Accept asks (else as dA came).",
    "The step whose state was used.",
    "no_forward",
    "stale_step",
    "shape_mismatch",
    parameters=[
        {
            "name": "If-Match",
            "in": "header",
            "required": False,
            "description": 'Only if this step is cached: "<step>", W/"<step>" or *.',
            "schema": {"type": "string"},
        }
    ],
)

GRADIENT: Final[dict[str, Any]] = {
    "summary": "Stateless forward (and backward when dA is sent): named X, dA in; A, dX out",
    "openapi_extra": {
        **_body(_named_content(("X", "dA")), "Named tensors X and optional dA."),
        "parameters": [
            {
                "name": field.name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": query_doc(field),
            }
            for field in FIELDS
        ],
    },
    "responses": {
        200: {
            "description": "Named A (and dX when dA came), as Accept asks (else as sent).",
            "content": _named_content(("A", "dX")),
        },
        **_errors(*_AUTH, *_TENSOR_IO, "invalid_spec", "invalid_tensor", "shape_mismatch"),
    },
}

READYZ: Final[dict[str, Any]] = {
    "summary": "Readiness: 200 while the session store answers, else 503",
    "responses": _errors(*_STORE),
}


def with_head(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """``build`` (an app's ``openapi``) with a ``head`` operation beside every ``get``: the
    request middleware answers HEAD on every GET route, with the GET's status and headers and
    no body, so each HEAD operation is its GET's without response content."""

    def openapi() -> dict[str, Any]:
        document = build()  # FastAPI caches it: the HEAD operations are added once
        for item in document["paths"].values():
            get = item.get("get")
            if get is not None and "head" not in item:
                item["head"] = _head_of(get)
        return document

    return openapi


def _head_of(get: Mapping[str, Any]) -> dict[str, Any]:
    head = {
        **get,
        "summary": f"{get.get('summary', '')} (headers only)".strip(),
        "responses": {
            status: {key: value for key, value in response.items() if key != "content"}
            for status, response in get["responses"].items()
        },
    }
    if "operationId" in get:
        head["operationId"] = get["operationId"].removesuffix("_get") + "_head"
    return head


def metrics_route(content_type: str) -> dict[str, Any]:
    """The ``/metrics`` route's description for the exposition's ``content_type`` (401 when
    ``POOLGRAD_METRICS_REQUIRE_KEY`` puts it behind the API keys)."""
    return {
        "summary": "Prometheus metrics",
        "responses": {
            200: {"content": {content_type: {"schema": {"type": "string"}}}},
            **_errors(*_AUTH),
        },
    }


# ------------------------------------------------- Open Inference Protocol (/v2)


class InferenceError(BaseModel):
    """Every non-2xx answer under /v2, as the Open Inference Protocol has it."""

    error: str = Field(description="What was wrong, naming the offending value.")


class ServerMetadata(BaseModel):
    name: str = Field(examples=["poolgrad"])
    version: str
    extensions: list[str] = Field(examples=[list(inference.EXTENSIONS)])


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP32; FP16 and FP64 too (parameters.datatypes).")
    shape: list[int] = Field(description="-1: any size; rank 3 to 5 (parameters.rank).")
    parameters: dict[str, Any]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class _InferenceTensor(BaseModel):
    """What every tensor of an inference request or response carries, input or output."""

    shape: list[int]
    datatype: Literal["FP16", "FP32", "FP64"]


class InferenceInput(_InferenceTensor):
    name: Literal["X", "dA"]
    parameters: dict[str, int] | None = Field(
        default=None, description="binary_data_size: bytes of this tensor after the JSON."
    )
    data: list[Any] | None = Field(
        default=None, description="Row-major, flat or nested as shape; absent for binary data."
    )


class InferenceRequestedOutput(BaseModel):
    name: Literal["A", "dX"]
    parameters: dict[str, bool] | None = Field(
        default=None, description="binary_data: this output as binary data after the JSON."
    )


_INFERENCE_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "description": "Spec fields as in the /v1/gradient query string (the model sets mode).",
    "properties": {
        **{
            field.name: {"type": "string", "description": query_doc(field)}
            for field in FIELDS
            if field.name != "mode"
        },
        "sequence_id": {
            "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
            "description": "The sequence (a session of this key) the request belongs to.",
        },
        "sequence_start": {"type": "boolean", "description": "Start (or restart) it."},
        "sequence_end": {"type": "boolean", "description": "End it after this request."},
        "binary_data_output": {"type": "boolean", "description": "Every output as binary."},
    },
}


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, str | int | bool] | None = Field(
        default=None, json_schema_extra=_INFERENCE_PARAMETERS
    )
    inputs: list[InferenceInput]
    outputs: list[InferenceRequestedOutput] | None = None


class InferenceOutput(_InferenceTensor):
    name: Literal["A", "dX"]
    parameters: dict[str, int] | None = Field(
        default=None, description="binary_data_size when the output follows the JSON."
    )
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferenceOutput]


def _v2_errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    return _errors(*codes, media_type=MEDIA_JSON, schema=InferenceError.model_json_schema())


_INFERENCE_CONTENT: Final = {inference.BINARY_MEDIA_TYPE: {"schema": _BINARY}}

V2_SERVER_METADATA: Final[dict[str, Any]] = {
    "summary": "Server metadata: name, version, extensions",
    "response_model": ServerMetadata,
}

#: The health routes answer 200 with no body (KServe v2), and say so.
_NO_BODY: Final[dict[int | str, dict[str, Any]]] = {200: {"description": "No body."}}
_EMPTY_200: Final[dict[str, Any]] = {"response_class": Response, "responses": _NO_BODY}

V2_LIVE: Final[dict[str, Any]] = {
    "summary": "Liveness: 200 while the process serves",
    **_EMPTY_200,
}

V2_READY: Final[dict[str, Any]] = {
    "summary": "Readiness: 200 while the session store answers",
    **_EMPTY_200,
    "responses": {**_NO_BODY, **_v2_errors(*_STORE)},
}

V2_MODEL_METADATA: Final[dict[str, Any]] = {
    "summary": "Model metadata: inputs X, dA; outputs A, dX",
    "response_model": ModelMetadata,
    "responses": _v2_errors("not_found"),
}

V2_MODEL_READY: Final[dict[str, Any]] = {
    "summary": "Model readiness: 200 while the session store answers",
    **_EMPTY_200,
    "responses": {**_NO_BODY, **_v2_errors("not_found", *_STORE)},
}

V2_INFER: Final[dict[str, Any]] = {
    "summary": "Inference: X -> A (forward), dA -> dX (backward, in a sequence), or both",
    "openapi_extra": {
        **_body(
            {
                MEDIA_JSON: {"schema": InferenceRequest.model_json_schema()},
                **_INFERENCE_CONTENT,
            },
            "The JSON inference request; with binary tensors, followed by their bytes in input "
            f"order, and {inference.HEADER_LENGTH} gives the JSON's length.",
        ),
        "parameters": [
            {
                "name": inference.HEADER_LENGTH,
                "in": "header",
                "required": False,
                "description": "Bytes of JSON before the binary tensors (binary data only).",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
    },
    "responses": {
        200: {
            "description": (
                "The outputs as JSON; binary outputs follow the JSON, whose length "
                f"{inference.HEADER_LENGTH} gives."
            ),
            "content": {
                MEDIA_JSON: {"schema": InferenceResponse.model_json_schema()},
                **_INFERENCE_CONTENT,
            },
        },
        **_v2_errors(
            "bad_request",
            "malformed_tensor",
            *_SESSION,
            "not_found",
            "no_forward",
            *_BODY,
            "unsupported_media_type",
            "invalid_spec",
            "invalid_tensor",
            "shape_mismatch",
            "capacity_exceeded",
        ),
    },
}
