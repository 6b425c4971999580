"""The retry policy of every external call: which errors, how long to wait, when to give up.

Only errors that say they are retriable (`errors.is_retriable`) are retried, with exponential
backoff and jitter, never sooner than a server's Retry-After, and never past a deadline. A
policy tells its listeners of every retry (the daemon's counts them in /metrics); a policy
derived from it (`dataclasses.replace`, `observed_by`) tells them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ParamSpec, TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from sync_worker.errors import is_retriable

log = structlog.get_logger("crm_sync.retry")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one adapter tries before it reports a failure."""

    attempts: int = 4
    initial_wait: float = 0.5
    max_wait: float = 8.0
    deadline: float = 30.0
    # Never wait longer than this for a Retry-After; past it the call fails and a later cycle
    # tries again.
    max_retry_after: float = 30.0
    # Called with the operation's name before every retry.
    listeners: tuple[Callable[[str], None], ...] = ()

    def observed_by(self, listeners: Iterable[Callable[[str], None]]) -> RetryPolicy:
        """This policy, telling `listeners` of every retry too."""
        added = tuple(listeners)
        return replace(self, listeners=self.listeners + added) if added else self

    def retrying(self, operation: str) -> Retrying:
        """A tenacity `Retrying` for one call site; `operation` names it in logs."""
        backoff = wait_exponential(multiplier=self.initial_wait, max=self.max_wait) + wait_random(
            0, self.initial_wait
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None) or 0.0
            return max(min(float(retry_after), self.max_retry_after), backoff(state))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "retrying",
                operation=operation,
                attempt=state.attempt_number,
                wait_seconds=round(state.upcoming_sleep, 3),
                error=str(exc),
            )
            for listener in self.listeners:
                listener(operation)

        return Retrying(
            retry=retry_if_exception(is_retriable),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    def call(self, operation: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Calls `fn(*args, **kwargs)` under this policy."""
        return self.retrying(operation)(fn, *args, **kwargs)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP date (RFC 9110,
    10.2.3); None when absent or unreadable, never negative."""
    if not value or not value.strip():
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
