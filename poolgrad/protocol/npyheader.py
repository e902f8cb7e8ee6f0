"""A strict parser of the ``.npy`` header dictionary, so no crafted header reaches NumPy's.

A ``.npy`` header is the ``repr`` of a Python dict (NumPy's ``format.py``)::

    {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }

NumPy reads it with its own tokenizer and ``ast.literal_eval``, and a crafted header makes that
raise whatever the parser happens to hit: ``tokenize.TokenError`` for an unclosed tuple,
``IndexError`` for a one-element descr tuple, ``TypeError`` for ``True`` in the shape, each a
different class, each a 500 where it escaped. This parser reads only the grammar NumPy writes,
with no recursion and no evaluation, and every failure is a
:class:`~poolgrad.protocol.errors.MalformedTensor` that says where and what:

* the dict has exactly the keys ``descr``, ``fortran_order`` and ``shape``, each once, in any
  order, a trailing comma allowed;
* ``descr`` is a dtype string as NumPy writes it (``'<f4'``, ``'|b1'``, ``'|O'``); a list
  (NumPy's structured dtypes) is refused by name;
* ``fortran_order`` is ``True`` or ``False``;
* ``shape`` is a tuple of non-negative ints of at most 19 digits (``True`` is not an int);
* strings are single- or double-quoted without escapes; whitespace is free.

Cost: one pass over the header (at most ``DEFAULT_MAX_HEADER_BYTES``), no allocation beyond it.
"""

from __future__ import annotations

import re
from typing import Any, Final

import numpy as np

from poolgrad.protocol.errors import MalformedTensor, quote

__all__ = ["NpyHeader", "parse_npy_header"]

#: The header's three keys, in the order NumPy writes them.
_KEYS: Final = ("descr", "fortran_order", "shape")

#: One token: a string, an integer, a boolean, or one punctuation character.
_TOKEN: Final = re.compile(
    r"""\s*(?:(?P<str>'[^'\\]*'|"[^"\\]*")|(?P<int>-?[0-9]+)|(?P<bool>True|False)"""
    r"""|(?P<punct>[{}():,\[]))"""
)

#: A dtype string as NumPy writes one (``dtype.str``): byte order, kind, item size and, for
#: dates, a unit. Other strings never reach ``np.dtype``, whose aliases warn or change with
#: NumPy's version (``'a'``), or build structured dtypes (``'f4,f4'``).
_DESCR: Final = re.compile(r"[<>|=]?[biufcSUVOMm?][0-9]{0,3}(\[[0-9]{0,3}[A-Za-z]{1,2}\])?")

#: Digits of one dimension: 19 digits pass ``sys.maxsize`` already (the shape check refuses
#: those with a clear message) while staying far below Python's int-parsing digit limit.
_MAX_DIM_DIGITS: Final = 19

#: What a header says: ``(shape, fortran_order, dtype)``.
NpyHeader = tuple[tuple[int, ...], bool, "np.dtype[Any]"]


