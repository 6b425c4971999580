"""The cycle's store in Supabase (`EnrolmentStore`): enrolments (RPC), deactivations, the
welcome emails accepted, per-customer failures, and what a cycle keeps for operators and for
the other shards (invalid CRM rows, held-back deactivations, shard figures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sync_worker.customers import (
    AccountOrigin,
    CustomerFailure,
    Enrolment,
    EnrolmentResult,
    EnrolOutcome,
    InvalidCrmRow,
    LayoutFigures,
    ShardFigures,
)
from sync_worker.ports import ENROL_BATCH_SIZE
from sync_worker.supabase_api import SupabaseApi
from sync_worker.welcome_email import SentEmail

# Accepted emails are recorded with more patience than other calls.
SENT_EMAIL_ATTEMPTS = 12
SENT_EMAIL_DEADLINE_SECONDS = 120.0
FAILURES_TABLE = "crm_sync_failures"


def enrolment_result(row: dict[str, Any]) -> EnrolmentResult:
    """One row of `enrol_crm_customers`' answer."""
    return EnrolmentResult(
        email=row["email"],
        user_id=row.get("user_id"),
        outcome=EnrolOutcome(row["outcome"]),
        credits_granted=int(row.get("credits_granted") or 0),
        credits_remaining=row.get("credits_remaining"),
        welcome_email_sent=row.get("welcome_email_status") == "sent",
        account_origin=AccountOrigin(row["account_origin"]) if row.get("account_origin") else None,
        error=row.get("error"),
    )


def failure_row(failure: CustomerFailure) -> dict[str, Any]:
    """A settled failure as a `crm_sync_failures` row."""
    last = failure.last_failed_at.isoformat() if failure.last_failed_at else None
    return {
        "email": failure.email,
        "step": failure.step.value,
        "reason": failure.reason,
        "attempts": failure.attempts,
        "retriable": failure.retriable,
        "last_failed_at": last,
        "next_attempt_at": (
            failure.next_attempt_at.isoformat() if failure.next_attempt_at else None
        ),
        "parked_at": last if failure.parked else None,
    }


class SupabaseStore:
    """`EnrolmentStore` over PostgREST (RPCs and the bookkeeping tables), as service role."""

    def __init__(self, api: SupabaseApi, *, patient_sent_emails: bool = True) -> None:
        self._api = api
        # False: recording accepted emails gets the client's own policy (a shutdown's short
        # margin).
        self._patient_sent_emails = patient_sent_emails

    def report_invalid_rows(
        self, reported_by: str, rows: Sequence[InvalidCrmRow]
    ) -> list[InvalidCrmRow]:
        """Keeps this shard's list of CRM rows that cannot be used; returns those new to it
        (appeared or changed). Writes only when the list changed."""
        known = {
            row["row_key"]
            for row in self._api.select(
                "crm_sync_invalid_rows",
                "row_key",
                order=("row_key",),
                where={"reported_by": reported_by},
                operation="read invalid rows",
            )
        }
        current = {row.key(reported_by): row for row in rows}
        new = {key: row for key, row in current.items() if key not in known}
        if new:
            self._api.upsert(
                "crm_sync_invalid_rows",
                [
                    {
                        "reported_by": reported_by,
                        "row_key": key,
                        "raw_email": row.raw_email,
                        "lead_id": row.lead_id,
                        "reason": row.reason,
                    }
                    for key, row in new.items()
                ],
                on_conflict="reported_by,row_key",
                ignore_duplicates=True,
                operation="keep invalid rows",
            )
        gone = sorted(known - set(current))
        if gone:
            self._api.delete_in("crm_sync_invalid_rows", "row_key", gone)
        return list(new.values())

    def hold_deactivations(self, run_id: str, emails: Sequence[str], shard: str) -> None:
        """Keeps the deactivations a tripped guard held back, under the run's id, in one call
        (one time for the whole set; the newest 20 sets are kept)."""
        self._api.rpc(
            "crm_sync_hold_deactivations",
            {"p_run_id": run_id, "p_emails": list(emails), "p_shard": shard},
            operation="hold deactivations",
        )

    def layout_figures(
        self,
        shard: tuple[int, int],
        run_id: str,
        figures: ShardFigures,
        snapshot_at: datetime,
        *,
        record: bool,
    ) -> LayoutFigures:
        """Records this shard's figures (unless `record` is false) and reads its layout's
        (migration 0017)."""
        answer = self._api.rpc(
            "crm_sync_shard_figures",
            {
                "p_shard_index": shard[0],
                "p_shard_count": shard[1],
                "p_run_id": run_id,
                "p_active": figures.active,
                "p_eligible": figures.eligible,
                "p_deactivating": list(figures.deactivating),
                "p_snapshot_at": snapshot_at.isoformat(),
                "p_record": record,
            },
            operation="record shard figures",
        )
        return LayoutFigures(
            shards=int(answer["shards"]),
            active=int(answer["active"]),
            eligible=int(answer["eligible"]),
            pending=int(answer["pending"]),
            ready=frozenset(answer["ready"]),
        )

    def enrol(self, batch: Sequence[Enrolment], initial_credits: int) -> list[EnrolmentResult]:
        """Enrols `batch` in one call (the caller keeps it to `ENROL_BATCH_SIZE`); each
        customer's writes are one subtransaction of the RPC."""
        rows = self._api.rpc(
            "enrol_crm_customers",
            {"p_customers": [e.as_json() for e in batch], "p_initial_credits": initial_credits},
            operation="enrol customers",
        )
        return [enrolment_result(row) for row in rows or []]

    def deactivate(self, emails: Sequence[str]) -> list[str]:
        if not emails:
            return []
        data = self._api.rpc(
            "deactivate_crm_customers", {"p_emails": list(emails)}, operation="deactivate customers"
        )
        return _scalars(data)

    def recent_deactivations(self, since: datetime) -> int:
        """How many customers were deactivated since `since` (their tracking rows)."""
        return self._api.count(
            "digital_resume_by_crm",
            where={"is_active": False},
            at_least=("deactivated_at", since.isoformat()),
        )

    def record_welcome_emails(self, sent: Sequence[SentEmail]) -> list[str]:
        """Records emails the server accepted, in one call; returns those recorded now (one
        already recorded is not). It is idempotent, and each lost record means a second
        email (with a new password) next cycle: so it is retried much longer than other
        calls."""
        if not sent:
            return []
        policy = self._api.policy
        patient = (
            replace(
                policy,
                attempts=max(policy.attempts, SENT_EMAIL_ATTEMPTS),
                deadline=max(policy.deadline, SENT_EMAIL_DEADLINE_SECONDS),
            )
            if self._patient_sent_emails
            else policy
        )
        rows = self._api.rpc(
            "record_welcome_emails",
            {"p_sent": [item._asdict() for item in sent]},
            operation="record welcome emails",
            policy=patient,
        )
        return _scalars(rows)

    def record_failures(self, failures: Sequence[CustomerFailure]) -> None:
        if failures:
            self._api.upsert(
                FAILURES_TABLE,
                [failure_row(f) for f in failures],
                on_conflict="email",
                operation="record failures",
            )

    def clear_failures(self, emails: Sequence[str]) -> None:
        self._api.delete_in(
            FAILURES_TABLE, "email", emails, batch_size=ENROL_BATCH_SIZE, operation="clear failures"
        )


def _scalars(data: Any) -> list[str]:
    """The values of a `setof text` function's answer (PostgREST sends the bare values; an
    object per row is read as well)."""
    return [str(next(iter(row.values())) if isinstance(row, dict) else row) for row in data or []]
