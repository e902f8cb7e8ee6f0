"""poolgrad: the Python SDK for the poolgrad gradient-compute service.

>>> from poolgrad import Client
>>> with Client("http://127.0.0.1:8000") as client:          # doctest: +SKIP
...     with client.session(mode="max", pool_size=(2, 2)) as s:
...         A = s.forward(X)
...         dX = s.backward(dA)
...     A, dX = client.gradient(X, dA, mode="max", pool_size=2)

NumPy arrays in and out (``.npy`` on the wire, JSON with ``tensor_format="json"``), one
exception class per problem code under :class:`PoolgradError`, retries on what is safe to
repeat (see :mod:`poolgrad._base`), and :class:`AsyncClient` as the ``async`` twin.
``poolgrad.epynn.RemotePooling`` is a drop-in EpyNN Pooling layer computed on the service.
"""

import importlib
from typing import TYPE_CHECKING, Any

from poolgrad._version import __version__

if TYPE_CHECKING:
    from poolgrad._client import AsyncClient, AsyncSession, AsyncSessionRequest, Client, Session
    from poolgrad._constants import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
    from poolgrad._exceptions import (
        APIConnectionError,
        APIError,
        APIResponseError,
        APITimeoutError,
        BadRequestError,
        CapacityError,
        ConflictError,
        InternalServerError,
        InvalidSpecError,
        InvalidTensorError,
        MalformedTensorError,
        NoForwardError,
        NotAcceptableError,
        NotFoundError,
        PayloadTooLargeError,
        PoolgradError,
        PreconditionFailedError,
        ServiceUnavailableError,
        SessionNotFoundError,
        ShapeMismatchError,
        StaleStepError,
        StoreUnavailableError,
        UnauthorizedError,
        UnprocessableEntityError,
        UnsupportedMediaTypeError,
    )
    from poolgrad._types import PoolSpecKwargs, SessionInfo, TensorFormat

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncSession",
    "AsyncSessionRequest",
    "BadRequestError",
    "CapacityError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "InvalidSpecError",
    "InvalidTensorError",
    "MalformedTensorError",
    "NoForwardError",
    "NotAcceptableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PoolSpecKwargs",
    "PoolgradError",
    "PreconditionFailedError",
    "ServiceUnavailableError",
    "Session",
    "SessionInfo",
    "SessionNotFoundError",
    "ShapeMismatchError",
    "StaleStepError",
    "StoreUnavailableError",
    "TensorFormat",
    "UnauthorizedError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "__version__",
]


#: Where each public name lives. The client (and httpx with it) loads on first use, so
#: ``import poolgrad.protocol`` (what the server imports) loads neither.
_HOMES = {
    **dict.fromkeys(
        ("AsyncClient", "AsyncSession", "AsyncSessionRequest", "Client", "Session"),
        "poolgrad._client",
    ),
    **dict.fromkeys(
        ("DEFAULT_BASE_URL", "DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT"), "poolgrad._constants"
    ),
    **dict.fromkeys(("PoolSpecKwargs", "SessionInfo", "TensorFormat"), "poolgrad._types"),
}


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        module = importlib.import_module(_HOMES.get(name, "poolgrad._exceptions"))
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'poolgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
