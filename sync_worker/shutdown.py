"""What a run still owes when the shutdown grace runs out, paid within a bounded margin.

A stop lets the calls in flight finish within `SYNC_SHUTDOWN_GRACE_SECONDS`. A call stuck on a
slow Supabase cannot be interrupted, so past the grace the process leaves it: first it records
the welcome emails the mail server accepted and nobody recorded yet (else the next run sends
them again), finishes the run's history row as interrupted and releases the lease (else every
run waits out its time-to-live), each over a client of its own with short timeouts, all within
`CUT_OFF_MARGIN_SECONDS`; then it exits 1, so an orchestrator sees that work was cut off.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import structlog

from sync_worker.customers import Outcome
from sync_worker.errors import SupabaseError
from sync_worker.lease import SyncLease
from sync_worker.masking import SecretMasker
from sync_worker.retrying import RetryPolicy
from sync_worker.runs import RunHistory
from sync_worker.sent_emails import SentEmailRecorder
from sync_worker.store import SupabaseStore
from sync_worker.supabase_api import SupabaseApi

log = structlog.get_logger("crm_sync.shutdown")
T = TypeVar("T")

CUT_OFF_MARGIN_SECONDS = 3.0
CUT_OFF_REASON = "stopped: the shutdown grace ran out while calls were still in flight"


@dataclass
class InFlightRun:
    """The run a process is in the middle of: enough to settle it from another thread."""

    run_id: str
    worker: str
    shard: tuple[int, int] = (0, 1)
    history_id: str | None = None
    recorder: SentEmailRecorder | None = None
    masker: SecretMasker = field(kw_only=True)  # the edge's: the run's error is stored masked

    def watch(self, recorder: SentEmailRecorder | None) -> None:
        """The cycle's recorder of accepted emails while it is open (None once closed)."""
        self.recorder = recorder


def cut_off(
    run: InFlightRun | None,
    url: str,
    service_role_key: str,
    *,
    margin: float = CUT_OFF_MARGIN_SECONDS,
) -> None:
    """Settles `run` (see the module) and returns within `margin` seconds, settled or not."""
    if run is None:
        return
    # The records and the run's row side by side; the lease only after both (released before
    # the records land, another worker could send those emails again), and not at all when the
    # records could not be made: then it runs out by itself, after its time-to-live.
    api = SupabaseApi(
        url,
        service_role_key,
        policy=RetryPolicy(attempts=2, initial_wait=0.05, max_wait=0.1, deadline=margin * 0.4),
        timeout=httpx.Timeout(margin * 0.2),
    )
    began = time.monotonic()
    recorded: list[bool] = []
    first = [_start(_record_accepted, run, api, recorded), _start(_finish_run, run, api, None)]
    for step in first:
        step.join(max(margin * 0.6 - (time.monotonic() - began), 0))
    if recorded == [True]:
        last = _start(_release_lease, run, api, None)
        last.join(max(margin - (time.monotonic() - began), 0))
        first.append(last)
    if any(step.is_alive() for step in first) or recorded != [True]:
        log.error("cut_off_incomplete", run_id=run.run_id, margin_seconds=margin)
    else:
        log.warning("run_cut_off", run_id=run.run_id)


def _start(
    step: Callable[[InFlightRun, SupabaseApi, list[bool] | None], None],
    run: InFlightRun,
    api: SupabaseApi,
    done: list[bool] | None,
) -> threading.Thread:
    thread = threading.Thread(
        target=contextvars.copy_context().run,
        args=(step, run, api, done),
        name=f"crm-sync-cut-off-{step.__name__.strip('_')}",
        daemon=True,
    )
    thread.start()
    return thread


def _record_accepted(run: InFlightRun, api: SupabaseApi, done: list[bool] | None) -> None:
    pending = run.recorder.unrecorded() if run.recorder is not None else []
    ok = True
    if pending:
        try:
            SupabaseStore(api, patient_sent_emails=False).record_welcome_emails(pending)
            log.warning("accepted_emails_recorded_at_cut_off", count=len(pending))
        except SupabaseError as exc:
            ok = False
            log.error("accepted_emails_not_recorded", count=len(pending), error=str(exc))
    if done is not None:
        done.append(ok)


def _finish_run(run: InFlightRun, api: SupabaseApi, _done: list[bool] | None) -> None:
    RunHistory(api, run.worker, run.shard, masker=run.masker).finish(
        run.history_id, datetime.now(UTC), Outcome.INTERRUPTED, None, CUT_OFF_REASON
    )


def _release_lease(run: InFlightRun, api: SupabaseApi, _done: list[bool] | None) -> None:
    SyncLease(api, run.worker, shard=run.shard).release(policy=api.policy)


def exit_cut_off() -> None:
    """Ends the process at once with exit 1 (work was cut off), its output flushed first."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(1)


def run_within_grace(
    work: Callable[[], T],
    *,
    stop: threading.Event,
    grace: float,
    in_flight: InFlightRun,
    url: str,
    service_role_key: str,
) -> T:
    """Runs `work` (one guarded cycle) in a thread of its own and returns what it returns (or
    raises what it raised). Once `stop` is set it waits `grace` seconds more; past them it
    settles `in_flight` (`cut_off`) and exits 1."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(target,), name="crm-sync-cycle", daemon=True
    )
    thread.start()
    while thread.is_alive():
        if stop.wait(0.2):
            thread.join(grace)
            if thread.is_alive():
                log.warning("grace_expired", run_id=in_flight.run_id, grace_seconds=grace)
                cut_off(in_flight, url, service_role_key)
                exit_cut_off()
            break
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
