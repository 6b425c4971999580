"""Progress while a cycle runs: periodic JSON events when no terminal is attached."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from sync_worker import progress
from sync_worker.progress import ProgressReporter


def test_non_interactive_progress_logs_done_total_and_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    with (
        capture_logs() as logs,
        ProgressReporter(3, "provisioning accounts", interactive=False) as bar,
    ):
        for _ in range(3):
            bar.advance()
    events = [e for e in logs if e["event"] == "progress"]
    assert [(e["phase"], e["done"], e["total"]) for e in events] == [
        ("provisioning accounts", 1, 3),
        ("provisioning accounts", 2, 3),
        ("provisioning accounts", 3, 3),
    ]
    assert all(e["rate_per_second"] is None or e["rate_per_second"] >= 0 for e in events)


def test_progress_is_quiet_between_intervals() -> None:
    with capture_logs() as logs, ProgressReporter(100, "sending", interactive=False) as bar:
        for _ in range(100):
            bar.advance()
    assert [e for e in logs if e["event"] == "progress"] == []
    assert bar.done == 100


def test_interactive_progress_draws_a_bar() -> None:
    with ProgressReporter(2, "sending welcome emails", interactive=True) as bar:
        bar.advance()
        bar.advance()
    assert bar.done == 2
