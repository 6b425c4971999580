"""Time as the lease, the runner and the daemon read it: injected, so a test moves it instead
of waiting for it.

`Clock.now` is wall time (UTC) for what is recorded (a run's start and end, a cycle's times);
`Clock.monotonic` measures elapsed time (how long ago the lease was last renewed); `Clock.wait`
waits on an event for that many seconds of the clock's own time (the heartbeat's pause between
renewals). `SYSTEM_CLOCK` is the real one. A lease's expiry is the database's to decide, by its
own clock (`clock_timestamp()` in the lease RPCs), never by a worker's.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The wall time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Waits until `event` is set or `seconds` passed; True when it was set."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
