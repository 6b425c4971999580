"""Drains the CRM's change table: a targeted cycle for each batch of changed customers, until
none of this shard's is left.

The change table (`crm_changes`, filled by the CRM's trigger) is the truth; a notification
only says when to look. A batch's change rows are deleted once its cycle settled them (every
customer served, or their failure recorded for a later attempt); a cycle cut short (a
dependency down, a stop, a lost lease) leaves them for the next drain, so no change is lost.
Each drained change's sale-to-email time is observed when its email was accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import structlog

from sync_worker import crm_changes
from sync_worker.clock import SYSTEM_CLOCK, Clock
from sync_worker.crm_text import normalise_email
from sync_worker.errors import LeaseHeld
from sync_worker.metrics import SyncMetrics
from sync_worker.runner import run_guarded_cycle
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices

__all__ = ["DRAIN_BATCH", "Drained", "drain_changes"]

log = structlog.get_logger("crm_sync.drain")

# Customers per targeted cycle: a burst is served in batches, the first within seconds.
DRAIN_BATCH = 500


@dataclass(frozen=True, slots=True)
class Drained:
    """What one drain did: change rows settled and deleted, cycles run, and whether it
    stopped with changes left (a dependency down, a stop, the lease held elsewhere)."""

    changes: int = 0
    cycles: int = 0
    left_over: bool = False


def drain_changes(
    live: LiveServices,
    *,
    worker: str,
    metrics: SyncMetrics,
    should_stop: Callable[[], bool] = lambda: False,
    lease_ttl_seconds: int = 60,
    clock: Clock = SYSTEM_CLOCK,
    caught_up: bool = False,
    batch: int = DRAIN_BATCH,
) -> Drained:
    """Runs targeted cycles over this shard's change rows, oldest first, until none is left.

    Args:
        live: the process's services.
        worker: this process in the lease and the run history.
        metrics: where latency and the backlog are observed.
        should_stop: a stop was asked for.
        lease_ttl_seconds: the lease of each targeted cycle.
        clock: the cycles' clock, and what latency is measured against.
        caught_up: the drain was started by a poll or a reconnect while the listener was
            listening: its changes are counted as ones the notifications missed.
        batch: at most this many change rows per cycle.

    Raises:
        psycopg.Error: the CRM's change table could not be read or written.
    """
    url = live.settings.crm_database_url.get_secret_value()
    shard = live.options.shard
    changes = cycles = 0
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        while not should_stop():
            pending = crm_changes.pending(conn, shard=shard, limit=batch)
            if not pending:
                metrics.observe_backlog(0, 0.0)
                return Drained(changes, cycles)
            keys = sorted({change.email for change in pending})
            run_id = new_run_id()
            with structlog.contextvars.bound_contextvars(run_id=run_id):
                try:
                    report = run_guarded_cycle(
                        live,
                        worker=worker,
                        run_id=run_id,
                        keys=keys,
                        should_stop=should_stop,
                        lease_ttl_seconds=lease_ttl_seconds,
                        clock=clock,
                    )
                except LeaseHeld:
                    log.info("drain_postponed", reason="another run holds the lease")
                    return Drained(changes, cycles, left_over=True)
            cycles += 1
            metrics.observe_targeted(report)
            if report.aborted or report.interrupted:
                log.warning("drain_left_changes", count=len(pending), reason=report.aborted)
                return Drained(changes, cycles, left_over=True)
            now = clock.now()
            emailed = set(report.emailed)
            for change in pending:
                if change.email in emailed or normalise_email(change.email)[0] in emailed:
                    metrics.sale_to_email.observe((now - change.changed_at).total_seconds())
            crm_changes.delete(conn, [change.id for change in pending])
            changes += len(pending)
            if caught_up:
                metrics.changes_caught_up.inc(len(pending))
            depth, oldest = crm_changes.backlog(conn, shard)
            metrics.observe_backlog(depth, (now - oldest).total_seconds() if oldest else 0.0)
            log.info("changes_drained", count=len(pending), emailed=len(emailed), left=depth)
    return Drained(changes, cycles, left_over=True)
