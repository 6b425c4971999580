"""One sync cycle, as its stages: read and plan, guard the deactivations, provision the new
customers, serve the enrolled ones, deactivate, settle, record.

What to do is decided by the pure `plan.PlanBuilder`, what to record by the pure
`settle.settle`; this module sequences the I/O through the interfaces of `ports` and passes
one `work.CustomerWork` per customer from stage to stage (account, enrolment, email).
`pipeline` runs the new customers' stages concurrently, with bounded memory.

`run_cycle` is the single entry point used by the daemon, `--once` and `--dry-run`. Each
customer's failure is recorded and retried in a later cycle; it never stops the others. A
dependency that is down aborts the cycle (exit 69) without counting against customers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import TypeVar

import structlog

from sync_worker.customers import InvalidCrmRow, TrackedCustomer
from sync_worker.deactivations import full_cycle_allows, targeted_cycle_allows
from sync_worker.errors import Dependency, DependencyUnavailable, KeyRefused, SupabaseError
from sync_worker.options import CycleOptions
from sync_worker.pipeline import HandOff, batches, map_bounded
from sync_worker.plan import (
    CrmTally,
    Deactivate,
    Provision,
    Reenrol,
    ResumeEmail,
    SyncPlan,
    plan_cycle,
)
from sync_worker.ports import CycleServices, EnrolmentStore
from sync_worker.progress import ProgressReporter
from sync_worker.report import CycleReport
from sync_worker.settle import CycleTally, Settlement, settle
from sync_worker.shards import shard_label, shard_of
from sync_worker.stages import (
    account,
    deactivate,
    enrol,
    send_welcome_emails,
    stopping,
)
from sync_worker.work import CustomerWork

log = structlog.get_logger("crm_sync.cycle")
# New accounts are enrolled and emailed in batches of this many per concurrent call (at least
# MIN_BATCH): one enrolment call per batch, and the last batch is delivered after the last
# account, so small batches keep the tail short.
BATCH_PER_WORKER = 2
MIN_BATCH = 32
# At most this many batches wait for (or are in) delivery while accounts are created: a slow
# mail server holds creation back, memory stays flat, and a run killed meanwhile leaves few
# accounts without their email.
BATCHES_AHEAD = 2
T = TypeVar("T")


def run_cycle(
    options: CycleOptions,
    services: CycleServices,
    *,
    run_id: str,
    dry_run: bool = False,
    targeted: bool = False,
) -> CycleReport:
    """Runs one cycle and reports what it did; never raises for one customer's failure.

    `targeted`: the services read a few customers only (their changes in the CRM): the same
    stages, but the deactivation guard counts the last window's deactivations (the cycle
    sees too few customers to judge a share), and neither the shard's figures nor its list
    of invalid rows is replaced by what so few customers show.

    Raises:
        DependencyUnavailable: the CRM or Supabase could not be read at the start.
        CrmSourceError: the CRM table or columns are wrong.
    """
    started = services.clock()
    began = time.monotonic()
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        log.info("cycle_started", dry_run=dry_run, targeted=targeted)
        plan, crm = _read_and_plan(options, services, started)
        report = CycleReport.begin(run_id, started, dry_run, crm, plan)
        if targeted:
            only = targeted_cycle_allows(options, services, plan, report, started)
        else:
            only = full_cycle_allows(options, services, plan, report, started)
        for row in _newly_invalid(options, services, crm.invalid, dry_run or targeted):
            log.warning("crm_row_invalid", email=row.raw_email, reason=row.reason)
        if dry_run:
            report.finish(services.clock(), time.monotonic() - began, plan_preview=plan)
            log.info("cycle_finished", **report.log_fields())
            return report
        tally = CycleTally(outage_threshold=options.outage_threshold, run_id=run_id)
        try:
            _provision_new(options, services, plan, tally)
            _serve_enrolled(options, services, plan, tally)
            if report.deactivation_blocked is None:
                emails = [s.email for s in plan.of(Deactivate) if only is None or s.email in only]
                deactivate(services, emails, tally)
        finally:
            if services.mailer is not None:
                services.mailer.close()
        settlement = settle(plan, tally, services.clock(), options.max_attempts)
        _store_settlement(services.store, settlement)
        report.apply(tally, settlement, list_emailed=targeted)
        report.finish(services.clock(), time.monotonic() - began)
        log.info("cycle_finished", **report.log_fields())
        return report


# -- read and plan ---------------------------------------------------------------------------


def _read_and_plan(
    options: CycleOptions, services: CycleServices, started: datetime
) -> tuple[SyncPlan, CrmTally]:
    """The CRM stream merged with this shard's tracking stream, both in email order."""
    index, count = options.shard
    with _reading_supabase("failures"):
        failures = services.load_failures()

    def lookup(emails: Sequence[str]) -> Mapping[str, TrackedCustomer]:
        with _reading_supabase("tracking rows"):
            return services.lookup_tracking(emails)

    return plan_cycle(
        services.read_crm(),
        _reading("tracking rows", services.stream_tracking()),
        failures,
        started,
        lookup=lookup,
        owns=lambda email: shard_of(email, count) == index,
    )


