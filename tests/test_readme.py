"""README.md stays true: its settings table names every setting with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
# Defaults computed at start-up, written as the rule that computes them.
COMPUTED_DEFAULTS = {"POOLGRAD_ENGINE_THREADS": "min(4, cores)"}


def readme_settings() -> dict[str, str]:
    text = README.read_text()
    table = text.split("<!-- settings-table -->", 1)[1].split("<!-- /settings-table -->", 1)[0]
    rows = re.findall(r"^\| `(POOLGRAD_\w+)` \| ([^|]+) \|", table, flags=re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


def as_written(default: object) -> str:
    if default == ():
        return "empty"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    documented = readme_settings()
    actual = {
        f"POOLGRAD_{name.upper()}": COMPUTED_DEFAULTS.get(
            f"POOLGRAD_{name.upper()}", as_written(field.default)
        )
        for name, field in Settings.model_fields.items()
    }
    assert set(documented) == set(actual)
    assert {name: documented[name] for name in actual} == actual


def test_curl_examples_fail_on_an_error_and_never_keep_its_body_as_a_tensor() -> None:
    commands = re.findall(r"^curl .*?(?<!\\)$", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert commands
    for command in commands:
        assert "--fail-with-body" in command, command
        if " -o " in command:
            output = command.split(" -o ", 1)[1].split()[0]
            assert f"|| {{ cat {output}; rm {output}; }}" in command, command
