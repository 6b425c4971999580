"""Progress while a cycle runs: a bar in a terminal, periodic JSON events otherwise."""

from __future__ import annotations

import io
import math
import re
from types import SimpleNamespace

import pytest
import rich
from rich.console import Console
from structlog.testing import capture_logs

from sync_worker import progress
from sync_worker.progress import ProgressReporter


class FakeClock:
    """Stands in for `time.monotonic` inside `sync_worker.progress`; the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What rich draws on its (default) console, as a terminal 100 columns wide would get it."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(rich, "_console", console)
    return screen


def test_non_interactive_progress_logs_done_total_and_rate(
    monkeypatch: pytest.MonkeyPatch, terminal: io.StringIO
) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    clock = FakeClock(100.0)
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=clock.monotonic))
    with (
        capture_logs() as logs,
        ProgressReporter(3, "provisioning accounts", interactive=False) as bar,
    ):
        # 1 done after 0.5 s, 2 after 0.8 s, 3 after 2.0 s: from the start of the phase,
        # not from the previous event.
        for elapsed in (0.5, 0.8, 2.0):
            clock.now = 100.0 + elapsed
            bar.advance()
    events = [e for e in logs if e["event"] == "progress"]
    assert [(e["phase"], e["done"], e["total"]) for e in events] == [
        ("provisioning accounts", 1, 3),
        ("provisioning accounts", 2, 3),
        ("provisioning accounts", 3, 3),
    ]
    rates = [e["rate_per_second"] for e in events]
    assert all(isinstance(rate, float) and math.isfinite(rate) and rate > 0 for rate in rates)
    # done / elapsed, to one decimal: 1/0.5, 2/0.8, 3/2.0.
    assert rates == [2.0, 2.5, 1.5]
    assert terminal.getvalue() == ""  # no terminal: no bar


def test_progress_is_quiet_between_intervals() -> None:
    with capture_logs() as logs, ProgressReporter(100, "sending", interactive=False) as bar:
        for _ in range(100):
            bar.advance()
    assert [e for e in logs if e["event"] == "progress"] == []
    assert bar.done == 100


def test_interactive_progress_draws_a_bar(
    monkeypatch: pytest.MonkeyPatch, terminal: io.StringIO
) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    with (
        capture_logs() as logs,
        ProgressReporter(2, "sending welcome emails", interactive=True) as bar,
    ):
        bar.advance()
        bar.advance()
    assert bar.done == 2
    drawn = terminal.getvalue()
    # The last frame, drawn when the phase ends: the label, a full bar and the counts.
    assert re.search(r"sending welcome emails ━+ 2/2\b", drawn), drawn
    # A terminal gets the bar instead of the JSON events, not as well.
    assert [e for e in logs if e["event"] == "progress"] == []