@contextmanager
def _reading_supabase(what: str) -> Iterator[None]:
    """A read the cycle cannot start without: Supabase failing it means Supabase is down (a
    refused key stays a configuration error)."""
    try:
        yield
    except KeyRefused:
        raise
    except SupabaseError as exc:
        raise DependencyUnavailable(Dependency.SUPABASE, f"reading {what}: {exc}") from exc


def _reading(what: str, rows: Iterable[T]) -> Iterator[T]:
    with _reading_supabase(what):
        yield from rows


def _newly_invalid(
    options: CycleOptions,
    services: CycleServices,
    invalid: Sequence[InvalidCrmRow],
    dry_run: bool,
) -> Sequence[InvalidCrmRow]:
    """The invalid CRM rows to warn about: those that appeared or changed since the last
    cycle (the current list is kept for `crm-sync status`); every one on a dry run, or when
    the list cannot be kept."""
    if dry_run:
        return invalid
    try:
        return services.store.report_invalid_rows(shard_label(options.shard), invalid)
    except SupabaseError as exc:
        log.warning("invalid_rows_not_kept", error=str(exc))
        return invalid


# -- the stages of one customer --------------------------------------------------------------


def _provision_new(
    options: CycleOptions, services: CycleServices, plan: SyncPlan, tally: CycleTally
) -> None:
    """Creates (or finds and links) the accounts of new customers, `concurrency` at a time
    without a pause; one background thread enrols and emails them in batches as they become
    ready, so the emails cost no time of their own and one slow account holds back nobody."""
    entries = plan.of(Provision)
    if not entries:
        return
    size = max(options.concurrency * BATCH_PER_WORKER, MIN_BATCH)

    def deliver(batch: list[CustomerWork]) -> None:
        # Enrolment runs even when a stop was asked for or the mail server is down: the
        # accounts created so far are enrolled in one short call rather than left for the
        # next run to find again.
        send_welcome_emails(options, services, enrol(options, services, batch, tally), tally)

    with (
        ProgressReporter(len(entries), "provisioning new customers") as progress,
        HandOff(deliver, ahead=BATCHES_AHEAD, name="crm-sync-deliver") as delivery,
    ):
        accounts = map_bounded(
            partial(account, options, services, tally),
            entries,
            workers=options.concurrency,
            ahead=options.concurrency * 2,
            halted=lambda: stopping(services, tally),
        )
        for batch in batches(progress.track(accounts), size):
            delivery.put(sorted(batch, key=lambda work: work.email))


def _serve_enrolled(
    options: CycleOptions, services: CycleServices, plan: SyncPlan, tally: CycleTally
) -> None:
    """Reactivates and refreshes enrolled customers, and sends the welcome emails still owed
    from earlier cycles."""
    again = [CustomerWork.tracked(e.customer, e.tracked) for e in plan.of(Reenrol)]
    owed = [work for work in enrol(options, services, again, tally) if work.owes_email]
    owed += [CustomerWork.tracked(e.customer, e.tracked) for e in plan.of(ResumeEmail)]
    if owed:
        with ProgressReporter(len(owed), "sending welcome emails") as progress:
            send_welcome_emails(options, services, owed, tally, progress)


# -- settle ----------------------------------------------------------------------------------


def _store_settlement(store: EnrolmentStore, settlement: Settlement) -> None:
    """Records the settled failures and clears those of customers who are done."""
    try:
        store.record_failures(settlement.record)
        store.clear_failures(settlement.clear)
    except SupabaseError as exc:
        log.error("failures_not_recorded", error=str(exc), count=len(settlement.record))


__all__ = ["CycleOptions", "CycleServices", "run_cycle"]
