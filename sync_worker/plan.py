"""Decides, per customer, what a sync cycle must do: a pure function of its inputs.

Given the CRM's eligible customers, the tracking rows and failures stored in Supabase and the
current time, it returns frozen actions; it performs no I/O, so every rule of the sync is
unit-tested here.

`PlanBuilder` merges two streams sorted by email (the CRM's groups and the tracking rows), so
memory follows the work to do, not the customer base: a customer who needs nothing is counted
and forgotten, and an email already tracked is never validated again. Each customer's step is
a value of its action's own type (`Provision`, `Reenrol`, `ResumeEmail`, `Deactivate`,
`Skip`), carrying exactly what carrying it out needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar, NamedTuple, TypeVar

from sync_worker.crm_text import normalise_email
from sync_worker.customers import (
    CrmCustomer,
    CrmGroup,
    CustomerFailure,
    InvalidCrmRow,
    LayoutFigures,
    ShardFigures,
    TrackedCustomer,
    customer_from_rows,
    rows_by_email,
    unreadable,
)


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
class Provision:
    """No tracking row: create (or find and link) the account, enrol, email."""

    customer: CrmCustomer
    failure: CustomerFailure | None = None
    action: ClassVar[Action] = Action.PROVISION

    @property
    def email(self) -> str:
        return self.customer.email


@dataclass(frozen=True, slots=True)
class Reenrol:
    """Enrolled before and enrolled again: `REACTIVATE` (inactive and eligible again) or
    `REFRESH` (the CRM's name or lead id changed)."""

    action: Action
    customer: CrmCustomer
    tracked: TrackedCustomer
    failure: CustomerFailure | None = None

    @property
    def email(self) -> str:
        return self.customer.email


@dataclass(frozen=True, slots=True)
class ResumeEmail:
    """Enrolled, and the welcome email not sent yet."""

    customer: CrmCustomer
    tracked: TrackedCustomer
    failure: CustomerFailure | None = None
    action: ClassVar[Action] = Action.RESUME_EMAIL

    @property
    def email(self) -> str:
        return self.customer.email


@dataclass(frozen=True, slots=True)
class Deactivate:
    """Enrolled and active, and no longer eligible in the CRM."""

    tracked: TrackedCustomer
    failure: CustomerFailure | None = None
    action: ClassVar[Action] = Action.DEACTIVATE

    @property
    def email(self) -> str:
        return self.tracked.email


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do in this cycle: `WAIT` or `PARKED` (`deferred`: the step it waits to
    take), or `NOTHING` for a customer with a failure on file (kept so that settling the
    cycle can clear it)."""

    action: Action
    email: str
    failure: CustomerFailure | None = None
    deferred: PlanEntry | None = None


PlanEntry = Provision | Reenrol | ResumeEmail | Deactivate | Skip
E = TypeVar("E", Provision, Reenrol, ResumeEmail, Deactivate, Skip)


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The steps that do anything (or carry an earlier failure), in email order, and how many
    customers got each action."""

    steps: tuple[PlanEntry, ...]
    # Failures recorded for emails that are neither in the CRM nor tracked any more.
    stale_failures: tuple[str, ...] = ()
    counted: Mapping[str, int] = field(default_factory=dict)
    eligible: int = 0  # customers the CRM holds eligible (valid emails)
    active: int = 0  # tracking rows that are active

    def of(self, kind: type[E]) -> list[E]:
        """The steps of one kind, in email order."""
        return [s for s in self.steps if isinstance(s, kind)]

    def counts(self) -> dict[str, int]:
        return {a.value: self.counted.get(a.value, 0) for a in Action}


@dataclass
class CrmTally:
    """What the CRM stream held besides the customers: rows read and rows that cannot be used."""

    rows_read: int = 0
    invalid: list[InvalidCrmRow] = field(default_factory=list)


def plan_cycle(
    crm: Iterable[CrmGroup | CrmCustomer],
    tracking: Iterable[TrackedCustomer],
    failures: Mapping[str, CustomerFailure],
    now: datetime,
    *,
    lookup: Callable[[Sequence[str]], Mapping[str, TrackedCustomer]],
    owns: Callable[[str], bool] = lambda email: True,
) -> tuple[SyncPlan, CrmTally]:
    """The plan of a cycle (the one merge, for the cycle and `verify` alike): the CRM stream
    merged with the tracking stream, both in email order, then the customers the merge set
    aside, planned from their tracking rows as `lookup` finds them by email.

    Args:
        crm: the CRM's groups (or merged customers) in order.
        tracking: the tracking rows in email order.
        failures: recorded failures by email (another shard's are left alone).
        now: the cycle's clock (timezone-aware).
        lookup: the tracking rows of some emails, by email.
        owns: whether an email is this shard's.
    """
    builder = PlanBuilder(tracking, failures, now, owns)
    for item in crm:
        builder.add(item)
    aside = sorted(builder.set_aside)
    return builder.finish(lookup(aside) if aside else {}), builder.tally


class PlanBuilder:
    """Merges the CRM stream and the tracking stream (both sorted by email) into a plan.

    `add_group` / `add_customer` take the CRM's items in order; `tracking` is consumed
    alongside. A customer whose normalised email is not its order key (an internationalised
    domain, another Unicode form) cannot be placed in the merge: it is set aside, and `finish`
    plans it once the shell has looked up its tracking row (`set_aside`).
    """

    def __init__(
        self,
        tracking: Iterable[TrackedCustomer],
        failures: Mapping[str, CustomerFailure],
        now: datetime,
        owns: Callable[[str], bool] = lambda email: True,
    ) -> None:
        self._owns = owns
        self._tracking = iter(tracking)
        self._next: TrackedCustomer | None = next(self._tracking, None)
        # One failures table serves every shard: another shard's failures are not this one's
        # to plan, nor to clear as stale.
        self._failures = {email: f for email, f in failures.items() if owns(email)}
        self._now = now
        self._steps: list[_Placed] = []
        self._counted: Counter[str] = Counter()
        self._failures_seen: set[str] = set()
        self._last_key = ""
        self._eligible = 0
        self._active = 0
        self.tally = CrmTally()
        self.set_aside: dict[str, CrmCustomer] = {}
        # Emails whose CRM rows could not be read this cycle: never deactivated for it.
        self._held: set[str] = set()

    def add_group(self, group: CrmGroup) -> None:
        """One group of CRM rows sharing an order key; validates only emails not tracked."""
        self.tally.rows_read += len(group.rows)
        rows = []
        for row in group.rows:
            if row.readable:
                rows.append(row)
            else:
                self.tally.invalid.append(unreadable(row))
                email, _ = normalise_email(row.raw_email)
                if email is not None:
                    self._held.add(email)
        key = group.key
        if not rows:
            # Only rows whose value cannot be read (`49 USD`): reported, and their customer is
            # left as they are; only a readable "not eligible" deactivates.
            if key is not None and self._in_order(key):
                self._catch_up(key)
            return
        if key is not None and self._in_order(key):
            self._catch_up(key)
            if self._next is not None and self._next.email == key:
                # Tracked: validated when it was enrolled, and the same text now.
                self._merge(customer_from_rows(key, rows))
                return
        for email, own in rows_by_email(rows, self.tally.invalid).items():
            if not self._owns(email):
                continue  # another shard's customer (its order key is not its email)
            customer = customer_from_rows(email, own)
            if email == key and self._in_order(email):
                self._merge(customer)
            else:
                self._aside(customer)

    def add(self, item: CrmGroup | CrmCustomer) -> None:
        """One item of the CRM stream, in order."""
        if isinstance(item, CrmGroup):
            self.add_group(item)
        else:
            self.add_customer(item)

    def add_customer(self, customer: CrmCustomer) -> None:
        """One customer already merged and validated (in email order)."""
        if self._in_order(customer.email):
            self._catch_up(customer.email)
            self._merge(customer)
        else:
            self._aside(customer)

    def finish(self, set_aside_tracking: Mapping[str, TrackedCustomer]) -> SyncPlan:
        """The plan, once the tracking rows of the customers set aside are known."""
        self._catch_up(None)
        # The steps the merge gave CRM customers, by email (only when something was set aside).
        placed = {s.entry.email: s for s in self._steps if s.customer} if self.set_aside else {}
        replaced: set[int] = set()
        for email, customer in sorted(self.set_aside.items()):
            planned = placed.pop(email, None)
            if planned is not None and planned.customer is not None:
                # Another spelling of an email the merge placed (a pasted no-break space):
                # one customer, one step. (One the merge placed and found done was forgotten;
                # the other spelling is then planned on its own.)
                replaced.add(id(planned))
                self._counted[planned.entry.action.value] -= 1
                self._add(email, _merged(planned.customer, customer), planned.tracked)
                continue
            tracked = set_aside_tracking.get(email)
            if tracked is not None:
                self._forget_unmatched(tracked)
            self._eligible += 1
            self._add(email, customer, tracked)
        if replaced:
            self._steps = [s for s in self._steps if id(s) not in replaced]
        stale = sorted(set(self._failures) - self._failures_seen)
        return SyncPlan(
            tuple(sorted((s.entry for s in self._steps), key=lambda e: e.email)),
            tuple(stale),
            dict(self._counted),
            self._eligible,
            self._active,
        )

    # -- the merge ---------------------------------------------------------------------------

    def _in_order(self, key: str) -> bool:
        return key > self._last_key

    def _catch_up(self, key: str | None) -> None:
        """Plans every tracking row before `key` (all of them when None): not in the CRM."""
        while self._next is not None and (key is None or self._next.email < key):
            self._add(self._next.email, None, self._next)
            self._advance()

    def _advance(self) -> None:
        if self._next is not None and self._next.is_active:
            self._active += 1
        self._next = next(self._tracking, None)

    def _merge(self, customer: CrmCustomer) -> None:
        self._last_key = customer.email
        self._eligible += 1
        tracked = None
        if self._next is not None and self._next.email == customer.email:
            tracked = self._next
            self._advance()
        self._add(customer.email, customer, tracked)

    def _aside(self, customer: CrmCustomer) -> None:
        known = self.set_aside.get(customer.email)
        self.set_aside[customer.email] = customer if known is None else _merged(known, customer)

    def _forget_unmatched(self, tracked: TrackedCustomer) -> None:
        """Undoes the step a tracking row got when no CRM customer seemed to match it."""
        for index, step in enumerate(self._steps):
            if step.entry.email == tracked.email and step.customer is None:
                del self._steps[index]
                self._counted[step.entry.action.value] -= 1
                return
        self._counted[Action.NOTHING.value] -= 1
        if tracked.email in self._failures:
            self._failures_seen.discard(tracked.email)

    def _add(
        self, email: str, customer: CrmCustomer | None, tracked: TrackedCustomer | None
    ) -> None:
        failure = self._failures.get(email)
        if failure is not None:
            self._failures_seen.add(email)
        entry = _decide(email, customer, tracked, failure)
        if isinstance(entry, Deactivate) and email in self._held:
            entry = Skip(Action.NOTHING, email, failure)
        if not isinstance(entry, Skip | Deactivate) and failure:
            if failure.parked:
                entry = Skip(Action.PARKED, email, failure, entry)
            elif failure.next_attempt_at is not None and failure.next_attempt_at > self._now:
                entry = Skip(Action.WAIT, email, failure, entry)
        self._counted[entry.action.value] += 1
        if entry.action is not Action.NOTHING or failure is not None:
            self._steps.append(_Placed(customer, tracked, entry))


def _merged(first: CrmCustomer, second: CrmCustomer) -> CrmCustomer:
    names = [n for n in (first.name, second.name) if n]
    return CrmCustomer(
        email=first.email,
        name=min(names, default=None),
        lead_ids=tuple(sorted(set(first.lead_ids) | set(second.lead_ids))),
        sale_rows=first.sale_rows + second.sale_rows,
        sale_value=first.sale_value + second.sale_value,
    )


class _Placed(NamedTuple):
    """A step as the merge placed it, with the inputs it was decided from (a customer set
    aside may still be merged into it)."""

    customer: CrmCustomer | None
    tracked: TrackedCustomer | None
    entry: PlanEntry


def _decide(  # noqa: PLR0911 (one return per action)
    email: str,
    customer: CrmCustomer | None,
    row: TrackedCustomer | None,
    failure: CustomerFailure | None,
) -> PlanEntry:
    """What one customer needs, from the CRM's record and the tracking row."""
    if customer is None:
        if row is not None and row.is_active:
            return Deactivate(row, failure)
        return Skip(Action.NOTHING, email, failure)
    if row is None:
        return Provision(customer, failure)
    if not row.is_active:
        return Reenrol(Action.REACTIVATE, customer, row, failure)
    if not row.welcome_email_sent:
        return ResumeEmail(customer, row, failure)
    if (customer.name and customer.name != row.full_name) or (
        customer.lead_id and customer.lead_id != row.crm_lead_id
    ):
        return Reenrol(Action.REFRESH, customer, row, failure)
    return Skip(Action.NOTHING, email, failure)


def next_attempt_delay(attempts: int, base: timedelta = timedelta(minutes=5)) -> timedelta:
    """How long to wait after the `attempts`-th failure: doubling, capped at six hours."""
    delay: timedelta = base * (2 ** max(attempts - 1, 0))
    return min(delay, timedelta(hours=6))


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """Whether this cycle's deactivations go ahead: `held` when they look like a mistake (the
    guard tripped: nobody is deactivated, the run says why and exits 1), `deferred` when a
    sharded layout has not yet reported the figures to decide over (a later cycle decides)."""

    held: str | None = None
    deferred: str | None = None
    # Of the planned deactivations, only these go ahead now (the rest are deferred).
    only: frozenset[str] | None = None


def shard_figures(plan: SyncPlan) -> ShardFigures:
    return ShardFigures(plan.active, plan.eligible, tuple(s.email for s in plan.of(Deactivate)))


def deactivation_guard(
    plan: SyncPlan,
    *,
    limit: int,
    max_percent: float,
    shard_count: int = 1,
    layout: LayoutFigures | None = None,
) -> GuardDecision:
    """The mass-deactivation guard over the whole CRM, whatever the shard layout.

    Unsharded, the plan is the whole CRM. A shard decides over every shard's pending
    deactivations and latest figures (`layout`): nothing while some shard has not reported;
    nothing when their sum looks like a mistake (held back); else the deactivations first
    planned before every other shard's latest snapshot (so every shard's figures include the
    change that made them), the newer ones deferred to a later cycle.
    """
    if shard_count <= 1:
        return GuardDecision(held=mass_deactivation(plan, limit=limit, max_percent=max_percent))
    own = {s.email for s in plan.of(Deactivate)}
    if not own:
        return GuardDecision()
    if layout is None or layout.shards < shard_count:
        reported = 0 if layout is None else layout.shards
        return GuardDecision(
            deferred=f"{len(own)} deactivations wait until every shard has reported its"
            f" figures ({reported} of {shard_count} have)",
            only=frozenset(),
        )
    held = _too_many(
        layout.pending, layout.active, layout.eligible, limit=limit, max_percent=max_percent
    )
    if held:
        return GuardDecision(held=held + " (over every shard)")
    ready = frozenset(own & layout.ready)
    waiting = len(own) - len(ready)
    deferred = (
        f"{waiting} deactivations wait until every shard has reported a snapshot taken after"
        " the one that first planned them"
        if waiting
        else None
    )
    return GuardDecision(deferred=deferred, only=ready)


def mass_deactivation(plan: SyncPlan, *, limit: int, max_percent: float) -> str | None:
    """Why this plan's deactivations look like a mistake rather than churn, or None.

    In the spirit of the accidental-deletion thresholds of identity provisioning services: a
    wrong column, a half-empty CRM snapshot or an empty one would deactivate customers en
    masse. Suspicious are more than `limit` deactivations that are also more than
    `max_percent` of the active customers, and any deactivation when the CRM has no eligible
    customer at all.
    """
    deactivating = len(plan.of(Deactivate))
    if not deactivating:
        return None
    return _too_many(deactivating, plan.active, plan.eligible, limit=limit, max_percent=max_percent)


def _too_many(
    deactivating: int, active: int, eligible: int, *, limit: int, max_percent: float
) -> str | None:
    if not deactivating:
        return None
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
