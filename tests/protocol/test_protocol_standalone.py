"""The protocol stands alone: the server imports it and nothing else of poolgrad, so importing
the server loads neither httpx nor the SDK's client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
#: What of ``poolgrad`` the server may import: the protocol, and the version it reports.
ALLOWED = ("poolgrad.protocol", "poolgrad._version")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import service.app", "import poolgrad.protocol"])
def test_importing_the_server_or_the_protocol_loads_no_client(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert "httpx" not in loaded
    assert not {"poolgrad._client", "poolgrad._base", "poolgrad._exceptions"} & loaded


def test_the_sdk_still_loads_its_client_on_first_use() -> None:
    loaded = _loaded_after("import poolgrad; poolgrad.Client")
    assert {"httpx", "poolgrad._client"} <= loaded


def test_the_protocol_needs_numpy_and_the_standard_library_only() -> None:
    loaded = _loaded_after("import poolgrad.protocol") - _loaded_after("pass")
    third_party = {name.split(".")[0] for name in loaded} - set(sys.stdlib_module_names)
    assert third_party <= {"poolgrad", "numpy", "orjson"}, third_party


def test_service_imports_only_the_protocol_of_poolgrad() -> None:
    imported = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                module = names[0] if node.module != "poolgrad" else names[1]
                imported.add((path.name, module))
            elif isinstance(node, ast.Import):
                imported |= {(path.name, alias.name) for alias in node.names}
    from_poolgrad = {(file, name) for file, name in imported if name.split(".")[0] == "poolgrad"}
    assert from_poolgrad  # the scan sees the server's protocol imports
    assert all(name.startswith(ALLOWED) for _, name in from_poolgrad), from_poolgrad
