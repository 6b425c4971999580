"""The daemon's Prometheus metrics, in a registry of its own (served on /metrics)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sync_worker.customers import Outcome, Step
from sync_worker.listener import ListenerState
from sync_worker.report import CycleReport


class SyncMetrics:
    """Counters and gauges updated after every cycle (and every retry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cycles = Counter(
            "crm_sync_cycles", "Sync cycles by outcome.", ["outcome"], registry=self.registry
        )
        self.customers = Counter(
            "crm_sync_customers",
            "Customers by action and outcome.",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "crm_sync_retries", "Retried external calls.", ["operation"], registry=self.registry
        )
        self.emails = Counter(
            "crm_sync_emails_sent", "Welcome emails sent.", registry=self.registry
        )
        self.duration = Histogram(
            "crm_sync_cycle_duration_seconds",
            "Duration of sync cycles.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.last_success = Gauge(
            "crm_sync_last_success_timestamp_seconds",
            "When the last cycle finished without failures (Unix time).",
            registry=self.registry,
        )
        self.pending = Gauge(
            "crm_sync_customers_pending",
            "Customers not yet fully provisioned (waiting for a retry, or failed this cycle).",
            registry=self.registry,
        )
        self.deactivation_guard = Gauge(
            "crm_sync_deactivation_guard_tripped",
            "1 when the last cycle held back its deactivations (too many at once), else 0.",
            registry=self.registry,
        )
        self.failed = Gauge(
            "crm_sync_customers_failed",
            "Customers parked after SYNC_MAX_ATTEMPTS failed attempts.",
            registry=self.registry,
        )

        self.listener_state = Gauge(
            "crm_sync_listener_state",
            "The change listener's state: 1 for the current one (listening, deaf, down, "
            "stopped), 0 for the others; absent while the daemon does not listen.",
            ["state"],
            registry=self.registry,
        )

        self.targeted_cycles = Counter(
            "crm_sync_targeted_cycles",
            "Targeted cycles (the CRM's recorded changes), by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.sale_to_email = Histogram(
            "crm_sync_sale_to_email_seconds",
            "From a CRM change's commit (its change row) to its welcome email's acceptance.",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
            registry=self.registry,
        )
        self.change_backlog = Gauge(
            "crm_sync_change_backlog",
            "Change rows of this shard waiting in the CRM's change table.",
            registry=self.registry,
        )
        self.change_oldest = Gauge(
            "crm_sync_change_oldest_pending_seconds",
            "Age of the oldest change row of this shard still waiting (0 when none waits).",
            registry=self.registry,
        )
        self.changes_caught_up = Counter(
            "crm_sync_changes_caught_up",
            "Change rows found by a poll or a reconnect's drain while the listener was"
            " listening: notifications that did not arrive.",
            registry=self.registry,
        )

    def observe_targeted(self, report: CycleReport) -> None:
        """A targeted cycle: its counts, but not the gauges of the whole customer base."""
        self.targeted_cycles.labels(report.outcome.value).inc()
        self._count_customers(report)

    def _count_customers(self, report: CycleReport) -> None:
        # The `action` label is the step, for successes and failures alike.
        for step, outcome_label, count in (
            (Step.ACCOUNT, "created", report.created),
            (Step.ACCOUNT, "linked", report.linked),
            (Step.ACCOUNT, "taken_over", report.taken_over),
            (Step.ENROL, "enrolled", report.enrolled),
            (Step.ENROL, "reactivated", report.reactivated),
            (Step.ENROL, "refreshed", report.refreshed),
            (Step.DEACTIVATE, "deactivated", report.deactivated),
            (Step.EMAIL, "sent", report.emails_sent),
        ):
            if count:
                self.customers.labels(step.value, outcome_label).inc(count)
        for failure in report.failures:
            self.customers.labels(failure.step.value, "failed").inc()
        self.emails.inc(report.emails_sent)

    def observe_backlog(self, depth: int, oldest_seconds: float) -> None:
        self.change_backlog.set(depth)
        self.change_oldest.set(max(oldest_seconds, 0.0))

    def observe_cycle(self, report: CycleReport) -> None:
        outcome = report.outcome
        self.cycles.labels(outcome.value).inc()
        self.duration.observe(report.duration_seconds)
        self._count_customers(report)
        self.pending.set(report.planned.get("wait", 0) + len(report.failures))
        self.failed.set(report.planned.get("parked", 0))
        self.deactivation_guard.set(1 if report.deactivation_blocked else 0)
        if outcome is Outcome.SUCCEEDED:
            self.last_success.set(time.time())

    def observe_listener_state(self, state: ListenerState) -> None:
        """One series per state, so `crm_sync_listener_state{state="deaf"} == 1` alerts."""
        for each in ListenerState:
            self.listener_state.labels(each.value).set(1 if each is state else 0)

    def observe_retry(self, operation: str) -> None:
        self.retries.labels(operation).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
