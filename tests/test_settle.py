"""`settle` decides what a cycle records in time linear in its customers: counted in
comparisons of emails, not timed."""

from __future__ import annotations

from datetime import UTC, datetime

from sync_worker.customers import CustomerFailure, Step
from sync_worker.plan import Action, CustomerStep, SyncPlan
from sync_worker.settle import CycleTally, settle

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class CountedEmail(str):
    """An email that counts how often it is compared with another."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedEmail.comparisons += 1
        return str.__eq__(self, other)

    def __hash__(self) -> int:
        return str.__hash__(self)


def test_settling_thousands_of_retried_emails_compares_each_email_a_few_times() -> None:
    count = 4000
    emails = [CountedEmail(f"r{i:05}@example.com") for i in range(count)]
    steps = tuple(
        CustomerStep(
            Action.PROVISION,
            email,
            failure=CustomerFailure(email, Step.EMAIL, "busy", attempts=1),
        )
        for email in emails
    )
    tally = CycleTally()
    # Every one was emailed this time, in another order than the plan's.
    tally.emailed.extend(CountedEmail(str(e)) for e in reversed(emails))
    CountedEmail.comparisons = 0
    settlement = settle(SyncPlan(steps), tally, NOW, max_attempts=8)
    assert len(settlement.clear) == count
    # A membership test of a list compares with every element before it: ~count²/2 = 8e6.
    assert CountedEmail.comparisons < 10 * count, CountedEmail.comparisons
