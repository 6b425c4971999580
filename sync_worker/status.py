"""`crm-sync status`: the last runs, the customers waiting or failing, and the seed's three
monitoring queries, read from Supabase and shown as tables or JSON."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from sync_worker.config import SupabaseSettings
from sync_worker.customers import CustomerFailure
from sync_worker.errors import ExitCode, SupabaseError, supabase_unavailable
from sync_worker.state import parse_timestamp, read_failures
from sync_worker.supabase_api import SupabaseApi
from sync_worker.tables import (
    add_text_row,
    plain_text,
    terminal_width,
    text_console,
    titled_table,
)

SHOWN_ROWS = 50
RENDER_WIDTH = 160  # wide enough for a run id, its counts and a one-line error

_RUN_COLUMNS = "id,run_id,shard,worker_id,started_at,finished_at,status,counts,error"
_PENDING_COLUMNS = "email,user_id,full_name,created_at,last_sync_at"
# What a run's counts say, in the order an operator reads them (keys of CycleReport.log_fields).
_SUMMARY_KEYS = (
    ("eligible", "eligible"),
    ("created", "created"),
    ("linked", "linked"),
    ("taken_over", "taken over"),
    ("enrolled", "enrolled"),
    ("reactivated", "reactivated"),
    ("refreshed", "refreshed"),
    ("emails_sent", "emailed"),
    ("deactivated", "deactivated"),
    ("failed", "failed"),
    ("invalid", "invalid"),
)


class RunLine(BaseModel):
    """One row of the run history."""

    id: str
    run_id: str | None = None  # the id every log line of the run carries
    shard: str | None = None  # "index/count" for a shard's run
    worker_id: str
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    status: str
    summary: str
    counts: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class PendingCustomer(BaseModel):
    """An enrolled customer whose welcome email has not been accepted yet."""

    email: str
    user_id: str
    full_name: str | None = None
    enrolled_at: datetime | None = None
    last_sync_at: datetime | None = None


class DataCount(BaseModel):
    data_type: str
    count: int


class CreditBucket(BaseModel):
    credits_remaining: int
    user_count: int


class MonitoringFigures(BaseModel):
    """The seed's monitoring queries (views crm_user_count, crm_data_distribution,
    crm_credit_distribution)."""

    total_crm_users: int = 0
    inactive_crm_users: int = 0
    data_distribution: list[DataCount] = Field(default_factory=list)
    credit_distribution: list[CreditBucket] = Field(default_factory=list)


class InvalidRow(BaseModel):
    """A CRM row that cannot be used, as the last cycle of its shard found it."""

    reported_by: str
    raw_email: str | None = None
    lead_id: str | None = None
    reason: str
    first_seen_at: datetime


class StatusReport(BaseModel):
    """Everything `crm-sync status` shows."""

    generated_at: datetime
    runs: list[RunLine] = Field(default_factory=list)
    pending: list[PendingCustomer] = Field(default_factory=list)
    failed: list[CustomerFailure] = Field(default_factory=list)
    invalid_rows: list[InvalidRow] = Field(default_factory=list)
    monitoring: MonitoringFigures = Field(default_factory=MonitoringFigures)


def _runs(api: SupabaseApi, count: int) -> list[RunLine]:
    rows = api.select("crm_sync_runs", _RUN_COLUMNS, order=("started_at.desc", "id"), limit=count)
    return [_run_line(row) for row in rows]


def _run_line(row: dict[str, Any]) -> RunLine:
    started = datetime.fromisoformat(row["started_at"])
    finished = parse_timestamp(row.get("finished_at"))
    counts: dict[str, Any] = row.get("counts") or {}
    return RunLine(
        id=str(row["id"]),
        run_id=row.get("run_id") or counts.get("run_id"),
        shard=row.get("shard"),
        worker_id=row["worker_id"],
        started_at=started,
        finished_at=finished,
        duration_seconds=round((finished - started).total_seconds(), 3) if finished else None,
        status=row["status"],
        summary=summarise_counts(counts),
        counts=counts,
        error=row.get("error"),
    )


def summarise_counts(counts: dict[str, Any]) -> str:
    """One line of a run's counts: eligible always, the other outcomes when not zero."""
    parts = [
        f"{label} {counts[key]}"
        for key, label in _SUMMARY_KEYS
        if isinstance(counts.get(key), int) and (counts[key] or key == "eligible")
    ]
    return ", ".join(parts) or "-"


