"""poolgrad.protocol.etags: the entity-tag grammar of a session step, both ways."""

from __future__ import annotations

import pytest

from poolgrad.protocol import format_etag, parse_etag, parse_if_match


@pytest.mark.parametrize(
    ("header", "steps"),
    [
        ('"3"', {3}),
        ('W/"3"', {3}),
        ('"1", W/"2" , "x"', {1, 2}),
        ("3", set()),
        ('"-1"', set()),
        ('"\N{SUPERSCRIPT TWO}"', set()),
        ('"\N{ARABIC-INDIC DIGIT THREE}"', set()),
        ('"' + "9" * 5000 + '"', set()),
        ('"' + "9" * 19 + '"', set()),
        ('"' + "9" * 18 + '"', {10**18 - 1}),
        ('"+3"', set()),
    ],
)
def test_if_match_steps(header: str, steps: set[int]) -> None:
    condition = parse_if_match(header)
    assert condition is not None
    assert condition.steps == steps


@pytest.mark.parametrize("header", [None, "*", " * "])
def test_if_match_any(header: str | None) -> None:
    assert parse_if_match(header) is None


@pytest.mark.parametrize(
    ("header", "step"),
    [
        ('"3"', 3),
        ('W/"3"', 3),
        (' "0" ', 0),
        ('"' + "9" * 18 + '"', 10**18 - 1),
        ('"\N{SUPERSCRIPT TWO}"', None),
        ('"\N{ARABIC-INDIC DIGIT THREE}"', None),
        ('"' + "9" * 19 + '"', None),
        ("3", None),
        ('"1", "2"', None),
        ('"-1"', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_etag(header: str | None, step: int | None) -> None:
    assert parse_etag(header) == step


@pytest.mark.parametrize("step", [0, 1, 41, 10**18 - 1])
def test_format_and_parse_are_inverse(step: int) -> None:
    assert parse_etag(format_etag(step)) == step
    condition = parse_if_match(format_etag(step))
    assert condition is not None
    assert condition.matches(step)
    assert not condition.matches(step + 1)
