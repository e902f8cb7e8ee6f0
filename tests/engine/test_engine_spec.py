"""PoolSpec: normalization, strict validation with named fields, dict round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import EngineError, PoolSpec, SpecError


def test_defaults_are_the_contract_defaults() -> None:
    spec = PoolSpec()
    assert spec.to_dict() == {
        "mode": "max",
        "pool_size": [2, 2],
        "strides": [2, 2],
        "padding": "valid",
        "count_include_pad": False,
        "layout": "channels_last",
        "ties": "all",
        "nan": "propagate",
    }


@pytest.mark.parametrize(
    ("kwargs", "pool_size", "strides"),
    [
        ({"pool_size": 3}, (3, 3), (3, 3)),
        ({"pool_size": 3, "strides": 1}, (3, 3), (1, 1)),
        ({"pool_size": [2, 3, 4], "strides": 2}, (2, 3, 4), (2, 2, 2)),
        ({"pool_size": [5]}, (5,), (5,)),
        ({"pool_size": 256}, (256, 256), (256, 256)),  # the largest window allowed
        ({"pool_size": (2, 3), "strides": [1, 2]}, (2, 3), (1, 2)),
    ],
)
def test_sizes_are_normalized(
    kwargs: dict[str, object], pool_size: tuple[int, ...], strides: tuple[int, ...]
) -> None:
    spec = PoolSpec(**kwargs)  # type: ignore[arg-type]
    assert spec.pool_size == pool_size
    assert spec.strides == strides


def test_explicit_padding_becomes_int_pairs_and_spec_is_hashable() -> None:
    spec = PoolSpec(pool_size=(3, 2), padding=[[1, 2], [0, 1]])
    assert spec.padding == ((1, 2), (0, 1))
    assert spec == PoolSpec(pool_size=(3, 2), padding=((1, 2), (0, 1)))
    assert hash(spec) == hash(PoolSpec(pool_size=(3, 2), padding=((1, 2), (0, 1))))
    with pytest.raises(AttributeError):
        spec.mode = "min"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "mean"}, r"mode must be one of 'max', 'min', 'avg', got 'mean'"),
        ({"ties": "last"}, r"ties must be one of .* got 'last'"),
        ({"layout": "NHWC"}, r"layout must be one of .* got 'NHWC'"),
        ({"nan": "ignore"}, r"nan must be one of .* got 'ignore'"),
        ({"pool_size": 0}, r"pool_size must be a positive int, got 0"),
        ({"pool_size": [2, 0]}, r"pool_size\[1\] must be a positive int, got 0"),
        ({"pool_size": [2, -1]}, r"pool_size\[1\] must be a positive int, got -1"),
        ({"pool_size": [2.0, 2]}, r"pool_size\[0\] must be a positive int, got 2\.0"),
        ({"pool_size": [True, 2]}, r"pool_size\[0\] must be a positive int, got True"),
        ({"pool_size": True}, r"pool_size must be an int or a list of 1 to 3 ints, got True"),
        ({"pool_size": 2.0}, r"pool_size must be an int or a list .* got 2\.0"),
        ({"pool_size": "22"}, r"pool_size must be an int or a list .* got '22'"),
        ({"pool_size": []}, r"pool_size must have 1 to 3 entries .* got 0"),
        ({"pool_size": [2, 2, 2, 2]}, r"pool_size must have 1 to 3 entries .* got 4"),
        (
            {"pool_size": [100_000, 100_000], "padding": "same"},
            r"pool_size \[100000, 100000\] spans 10000000000 elements per window, more than "
            r"the 65536 allowed",
        ),
        ({"pool_size": [41, 40, 40]}, r"spans 65600 elements per window"),
        ({"strides": 0}, r"strides must be a positive int, got 0"),
        ({"strides": [1, 2, 3]}, r"strides has 3 entries \[1, 2, 3\] but pool_size has 2"),
        ({"strides": [1, False]}, r"strides\[1\] must be a positive int, got False"),
        ({"padding": "full"}, r"padding must be 'valid', 'same' or .* got 'full'"),
        ({"padding": [[0, 0]]}, r"padding has 1 pairs but pool_size has 2 spatial dims"),
        ({"padding": [[0, 0], [0]]}, r"padding\[1\] must be a \[before, after\] pair, got \[0\]"),
        ({"padding": [[0, 2], [0, 0]]}, r"padding\[0\] after must be an int >= 0 and < .* got 2"),
        ({"padding": [[0, 0], [-1, 0]]}, r"padding\[1\] before must be an int >= 0 .* got -1"),
        ({"padding": 1}, r"padding must be 'valid', 'same' or .* got 1"),
        ({"count_include_pad": 1}, r"count_include_pad must be a bool, got 1"),
    ],
)
def test_invalid_fields_raise_spec_error_naming_field_and_value(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        PoolSpec(**kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, EngineError)
    assert isinstance(caught.value, ValueError)


def test_from_dict_round_trips_through_json() -> None:
    spec = PoolSpec(
        mode="avg",
        pool_size=(3, 2, 2),
        strides=1,
        padding=[(1, 1), (0, 1), (1, 0)],
        count_include_pad=True,
        layout="channels_first",
        ties="split",
        nan="reject",
    )
    assert PoolSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_from_dict_takes_defaults_and_rejects_unknown_keys() -> None:
    assert PoolSpec.from_dict({}) == PoolSpec()
    assert PoolSpec.from_dict({"pool_size": 3}).strides == (3, 3)
    with pytest.raises(SpecError, match=r"unknown spec field\(s\): kernel, stride; known: "):
        PoolSpec.from_dict({"stride": 2, "kernel": 3, "mode": "max"})
    with pytest.raises(SpecError, match=r"spec must be a JSON object, got list"):
        PoolSpec.from_dict([("mode", "max")])  # type: ignore[arg-type]


def test_string_subclasses_normalize_to_str() -> None:
    spec = PoolSpec(mode=np.str_("min"), padding=np.str_("same"), ties=np.str_("first"))  # type: ignore[arg-type]
    assert type(spec.mode) is str
    assert type(spec.padding) is str
    assert type(spec.ties) is str
    assert repr(spec) == repr(PoolSpec(mode="min", padding="same", ties="first"))
