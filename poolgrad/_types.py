"""Public type aliases: the layer spec as keyword arguments (pinned to
:data:`poolgrad.protocol.spec.FIELDS` by a test) and the session description."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final, Literal, TypeAlias, TypedDict

from poolgrad.protocol import SessionInfo

__all__ = ["NOT_GIVEN", "NotGiven", "PoolSpecKwargs", "SessionInfo", "TensorFormat"]

Mode: TypeAlias = Literal["max", "min", "avg"]
Padding: TypeAlias = Literal["valid", "same"] | Sequence[Sequence[int]]
#: ``"npy"``: ``.npy`` tensors and safetensors named tensors; ``"json"``: JSON for both.
TensorFormat: TypeAlias = Literal["npy", "json"]


class PoolSpecKwargs(TypedDict, total=False):
    """The layer spec (CONTRACT.md, "Layer spec"); a field left out takes the server default."""

    mode: Mode
    pool_size: int | Sequence[int]
    strides: int | Sequence[int] | None
    padding: Padding
    count_include_pad: bool
    layout: Literal["channels_last", "channels_first"]
    ties: Literal["all", "first", "split"]
    nan: Literal["propagate", "reject"]


class NotGiven(enum.Enum):
    """The type of :data:`NOT_GIVEN`: an argument left out, where ``None`` means something."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: ``timeout=NOT_GIVEN``: the ``http_client``'s timeout if one was given, else the default.
NOT_GIVEN: Final = NotGiven.NOT_GIVEN