class _Tokens:
    """The header's tokens, read left to right."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> MalformedTensor:
        """The refusal for ``what``, quoting the header from character ``at`` (default: the
        next unread one)."""
        at = self.pos if at is None else at
        excerpt = quote(self.text[at : at + 40].strip())
        return MalformedTensor(
            f".npy header is malformed: {what} at character {at}, found {excerpt}"
        )

    def next(self, expected: str) -> tuple[str, str, int]:
        """The next token as (kind, text, start): kind is ``str``, ``int``, ``bool`` or
        ``punct``; the refusal names ``expected`` when nothing valid comes next."""
        match = _TOKEN.match(self.text, self.pos)
        if match is None or match.lastgroup is None:
            raise self.fail(f"expected {expected}")
        self.pos = match.end()
        return match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup)

    def punct(self, allowed: str) -> str:
        """The next token, which must be one of the characters ``allowed``."""
        expected = " or ".join(repr(char) for char in allowed)
        kind, text, start = self.next(expected)
        if kind != "punct" or text not in allowed:
            raise self.fail(f"expected {expected}", start)
        return text


def parse_npy_header(text: str) -> NpyHeader:
    """``(shape, fortran_order, dtype)`` from the header dict's text; :class:`MalformedTensor`
    naming the fault for anything else. The dtype is built only from a string that passed
    :data:`_DESCR`; whether it is one the caller accepts (numeric, not object) is the caller's
    check."""
    tokens = _Tokens(text)
    tokens.punct("{")
    descr: str | None = None
    fortran: bool | None = None
    shape: tuple[int, ...] | None = None
    seen: set[str] = set()
    while True:
        kind, key, start = tokens.next("a key or '}'")
        if kind == "punct" and key == "}":  # an empty dict, or a trailing comma
            break
        if kind != "str":
            raise tokens.fail("expected a quoted key", start)
        name = key[1:-1]
        if name not in _KEYS:
            raise MalformedTensor(
                f".npy header has unknown key {quote(name)}; expected {', '.join(_KEYS)}"
            )
        if name in seen:
            raise MalformedTensor(f".npy header gives {name!r} more than once")
        seen.add(name)
        tokens.punct(":")
        if name == "descr":
            descr = _descr(tokens)
        elif name == "fortran_order":
            fortran = _fortran_order(tokens)
        else:
            shape = _shape(tokens)
        if tokens.punct(",}") == "}":
            break
    if tokens.text[tokens.pos :].strip():
        raise tokens.fail("unexpected text after the header dict")
    if descr is None or fortran is None or shape is None:
        missing = [name for name in _KEYS if name not in seen]
        raise MalformedTensor(
            f".npy header lacks {', '.join(missing)}; it needs {', '.join(_KEYS)}"
        )
    return shape, fortran, _dtype(descr)


def _descr(tokens: _Tokens) -> str:
    kind, text, start = tokens.next("a value for 'descr'")
    if kind == "punct" and text == "[":
        raise MalformedTensor(
            f"structured dtype {quote(tokens.text[start:].strip())} is refused: "
            "send a plain numeric array"
        )
    if kind != "str":
        raise tokens.fail("descr must be a quoted dtype string", start)
    return text[1:-1]


def _fortran_order(tokens: _Tokens) -> bool:
    kind, text, start = tokens.next("a value for 'fortran_order'")
    if kind != "bool":
        raise tokens.fail("fortran_order must be True or False", start)
    return text == "True"


def _shape(tokens: _Tokens) -> tuple[int, ...]:
    """A tuple of ints: ``()``, ``(3,)``, ``(2, 3)``, ``(2, 3,)``; never ``(3)``, the int."""
    tokens.punct("(")
    dims: list[int] = []
    while True:
        kind, text, start = tokens.next("a dimension or ')'")
        if kind == "punct" and text == ")":  # () or a trailing comma
            return tuple(dims)
        if kind != "int":
            raise tokens.fail("shape dimensions must be non-negative ints", start)
        if text.startswith("-"):
            raise MalformedTensor(f".npy header has a negative dimension {quote(text, 40)}")
        if len(text) > _MAX_DIM_DIGITS:
            raise MalformedTensor(
                f".npy header has a dimension of {len(text)} digits ({quote(text, 40)}); "
                f"at most {_MAX_DIM_DIGITS} are allowed"
            )
        dims.append(int(text))
        if tokens.punct(",)") == ")":
            if len(dims) == 1:
                raise tokens.fail("a one-dimension shape needs its comma, (n,)", start)
            return tuple(dims)


def _dtype(descr: str) -> np.dtype[Any]:
    """The dtype ``descr`` names, for strings of NumPy's own form only."""
    if _DESCR.fullmatch(descr) is None:
        raise MalformedTensor(
            f".npy header has descr {quote(descr)}, which is not a NumPy dtype string such as '<f4'"
        )
    try:
        return np.dtype(descr)
    except (TypeError, ValueError) as exc:
        raise MalformedTensor(f".npy header has descr {quote(descr)}: {exc}") from exc
