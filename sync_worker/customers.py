"""The domain's values: a CRM customer, what Supabase already knows of them, and emails.

Plain frozen dataclasses shared by the source, the plan and the adapters; no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from email_validator import EmailNotValidError, validate_email


class AccountOrigin(StrEnum):
    CREATED = "created"  # crm-sync created the auth account
    LINKED = "linked"  # the person already had an account; crm-sync linked it


@dataclass(frozen=True, slots=True)
class CrmCustomer:
    """One customer as the CRM knows them: every eligible sale row of one email, merged."""

    email: str
    name: str | None = None
    lead_ids: tuple[str, ...] = ()
    sale_rows: int = 1
    sale_value: Decimal = Decimal(0)

    @property
    def lead_id(self) -> str | None:
        return self.lead_ids[0] if self.lead_ids else None

    def payment_details(self) -> dict[str, Any]:
        """What the tracking row keeps of the CRM sales (JSON)."""
        return {
            "source": "crm",
            "sale_rows": self.sale_rows,
            "digital_resume_sale_value": str(self.sale_value),
            "lead_ids": list(self.lead_ids),
        }


@dataclass(frozen=True, slots=True)
class InvalidCrmRow:
    """An eligible CRM row that cannot be provisioned as it stands."""

    raw_email: str | None
    reason: str
    lead_id: str | None = None


@dataclass(frozen=True, slots=True)
class TrackedCustomer:
    """What the tracking table says about a customer already enrolled."""

    email: str
    user_id: str
    is_active: bool
    welcome_email_status: str
    account_origin: AccountOrigin
    full_name: str | None = None
    crm_lead_id: str | None = None
    credits_remaining: int = 0

    @property
    def welcome_email_sent(self) -> bool:
        return self.welcome_email_status == "sent"


@dataclass(frozen=True, slots=True)
class FailureState:
    """The last failure recorded for a customer, and when to try again."""

    email: str
    step: str
    reason: str
    attempts: int
    next_attempt_at: datetime | None = None
    parked: bool = False


@dataclass(frozen=True, slots=True)
class AuthAccount:
    """An auth user as the admin API returns it (only what the worker needs)."""

    id: str
    email: str
    created_by_crm_sync: bool
    has_signed_in: bool


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the welcome email gives a person to sign in with. Never logged, never stored."""

    temporary_password: str | None = field(default=None, repr=False)
    setup_link: str | None = field(default=None, repr=False)


def normalise_email(raw: str | None) -> tuple[str | None, str | None]:
    """Trims and lower-cases an email and validates it (syntax only, no DNS).

    Returns:
        (email, None) when valid, or (None, reason) when not.
    """
    if raw is None or not raw.strip():
        return None, "no email"
    email = raw.strip().lower()
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, str(exc)
    return email, None
