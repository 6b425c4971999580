"""Reads the sync state stored in Supabase (tracking rows, failures), page by page.

Tracking rows stream in email order (byte order, as the CRM stream), one keyset page at a time
with the next page fetched while the current one is merged; pages are sized explicitly, so no
server default (PostgREST's or a proxy's 1000-row cap) can silently cut the state short.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sync_worker.customers import AccountOrigin, CustomerFailure, Step, TrackedCustomer
from sync_worker.supabase_api import SupabaseApi

TRACKING_PAGE_SIZE = 5_000
LOOKUP_BATCH = 100
TRACKING_COLUMNS = (
    "email,user_id,is_active,welcome_email_status,account_origin,full_name,crm_lead_id,"
    "credits_remaining"
)
FAILURE_COLUMNS = (
    "email,step,reason,attempts,retriable,first_failed_at,last_failed_at,next_attempt_at,parked_at"
)


def tracked_from(row: dict[str, Any]) -> TrackedCustomer:
    """A tracking row as the domain's value."""
    return TrackedCustomer(
        email=row["email"],
        user_id=str(row["user_id"]),
        is_active=bool(row["is_active"]),
        welcome_email_status=str(row["welcome_email_status"]),
        account_origin=AccountOrigin(row["account_origin"]),
        full_name=row.get("full_name"),
        crm_lead_id=row.get("crm_lead_id"),
        credits_remaining=int(row.get("credits_remaining") or 0),
    )


def stream_tracking(
    api: SupabaseApi, page_size: int | None = None, shard: tuple[int, int] = (0, 1)
) -> Iterator[TrackedCustomer]:
    """Every tracking row (of one shard) in email (byte) order: keyset pages, the next one
    read while the caller works through the current one."""
    size = page_size or TRACKING_PAGE_SIZE
    arguments: dict[str, Any] = {"p_limit": size}
    if shard[1] > 1:
        arguments |= {"p_shard_index": shard[0], "p_shard_count": shard[1]}

    def page(after: str) -> list[dict[str, Any]]:
        return api.read_rows(
            "crm_sync_tracking_page",
            {"p_after": after, **arguments},
            operation="read tracking rows",
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-sync-pages") as pages:
        pending = pages.submit(contextvars.copy_context().run, page, "")
        while True:
            rows = pending.result()
            if len(rows) == size:
                pending = pages.submit(contextvars.copy_context().run, page, rows[-1]["email"])
            for row in rows:
                yield tracked_from(row)
            if len(rows) < size:
                return


def lookup_tracking(api: SupabaseApi, emails: Sequence[str]) -> dict[str, TrackedCustomer]:
    """The tracking rows of a few emails (those the merge could not place), by email."""
    rows = _rows_of(api, "digital_resume_by_crm", TRACKING_COLUMNS, emails, "read tracking rows")
    return {row["email"]: tracked_from(row) for row in rows}


def _rows_of(
    api: SupabaseApi, table: str, columns: str, emails: Sequence[str], operation: str
) -> Iterator[dict[str, Any]]:
    """The rows of `table` whose email is one of `emails`, `LOOKUP_BATCH` emails per read."""
    for start in range(0, len(emails), LOOKUP_BATCH):
        yield from api.select(
            table,
            columns,
            order=("email",),
            where_in=("email", list(emails[start : start + LOOKUP_BATCH])),
            operation=operation,
        )


def read_failures(api: SupabaseApi) -> Iterator[CustomerFailure]:
    """Every recorded failure, ordered by email."""
    for row in api.select("crm_sync_failures", FAILURE_COLUMNS, order=("email",)):
        yield failure_from(row)


def load_failures(
    api: SupabaseApi, emails: Sequence[str] | None = None
) -> dict[str, CustomerFailure]:
    """Every recorded failure by email; with `emails`, those of these emails only."""
    if emails is None:
        return {failure.email: failure for failure in read_failures(api)}
    rows = _rows_of(api, "crm_sync_failures", FAILURE_COLUMNS, emails, "read failures")
    return {row["email"]: failure_from(row) for row in rows}


def failure_from(row: dict[str, Any]) -> CustomerFailure:
    """A `crm_sync_failures` row as the domain's failure."""
    return CustomerFailure(
        email=row["email"],
        step=Step(row["step"]),
        reason=row["reason"],
        attempts=int(row["attempts"]),
        retriable=bool(row.get("retriable", True)),
        next_attempt_at=parse_timestamp(row.get("next_attempt_at")),
        parked=row.get("parked_at") is not None,
        first_failed_at=parse_timestamp(row.get("first_failed_at")),
        last_failed_at=parse_timestamp(row.get("last_failed_at")),
    )


def parse_timestamp(value: str | None) -> datetime | None:
    """A timestamp as PostgREST writes it (ISO 8601), or None."""
    return datetime.fromisoformat(value) if value else None
