"""The layer spec is declared once (poolgrad.protocol.spec.FIELDS); everything else that
names its fields, defaults or allowed values is derived from it or pinned to it here."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from engine import PoolSpec
from engine.errors import SpecError
from poolgrad import PoolSpecKwargs
from poolgrad.protocol.spec import DEFAULTS, FIELD_NAMES, FIELDS, SpecField
from service import openapi

ROOT = Path(__file__).resolve().parent.parent.parent
CHOICE_FIELDS = [field for field in FIELDS if field.choices]


def _literal_args(hint: Any) -> set[str]:
    """The strings of every ``Literal`` in ``hint`` (a union or a bare Literal)."""
    if typing.get_origin(hint) is typing.Literal:
        return set(typing.get_args(hint))
    return {arg for part in typing.get_args(hint) for arg in _literal_args(part)}


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, tuple | list) else value


def test_engine_poolspec_has_the_fields_and_defaults() -> None:
    assert tuple(field.name for field in dataclasses.fields(PoolSpec)) == FIELD_NAMES
    parameters = inspect.signature(PoolSpec).parameters
    assert {name: _plain(parameters[name].default) for name in FIELD_NAMES} == DEFAULTS


@pytest.mark.parametrize("field", CHOICE_FIELDS, ids=lambda field: field.name)
def test_engine_poolspec_allows_the_choices(field: SpecField) -> None:
    hints = typing.get_type_hints(PoolSpec.__init__)
    assert _literal_args(hints[field.name]) == set(field.choices)
    for choice in field.choices:
        assert PoolSpec.from_dict({field.name: choice}).to_dict()[field.name] == choice
    with pytest.raises(SpecError, match=field.name):
        PoolSpec.from_dict({field.name: "bogus"})


@pytest.mark.parametrize("field", CHOICE_FIELDS, ids=lambda field: field.name)
def test_sdk_keyword_types_allow_the_choices(field: SpecField) -> None:
    hints = typing.get_type_hints(PoolSpecKwargs)
    assert tuple(hints) == FIELD_NAMES
    assert _literal_args(hints[field.name]) == set(field.choices)


def test_openapi_models_and_query_docs_come_from_the_schema() -> None:
    model = openapi.SpecFields.model_fields
    assert tuple(model) == FIELD_NAMES
    assert {name: model[name].default for name in FIELD_NAMES} == DEFAULTS
    schema = openapi.SpecFields.model_json_schema()["properties"]
    for field in CHOICE_FIELDS:
        assert set(field.choices) <= set(re.findall(r'"([a-z_]+)"', json.dumps(schema[field.name])))
    params = openapi.GRADIENT["openapi_extra"]["parameters"]
    assert tuple(param["name"] for param in params) == FIELD_NAMES


def test_readme_spec_table_matches_the_schema() -> None:
    rows = re.findall(
        r"^\| `([a-z_]+)` \| (.+) \| `([^`]+)` \|$", (ROOT / "README.md").read_text(), re.M
    )
    table = {name: (values, default) for name, values, default in rows if name in FIELD_NAMES}
    assert tuple(table) == FIELD_NAMES
    for field in FIELDS:
        values, default = table[field.name]
        expected = field.default if isinstance(field.default, str) else json.dumps(field.default)
        assert default == expected, field.name
        for choice in field.choices:
            assert f"`{choice}`" in values, (field.name, choice)


def test_engine_parallel_passes_every_field_when_it_rebuilds_a_spec() -> None:
    tree = ast.parse((ROOT / "engine" / "parallel.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "PoolSpec"
        and node.keywords
    ]
    for call in calls:
        assert {keyword.arg for keyword in call.keywords} == set(FIELD_NAMES)
