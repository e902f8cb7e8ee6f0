"""Specs are validated once per distinct spec, not once per request (issue 12)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from engine import PoolSpec
from engine.errors import SpecError
from poolgrad.protocol import InvalidSpec as InvalidQuerySpec
from service import routes
from service.compute import spec_of
from service.errors import InvalidSpec


def test_equal_specs_share_one_validated_spec() -> None:
    first = spec_of({"mode": "avg", "pool_size": [2, 2], "padding": [[0, 1], [1, 0]]})
    again = spec_of({"padding": ((0, 1), (1, 0)), "pool_size": (2, 2), "mode": "avg"})
    assert again is first  # the cache answered, whatever the order or list type
    assert first == PoolSpec(mode="avg", pool_size=(2, 2), padding=((0, 1), (1, 0)))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"count_include_pad": True}, {"count_include_pad": 1}),
        ({"strides": 2}, {"strides": [2]}),
        ({"pool_size": 2}, {"pool_size": 2.0}),
    ],
)
def test_values_that_read_alike_are_not_confused(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    spec = spec_of(one)
    with contextlib.suppress(SpecError):  # refused: certainly not the other's cached spec
        assert spec_of(other) is not spec


def test_refusals_are_not_cached_and_odd_values_still_reach_the_engine() -> None:
    for _ in range(2):
        with pytest.raises(SpecError, match="median"):
            spec_of({"mode": "median"})
    with pytest.raises(SpecError):
        spec_of({"pool_size": {"a": 1}})  # unhashable: validated by from_dict, uncached


def test_a_gradient_query_string_is_parsed_once() -> None:
    query = b"mode=avg&pool_size=3,3&strides=1,1&padding=1:1,0:1"
    first = routes._query_spec(query)
    assert routes._query_spec(query) is first
    assert first == PoolSpec(mode="avg", pool_size=(3, 3), strides=(1, 1), padding=((1, 1), (0, 1)))
    # Past the bound it is parsed each time, to the same spec, and not kept.
    kept = routes._parsed_query_spec.cache_info().currsize
    long_query = b"mode=avg&pool_size=" + b"0" * routes.QUERY_CACHE_MAX_BYTES + b"3,3"
    assert routes._query_spec(long_query) == PoolSpec(mode="avg", pool_size=(3, 3))
    assert routes._parsed_query_spec.cache_info().currsize == kept


def test_a_refused_gradient_query_string_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(InvalidSpec, match="'median'"):
            routes._query_spec(b"mode=median")
        with pytest.raises(InvalidQuerySpec, match="unknown query parameter 'size'"):
            routes._query_spec(b"size=2")
