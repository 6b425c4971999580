"""Writes the outcome of a cycle to Supabase: enrolments (RPC), deactivations, the welcome
email's delivery, per-customer failures and the run history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sync_worker.customers import AccountOrigin, CrmCustomer
from sync_worker.supabase_api import SupabaseApi

ENROL_BATCH_SIZE = 200


@dataclass(frozen=True, slots=True)
class Enrolment:
    """One customer to enrol: the CRM record and the account it is enrolled with."""

    customer: CrmCustomer
    user_id: str
    origin: AccountOrigin

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.customer.email,
            "user_id": self.user_id,
            "full_name": self.customer.name,
            "crm_lead_id": self.customer.lead_id,
            "payment_details": self.customer.payment_details(),
            "account_origin": self.origin.value,
        }


@dataclass(frozen=True, slots=True)
class EnrolmentResult:
    """What the enrolment RPC answered for one customer."""

    email: str
    user_id: str | None
    outcome: str  # enrolled, reactivated, updated, unchanged, rejected, error
    credits_granted: int
    credits_remaining: int | None
    welcome_email_status: str | None
    account_origin: AccountOrigin | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.outcome not in ("rejected", "error")


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A failure to store: the attempt count and next attempt are decided by the caller."""

    email: str
    step: str
    reason: str
    attempts: int
    retriable: bool
    next_attempt_at: datetime | None
    parked: bool


class EnrolmentStore(Protocol):
    """What the cycle writes to Supabase."""

    def enrol(self, batch: Sequence[Enrolment], initial_credits: int) -> list[EnrolmentResult]: ...

    def deactivate(self, emails: Sequence[str]) -> list[str]: ...

    def record_welcome_email(self, email: str, kind: str) -> bool: ...

    def record_failures(self, failures: Sequence[FailureRecord], now: datetime) -> None: ...

    def clear_failures(self, emails: Sequence[str]) -> None: ...


class SupabaseStore:
    """`EnrolmentStore` over PostgREST (RPCs and the bookkeeping tables), as service role."""

    def __init__(self, api: SupabaseApi) -> None:
        self._api = api

    def enrol(self, batch: Sequence[Enrolment], initial_credits: int) -> list[EnrolmentResult]:
        """Enrols in batches; each customer's writes are one subtransaction of the RPC."""
        results: list[EnrolmentResult] = []
        for start in range(0, len(batch), ENROL_BATCH_SIZE):
            chunk = [e.as_json() for e in batch[start : start + ENROL_BATCH_SIZE]]
            response = self._api.call(
                "enrol customers",
                lambda chunk=chunk: self._api.client.rpc(  # type: ignore[misc]
                    "enrol_crm_customers",
                    {"p_customers": chunk, "p_initial_credits": initial_credits},
                ).execute(),
            )
            rows: list[dict[str, Any]] = response.data  # type: ignore[assignment]
            results.extend(
                EnrolmentResult(
                    email=row["email"],
                    user_id=row.get("user_id"),
                    outcome=row["outcome"],
                    credits_granted=int(row.get("credits_granted") or 0),
                    credits_remaining=row.get("credits_remaining"),
                    welcome_email_status=row.get("welcome_email_status"),
                    account_origin=(
                        AccountOrigin(row["account_origin"]) if row.get("account_origin") else None
                    ),
                    error=row.get("error"),
                )
                for row in rows
            )
        return results

    def deactivate(self, emails: Sequence[str]) -> list[str]:
        if not emails:
            return []
        response = self._api.call(
            "deactivate customers",
            lambda: self._api.client.rpc(
                "deactivate_crm_customers", {"p_emails": list(emails)}
            ).execute(),
        )
        data: Any = response.data
        return [row if isinstance(row, str) else next(iter(row.values())) for row in data or []]

    def record_welcome_email(self, email: str, kind: str) -> bool:
        response = self._api.call(
            "record welcome email",
            lambda: self._api.client.rpc(
                "record_welcome_email", {"p_email": email, "p_kind": kind}
            ).execute(),
        )
        return bool(response.data)

    def record_failures(self, failures: Sequence[FailureRecord], now: datetime) -> None:
        if not failures:
            return
        rows = [
            {
                "email": f.email,
                "step": f.step,
                "reason": f.reason[:1000],
                "attempts": f.attempts,
                "retriable": f.retriable,
                "last_failed_at": now.isoformat(),
                "next_attempt_at": f.next_attempt_at.isoformat() if f.next_attempt_at else None,
                "parked_at": now.isoformat() if f.parked else None,
            }
            for f in failures
        ]
        self._api.call(
            "record failures",
            lambda: (
                self._api.client.table("crm_sync_failures")
                .upsert(rows, on_conflict="email", returning="minimal")  # type: ignore[arg-type]
                .execute()
            ),
        )

    def clear_failures(self, emails: Sequence[str]) -> None:
        for start in range(0, len(emails), ENROL_BATCH_SIZE):
            chunk = list(emails[start : start + ENROL_BATCH_SIZE])
            self._api.call(
                "clear failures",
                lambda chunk=chunk: (
                    self._api.client.table("crm_sync_failures")  # type: ignore[misc]
                    .delete(returning="minimal")  # type: ignore[arg-type]
                    .in_("email", chunk)
                    .execute()
                ),
            )
