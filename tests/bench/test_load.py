"""``bench.load`` run briefly against real servers: every answer right and no 5xx, and under a
small state budget 429s that each carry ``Retry-After``. No timing asserts: the throughput and
latency figures belong to the benchmark, not to the test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import bench.load
from bench.load import LoadConfig, run
from engine import PoolState, backward

#: Few clients, bounded in both count and time, so each run takes a few seconds.
BRIEF = {"clients": 4, "duration": 6.0, "requests": 200, "seed": 11}


def test_a_load_run_gets_only_right_answers_and_successes() -> None:
    report = run(LoadConfig(**BRIEF))
    assert report.gradients_checked > 0
    assert report.wrong == {}, report.wrong_examples
    assert report.server_errors == 0, report.statuses
    assert set(report.statuses) <= {"200", "201", "204"}, report.statuses
    assert report.server_errors_logged == 0
    assert report.rss_peak_bytes is not None
    assert report.rss_start_bytes is not None
    assert report.rss_peak_bytes >= report.rss_start_bytes > 0
    assert report.server_cpu_seconds is not None


def test_a_small_state_budget_answers_429_with_retry_after_and_never_5xx() -> None:
    report = run(LoadConfig(**BRIEF, max_state_bytes=64))
    assert report.statuses.get("429", 0) > 0, report.statuses
    assert report.missing_retry_after == 0
    assert report.server_errors == 0, report.statuses
    assert set(report.statuses) <= {"200", "201", "204", "429"}, report.statuses
    # Refused forwards left the previous state answering: every dX still matched its step.
    assert report.gradients_checked > 0
    assert report.wrong == {}, report.wrong_examples
    assert report.server_errors_logged == 0


def test_a_wrong_gradient_is_caught(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker is not a tautology: expect a different dX and every one is counted wrong."""

    def off_by_one(state: PoolState, dA: np.ndarray, **options: Any) -> np.ndarray:
        return backward(state, dA, **options) + 1

    monkeypatch.setattr(bench.load, "backward", off_by_one)
    report = run(LoadConfig(clients=2, duration=4.0, requests=60, url=live_server.base_url))
    assert report.gradients_checked > 0
    assert report.wrong == {"dX": report.gradients_checked}
    assert report.rss_peak_bytes is None  # not this tool's server: not measured


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--clients", "0"], "--clients must be >= 1, got 0"),
        (["--duration", "-1"], "--duration must be > 0 seconds, got -1.0"),
        (["--url", "http://192.0.2.1:8000"], "'http://192.0.2.1:8000' is not a loopback"),
        (["--url", "http://127.0.0.1:1", "--max-state-bytes", "64"], "--max-state-bytes set"),
    ],
)
def test_bounds_and_loopback_are_enforced(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.load.main(argv)
    assert named in str(exit_info.value.code) + capsys.readouterr().err
