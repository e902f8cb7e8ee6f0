"""The entity-tag grammar of a session step: ``ETag: "<step>"`` and ``If-Match``.

A step's tag is the step in decimal, quoted (``"3"``); weak tags (``W/"3"``) are read as the
same step. Steps are 1 to 18 ASCII digits: ``str.isdigit`` also takes ``"²"``, which ``int``
refuses, and 18 digits keep ``int`` clear of Python's digit limit and inside a signed 64-bit
integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["DIGITS", "IfMatch", "format_etag", "parse_etag", "parse_if_match"]

#: A step (and a ``Content-Length``): 1 to 18 ASCII digits.
DIGITS: Final = re.compile(r"[0-9]{1,18}")


def format_etag(step: int) -> str:
    """The ``ETag`` value for ``step``: ``"<step>"``."""
    return f'"{step}"'


def parse_etag(value: str | None) -> int | None:
    """The step one entity tag names (``"3"`` or ``W/"3"``), else ``None`` (absent, a list,
    or not a step: ``"²"``, ``"abc"``, an unquoted ``3``)."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/")
    if len(text) >= 2 and text[0] == text[-1] == '"' and DIGITS.fullmatch(text[1:-1]):
        return int(text[1:-1])
    return None


@dataclass(frozen=True)
class IfMatch:
    """An ``If-Match`` precondition on the cached step: one of ``steps`` must be current.

    ``raw`` is the header as the client sent it, for the refusal to quote.
    """

    raw: str
    steps: frozenset[int]

    def matches(self, step: int) -> bool:
        return step in self.steps


def parse_if_match(value: str | None) -> IfMatch | None:
    """``If-Match`` as a step condition: ``None`` when absent or ``*`` (any cached step
    matches). A list matches any of its steps; a tag that is not a step can never match, so
    it stays in ``raw`` and out of ``steps`` (the condition then fails: 412 quoting it)."""
    if value is None or value.strip() == "*":
        return None
    steps = {step for tag in value.split(",") if (step := parse_etag(tag)) is not None}
    return IfMatch(raw=value, steps=frozenset(steps))
