"""The layer spec: one immutable, validated, normalized value per pooling layer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal, TypeAlias, cast

import numpy as np

from engine.errors import SpecError

__all__ = [
    "MAX_SPATIAL_DIMS",
    "MAX_WINDOW_SIZE",
    "ExplicitPadding",
    "Layout",
    "Mode",
    "Nan",
    "PoolSpec",
    "Ties",
]

Mode: TypeAlias = Literal["max", "min", "avg"]
Ties: TypeAlias = Literal["all", "first", "split"]
Layout: TypeAlias = Literal["channels_last", "channels_first"]
Nan: TypeAlias = Literal["propagate", "reject"]
ExplicitPadding: TypeAlias = tuple[tuple[int, int], ...]

MAX_SPATIAL_DIMS = 3
#: Most elements one window may span. The kernels loop over window offsets in Python, so the
#: window's size bounds the cost of one call however small its input (a 65,536-element window
#: is a 256 x 256 global pool).
MAX_WINDOW_SIZE = 1 << 16

_MODES: tuple[Mode, ...] = ("max", "min", "avg")
_TIES: tuple[Ties, ...] = ("all", "first", "split")
_LAYOUTS: tuple[Layout, ...] = ("channels_last", "channels_first")
_NANS: tuple[Nan, ...] = ("propagate", "reject")


def _is_int(value: object) -> bool:
    # bool is an int subclass and 2.0 compares equal to 2: neither is a size.
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _choice(field: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise SpecError(f"{field} must be one of {options}, got {value!r}")
    return str(value)  # a str subclass (np.str_) normalizes to str


def _int_tuple(field: str, value: object, *, lowest: int) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise SpecError(f"{field} must be an int or a list of 1 to 3 ints, got {value!r}")
    items = list(value)
    if not 1 <= len(items) <= MAX_SPATIAL_DIMS:
        raise SpecError(
            f"{field} must have 1 to {MAX_SPATIAL_DIMS} entries (one per spatial dim), "
            f"got {len(items)}: {value!r}"
        )
    kind = "positive" if lowest == 1 else "non-negative"
    for index, item in enumerate(items):
        if not _is_int(item) or int(cast(int, item)) < lowest:
            raise SpecError(f"{field}[{index}] must be a {kind} int, got {item!r}")
    return tuple(int(cast(int, item)) for item in items)


def _pool_size(value: object) -> tuple[int, ...]:
    if _is_int(value):
        size = int(cast(int, value))
        if size < 1:
            raise SpecError(f"pool_size must be a positive int, got {value!r}")
        sizes: tuple[int, ...] = (size, size)
    else:
        sizes = _int_tuple("pool_size", value, lowest=1)
    window = math.prod(sizes)
    if window > MAX_WINDOW_SIZE:
        raise SpecError(
            f"pool_size {list(sizes)} spans {window} elements per window, more than the "
            f"{MAX_WINDOW_SIZE} allowed"
        )
    return sizes


def _strides(value: object, pool_size: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return pool_size
    if _is_int(value):
        stride = int(cast(int, value))
        if stride < 1:
            raise SpecError(f"strides must be a positive int, got {value!r}")
        return (stride,) * len(pool_size)
    strides = _int_tuple("strides", value, lowest=1)
    if len(strides) != len(pool_size):
        raise SpecError(
            f"strides has {len(strides)} entries {list(strides)} but pool_size has "
            f"{len(pool_size)} {list(pool_size)}"
        )
    return strides


def _padding(
    value: object, pool_size: tuple[int, ...]
) -> Literal["valid", "same"] | ExplicitPadding:
    if isinstance(value, str):
        if value not in ("valid", "same"):
            raise SpecError(
                f"padding must be 'valid', 'same' or [[before, after], ...], got {value!r}"
            )
        return cast(Literal["valid", "same"], str(value))
    if isinstance(value, bytes) or not isinstance(value, Sequence):
        raise SpecError(f"padding must be 'valid', 'same' or [[before, after], ...], got {value!r}")
    if len(value) != len(pool_size):
        raise SpecError(
            f"padding has {len(value)} pairs but pool_size has {len(pool_size)} spatial dims; "
            f"got padding {value!r}"
        )
    pairs = []
    for dim, pair in enumerate(value):
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise SpecError(f"padding[{dim}] must be a [before, after] pair, got {pair!r}")
        for side, amount in zip(("before", "after"), pair, strict=True):
            if not _is_int(amount) or not 0 <= int(amount) < pool_size[dim]:
                raise SpecError(
                    f"padding[{dim}] {side} must be an int >= 0 and < pool_size[{dim}] = "
                    f"{pool_size[dim]}, got {amount!r}"
                )
        pairs.append((int(pair[0]), int(pair[1])))
    return tuple(pairs)


@dataclass(frozen=True, init=False)
class PoolSpec:
    """An immutable, validated pooling layer spec (CONTRACT.md, "Layer spec").

    Construction normalizes every field: an int ``pool_size`` means a 2-D square window, an int
    ``strides`` applies to every spatial dim, ``strides=None`` means ``pool_size``, explicit
    padding becomes a tuple of ``(before, after)`` int pairs. Any invalid field raises
    :class:`~engine.errors.SpecError` (a ``ValueError``) naming the field and the value.

    Parameters
    ----------
    mode : {"max", "min", "avg"}
    pool_size : int or sequence of 1 to 3 positive ints
    strides : None, int or sequence of positive ints, one per spatial dim
    padding : "valid", "same" or sequence of ``(before, after)`` pairs, one per spatial dim,
        each ``>= 0`` and ``<`` the pool size of that dim (every window keeps a real element)
    count_include_pad : bool
        avg only: divide by the whole window instead of the number of real elements in it.
    layout : {"channels_last", "channels_first"}
    ties : {"all", "first", "split"}
        max/min backward rule when several elements of a window equal the pooled value.
    nan : {"propagate", "reject"}
    """

    mode: Mode
    pool_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Literal["valid", "same"] | ExplicitPadding
    count_include_pad: bool
    layout: Layout
    ties: Ties
    nan: Nan

    def __init__(
        self,
        mode: Mode = "max",
        pool_size: int | Sequence[int] = (2, 2),
        strides: int | Sequence[int] | None = None,
        padding: Literal["valid", "same"] | Sequence[Sequence[int]] = "valid",
        count_include_pad: bool = False,
        layout: Layout = "channels_last",
        ties: Ties = "all",
        nan: Nan = "propagate",
    ) -> None:
        sizes = _pool_size(pool_size)
        if not isinstance(count_include_pad, bool):
            raise SpecError(f"count_include_pad must be a bool, got {count_include_pad!r}")
        normalized: dict[str, object] = {
            "mode": _choice("mode", mode, _MODES),
            "pool_size": sizes,
            "strides": _strides(strides, sizes),
            "padding": _padding(padding, sizes),
            "count_include_pad": count_include_pad,
            "layout": _choice("layout", layout, _LAYOUTS),
            "ties": _choice("ties", ties, _TIES),
            "nan": _choice("nan", nan, _NANS),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)
        # Every memo key of a call holds the spec: hash its eight fields once, not per lookup.
        object.__setattr__(self, "_hash", hash(tuple(normalized.values())))

    def __hash__(self) -> int:
        return cast(int, self.__dict__["_hash"])

    def __reduce__(self) -> tuple[type[PoolSpec], tuple[object, ...]]:
        # Rebuilt through __init__, so a copy or an unpickled spec hashes in its own process
        # (str hashes differ between processes).
        return PoolSpec, tuple(getattr(self, f.name) for f in fields(self))

    @property
    def ndim(self) -> int:
        """Number of spatial dims (1 to 3); the input's rank is ``ndim + 2``."""
        return len(self.pool_size)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PoolSpec:
        """Build a spec from a JSON-like mapping; missing keys take their defaults.

        Raises
        ------
        SpecError
            On unknown keys (all named) or any invalid value.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise SpecError(
                f"unknown spec field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """The normalized spec as JSON-able builtins (lists, not tuples)."""
        padding: object = (
            self.padding if isinstance(self.padding, str) else [list(pair) for pair in self.padding]
        )
        return {
            "mode": self.mode,
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": padding,
            "count_include_pad": self.count_include_pad,
            "layout": self.layout,
            "ties": self.ties,
            "nan": self.nan,
        }
