"""`crm-sync verify [--repair]`: checks the seed's success metrics (credit accuracy, dashboard
accuracy, data isolation, every eligible CRM customer enrolled) and, on request, recomputes
the derived rows that can safely be recomputed (stats and credit mirrors, never a balance).

Which CRM customers are eligible, and under which email, is what a cycle would plan now: the
CRM's stream merged with the tracking rows by `plan.plan_cycle`, as `cycle.run_cycle` does,
so verify never judges an email otherwise than the cycle.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from sync_worker.config import VerifySettings
from sync_worker.customers import CrmGroup, CustomerFailure, TrackedCustomer
from sync_worker.errors import ExitCode, SupabaseError, supabase_unavailable
from sync_worker.plan import Provision, Reenrol, Skip, SyncPlan, plan_cycle
from sync_worker.services import crm_columns
from sync_worker.source import stream_groups
from sync_worker.state import load_failures, lookup_tracking, stream_tracking
from sync_worker.supabase_api import SupabaseApi
from sync_worker.tables import (
    add_text_row,
    plain_text,
    terminal_width,
    text_console,
    titled_table,
)

# The database checks (crm_sync_verify in migration 0006) and the one made here from the CRM.
DATABASE_CHECKS = ("credit_accuracy", "credit_mirror", "dashboard_stats", "data_isolation")
ENROLMENT_CHECK = "crm_enrolment"
RENDER_WIDTH = 140


class Mismatch(BaseModel):
    """One thing that is not as the sources say it should be."""

    check: str
    email: str | None = None
    user_id: str | None = None
    expected: str
    actual: str


class CheckResult(BaseModel):
    """One check's figures: what it examined, found, repaired, and what is left."""

    check: str
    checked: int
    found: int
    repaired: int = 0
    remaining: int


class VerifyReport(BaseModel):
    """What `crm-sync verify` found; `mismatches` are those that remain after any repair."""

    checked_at: datetime
    repair: bool = False
    checks: list[CheckResult] = Field(default_factory=list)
    mismatches: list[Mismatch] = Field(default_factory=list)
    repaired: dict[str, int] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.mismatches


def database_mismatches(api: SupabaseApi) -> list[Mismatch]:
    """Every mismatch the `crm_sync_verify` RPC reports, read in explicit pages."""
    rows = api.rpc_rows(
        "crm_sync_verify",
        order=("check", "email", "user_id", "expected", "actual"),
        operation="verify",
    )
    return [
        Mismatch(
            check=row["check"],
            email=row.get("email"),
            user_id=str(row["user_id"]) if row.get("user_id") else None,
            expected=row["expected"],
            actual=row["actual"],
        )
        for row in rows
    ]


def repair_derived_rows(api: SupabaseApi) -> dict[str, int]:
    """Runs the `crm_sync_repair` RPC: rows repaired per check (stats and mirrors only)."""
    rows: Any = api.rpc("crm_sync_repair", operation="repair") or []
    return {str(row["check"]): int(row["repaired"]) for row in rows}


def crm_plan(
    groups: Iterable[CrmGroup],
    tracking: Iterable[TrackedCustomer],
    failures: Mapping[str, CustomerFailure],
    lookup_tracking: Callable[[Sequence[str]], Mapping[str, TrackedCustomer]],
    now: datetime,
) -> SyncPlan:
    """What a cycle over the whole CRM would plan now, made by the cycle's own merge
    (`plan.plan_cycle`).

    Args:
        groups: the CRM stream (`source.stream_groups`).
        tracking: every tracking row in email order (`state.stream_tracking`).
        failures: recorded failures by email.
        lookup_tracking: the tracking rows of some emails, by email.
        now: the clock the plan is made at.
    """
    plan, _ = plan_cycle(groups, tracking, failures, now, lookup=lookup_tracking)
    return plan


def enrolment_mismatches(plan: SyncPlan) -> list[Mismatch]:
    """The plan's eligible CRM customers without an active tracking row (those a cycle would
    provision or reactivate), with their last failure if any."""
    found: list[Mismatch] = []
    for step in plan.steps:
        entry = step.deferred if isinstance(step, Skip) else step
        if isinstance(entry, Provision):
            tracked = None
        elif isinstance(entry, Reenrol) and not entry.tracked.is_active:
            tracked = entry.tracked
        else:
            continue
        actual = "no tracking row" if tracked is None else "tracking row inactive"
        failure = step.failure
        if failure is not None:
            state = "parked" if failure.parked else f"attempt {failure.attempts}"
            actual += f" ({failure.step} failed, {state}: {failure.reason})"
        found.append(
            Mismatch(
                check=ENROLMENT_CHECK,
                email=step.email,
                user_id=tracked.user_id if tracked else None,
                expected="an active tracking row",
                actual=actual,
            )
        )
    return found


