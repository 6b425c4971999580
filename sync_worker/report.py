"""The report of one cycle: counts per action and outcome, failures by reason, and its
printed summary. A pydantic model, because it leaves the process (logs, `--json`, history)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from sync_worker.customers import AccountOrigin, CustomerFailure, EnrolOutcome, Outcome
from sync_worker.display import printable
from sync_worker.errors import ExitCode
from sync_worker.plan import CrmTally, SyncPlan
from sync_worker.settle import CycleTally, Settlement, outcome_of

PREVIEW_SIZE = 5
_EXIT_CODES = {
    Outcome.SUCCEEDED: ExitCode.OK,
    # Not everyone was served in this cycle; the next one retries them.
    Outcome.PARTIAL: ExitCode.CUSTOMERS_FAILED,
    Outcome.INTERRUPTED: ExitCode.CUSTOMERS_FAILED,
    Outcome.FAILED: ExitCode.UNAVAILABLE,
}


class InvalidLine(BaseModel):
    email: str | None
    reason: str
    lead_id: str | None = None


class CycleReport(BaseModel):
    """What one cycle did."""

    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float = 0.0
    dry_run: bool = False
    crm_rows: int = 0
    eligible_customers: int = 0
    invalid: list[InvalidLine] = Field(default_factory=list)
    planned: dict[str, int] = Field(default_factory=dict)
    created: int = 0
    linked: int = 0
    taken_over: int = 0
    enrolled: int = 0
    reactivated: int = 0
    refreshed: int = 0
    credits_granted: int = 0
    emails_sent: int = 0
    deactivated: int = 0
    failures: list[CustomerFailure] = Field(default_factory=list)
    aborted: str | None = None
    interrupted: bool = False
    # Why this cycle deactivated nobody though the plan said to (the mass-deactivation guard).
    deactivation_blocked: str | None = None
    # Why a shard's deactivations wait for a later cycle (its layout's figures are not in yet).
    deactivation_deferred: str | None = None
    preview: dict[str, list[str]] = Field(default_factory=dict)
    # A targeted cycle's emails accepted and recorded (for their sale-to-email latency).
    emailed: list[str] = Field(default_factory=list, exclude=True)

    @classmethod
    def begin(
        cls, run_id: str, started: datetime, dry_run: bool, crm: CrmTally, plan: SyncPlan
    ) -> CycleReport:
        return cls(
            run_id=run_id,
            started_at=started,
            dry_run=dry_run,
            crm_rows=crm.rows_read,
            eligible_customers=plan.eligible,
            invalid=[
                InvalidLine(email=i.raw_email, reason=i.reason, lead_id=i.lead_id)
                for i in crm.invalid
            ],
            planned=plan.counts(),
        )

    def apply(
        self, tally: CycleTally, settlement: Settlement, *, list_emailed: bool = False
    ) -> None:
        """Takes in what the stages did and how the cycle was settled; `list_emailed`: keep
        who was emailed (a targeted cycle's few)."""
        accounts: Counter[AccountOrigin | None] = Counter()
        outcomes: Counter[EnrolOutcome] = Counter()
        for outcome in tally.outcomes.values():
            accounts[outcome.account] += 1
            if outcome.enrolment is not None:
                outcomes[outcome.enrolment.outcome] += 1
                self.credits_granted += outcome.enrolment.credits_granted
            self.emails_sent += outcome.emailed
            self.deactivated += outcome.deactivated
        if list_emailed:
            self.emailed = sorted(e for e, outcome in tally.outcomes.items() if outcome.emailed)
        self.created = accounts[AccountOrigin.CREATED]
        self.linked = accounts[AccountOrigin.LINKED]
        self.taken_over = accounts[AccountOrigin.TAKEN_OVER]
        self.enrolled = outcomes[EnrolOutcome.ENROLLED]
        self.reactivated = outcomes[EnrolOutcome.REACTIVATED]
        self.refreshed = outcomes[EnrolOutcome.UPDATED]
        self.failures = settlement.failures
        self.aborted = str(tally.aborted) if tally.aborted else None
        self.interrupted = tally.interrupted

    @property
    def outcome(self) -> Outcome:
        """How the cycle ended (run history, metrics and exit code all read this)."""
        return outcome_of(
            aborted=self.aborted is not None,
            interrupted=self.interrupted,
            # Deactivations held back are work left undone: exit 1, as for failures.
            failed=bool(self.failures) or self.deactivation_blocked is not None,
        )

    def finish(
        self, finished: datetime, duration: float, plan_preview: SyncPlan | None = None
    ) -> None:
        self.finished_at = finished
        self.duration_seconds = round(duration, 3)
        if plan_preview is not None:
            for step in plan_preview.steps:
                shown = self.preview.setdefault(step.action.value, [])
                if len(shown) < PREVIEW_SIZE:
                    shown.append(step.email)

    @property
    def exit_code(self) -> ExitCode:
        """The exit code of a one-off run that ran this cycle (README.md, "Commands")."""
        return _EXIT_CODES[self.outcome]

    def failures_by_reason(self) -> dict[str, int]:
        return dict(Counter(f"{f.step}: {_short(f.reason)}" for f in self.failures))

    def log_fields(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "crm_rows": self.crm_rows,
            "eligible": self.eligible_customers,
            "invalid": len(self.invalid),
            "planned": self.planned,
            "created": self.created,
            "linked": self.linked,
            "taken_over": self.taken_over,
            "enrolled": self.enrolled,
            "reactivated": self.reactivated,
            "refreshed": self.refreshed,
            "credits_granted": self.credits_granted,
            "emails_sent": self.emails_sent,
            "deactivated": self.deactivated,
            "failed": len(self.failures),
            "failures_by_reason": self.failures_by_reason(),
            "aborted": self.aborted,
            "interrupted": self.interrupted,
            "outcome": self.outcome.value,
            "deactivation_blocked": self.deactivation_blocked,
            "deactivation_deferred": self.deactivation_deferred,
            "duration_seconds": self.duration_seconds,
        }

    def render(self) -> str:
        """The human summary printed at the end of a cycle."""
        head = "DRY RUN: nothing was written, no email sent" if self.dry_run else "cycle finished"
        lines = [
            f"crm-sync {head} (run {self.run_id}, {self.duration_seconds:.1f} s)",
            f"  CRM: {self.crm_rows} eligible sale rows, {self.eligible_customers} customers,"
            f" {len(self.invalid)} invalid rows",
            "  plan: " + ", ".join(f"{k} {v}" for k, v in self.planned.items() if v) or "  plan: -",
        ]
        if self.dry_run:
            for action, emails in self.preview.items():
                more = self.planned.get(action, 0) - len(emails)
                suffix = f" (+{more} more)" if more > 0 else ""
                lines.append(f"    {action}: {', '.join(emails)}{suffix}")
        else:
            lines += [
                f"  accounts: {self.created} created, {self.linked} linked,"
                f" {self.taken_over} unconfirmed taken over",
                f"  enrolled: {self.enrolled} new, {self.reactivated} reactivated,"
                f" {self.refreshed} refreshed; {self.credits_granted} credits granted",
                f"  emails sent: {self.emails_sent}",
                f"  deactivated: {self.deactivated}",
                f"  failed: {len(self.failures)}",
            ]
            for reason, count in sorted(self.failures_by_reason().items()):
                lines.append(f"    {count} x {printable(reason)}")
        # Each value on its own line escaped whole (its line breaks too): CRM data and server
        # replies cannot add lines of their own to the summary.
        for invalid in self.invalid:
            shown = invalid.email if invalid.email is not None else "(no email)"
            lead = f" [{printable(invalid.lead_id)}]" if invalid.lead_id else ""
            lines.append(f"  invalid CRM row{lead}: {shown!r}: {printable(invalid.reason)}")
        if self.aborted:
            lines.append(f"  ABORTED: {printable(self.aborted)}")
        if self.deactivation_blocked:
            lines.append(f"  DEACTIVATION HELD BACK: {self.deactivation_blocked}")
        if self.deactivation_deferred:
            lines.append(f"  deactivation deferred: {self.deactivation_deferred}")
        if self.interrupted:
            lines.append("  INTERRUPTED: stopped on a signal; the next run finishes the rest")
        return printable("\n".join(lines), keep="\n")


def _short(reason: str) -> str:
    return reason.split(":", 1)[-1].strip()[:120] if ":" in reason else reason[:120]
