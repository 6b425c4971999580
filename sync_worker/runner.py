"""Runs one guarded cycle: under the lease, recorded in the run history. Used by `--once`,
cron and every daemon tick alike. Its `Clock` is the lease's, the history's and the cycle's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sync_worker.clock import SYSTEM_CLOCK, Clock
from sync_worker.customers import Outcome
from sync_worker.cycle import run_cycle
from sync_worker.errors import (
    Dependency,
    DependencyUnavailable,
    KeyRefused,
    SupabaseError,
    SyncError,
)
from sync_worker.lease import SyncLease
from sync_worker.ports import CycleServices
from sync_worker.report import CycleReport
from sync_worker.runs import RunHistory
from sync_worker.services import LiveServices
from sync_worker.shutdown import InFlightRun


def run_guarded_cycle(
    live: LiveServices,
    *,
    worker: str,
    run_id: str,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    lease_ttl_seconds: int = 60,
    in_flight: InFlightRun | None = None,
    clock: Clock = SYSTEM_CLOCK,
    keys: Sequence[str] | None = None,
) -> CycleReport:
    """One cycle under the lease. A dry run writes nothing, so it takes no lease either.
    `in_flight` is kept up to date with what a shutdown past its grace must settle; `clock`
    paces the lease and dates the run and the cycle. With `keys` (CRM order keys), a targeted
    cycle for those customers only.

    Raises:
        LeaseHeld: another run holds the lease (exit 75).
        DependencyUnavailable: Supabase or the CRM could not be reached (exit 69).
    """
    targeted = keys is not None

    def services_for(stop: Callable[[], bool]) -> CycleServices:
        if keys is not None:
            return live.for_keys(keys, stop, clock=clock)
        return live.for_cycle(stop, clock=clock)

    if dry_run:
        services = services_for(should_stop)
        return run_cycle(live.options, services, dry_run=True, run_id=run_id, targeted=targeted)
    lease = SyncLease(live.api, worker, lease_ttl_seconds, shard=live.options.shard, clock=clock)
    history = RunHistory(live.api, worker, live.options.shard, masker=live.masker)

    def stop() -> bool:
        return should_stop() or lease.lost.is_set() or lease.expiring()

    try:
        with lease.held():
            history.close_abandoned()
            history_id = history.start(run_id, clock.now())
            services = services_for(stop)
            if in_flight is not None:
                in_flight.history_id = history_id
                services.on_recorder = in_flight.watch
            try:
                report = run_cycle(live.options, services, run_id=run_id, targeted=targeted)
            except Exception as exc:
                # A crash (a bug included) is recorded as a failed run, never left 'running'.
                error = str(exc) if isinstance(exc, SyncError) else f"{type(exc).__name__}: {exc}"
                history.finish(history_id, clock.now(), Outcome.FAILED, None, error)
                raise
            history.finish(
                history_id,
                clock.now(),
                report.outcome,
                report,
                report.aborted or report.deactivation_blocked,
            )
            return report
    except KeyRefused:
        raise
    except SupabaseError as exc:
        raise DependencyUnavailable(Dependency.SUPABASE, str(exc)) from exc
