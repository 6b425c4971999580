"""Settles a cycle: from the plan, what each phase achieved, the clock and the limits, decides
what is recorded. Pure: no I/O, so every branch of a cycle's bookkeeping is unit-tested.

While the phases run, `CycleTally` collects their outcomes and decides when a run of outage
failures means the dependency is down (the cycle stops: the rest would fail the same way).
Afterwards `settle` counts attempts, sets the next attempt or parks, clears the failures of
customers who are done, and leaves outage failures uncounted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sync_worker.customers import AccountOrigin, CustomerFailure, EnrolmentResult, Outcome
from sync_worker.plan import Action, SyncPlan, next_attempt_delay

# After this many customers in a row fail for a reason that says "the service is down", the
# cycle stops: the rest would fail the same way, and their attempt counts would suffer for it.
OUTAGE_THRESHOLD = 5
MAX_REASON_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class Abort:
    """Why a cycle was cut short: a dependency that is down."""

    dependency: str
    reason: str

    def __str__(self) -> str:
        return f"{self.dependency} is unreachable: {self.reason}"


@dataclass
class CycleTally:
    """What happened to whom in this cycle, collected while the phases run."""

    outage_threshold: int = OUTAGE_THRESHOLD
    run_id: str | None = None  # the run every accepted email is recorded under
    created: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    taken_over: list[str] = field(default_factory=list)
    enrolled: dict[str, EnrolmentResult] = field(default_factory=dict)
    emailed: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    failed: dict[str, CustomerFailure] = field(default_factory=dict)
    aborted: Abort | None = None
    interrupted: bool = False
    _outages_in_a_row: int = 0
    # The phases run on several threads: every change goes through a method, under this lock.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def halted(self) -> bool:
        """Whether later work must be skipped: a dependency is down or a stop was asked for."""
        return self.aborted is not None or self.interrupted

    def stopping(self, stop_requested: Callable[[], bool]) -> bool:
        """Whether to skip the work in hand; notes a stop that was asked for."""
        with self._lock:
            if not self.interrupted and stop_requested():
                self.interrupted = True
            return self.halted

    def fail(
        self, failure: CustomerFailure, dependency: str = "Supabase", *, in_a_row: bool = True
    ) -> None:
        """Notes one customer's failure; with `in_a_row`, enough outages one after another
        abort the cycle (a batch call's failure, noted per customer, does not count so)."""
        with self._lock:
            self.failed[failure.email] = failure
            if not in_a_row:
                return
            self._outages_in_a_row = self._outages_in_a_row + 1 if failure.outage else 0
            if self._outages_in_a_row >= self.outage_threshold:
                self.abort(dependency, failure.reason)

    def account_ready(self, email: str, origin: AccountOrigin) -> None:
        """Notes an account created, linked or taken over; the outage run, if any, is over."""
        with self._lock:
            self._outages_in_a_row = 0
            {
                AccountOrigin.CREATED: self.created,
                AccountOrigin.LINKED: self.linked,
                AccountOrigin.TAKEN_OVER: self.taken_over,
            }[origin].append(email)

    def enrolment(self, result: EnrolmentResult) -> None:
        """Notes a customer the enrolment RPC enrolled (or reactivated, or refreshed)."""
        with self._lock:
            self.enrolled[result.email] = result

    def email_recorded(self, email: str) -> None:
        """Notes a welcome email accepted and recorded; the outage run, if any, is over."""
        with self._lock:
            self._outages_in_a_row = 0
            self.emailed.append(email)

    def abort(self, dependency: str, reason: str) -> None:
        """Cuts the cycle short (the first reason wins)."""
        with self._lock:
            if self.aborted is None:
                self.aborted = Abort(dependency, reason)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What the cycle records about failures, decided by `settle`."""

    record: tuple[CustomerFailure, ...] = ()  # stored, with attempts and the next attempt
    uncounted: tuple[CustomerFailure, ...] = ()  # outage failures of an aborted cycle
    clear: tuple[str, ...] = ()  # failures of customers who are done, or gone

    @property
    def failures(self) -> list[CustomerFailure]:
        """Every failure of this cycle, by email."""
        return sorted((*self.record, *self.uncounted), key=lambda f: f.email)


def settle(plan: SyncPlan, tally: CycleTally, now: datetime, max_attempts: int) -> Settlement:
    """Decides what this cycle records about failures.

    Args:
        plan: the cycle's plan (it carries each customer's earlier failure).
        tally: what the phases achieved.
        now: the clock at the end of the cycle.
        max_attempts: failed attempts after which a customer is parked.
    """
    previous = {s.email: s.failure for s in plan.steps if s.failure is not None}
    record: list[CustomerFailure] = []
    uncounted: list[CustomerFailure] = []
    for email, failure in sorted(tally.failed.items()):
        if tally.aborted is not None and failure.outage:
            # The service was down, not the customer's case: no attempt is counted against
            # them, and they are simply tried again next cycle.
            uncounted.append(failure)
            continue
        before = previous.get(email)
        attempts = (before.attempts if before else 0) + 1
        # Refused for good: parked at once with its reason, never retried (each retry of an
        # email would also set a new password).
        parked = attempts >= max_attempts or failure.permanent
        record.append(
            replace(
                failure,
                reason=failure.reason[:MAX_REASON_LENGTH],
                attempts=attempts,
                next_attempt_at=None if parked else now + next_attempt_delay(attempts),
                parked=parked,
                first_failed_at=before.first_failed_at if before else now,
                last_failed_at=now,
            )
        )
    nothing_left = {s.email for s in plan.of(Action.NOTHING)}
    # Sets, built once: a membership test of a list made settling quadratic (20,000 retried
    # emails took seconds).
    done = set(tally.emailed) | set(tally.deactivated)
    cleared = [
        email
        for email in previous
        if email not in tally.failed
        and (email in nothing_left or email in done or _enrolled_and_sent(email, tally))
    ]
    # Failures of emails that left the CRM before they were ever enrolled concern nobody now.
    cleared += plan.stale_failures
    return Settlement(tuple(record), tuple(uncounted), tuple(cleared))


def _enrolled_and_sent(email: str, tally: CycleTally) -> bool:
    result = tally.enrolled.get(email)
    return result is not None and result.welcome_email_sent


def outcome_of(*, aborted: bool, interrupted: bool, failed: bool) -> Outcome:
    """The one mapping from how a cycle went to its outcome."""
    if aborted:
        return Outcome.FAILED
    if interrupted:
        return Outcome.INTERRUPTED
    return Outcome.PARTIAL if failed else Outcome.SUCCEEDED
