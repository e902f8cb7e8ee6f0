"""Specs are validated once per distinct spec, not once per request (issue 12)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from engine import PoolSpec
from engine.errors import SpecError
from service.compute import spec_of


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
