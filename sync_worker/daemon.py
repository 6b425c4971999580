"""The long-running worker: a scheduler that runs guarded cycles, a health server, and a
two-stage shutdown (first SIGTERM/SIGINT: finish what is in flight; second: exit at once).

APScheduler's BackgroundScheduler runs the full cycle on its schedule and, when the CRM has
change capture (`crm-sync crm-setup`) and `SYNC_LISTEN=auto`, a drain of the change table
whenever the `listener.ChangeListener` wakes it (a notification, a reconnect, the safety poll
every `SYNC_EVENT_POLL_SECONDS`). Both jobs run on one thread, so a drain and a full cycle
never act at once. The main thread only waits for a stop signal, so the signal handler does
nothing but set an event (APScheduler installs no signal handlers of its own).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import structlog
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker import crm_changes
from sync_worker.clock import SYSTEM_CLOCK, Clock
from sync_worker.config import Settings
from sync_worker.drain import drain_changes
from sync_worker.errors import KeyRefused, LeaseHeld, SupabaseError, SyncError, first_line
from sync_worker.health import HealthServer
from sync_worker.lease import worker_id
from sync_worker.listener import ChangeListener, ListenerState, WakeReason
from sync_worker.masking import SecretMasker
from sync_worker.metrics import SyncMetrics
from sync_worker.retrying import RetryPolicy
from sync_worker.runner import run_guarded_cycle
from sync_worker.runs import new_run_id
from sync_worker.schedule import trigger_for
from sync_worker.services import LiveServices, crm_columns
from sync_worker.shutdown import InFlightRun, cut_off, exit_cut_off
from sync_worker.signals import StopSignals

log = structlog.get_logger("crm_sync.daemon")

JOB_ID = "crm-sync-cycle"
DRAIN_JOB_ID = "crm-sync-drain"
READINESS_CACHE_SECONDS = 10.0
# A probe answers within the kubelet's timeout: one try, no waiting.
READINESS_POLICY = RetryPolicy(attempts=1, deadline=3.0)


class Daemon:
    """Runs cycles on a schedule until told to stop."""

    def __init__(
        self, settings: Settings, masker: SecretMasker, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        """`masker`: the one the edge made from `settings` (the logs mask with it too), for
        what the runs store; `clock`: the cycles' (their lease, history and times)."""
        self.settings = settings
        self.masker = masker
        self.clock = clock
        self.worker = worker_id()
        self.metrics = SyncMetrics()
        self._signals = StopSignals()
        self.stop_requested = self._signals.requested
        self._idle = threading.Event()
        self._idle.set()
        self._last_outcome: str | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._live: LiveServices | None = None
        self._readiness: tuple[float, bool, str] = (0.0, False, "no cycle yet")
        self._in_flight: InFlightRun | None = None
        self._listener: ChangeListener | None = None
        self._listener_note: tuple[ListenerState, str] | None = None
        self._drain_wanted = threading.Event()
        self._caught_up = False  # the wanted drain was asked for by a poll or a reconnect

    # -- the job -----------------------------------------------------------------------------

    def _tick(self) -> None:
        self._idle.clear()  # before the check: a stop in between must wait for this tick
        if self.stop_requested.is_set() or self._live is None:
            self._idle.set()
            return
        run_id = new_run_id()  # this cycle's, in place of the process's own
        in_flight = InFlightRun(run_id, self.worker, self._live.options.shard, masker=self.masker)
        self._in_flight = in_flight
        try:
            with structlog.contextvars.bound_contextvars(run_id=run_id, worker=self.worker):
                report = run_guarded_cycle(
                    self._live,
                    worker=self.worker,
                    run_id=run_id,
                    should_stop=self.stop_requested.is_set,
                    lease_ttl_seconds=self.settings.sync_lease_ttl_seconds,
                    in_flight=in_flight,
                    clock=self.clock,
                )
                self.metrics.observe_cycle(report)
                self._last_outcome = report.outcome.value
        except LeaseHeld:
            log.info("cycle_skipped", reason="another run holds the lease", run_id=run_id)
            self.metrics.cycles.labels("skipped").inc()
        except SyncError as exc:
            log.error("cycle_failed", error=str(exc), run_id=run_id)
            self.metrics.cycles.labels("failed").inc()
            self._last_outcome = "failed"
        finally:
            self._in_flight = None
            self._idle.set()

    # -- change capture: the listener wakes a drain ----------------------------------------

    def _start_listener(self, live: LiveServices) -> ChangeListener | None:
        """Listens when `SYNC_LISTEN=auto` and the CRM has change capture for these columns;
        otherwise the full cycle alone serves the CRM, as it always does."""
        settings = self.settings
        if settings.sync_listen == "off":
            return None
        url = settings.crm_database_url.get_secret_value()
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                installed = crm_changes.change_capture_installed(conn, crm_columns(settings))
        except psycopg.Error as exc:
            log.warning("change_capture_unknown", error=first_line(exc))
            return None
        if not installed:
            log.info("change_capture_not_installed", hint="crm-sync crm-setup installs it")
            return None
        listener = ChangeListener(
            url,
            self._on_wake,
            channel=crm_changes.CHANNEL,
            on_state=self._on_listener_state,
            poll_seconds=settings.sync_event_poll_seconds,
        )
        with structlog.contextvars.bound_contextvars(worker=self.worker):
            return listener.start()

    def _on_wake(self, reason: WakeReason) -> None:
        """Asks for a drain (on the scheduler's thread); never runs one itself."""
        scheduler = self._scheduler
        if self.stop_requested.is_set() or scheduler is None:
            return
        listening = self._listener_note is not None and (
            self._listener_note[0] is ListenerState.LISTENING
        )
        self._caught_up = reason is not WakeReason.NOTIFIED and listening
        self._drain_wanted.set()
        scheduler.add_job(
            self._drain,
            id=DRAIN_JOB_ID,
            name="crm-sync drain",
            replace_existing=True,
            next_run_time=datetime.now(UTC),
        )

    def _on_listener_state(self, state: ListenerState, reason: str) -> None:
        self._listener_note = (state, reason)
        self.metrics.observe_listener_state(state)

    def _drain(self) -> None:
        """Drains the change table while drains are asked for (a wake during a drain asks
        for one more pass)."""
        self._idle.clear()
        try:
            live = self._live
            while live is not None and self._drain_wanted.is_set():
                self._drain_wanted.clear()
                if self.stop_requested.is_set():
                    return
                try:
                    with structlog.contextvars.bound_contextvars(worker=self.worker):
                        drain_changes(
                            live,
                            worker=self.worker,
                            metrics=self.metrics,
                            should_stop=self.stop_requested.is_set,
                            lease_ttl_seconds=self.settings.sync_lease_ttl_seconds,
                            clock=self.clock,
                            caught_up=self._caught_up,
                        )
                except (psycopg.Error, SyncError) as exc:
                    # The rows stay: the next wake (the poll, at the latest) tries again.
                    log.warning("drain_failed", error=first_line(exc))
        finally:
            self._idle.set()

    def _on_job_error(self, event: JobExecutionEvent) -> None:
        log.error("cycle_crashed", error=repr(event.exception))
        self._last_outcome = "failed"
        self.metrics.cycles.labels("crashed").inc()

    def _preflight(self, live: LiveServices) -> None:
        """One read before the scheduler starts: a key Supabase refuses stops the daemon now
        (exit 2) instead of failing every tick; any other failure is left to the ticks."""
        try:
            live.api.ping("crm_sync_lease", policy=READINESS_POLICY)
        except KeyRefused:
            raise
        except SupabaseError as exc:
            log.warning("supabase_not_answering_at_start", error=str(exc))

    # -- probes ------------------------------------------------------------------------------

    def alive(self) -> bool:
        scheduler = self._scheduler
        return scheduler is not None and scheduler.running and not self.stop_requested.is_set()

    def ready(self) -> tuple[bool, str]:
        """Ready when the last cycle did not fail and the CRM and Supabase answer (cached)."""
        checked_at, ok, reason = self._readiness
        if time.monotonic() - checked_at < READINESS_CACHE_SECONDS:
            return ok, reason
        ok, reason = self._check_ready()
        self._readiness = (time.monotonic(), ok, reason)
        return ok, reason

    def _check_ready(self) -> tuple[bool, str]:
        if self._last_outcome is None:
            return False, "no cycle finished yet"
        if self._last_outcome == "failed":
            return False, "the last cycle failed"
        note = self._listener_note
        # A deaf or lost listener leaves the worker ready: the poll serves the changes.
        suffix = f"; listener {note[0].value}: {note[1]}" if note and note[1] else ""
        try:
            url = self.settings.crm_database_url.get_secret_value()
            with psycopg.connect(url, connect_timeout=3) as conn:
                conn.execute("select 1")
        except psycopg.Error:
            return False, "the CRM database does not answer"
        live = self._live
        if live is None:
            return False, "not started"
        try:
            live.api.ping("crm_sync_lease", policy=READINESS_POLICY)
        except SupabaseError:
            return False, "Supabase does not answer"
        return True, "ready" + suffix

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT; returns the process exit code."""
        settings = self.settings
        self._signals.install()
        # Every retry of the process's calls (Supabase, mail, the lease) counted in /metrics.
        policy = RetryPolicy(listeners=(self.metrics.observe_retry,))
        with LiveServices(settings, policy, masker=self.masker) as live:
            self._live = live
            self._preflight(live)
            health = None
            if settings.health_port:
                health = HealthServer(
                    settings.health_port,
                    alive=self.alive,
                    ready=self.ready,
                    metrics=self.metrics.exposition,
                    host=settings.health_host,
                ).start()
            scheduler = BackgroundScheduler(
                executors={"default": ThreadPoolExecutor(1)},
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            )
            scheduler.add_listener(self._on_job_error, EVENT_JOB_ERROR)
            scheduler.add_job(
                self._tick,
                trigger_for(settings.sync_interval_seconds, settings.sync_cron),
                id=JOB_ID,
                name="crm-sync cycle",
                next_run_time=datetime.now(UTC),  # a first cycle at start
            )
            self._scheduler = scheduler
            scheduler.start()
            self._listener = self._start_listener(live)
            log.info(
                "daemon_started",
                worker=self.worker,
                interval_seconds=None if settings.sync_cron else settings.sync_interval_seconds,
                cron=settings.sync_cron or None,
                health_port=health.port if health else None,
                listening=self._listener is not None,
            )
            self.stop_requested.wait()
            log.info("daemon_stopping", grace_seconds=settings.sync_shutdown_grace_seconds)
            if self._listener is not None:
                self._listener.stop()
            scheduler.shutdown(wait=False)
            finished = self._idle.wait(settings.sync_shutdown_grace_seconds)
            if not finished:
                # A call stuck past the grace cannot be interrupted: settle the run around it
                # (accepted emails recorded, the run interrupted, the lease released) within a
                # bounded margin, and exit 1: work was cut off; the next run resumes it.
                log.warning("daemon_grace_expired")
                cut_off(
                    self._in_flight,
                    settings.supabase_url,
                    settings.supabase_service_role_key.get_secret_value(),
                )
                exit_cut_off()
            if health is not None:
                health.stop()
        log.info("daemon_stopped")
        return 0
