"""Which of a cycle's planned deactivations go ahead: the I/O around the pure
`plan.deactivation_guard`. A full cycle records its shard's figures and decides over the whole
CRM (holding back a suspicious set for `crm-sync deactivations --approve`); a targeted cycle,
which sees a few customers only, counts the last window's deactivations instead.

Each function returns the emails that may be deactivated (None: all of them) and notes on the
report why others were held back or deferred.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from sync_worker.errors import SupabaseError
from sync_worker.options import CycleOptions
from sync_worker.plan import Deactivate, SyncPlan, deactivation_guard, shard_figures
from sync_worker.ports import CycleServices
from sync_worker.report import CycleReport
from sync_worker.shards import shard_label

__all__ = ["full_cycle_allows", "targeted_cycle_allows"]

log = structlog.get_logger("crm_sync.cycle")


def full_cycle_allows(
    options: CycleOptions,
    services: CycleServices,
    plan: SyncPlan,
    report: CycleReport,
    started: datetime,
) -> frozenset[str] | None:
    """Which planned deactivations may go ahead (None: all). An operator approved exactly
    this set (`deactivations --approve`), or the mass-deactivation guard lets through part of
    the plan, or holds it all back (then kept for `crm-sync deactivations`). A shard decides
    over its layout's figures, recorded first (not in a dry run); without them it defers."""
    layout = None
    if options.shard[1] > 1:
        try:
            layout = services.store.layout_figures(
                options.shard,
                report.run_id,
                shard_figures(plan),
                started,
                record=not report.dry_run,
            )
        except SupabaseError as exc:
            log.warning("shard_figures_unavailable", error=str(exc))
    guard = deactivation_guard(
        plan,
        limit=options.deactivation_limit,
        max_percent=options.deactivation_max_percent,
        shard_count=options.shard[1],
        layout=layout,
    )
    if options.approved_deactivations is not None or options.allow_mass_deactivation:
        return options.approved_deactivations
    if guard.held:
        log.warning("deactivation_held_back", reason=guard.held)
        report.deactivation_blocked = guard.held
        emails = [s.email for s in plan.of(Deactivate)]
        try:
            if not report.dry_run:
                services.store.hold_deactivations(report.run_id, emails, shard_label(options.shard))
        except SupabaseError as exc:
            log.error("held_deactivations_not_recorded", error=str(exc), count=len(emails))
        return None
    if guard.deferred:
        log.info("deactivation_deferred", reason=guard.deferred)
        report.deactivation_deferred = guard.deferred
    return guard.only


def targeted_cycle_allows(
    options: CycleOptions,
    services: CycleServices,
    plan: SyncPlan,
    report: CycleReport,
    started: datetime,
) -> frozenset[str] | None:
    """A targeted cycle's deactivations (refunds) go ahead while those of the last window
    and these stay within `deactivation_limit`; else they are left to the full cycle, whose
    guard judges them over the whole CRM."""
    own = [s.email for s in plan.of(Deactivate)]
    if not own or options.allow_mass_deactivation:
        return options.approved_deactivations
    since = started - timedelta(seconds=options.deactivation_window_seconds)
    try:
        recent = services.store.recent_deactivations(since)
    except SupabaseError as exc:
        log.warning("recent_deactivations_unavailable", error=str(exc))
        recent = None
    if recent is not None and recent + len(own) <= options.deactivation_limit:
        return None
    report.deactivation_deferred = (
        f"{len(own)} deactivations are left to the full cycle: with the"
        f" {'unknown number' if recent is None else recent} of the last"
        f" {options.deactivation_window_seconds} s they pass SYNC_DEACTIVATION_LIMIT="
        f"{options.deactivation_limit}"
    )
    log.info("deactivation_deferred", reason=report.deactivation_deferred)
    return frozenset()
