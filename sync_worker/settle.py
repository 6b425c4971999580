"""Settles a cycle: from the plan, what each phase achieved, the clock and the limits, decides
what is recorded. Pure: no I/O, so every branch of a cycle's bookkeeping is unit-tested.

While the phases run, `CycleTally` collects their outcomes and decides when a run of outage
failures means the dependency is down (the cycle stops: the rest would fail the same way).
Afterwards `settle` counts attempts, sets the next attempt or parks, clears the failures of
customers who are done, and leaves outage failures uncounted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sync_worker.customers import AccountOrigin, CustomerFailure, EnrolmentResult, Outcome
from sync_worker.errors import Dependency
from sync_worker.plan import Action, Skip, SyncPlan, next_attempt_delay

# After this many customers in a row fail for a reason that says "the service is down", the
# cycle stops: the rest would fail the same way, and their attempt counts would suffer for it.
OUTAGE_THRESHOLD = 5
MAX_REASON_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class Abort:
    """Why a cycle was cut short: a dependency that is down."""

    dependency: Dependency
    reason: str

    def __str__(self) -> str:
        return f"{self.dependency} is unreachable: {self.reason}"


@dataclass(frozen=True, slots=True)
class CustomerOutcome:
    """What this cycle achieved for one customer (each field set by the stage that did it)."""

    account: AccountOrigin | None = None  # created, linked or taken over in this cycle
    enrolment: EnrolmentResult | None = None  # enrolled, reactivated or refreshed
    emailed: bool = False  # a welcome email accepted and recorded
    deactivated: bool = False
    failure: CustomerFailure | None = None

    @property
    def done(self) -> bool:
        """Nothing left to do for them: emailed, deactivated, or enrolled with the email
        already sent; and nothing failed."""
        if self.failure is not None:
            return False
        sent = self.enrolment is not None and self.enrolment.welcome_email_sent
        return self.emailed or self.deactivated or sent


@dataclass
class CycleTally:
    """What happened to whom in this cycle, collected while the stages run: one outcome per
    email, and whether the cycle was cut short."""

    outage_threshold: int = OUTAGE_THRESHOLD
    run_id: str | None = None  # the run every accepted email is recorded under
    outcomes: dict[str, CustomerOutcome] = field(default_factory=dict)
    aborted: Abort | None = None
    interrupted: bool = False
    _outages_in_a_row: int = 0
    # The stages run on several threads: every change goes through a method, under this lock.
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
        self,
        failure: CustomerFailure,
        dependency: Dependency = Dependency.SUPABASE,
        *,
        in_a_row: bool = True,
    ) -> None:
        """Notes one customer's failure; with `in_a_row`, enough outages one after another
        abort the cycle (a batch call's failure, noted per customer, does not count so)."""
        with self._lock:
            self._note(failure.email, failure=failure)
            if not in_a_row:
                return
            self._outages_in_a_row = self._outages_in_a_row + 1 if failure.outage else 0
            if self._outages_in_a_row >= self.outage_threshold:
                self.abort(dependency, failure.reason)

    def account_ready(self, email: str, origin: AccountOrigin) -> None:
        """Notes an account created, linked or taken over; the outage run, if any, is over."""
        with self._lock:
            self._outages_in_a_row = 0
            self._note(email, account=origin)

    def enrolment(self, result: EnrolmentResult) -> None:
        """Notes a customer the enrolment RPC enrolled (or reactivated, or refreshed)."""
        with self._lock:
            self._note(result.email, enrolment=result)

    def email_recorded(self, email: str) -> None:
        """Notes a welcome email accepted and recorded; the outage run, if any, is over."""
        with self._lock:
            self._outages_in_a_row = 0
            self._note(email, emailed=True)

    def deactivated(self, emails: Iterable[str]) -> None:
        with self._lock:
            for email in emails:
                self._note(email, deactivated=True)

    def abort(self, dependency: Dependency, reason: str) -> None:
        """Cuts the cycle short (the first reason wins)."""
        with self._lock:
            if self.aborted is None:
                self.aborted = Abort(dependency, reason)

    def failures(self) -> list[CustomerFailure]:
        """This cycle's failures, by email."""
        return [o.failure for _, o in sorted(self.outcomes.items()) if o.failure is not None]

    def _note(self, email: str, **changes: Any) -> None:
        before = self.outcomes.get(email)
        self.outcomes[email] = replace(before or CustomerOutcome(), **changes)


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
    record: list[CustomerFailure] = []
    uncounted: list[CustomerFailure] = []
    cleared: list[str] = []
    # One pass over the plan's steps, one look-up of each in the outcome map: linear in the
    # customers (a membership test of a list made settling quadratic).
    for step in plan.steps:
        before = step.failure
        if before is None:
            continue
        outcome = tally.outcomes.get(step.email)
        if outcome is None or outcome.failure is None:
            nothing_left = isinstance(step, Skip) and step.action is Action.NOTHING
            if nothing_left or (outcome is not None and outcome.done):
                cleared.append(step.email)
    previous = {s.email: s.failure for s in plan.steps if s.failure is not None}
    for failure in tally.failures():
        if tally.aborted is not None and failure.outage:
            # The service was down, not the customer's case: no attempt is counted against
            # them, and they are simply tried again next cycle.
            uncounted.append(failure)
            continue
        earlier = previous.get(failure.email)
        attempts = (earlier.attempts if earlier else 0) + 1
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
                first_failed_at=earlier.first_failed_at if earlier else now,
                last_failed_at=now,
            )
        )
    # Failures of emails that left the CRM before they were ever enrolled concern nobody now.
    cleared += plan.stale_failures
    return Settlement(tuple(record), tuple(uncounted), tuple(cleared))


def outcome_of(*, aborted: bool, interrupted: bool, failed: bool) -> Outcome:
    """The one mapping from how a cycle went to its outcome."""
    if aborted:
        return Outcome.FAILED
    if interrupted:
        return Outcome.INTERRUPTED
    return Outcome.PARTIAL if failed else Outcome.SUCCEEDED
