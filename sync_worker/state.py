"""Reads the sync state stored in Supabase (tracking rows, failures), page by page.

Pages are ordered by primary key and sized explicitly, so no server default (PostgREST's or a
proxy's 1000-row cap) can silently cut the state short.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Any

from sync_worker.customers import AccountOrigin, FailureState, TrackedCustomer
from sync_worker.supabase_api import SupabaseApi

PAGE_SIZE = 1000
TRACKING_COLUMNS = (
    "email,user_id,is_active,welcome_email_status,account_origin,full_name,crm_lead_id,"
    "credits_remaining"
)
FAILURE_COLUMNS = "email,step,reason,attempts,next_attempt_at,parked_at"


def _pages(api: SupabaseApi, table: str, columns: str, key: str) -> Iterator[dict[str, Any]]:
    def page(first: int) -> Any:
        query = api.client.table(table).select(columns).order(key)
        return query.range(first, first + PAGE_SIZE - 1).execute()

    start = 0
    while True:
        response = api.call(f"read {table}", partial(page, start))
        rows: list[dict[str, Any]] = response.data
        yield from rows
        if len(rows) < PAGE_SIZE:
            return
        start += PAGE_SIZE


def load_tracking(api: SupabaseApi) -> dict[str, TrackedCustomer]:
    """Every tracking row, by email."""
    return {
        row["email"]: TrackedCustomer(
            email=row["email"],
            user_id=str(row["user_id"]),
            is_active=bool(row["is_active"]),
            welcome_email_status=str(row["welcome_email_status"]),
            account_origin=AccountOrigin(row["account_origin"]),
            full_name=row.get("full_name"),
            crm_lead_id=row.get("crm_lead_id"),
            credits_remaining=int(row.get("credits_remaining") or 0),
        )
        for row in _pages(api, "digital_resume_by_crm", TRACKING_COLUMNS, "email")
    }


def load_failures(api: SupabaseApi) -> dict[str, FailureState]:
    """Every recorded failure, by email."""
    return {
        row["email"]: FailureState(
            email=row["email"],
            step=row["step"],
            reason=row["reason"],
            attempts=int(row["attempts"]),
            next_attempt_at=_timestamp(row.get("next_attempt_at")),
            parked=row.get("parked_at") is not None,
        )
        for row in _pages(api, "crm_sync_failures", FAILURE_COLUMNS, "email")
    }


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
