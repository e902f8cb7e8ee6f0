"""/docs renders in a real browser with no network beyond loopback.

A headless Chromium (Debian's ``chromium``; ``make test-deps`` installs it) loads each page from
a real server on 127.0.0.1. Host names other than 127.0.0.1 resolve to nothing and every
non-loopback connection goes to a proxy that does not exist, as on an air-gapped machine; the
browser's network log then shows what the page asked for. A missing browser fails the test:
skipping would let a CDN creep back in unnoticed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.app import DOCS_STATIC_URL

if TYPE_CHECKING:
    from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots of the rendered pages, for a person to look at.
OUTPUT = ROOT / "test-output"
#: Virtual milliseconds the page gets to fetch its scripts and the spec and render them.
RENDER_BUDGET_MS = "20000"
BROWSER_SECONDS = 120


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no chromium on PATH: `make test-deps` installs Debian's package (as root)")


def browse(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url`` offline; ``action`` is ``--dump-dom`` or a screenshot."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # Offline but for loopback: names resolve to nothing, and addresses other than
        # loopback (which Chromium never proxies) go to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        f"--log-net-log={profile / 'net.json'}",
        f"--virtual-time-budget={RENDER_BUDGET_MS}",
        *action,
        url,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=BROWSER_SECONDS, check=True
    )


def page_requests(net_log: Path, origin: str) -> list[str]:
    """URLs the page at ``origin`` asked for, from Chromium's network log: the requests it
    initiated (the browser's own background requests have no initiator)."""
    log: dict[str, Any] = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job and event.get("params", {}).get("initiator") == origin
    ]


@pytest.fixture(scope="module")
def operations(live_server: LiveServer) -> list[tuple[str, str]]:
    """Every documented operation as (path, summary), from the server's own OpenAPI."""
    spec = httpx.get(f"{live_server.base_url}/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")  # what Swagger UI 4 could not render
    return [
        (path, operation["summary"])
        for path, methods in spec["paths"].items()
        for operation in methods.values()
    ]


def test_docs_render_every_operation_offline(
    live_server: LiveServer, operations: list[tuple[str, str]], tmp_path: Path
) -> None:
    url = f"{live_server.base_url}/docs"
    dom = html.unescape(browse(url, tmp_path / "dom", "--dump-dom").stdout)

    missing = [summary for _, summary in operations if summary not in dom]
    assert not missing, f"/docs did not render these operations: {missing}"
    # Swagger UI lists each operation under its path.
    assert {path for path, _ in operations} <= set(re.findall(r'data-path="([^"]*)"', dom))

    requested = page_requests(tmp_path / "dom" / "net.json", live_server.base_url)
    server = urlsplit(live_server.base_url).netloc
    assert [url for url in requested if urlsplit(url).netloc != server] == []
    assert f"{live_server.base_url}{DOCS_STATIC_URL}/swagger-ui-bundle.js" in requested
    assert f"{live_server.base_url}/openapi.json" in requested

    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "docs.png"
    browse(url, tmp_path / "shot", f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.read_bytes().startswith(b"\x89PNG")