def verify(api: SupabaseApi, plan: SyncPlan | None, *, repair: bool) -> VerifyReport:
    """Checks the success metrics; with `repair`, repairs stats and mirrors, then checks again.

    Args:
        api: the service-role client.
        plan: what a cycle would plan now (`crm_plan`), for the enrolment check (skipped when
            None).
        repair: run `crm_sync_repair` after the first check.

    Raises:
        SupabaseError: a call failed after retries.
    """
    checked_at = datetime.now(UTC)
    found = database_mismatches(api)
    repaired: dict[str, int] = {}
    remaining = found
    if repair:
        repaired = repair_derived_rows(api)
        remaining = database_mismatches(api)
    enrolment = enrolment_mismatches(plan) if plan is not None else []

    profiles = api.count("profiles")
    tracked = api.count("digital_resume_by_crm")
    checked = {
        "credit_accuracy": profiles,
        "credit_mirror": tracked,
        "dashboard_stats": tracked,
        "data_isolation": tracked,
    }
    before = Counter(m.check for m in found)
    after = Counter(m.check for m in remaining)
    checks = [
        CheckResult(
            check=name,
            checked=checked[name],
            found=before[name],
            repaired=repaired.get(name, 0),
            remaining=after[name],
        )
        for name in DATABASE_CHECKS
    ]
    if plan is not None:
        checks.append(
            CheckResult(
                check=ENROLMENT_CHECK,
                checked=plan.eligible,
                found=len(enrolment),
                remaining=len(enrolment),
            )
        )
    return VerifyReport(
        checked_at=checked_at,
        repair=repair,
        checks=checks,
        mismatches=[*remaining, *enrolment],
        repaired=repaired,
    )


def render_verify(report: VerifyReport, *, width: int = RENDER_WIDTH) -> str:
    """The mismatches as a table (or "all checks passed") and the per-check figures."""
    buffer = io.StringIO()
    console = text_console(buffer, width)
    when = report.checked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if report.passed:
        console.print(f"crm-sync verify at {when}: all checks passed\n")
    else:
        count = len(report.mismatches)
        noun = "mismatch" if count == 1 else "mismatches"
        if report.repair:
            noun += " remains after repair" if count == 1 else " remain after repair"
        console.print(f"crm-sync verify at {when}: {count} {noun}\n")
        table = titled_table("Mismatches")
        table.add_column("check", no_wrap=True)
        table.add_column("email", overflow="fold")
        table.add_column("user_id", no_wrap=True)
        table.add_column("expected", overflow="fold")
        table.add_column("actual", overflow="fold")
        for mismatch in report.mismatches:
            add_text_row(
                table,
                mismatch.check,
                mismatch.email or "-",
                mismatch.user_id or "-",
                mismatch.expected,
                mismatch.actual,
            )
        console.print(table)
        console.print()

    checks = titled_table("Checks")
    checks.add_column("check")
    checks.add_column("checked", justify="right")
    if report.repair:
        for column in ("found", "repaired", "remaining"):
            checks.add_column(column, justify="right")
    else:
        checks.add_column("mismatches", justify="right")
    for result in report.checks:
        figures = (
            [result.found, result.repaired, result.remaining] if report.repair else [result.found]
        )
        add_text_row(checks, result.check, str(result.checked), *(str(f) for f in figures))
    console.print(checks)
    console.print()
    if report.repair:
        console.print("Repair recomputes dashboard stats and credit mirrors; it never changes a")
        console.print("balance or the ledger, so a credit_accuracy mismatch needs a person.")
    elif any(r.found for r in report.checks if r.check in {"dashboard_stats", "credit_mirror"}):
        console.print("Stats and mirror mismatches can be fixed with `crm-sync verify --repair`.")
    return plain_text(buffer)


def verify_command(settings: VerifySettings, *, repair: bool) -> int:
    """`crm-sync verify [--repair]`: plans against the CRM, checks, prints; 1 if mismatches
    remain.

    Raises:
        DependencyUnavailable: the CRM or Supabase could not be reached (exit 69).
        CrmSourceError: the CRM table or columns are misconfigured (exit 2).
    """
    api = SupabaseApi(settings.supabase_url, settings.supabase_service_role_key.get_secret_value())
    try:
        plan = crm_plan(
            stream_groups(settings.crm_database_url.get_secret_value(), crm_columns(settings)),
            stream_tracking(api),
            load_failures(api),
            lambda emails: lookup_tracking(api, emails),
            datetime.now(UTC),
        )
        report = verify(api, plan, repair=repair)
    except SupabaseError as exc:
        raise supabase_unavailable(exc) from exc
    finally:
        api.close()
    width = terminal_width(RENDER_WIDTH)
    print(render_verify(report, width=width))
    # 1 is the "finished, but something needs attention" code of every crm-sync command.
    return ExitCode.CUSTOMERS_FAILED if report.mismatches else ExitCode.OK
