"""``poolgrad-server``'s command line, run as a user would (subprocesses), plus the flag table
checked against the settings class it is derived from."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service import Settings
from service.__main__ import parse_settings

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER = shutil.which("poolgrad-server", path=str(Path(sys.executable).parent))
STARTED = ("Started server", "Application startup complete", "Listening on")


def run(*args: str, timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess[str]:
    """``poolgrad-server ARGS`` with ``env`` over a POOLGRAD_-free environment, to completion."""
    assert SERVER is not None, "poolgrad-server is not installed in this virtualenv"
    clean = {name: value for name, value in os.environ.items() if not name.startswith("POOLGRAD_")}
    return subprocess.run(
        [SERVER, *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_lists_every_setting_and_starts_nothing() -> None:
    result = run("--help", POOLGRAD_PORT=str(free_port()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: poolgrad-server")
    text = " ".join(result.stdout.split())  # argparse wraps lines at spaces
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "empty" if field.default == () else repr(field.default)
        # A bool setting is a pair of switches; every other one takes a value.
        usage = f"{flag}, --no-{flag[2:]}" if field.annotation is bool else f"{flag} {name.upper()}"
        assert usage in text, flag
        assert f"env POOLGRAD_{name.upper()};" in text, name
        assert f"default {default}]" in text, (name, default)
    assert "one of critical, error, warning, info, debug" in text
    assert not any(word in result.stdout + result.stderr for word in STARTED)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLGRAD_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("POOLGRAD_LOG_LEVEL", "debug")
    settings = parse_settings(["--max-body-bytes", "1024", "--store-url", "memory://"])
    assert settings.max_body_bytes == 1024  # the flag
    assert settings.log_level == "debug"  # the environment, no flag given
    assert settings.port == 8000  # the default


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--port", "70000"], {}, "POOLGRAD_PORT (--port): Input should be less than or equal"),
        ([], {"POOLGRAD_MAX_BODY_BYTES": "0"}, "POOLGRAD_MAX_BODY_BYTES (--max-body-bytes):"),
        (["--log-level", "loud"], {}, "POOLGRAD_LOG_LEVEL (--log-level): Input should be"),
        (["--header-timeout-seconds", "0"], {}, "POOLGRAD_HEADER_TIMEOUT_SECONDS"),
        (["--store-url", "ftp://x"], {}, "POOLGRAD_STORE_URL='ftp://x'"),
        (["--workers", "2"], {}, "POOLGRAD_WORKERS=2 is refused with the in-memory store"),
        (["--host", "192.0.2.1"], {}, "cannot listen on 192.0.2.1:"),
        (["--port", "8000", "--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
    ids=["port", "env-body", "log-level", "header-timeout", "store", "workers", "host", "flag"],
)
def test_a_bad_setting_is_one_line_and_nothing_starts(
    args: list[str], env: dict[str, str], says: str
) -> None:
    result = run(*args, **env)
    assert result.returncode != 0
    assert says in result.stderr
    if "unrecognized" not in says:  # argparse prints its usage first
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("poolgrad-server: ")
    assert not any(word in result.stdout + result.stderr for word in STARTED)


def test_a_port_taken_is_one_line_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--port", str(port))
    assert result.returncode == 1
    assert result.stderr == (
        f"poolgrad-server: cannot listen on 127.0.0.1:{port} (POOLGRAD_HOST, POOLGRAD_PORT): "
        "Address already in use\n"
    )
    assert result.stdout == ""


def test_the_port_flag_wins_over_the_environment_in_a_real_server(tmp_path: Path) -> None:
    from_env, from_flag = free_port(), free_port()
    clean = {name: value for name, value in os.environ.items() if not name.startswith("POOLGRAD_")}
    assert SERVER is not None
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [SERVER, "--port", str(from_flag), "--log-level", "warning"],
            cwd=ROOT,
            env={**clean, "POOLGRAD_PORT": str(from_env)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(300):
            try:
                answer = httpx.get(f"http://127.0.0.1:{from_flag}/healthz", timeout=1.0)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        assert answer.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{from_env}/healthz", timeout=1.0)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


SECRET_KEY = "k-secret-" + "x" * 24
SECRET_PASSWORD = "p-secret-word"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # Two settings that do not fit together: the error of no one field, whose input is
        # every setting given, the API key and the store URL included.
        (
            ["--max-body-bytes", "2048", "--max-inflight-body-bytes", "1024"],
            "max_inflight_body_bytes (1024) must be at least max_body_bytes (2048)",
        ),
        (["--store-url", f"rdis://:{SECRET_PASSWORD}@localhost:6379/0"], "rdis://:***@localhost"),
        (
            ["--workers", "2", "--store-url", f"memory://:{SECRET_PASSWORD}@here"],
            "POOLGRAD_STORE_URL='memory://:***@here'",
        ),
        (
            ["--store-url", f"sock:///tmp/redis.sock?password={SECRET_PASSWORD}"],
            "sock:///tmp/redis.sock?password=***",
        ),
    ],
    ids=[
        "settings-that-do-not-fit",
        "store-url-password",
        "memory-store-url-password",
        "store-url-query-password",
    ],
)
def test_refusals_name_the_problem_but_no_secret(args: list[str], says: str) -> None:
    result = run(
        *args,
        POOLGRAD_API_KEYS=SECRET_KEY,
        POOLGRAD_STORE_URL=f"redis://:{SECRET_PASSWORD}@localhost:6379/0",
    )
    assert result.returncode != 0
    assert says in result.stderr, result.stderr
    assert SECRET_KEY not in result.stderr + result.stdout
    assert SECRET_PASSWORD not in result.stderr + result.stdout
    assert "POOLGRAD_?" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
