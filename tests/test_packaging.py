"""Installs from public indexes, in two distributions built from this one tree.

- ``constraints.txt`` pins public versions only: a local label (``torch==2.13.0+cpu``) is served
  by no index, and macOS has no ``+cpu`` builds at all.
- ``poolgrad`` (sdk/pyproject.toml) is the SDK: its wheel holds the ``poolgrad`` import package
  and nothing else, so a training project's own ``engine/`` or ``service/`` never collides.
- ``poolgrad-server`` (pyproject.toml) holds ``engine`` and ``service`` and depends on the SDK of
  the same version.

The wheels are built with ``pip wheel`` from a copy of the files the Dockerfile copies, as from a
clean checkout (an in-tree build/ folder could hold files long deleted).
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import poolgrad

ROOT = Path(__file__).resolve().parent.parent
#: What the Dockerfile's build stage copies: enough to build both wheels.
SOURCES = ("pyproject.toml", "README.md", "sdk", "engine", "service", "poolgrad")


def local_labels(constraints: str) -> list[str]:
    """The pins of ``constraints`` (a pip constraints file) whose version has a local label."""
    pins = []
    for line in constraints.splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            pins += [
                str(requirement)
                for spec in requirement.specifier
                if Version(spec.version.removesuffix(".*")).local is not None
            ]
    return pins


def test_constraints_pin_only_public_versions() -> None:
    assert local_labels((ROOT / "constraints.txt").read_text()) == []


def test_a_local_label_is_caught() -> None:
    assert local_labels("# header\nnumpy==2.4.6\ntorch==2.13.0+cpu  # local\n") == [
        "torch==2.13.0+cpu"
    ]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both wheels, built from a clean copy of the tree: ``{"poolgrad": ..., "server": ...}``."""
    tree = tmp_path_factory.mktemp("checkout")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            out,
            tree / "sdk",
            tree,
        ],
        check=True,
        capture_output=True,
    )
    return {
        "poolgrad": next(out.glob("poolgrad-*.whl")),
        "server": next(out.glob("poolgrad_server-*.whl")),
    }


def top_level_names(wheel: Path) -> set[str]:
    """The first path component of every file in ``wheel``, dist-info excluded."""
    with zipfile.ZipFile(wheel) as archive:
        names = {name.split("/", 1)[0] for name in archive.namelist()}
    return {name for name in names if not name.endswith(".dist-info")}


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(path))


def test_the_sdk_wheel_holds_only_the_poolgrad_package(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["poolgrad"]) as archive:
        files = archive.namelist()
    assert top_level_names(wheels["poolgrad"]) == {"poolgrad"}
    assert {"poolgrad/__init__.py", "poolgrad/epynn.py", "poolgrad/py.typed"} <= set(files)
    requires = {
        Requirement(text).name
        for text in metadata(wheels["poolgrad"]).get_all("Requires-Dist") or []
    }
    assert requires == {"numpy", "httpx", "anyio"}


def test_the_server_wheel_holds_engine_and_service_and_needs_this_sdk(
    wheels: dict[str, Path],
) -> None:
    assert top_level_names(wheels["server"]) == {"engine", "service"}
    info = metadata(wheels["server"])
    assert info["Version"] == poolgrad.__version__
    requires = [Requirement(text) for text in info.get_all("Requires-Dist") or []]
    (sdk,) = (requirement for requirement in requires if requirement.name == "poolgrad")
    assert str(sdk.specifier) == f"=={poolgrad.__version__}"
    with zipfile.ZipFile(wheels["server"]) as archive:
        entry_points = archive.read(
            next(name for name in archive.namelist() if name.endswith("entry_points.txt"))
        ).decode()
    assert "poolgrad-server = service.__main__:main" in entry_points


def test_an_sdk_only_environment_has_no_engine_or_service(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", wheels["poolgrad"]],
        check=True,
        capture_output=True,
    )
    # Run outside the checkout, so the current directory cannot lend its own packages.
    found = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; "
            "print([n for n in ('poolgrad', 'engine', 'service') if u.find_spec(n)])",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip() == "['poolgrad']"
