"""Shows progress while a cycle runs: a rich progress bar in a terminal, otherwise a
`progress` log event every few seconds with done/total and rate."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

import structlog
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = structlog.get_logger("crm_sync.progress")

LOG_EVERY_SECONDS = 5.0
T = TypeVar("T")


class ProgressReporter:
    """Counts finished items of one phase; use as a context manager around the phase."""

    def __init__(self, total: int, label: str, *, interactive: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: Progress | None = None
        self._task: object = None
        self._started = time.monotonic()
        self._last_log = self._started

    def __enter__(self) -> ProgressReporter:
        if self._interactive and self.total:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """The items, each counted as done when it is taken."""
        for item in items:
            self.advance()
            yield item

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)  # type: ignore[arg-type]
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            elapsed = now - self._started
            log.info(
                "progress",
                phase=self.label,
                done=self.done,
                total=self.total,
                rate_per_second=round(self.done / elapsed, 1) if elapsed else None,
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