def _pending(api: SupabaseApi) -> list[PendingCustomer]:
    rows = api.select(
        "digital_resume_by_crm",
        _PENDING_COLUMNS,
        where={"is_active": True, "welcome_email_status": "pending"},
        order=("email",),
        operation="read pending customers",
    )
    return [
        PendingCustomer(
            email=row["email"],
            user_id=str(row["user_id"]),
            full_name=row.get("full_name"),
            enrolled_at=parse_timestamp(row.get("created_at")),
            last_sync_at=parse_timestamp(row.get("last_sync_at")),
        )
        for row in rows
    ]


def _failed(api: SupabaseApi) -> list[CustomerFailure]:
    return list(read_failures(api))


def _monitoring(api: SupabaseApi) -> MonitoringFigures:
    users = list(
        api.select("crm_user_count", "total_crm_users,inactive_crm_users", order=(), limit=1)
    )
    data = api.select("crm_data_distribution", "data_type,count", order=("data_type",))
    credits = api.select(
        "crm_credit_distribution",
        "credits_remaining,user_count",
        order=("credits_remaining.desc",),
    )
    first = users[0] if users else {}
    # The seed lists the data types in this order; keep it rather than the alphabet's.
    order = {"Job Requests": 0, "Recordings": 1, "Resumes": 2}
    distribution = sorted(
        (DataCount(data_type=r["data_type"], count=int(r["count"])) for r in data),
        key=lambda d: (order.get(d.data_type, len(order)), d.data_type),
    )
    return MonitoringFigures(
        total_crm_users=int(first.get("total_crm_users") or 0),
        inactive_crm_users=int(first.get("inactive_crm_users") or 0),
        data_distribution=distribution,
        credit_distribution=[
            CreditBucket(
                credits_remaining=int(r["credits_remaining"]), user_count=int(r["user_count"])
            )
            for r in credits
        ],
    )


def collect_status(api: SupabaseApi, *, runs: int = 10) -> StatusReport:
    """Reads the status from Supabase with the service-role client.

    Args:
        api: the service-role client.
        runs: how many of the newest runs to show.

    Raises:
        SupabaseError: a read failed after retries.
    """
    return StatusReport(
        generated_at=datetime.now(UTC),
        runs=_runs(api, runs) if runs > 0 else [],
        pending=_pending(api),
        failed=_failed(api),
        invalid_rows=[
            InvalidRow(**row)
            for row in api.select(
                "crm_sync_invalid_rows",
                "reported_by,raw_email,lead_id,reason,first_seen_at",
                order=("first_seen_at", "reported_by", "row_key"),
                operation="read invalid rows",
            )
        ],
        monitoring=_monitoring(api),
    )


def _print_invalid_rows(console: Any, report: StatusReport) -> None:
    invalid = titled_table(f"CRM rows that cannot be used: {len(report.invalid_rows)}")
    invalid.add_column("email", overflow="fold")
    invalid.add_column("lead id", overflow="fold")
    invalid.add_column("since", no_wrap=True)
    invalid.add_column("reason", overflow="fold")
    for row in report.invalid_rows[:SHOWN_ROWS]:
        add_text_row(
            invalid,
            row.raw_email if row.raw_email is not None else "(no email)",
            row.lead_id or "-",
            _shown(row.first_seen_at),
            row.reason,
        )
    _print(console, invalid, len(report.invalid_rows), "none")


