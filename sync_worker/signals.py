"""Two-stage stop on SIGTERM/SIGINT: the first asks for a warm stop, the second exits now.

The handler only sets an event (safe in a signal handler); whoever runs the work checks it
between customers.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class StopSignals:
    """Installs the handlers; `requested` is set by the first SIGTERM or SIGINT."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._count = 0

    def install(self) -> StopSignals:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._count += 1
        if self._count > 1:
            os._exit(128 + signum)  # the second signal: now, whatever is in flight
        self.requested.set()
