"""The layer spec's schema, declared once, and its query-string codec.

:data:`FIELDS` is the one declaration of the spec's fields: name, default, allowed values and
description (CONTRACT.md, "Layer spec"). Derived from it: the service's OpenAPI models and
query-parameter docs (``service/openapi.py``), the query parser below, the SDK's keyword check.
Pinned to it by tests: the engine's ``PoolSpec`` (which cannot import this package), the SDK's
``Literal`` types and the README table. Values are only *parsed* here; the engine validates
them.

The query string (``POST /v1/gradient?...``, docs/DECISIONS.md): ``pool_size=2`` is an int (a
2-D square), ``pool_size=3,3,3`` a list and ``pool_size=2,`` the one-element list ``[2]``;
``strides`` likewise (an int applies to every dim); ``padding`` is ``valid``, ``same`` or
``before:after`` pairs per dim, comma-separated; ``count_include_pad`` is ``true`` or ``false``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from poolgrad.protocol.errors import InvalidSpec, quote

__all__ = [
    "DEFAULTS",
    "FIELDS",
    "FIELD_NAMES",
    "SpecField",
    "check_names",
    "check_spec",
    "spec_from_query",
    "spec_to_query",
]

#: How a field's value is written: one of ``choices``; an int or a list of ints (``ints``), or
#: that or null (``ints_or_null``); a bool; ``padding`` (a choice or ``[[before, after], ...]``).
Kind = Literal["choice", "ints", "ints_or_null", "bool", "padding"]


@dataclass(frozen=True)
class SpecField:
    """One field of the layer spec."""

    name: str
    kind: Kind
    default: Any
    description: str
    #: The allowed strings (``choice``, and ``padding``'s named forms).
    choices: tuple[str, ...] = ()
    #: How the field is written in a query string.
    query_doc: str = ""


FIELDS: Final[tuple[SpecField, ...]] = (
    SpecField("mode", "choice", "max", "Pooling operation.", ("max", "min", "avg")),
    SpecField(
        "pool_size", "ints", [2, 2],
        "Window per spatial dim (1 to 3 positive ints); an int means a 2-D square.",
        query_doc="2 (a 2-D square) or comma-separated ints: 2,2; 2, is the 1-D [2]",
    ),
    SpecField(
        "strides", "ints_or_null", None,
        "Step per spatial dim; an int applies to every dim; null means pool_size.",
        query_doc="an int for every dim, or comma-separated ints",
    ),
    SpecField(
        "padding", "padding", "valid",
        "valid, same, or [[before, after], ...] per spatial dim.", ("valid", "same"),
        query_doc="valid, same, or before:after pairs per dim: 1:1,0:1",
    ),
    SpecField(
        "count_include_pad", "bool", False,
        "avg only: divide by the whole window instead of the real elements in it.",
        query_doc="true or false",
    ),
    SpecField(
        "layout", "choice", "channels_last",
        "(m, *spatial, d) as in EpyNN, or (m, d, *spatial) as in PyTorch.",
        ("channels_last", "channels_first"),
    ),
    SpecField(
        "ties", "choice", "all",
        "max/min backward on tied window elements: all get the gradient, the first gets it, "
        "or they split it.",
        ("all", "first", "split"),
    ),
    SpecField(
        "nan", "choice", "propagate",
        "propagate: a window holding NaN pools to NaN; reject: NaN in X is a 422.",
        ("propagate", "reject"),
    ),
)  # fmt: skip

#: The field names, in the contract's order.
FIELD_NAMES: Final = tuple(field.name for field in FIELDS)
#: Each field's default, as JSON (lists, not tuples).
DEFAULTS: Final[Mapping[str, Any]] = {field.name: field.default for field in FIELDS}
_BY_NAME: Final = {field.name: field for field in FIELDS}


def query_doc(field: SpecField) -> str:
    """How ``field`` is written in a query string (its choices when it has no special form)."""
    return field.query_doc or ", ".join(field.choices)


# ----------------------------------------------------------------------- decoding


def spec_from_query(
    items: Sequence[tuple[str, str]], *, source: str = "query parameter"
) -> dict[str, Any]:
    """Spec fields from ``/v1/gradient`` query parameters (or text in their form, which an
    error calls ``source``: the Open Inference Protocol's request parameters);
    :class:`InvalidSpec` naming an unknown, repeated or unparsable parameter."""
    fields: dict[str, Any] = {}
    for name, value in items:
        field = _BY_NAME.get(name)
        if field is None:
            raise InvalidSpec(
                f"unknown {source} {quote(name)}; spec fields are {', '.join(FIELD_NAMES)}"
            )
        if name in fields:
            raise InvalidSpec(f"{source} {quote(name)} is given more than once")
        fields[name] = _query_value(field, value)
    return fields


def _query_value(field: SpecField, value: str) -> Any:
    name = field.name
    if field.kind in ("ints", "ints_or_null"):
        if "," not in value:
            return _query_int(name, value, value)
        # A trailing comma is the only way to write a one-element list: "2," is [2] (1-D).
        items = value.removesuffix(",").split(",")
        return [_query_int(name, item, value) for item in items]
    if field.kind == "padding":
        if value in field.choices or ":" not in value:
            return value
        return [_query_pair(value, pair) for pair in value.split(",")]
    if field.kind == "bool":
        if value not in ("true", "false"):
            raise InvalidSpec(f"{name} must be true or false, got {quote(value)}")
        return value == "true"
    return value


def _query_int(name: str, text: str, value: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidSpec(
            f"{name} must be an int or comma-separated ints, got {quote(value)} "
            f"(item {quote(text)})"
        ) from None


def _query_pair(value: str, pair: str) -> list[int]:
    before, sep, after = pair.partition(":")
    try:
        if sep:
            return [int(before), int(after)]
    except ValueError:
        pass
    raise InvalidSpec(
        f"padding {quote(value)} must be valid, same or before:after pairs, got pair {quote(pair)}"
    )


# ----------------------------------------------------------------------- encoding


def check_names(spec: Mapping[str, Any]) -> None:
    """``TypeError`` naming spec keywords that are not fields (a caller's mistake in Python,
    caught before any request), with the nearest field name when one is close."""
    unknown = sorted(set(spec) - set(FIELD_NAMES))
    if unknown:
        close = difflib.get_close_matches(unknown[0], FIELD_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"unknown spec field(s) {unknown}{hint}; expected some of {list(FIELD_NAMES)}"
        )


def check_spec(spec: Mapping[str, Any]) -> None:
    """Check JSON-like spec fields (plain Python values; tuples count as lists) against what
    :data:`FIELDS` declares, before anything is sent: names (``TypeError``), choices and the
    int/list shapes (``ValueError`` naming the field and what it allows). ``None`` means "the
    server's default". Only the schema's shapes are checked here; ranges (``pool_size=0``) and
    combinations are the engine's, which stays authoritative."""
    check_names(spec)
    for name, value in spec.items():
        if value is not None:
            _check_value(_BY_NAME[name], value)


def _check_value(field: SpecField, value: Any) -> None:
    name = field.name
    if field.kind == "choice":
        if not isinstance(value, str) or value not in field.choices:
            raise ValueError(f"{name} must be one of {_choices(field)}; got {value!r}")
    elif field.kind in ("ints", "ints_or_null"):
        if not _is_int(value) and not (_is_list(value) and all(map(_is_int, value))):
            null = " or None" if field.kind == "ints_or_null" else ""
            raise ValueError(f"{name} must be an int or a list of ints{null}; got {value!r}")
    elif field.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")
    elif isinstance(value, str):  # padding by name
        if value not in field.choices:
            raise ValueError(f"{name} must be one of {_choices(field)} or pairs; got {value!r}")
    elif not (_is_list(value) and all(_is_pair(pair) for pair in value)):
        raise ValueError(
            f"{name} must be one of {_choices(field)} or a list of [before, after] int pairs "
            f"per spatial dim; got {value!r}"
        )


def _choices(field: SpecField) -> str:
    return ", ".join(repr(choice) for choice in field.choices)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _is_pair(value: Any) -> bool:
    return _is_list(value) and len(value) == 2 and all(map(_is_int, value))


def spec_to_query(spec: Mapping[str, Any]) -> dict[str, str]:
    """JSON-like spec fields (lists, not tuples; ``None`` left out) as query parameters, the
    inverse of :func:`spec_from_query`."""
    check_names(spec)
    query: dict[str, str] = {}
    for name, value in spec.items():
        if value is None:
            continue
        kind = _BY_NAME[name].kind
        if kind in ("ints", "ints_or_null"):
            query[name] = _ints(value)
        elif kind == "padding" and not isinstance(value, str):
            query[name] = ",".join(f"{before}:{after}" for before, after in value)
        elif isinstance(value, bool):
            query[name] = "true" if value else "false"
        else:
            query[name] = str(value)
    return query


def _ints(value: Any) -> str:
    if not isinstance(value, list):
        return str(value)  # an int: pool_size=2 is the 2-D square, strides=2 every dim
    # "3," is the one-element list [3] (1-D); a bare "3" would be the int.
    return ",".join(str(item) for item in value) + ("," if len(value) == 1 else "")
