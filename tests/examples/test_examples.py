"""The scripts in examples/ run as the README prints them, against a real server.

Each runs in a fresh interpreter, as a user runs it: so nothing a test module patched (NumPy 2's
``VisibleDeprecationWarning`` alias for EpyNN, say) can help it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from tests.conftest import LiveServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
SECONDS = 240


def run(
    script: Path, *args: str, cwd: Path, base_url: str, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POOLGRAD_BASE_URL": base_url}
    return subprocess.run(
        [*(python or (sys.executable,)), script, *args],
        cwd=cwd,  # EpyNN may write into the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS,
    )


def served(base_url: str, route: str) -> float:
    """Requests the server answered on ``route`` (a template), from its /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "poolgrad_requests"
        for sample in family.samples
        if sample.name == "poolgrad_requests_total" and sample.labels["route"] == route
    )


def test_quickstart_checks_every_result(live_server: LiveServer, tmp_path: Path) -> None:
    result = run(EXAMPLES / "quickstart.py", cwd=tmp_path, base_url=live_server.base_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == 4


def test_epynn_cnn_trains_through_the_server(live_server: LiveServer, tmp_path: Path) -> None:
    forward = "/v1/sessions/{session_id}/forward"
    backward = "/v1/sessions/{session_id}/backward"
    before = served(live_server.base_url, forward), served(live_server.base_url, backward)
    result = run(
        EXAMPLES / "epynn_cnn.py", "--epochs", "5", cwd=tmp_path, base_url=live_server.base_url
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"trained 5 epochs .* MSE ([\d.]+) -> ([\d.]+)", result.stdout)
    assert summary is not None, result.stdout
    assert float(summary[2]) < float(summary[1])  # it learned
    after = served(live_server.base_url, forward), served(live_server.base_url, backward)
    # Every batch of every epoch pooled on the server (4 batches of 16 in the training set).
    assert after[0] - before[0] >= 5 * 4
    assert after[1] - before[1] >= 5 * 4


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_outside_the_virtualenv_a_script_says_what_to_do(script: Path, tmp_path: Path) -> None:
    # -S: no site-packages, as with a Python that lacks the project's installation.
    result = run(script, cwd=tmp_path, base_url="http://127.0.0.1:1", python=(sys.executable, "-S"))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert "is not installed for" in result.stderr
    assert f".venv/bin/python {script}" in result.stderr
