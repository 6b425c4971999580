"""Decides, per customer, what a sync cycle must do: a pure function of its inputs.

Given the CRM's eligible customers, the tracking rows and failures stored in Supabase and the
current time, `make_plan` returns frozen actions; it performs no I/O, so every rule of the
sync is unit-tested here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sync_worker.customers import CrmCustomer, CustomerFailure, TrackedCustomer


class Action(StrEnum):
    """What happens to one customer in this cycle."""

    PROVISION = "provision"  # no tracking row: create (or link) the account, enrol, email
    RESUME_EMAIL = "resume_email"  # enrolled, welcome email not sent yet
    REACTIVATE = "reactivate"  # inactive and eligible again
    REFRESH = "refresh"  # enrolled and emailed; the CRM's name or lead id changed
    DEACTIVATE = "deactivate"  # enrolled and active, no longer eligible in the CRM
    WAIT = "wait"  # failed before; its next attempt is not due yet
    PARKED = "parked"  # failed SYNC_MAX_ATTEMPTS times; left for an operator
    NOTHING = "nothing"  # fully done: no API write, no email


@dataclass(frozen=True, slots=True)
class CustomerStep:
    """One customer's action, with what the cycle needs to carry it out."""

    action: Action
    email: str
    customer: CrmCustomer | None = None
    tracked: TrackedCustomer | None = None
    failure: CustomerFailure | None = None


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """Every customer's step, in a stable order (by email)."""

    steps: tuple[CustomerStep, ...]
    # Failures recorded for emails that are neither in the CRM nor tracked any more.
    stale_failures: tuple[str, ...] = ()

    def of(self, *actions: Action) -> list[CustomerStep]:
        return [s for s in self.steps if s.action in actions]

    def counts(self) -> dict[str, int]:
        counted = Counter(s.action.value for s in self.steps)
        return {a.value: counted.get(a.value, 0) for a in Action}


def make_plan(
    customers: Mapping[str, CrmCustomer],
    tracked: Mapping[str, TrackedCustomer],
    failures: Mapping[str, CustomerFailure],
    now: datetime,
) -> SyncPlan:
    """Decides every customer's step for this cycle.

    Args:
        customers: eligible CRM customers by normalised email (the whole CRM: an email
            missing here is no longer eligible).
        tracked: tracking rows by email.
        failures: recorded failures by email.
        now: the cycle's clock (timezone-aware).
    """
    steps: list[CustomerStep] = []
    for email in sorted(set(customers) | set(tracked)):
        customer = customers.get(email)
        row = tracked.get(email)
        failure = failures.get(email)
        action = _decide(customer, row)
        if action is not Action.NOTHING and action is not Action.DEACTIVATE and failure:
            if failure.parked:
                action = Action.PARKED
            elif failure.next_attempt_at is not None and failure.next_attempt_at > now:
                action = Action.WAIT
        steps.append(CustomerStep(action, email, customer, row, failure))
    stale = sorted(set(failures) - set(customers) - set(tracked))
    return SyncPlan(tuple(steps), tuple(stale))


def _decide(customer: CrmCustomer | None, row: TrackedCustomer | None) -> Action:
    if customer is None:
        return Action.DEACTIVATE if row is not None and row.is_active else Action.NOTHING
    if row is None:
        return Action.PROVISION
    if not row.is_active:
        return Action.REACTIVATE
    if not row.welcome_email_sent:
        return Action.RESUME_EMAIL
    if (customer.name and customer.name != row.full_name) or (
        customer.lead_id and customer.lead_id != row.crm_lead_id
    ):
        return Action.REFRESH
    return Action.NOTHING


def next_attempt_delay(attempts: int, base: timedelta = timedelta(minutes=5)) -> timedelta:
    """How long to wait after the `attempts`-th failure: doubling, capped at six hours."""
    delay: timedelta = base * (2 ** max(attempts - 1, 0))
    return min(delay, timedelta(hours=6))


def mass_deactivation(plan: SyncPlan, *, limit: int, max_percent: float) -> str | None:
    """Why this plan's deactivations look like a mistake rather than churn, or None.

    In the spirit of the accidental-deletion thresholds of identity provisioning services: a
    wrong column, a half-empty CRM snapshot or an empty one would deactivate customers en
    masse. Suspicious are more than `limit` deactivations that are also more than
    `max_percent` of the active customers, and any deactivation when the CRM has no eligible
    customer at all.
    """
    deactivating = len(plan.of(Action.DEACTIVATE))
    if not deactivating:
        return None
    active = sum(1 for s in plan.steps if s.tracked is not None and s.tracked.is_active)
    eligible = sum(1 for s in plan.steps if s.customer is not None)
    how = "; nobody was deactivated (run once with --allow-mass-deactivation if it is right)"
    if eligible == 0:
        return (
            f"the CRM has no eligible customer while {active} are active: {deactivating}"
            f" deactivations held back{how}"
        )
    if deactivating > limit and deactivating * 100 > max_percent * active:
        share = round(100 * deactivating / max(active, 1))
        return (
            f"{deactivating} of {active} active customers ({share}%) would be deactivated, more"
            f" than SYNC_DEACTIVATION_LIMIT={limit} and {max_percent:g}%{how}"
        )
    return None
