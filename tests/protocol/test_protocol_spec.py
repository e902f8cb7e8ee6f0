"""poolgrad.protocol.spec: the spec's query-string codec, both ways."""

from __future__ import annotations

import pytest

from poolgrad.protocol import InvalidSpec, spec_from_query, spec_to_query


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ([("pool_size", "2")], {"pool_size": 2}),
        ([("pool_size", "2,")], {"pool_size": [2]}),
        ([("pool_size", "2,3,4"), ("strides", "1")], {"pool_size": [2, 3, 4], "strides": 1}),
        ([("padding", "1:0,0:1")], {"padding": [[1, 0], [0, 1]]}),
        ([("padding", "same"), ("count_include_pad", "false")],
         {"padding": "same", "count_include_pad": False}),
        ([("mode", "avg"), ("layout", "channels_first"), ("ties", "first"), ("nan", "reject")],
         {"mode": "avg", "layout": "channels_first", "ties": "first", "nan": "reject"}),
    ],
)  # fmt: skip
def test_spec_from_query(query: list[tuple[str, str]], fields: dict[str, object]) -> None:
    assert spec_from_query(query) == fields


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ([("size", "2")], "'size'"),
        ([("pool_size", "")], "''"),
        ([("pool_size", ",")], "','"),
        ([("padding", "1:1:1")], "'1:1:1'"),
        ([("count_include_pad", "1")], "'1'"),
        ([("nan", "a"), ("nan", "b")], "more than once"),
    ],
)
def test_spec_from_query_refuses(query: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        spec_from_query(query)
    assert caught_code(query) == "invalid_spec"


def caught_code(query: list[tuple[str, str]]) -> str:
    try:
        spec_from_query(query)
    except InvalidSpec as exc:
        return exc.code
    raise AssertionError(f"{query} was accepted")


@pytest.mark.parametrize(
    "fields",
    [
        {"pool_size": 2},
        {"pool_size": [2]},
        {"pool_size": [2, 3, 4], "strides": 1, "padding": [[1, 0], [0, 1], [2, 2]]},
        {"mode": "avg", "padding": "same", "count_include_pad": True},
        {"layout": "channels_first", "ties": "split", "nan": "reject", "count_include_pad": False},
    ],
)
def test_query_round_trip(fields: dict[str, object]) -> None:
    assert spec_from_query(list(spec_to_query(fields).items())) == fields
