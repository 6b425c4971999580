"""Reads the sync state stored in Supabase (tracking rows, failures), page by page.

Pages are ordered by primary key and sized explicitly (`SupabaseApi.select`), so no server
default (PostgREST's or a proxy's 1000-row cap) can silently cut the state short.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sync_worker.customers import AccountOrigin, CustomerFailure, Step, TrackedCustomer
from sync_worker.supabase_api import SupabaseApi

TRACKING_COLUMNS = (
    "email,user_id,is_active,welcome_email_status,account_origin,full_name,crm_lead_id,"
    "credits_remaining"
)
FAILURE_COLUMNS = (
    "email,step,reason,attempts,retriable,first_failed_at,last_failed_at,next_attempt_at,parked_at"
)


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
        for row in api.select("digital_resume_by_crm", TRACKING_COLUMNS, order=("email",))
    }


def read_failures(api: SupabaseApi) -> Iterator[CustomerFailure]:
    """Every recorded failure, ordered by email."""
    for row in api.select("crm_sync_failures", FAILURE_COLUMNS, order=("email",)):
        yield failure_from(row)


def load_failures(api: SupabaseApi) -> dict[str, CustomerFailure]:
    """Every recorded failure, by email."""
    return {failure.email: failure for failure in read_failures(api)}


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