def render_status(report: StatusReport, *, width: int = RENDER_WIDTH) -> str:
    """The status as plain-text tables (no colour, so it reads the same in a log file)."""
    buffer = io.StringIO()
    console = text_console(buffer, width)
    console.print(f"crm-sync status at {_shown(report.generated_at)} (all times UTC)\n")

    count = len(report.runs)
    runs = titled_table(f"Last {count} run{'' if count == 1 else 's'} (newest first)")
    # The finish time is the start plus the duration (the JSON form keeps both).
    for column in ("run", "started", "duration", "status"):
        runs.add_column(column, no_wrap=True)
    runs.add_column("worker", overflow="fold")
    runs.add_column("counts", min_width=36)
    runs.add_column("error", overflow="fold")
    for run in report.runs:
        add_text_row(
            runs,
            (run.run_id or "-") + (f" (shard {run.shard})" if run.shard else ""),
            _shown(run.started_at),
            f"{run.duration_seconds:.1f} s" if run.duration_seconds is not None else "-",
            run.status,
            run.worker_id,
            run.summary,
            run.error or "",
        )
    _print(console, runs, len(report.runs), "no runs recorded yet")

    pending = titled_table(f"Customers pending their welcome email: {len(report.pending)}")
    pending.add_column("email", overflow="fold")
    pending.add_column("name", overflow="fold")
    pending.add_column("enrolled", no_wrap=True)
    pending.add_column("last sync", no_wrap=True)
    for customer in report.pending[:SHOWN_ROWS]:
        add_text_row(
            pending,
            customer.email,
            customer.full_name or "",
            _shown(customer.enrolled_at),
            _shown(customer.last_sync_at),
        )
    _print(console, pending, len(report.pending), "none")

    parked = sum(1 for f in report.failed if f.parked)
    failed = titled_table(
        f"Customers failed: {len(report.failed)} ({len(report.failed) - parked} retrying,"
        f" {parked} parked)"
    )
    failed.add_column("email", overflow="fold")
    failed.add_column("step", no_wrap=True)
    failed.add_column("attempts", justify="right", no_wrap=True)
    failed.add_column("state", no_wrap=True)
    failed.add_column("next attempt", no_wrap=True)
    failed.add_column("reason", overflow="fold")
    for failure in report.failed[:SHOWN_ROWS]:
        add_text_row(
            failed,
            failure.email,
            failure.step,
            str(failure.attempts),
            "parked" if failure.parked else "retrying",
            "-" if failure.parked else _shown(failure.next_attempt_at),
            failure.reason,
        )
    _print(console, failed, len(report.failed), "none")

    _print_invalid_rows(console, report)

    figures = report.monitoring
    users = titled_table("CRM user count")
    users.add_column("total_crm_users", justify="right")
    users.add_column("inactive_crm_users", justify="right")
    add_text_row(users, str(figures.total_crm_users), str(figures.inactive_crm_users))
    _print(console, users, 1, "")

    data = titled_table("CRM data distribution")
    data.add_column("data_type")
    data.add_column("count", justify="right")
    for item in figures.data_distribution:
        add_text_row(data, item.data_type, str(item.count))
    _print(console, data, len(figures.data_distribution), "no data")

    credits = titled_table("CRM credit distribution")
    credits.add_column("credits_remaining", justify="right")
    credits.add_column("user_count", justify="right")
    for bucket in figures.credit_distribution:
        add_text_row(credits, str(bucket.credits_remaining), str(bucket.user_count))
    _print(console, credits, len(figures.credit_distribution), "no CRM users")
    return plain_text(buffer)


def status_command(settings: SupabaseSettings, *, as_json: bool, email: str | None = None) -> int:
    """`crm-sync status [EMAIL] [--json]`: prints the status (or one customer's story) and
    returns exit code 0.

    Raises:
        ConfigError: EMAIL is not an email address (exit 2).
        DependencyUnavailable: Supabase could not be read (exit 69).
    """
    api = SupabaseApi(settings.supabase_url, settings.supabase_service_role_key.get_secret_value())
    try:
        if email is not None:
            from sync_worker.support import render_story, story  # noqa: PLC0415

            found = story(api, email)
            print(found.model_dump_json(indent=2) if as_json else render_story(found))
            return ExitCode.OK
        report = collect_status(api)
    except SupabaseError as exc:
        raise supabase_unavailable(exc) from exc
    finally:
        api.close()
    width = terminal_width(RENDER_WIDTH)
    print(report.model_dump_json(indent=2) if as_json else render_status(report, width=width))
    return ExitCode.OK


def _print(console: Console, table: Table, total: int, empty: str) -> None:
    if total == 0:
        console.print(f"{table.title}\n  {empty}\n")
        return
    console.print(table)
    if total > table.row_count:
        console.print(f"  ... and {total - table.row_count} more (see --json)")
    console.print()


def _shown(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
