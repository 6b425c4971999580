"""A clock that moves only when a test moves it (`sync_worker.clock.Clock`)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from tests.fakes import NOW

# How often a waiter looks at its event: `Event.set` does not wake the clock's condition.
_POLL_SECONDS = 0.005


class ManualClock:
    """Stands still until `advance`; a `wait` on it ends once the clock passed its deadline
    (or its event is set). `wait_for_waiters` lets a test know a thread (the heartbeat) is back
    to waiting, i.e. done with what the last `advance` woke it for."""

    def __init__(self, start: datetime = NOW) -> None:
        self._start = start
        self._elapsed = 0.0
        self._deadlines: list[float] = []
        self._changed = threading.Condition()

    def now(self) -> datetime:
        with self._changed:
            return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        with self._changed:
            return self._elapsed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._changed:
            deadline = self._elapsed + seconds
            self._deadlines.append(deadline)
            self._changed.notify_all()
            try:
                while not event.is_set() and self._elapsed < deadline:
                    self._changed.wait(_POLL_SECONDS)
            finally:
                self._deadlines.remove(deadline)
                self._changed.notify_all()
            return event.is_set()

    def advance(self, seconds: float) -> None:
        """Moves the clock on, waking every wait whose deadline it passed."""
        with self._changed:
            self._elapsed += seconds
            self._changed.notify_all()

    def wait_for_waiters(self, count: int, timeout: float = 10.0) -> None:
        """Returns once `count` threads wait on this clock for a time still to come (real
        seconds: a synchronisation, no time passes on the clock)."""
        with self._changed:
            waiting = self._changed.wait_for(
                lambda: sum(d > self._elapsed for d in self._deadlines) >= count, timeout
            )
        assert waiting, f"{count} waiter(s) expected on the clock"
