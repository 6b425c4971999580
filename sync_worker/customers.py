"""The domain's values and vocabulary: a CRM customer, what Supabase already knows of them,
the steps of their provisioning and how a step or a cycle can end.

Plain enums and frozen dataclasses shared by the source, the plan, the settling of a cycle,
the adapters, the report, status and metrics; no I/O here.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from sync_worker.crm_text import clean_name, normalise_email

# What a tracking row keeps of a customer's CRM sales, however many sale rows they have.
MAX_STORED_LEAD_IDS = 20
MAX_LEAD_ID_LENGTH = 64


class AccountOrigin(StrEnum):
    CREATED = "created"  # crm-sync created the auth account
    LINKED = "linked"  # the person already had a confirmed account; crm-sync linked it
    # An unconfirmed account existed for the email (anyone can create one): crm-sync replaced
    # it with a fresh account (earlier versions took it over in place); docs/SECURITY.md.
    TAKEN_OVER = "taken_over"


class EmailKind(StrEnum):
    """Which welcome email a customer gets (stored as `welcome_email_kind` and in the history)."""

    NEW_ACCOUNT = "new_account"  # an account crm-sync made: a temporary password or a setup link
    CREDITS_ADDED = "credits_added"  # an account they already use: no credentials at all


class CredentialsMode(StrEnum):
    """What the new-account email gives a person to sign in with."""

    TEMPORARY_PASSWORD = "temporary_password"  # noqa: S105 (a mode name, not a password)
    SETUP_LINK = "setup_link"


class Step(StrEnum):
    """The steps of one customer's provisioning, in order; a failure names the one it hit.

    The values are stored (`crm_sync_failures.step`) and are the `action` label of metrics.
    """

    ACCOUNT = "account"  # create or find the auth account
    ENROL = "enrol"  # profile, credits, tracking and stats rows (one RPC)
    EMAIL = "email"  # the welcome email, accepted by the mail server
    RECORD_EMAIL = "record_email"  # the accepted email, recorded as sent
    DEACTIVATE = "deactivate"  # no longer eligible: tracking row made inactive


class EnrolOutcome(StrEnum):
    """What the enrolment RPC answered for one customer."""

    ENROLLED = "enrolled"
    REACTIVATED = "reactivated"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"
    ERROR = "error"


class Outcome(StrEnum):
    """How a cycle ended: the run history's status, the metrics' label, the exit code."""

    SUCCEEDED = "succeeded"  # everyone served or waiting on a retry that is not yet due
    PARTIAL = "partial"  # some customers failed in this cycle; they are retried
    INTERRUPTED = "interrupted"  # stopped on a signal or a lost lease; the next run resumes
    FAILED = "failed"  # a dependency was down; the cycle was cut short


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
        """What the tracking row keeps of the CRM sales (JSON), bounded whatever the CRM holds:
        at most `MAX_STORED_LEAD_IDS` lead ids (the first in order; each is capped at
        `MAX_LEAD_ID_LENGTH` characters when read), and how many there are."""
        return {
            "source": "crm",
            "sale_rows": self.sale_rows,
            "digital_resume_sale_value": str(self.sale_value),
            "lead_ids": list(self.lead_ids[:MAX_STORED_LEAD_IDS]),
            "lead_id_count": len(self.lead_ids),
        }


@dataclass(frozen=True, slots=True)
class InvalidCrmRow:
    """An eligible CRM row that cannot be provisioned as it stands."""

    raw_email: str | None
    reason: str
    lead_id: str | None = None

    def key(self, reported_by: str) -> str:
        """Names this report (the shard, the raw email, the lead id, the reason): a row that
        changes is a new report."""
        material = "\x00".join((reported_by, self.raw_email or "", self.lead_id or "", self.reason))
        return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class CrmRow:
    """One sale row as the CRM query returns it: eligible, or with a value that cannot be read
    (`readable` False)."""

    raw_email: str | None
    value: str
    name: str | None = None
    lead_id: str | None = None
    readable: bool = True


@dataclass(frozen=True, slots=True)
class CrmGroup:
    """The sale rows that share one order key (the CRM's email trimmed and lower-cased), in
    the order the CRM stream and the tracking stream are both sorted by."""

    key: str | None
    rows: tuple[CrmRow, ...]


PREVIEW_LENGTH = 24


def unreadable(row: CrmRow) -> InvalidCrmRow:
    """The report of a row whose eligibility value is not a plain decimal (a short preview)."""
    preview = row.value[:PREVIEW_LENGTH] + ("..." if len(row.value) > PREVIEW_LENGTH else "")
    return InvalidCrmRow(
        row.raw_email,
        f"the eligibility value is not a plain decimal number: {preview!r}",
        _lead_id(row.lead_id),
    )


def invalid_email(row: CrmRow, reason: str) -> InvalidCrmRow:
    return InvalidCrmRow(row.raw_email, reason, _lead_id(row.lead_id))


def _lead_id(raw: str | None) -> str | None:
    """A CRM id as stored and reported: trimmed, at most `MAX_LEAD_ID_LENGTH` characters."""
    lead = raw.strip()[:MAX_LEAD_ID_LENGTH] if raw else ""
    return lead or None


def rows_by_email(rows: Iterable[CrmRow], invalid: list[InvalidCrmRow]) -> dict[str, list[CrmRow]]:
    """Readable rows by their normalised email; a row whose email cannot be used is added to
    `invalid` with the reason."""
    by_email: dict[str, list[CrmRow]] = {}
    for row in rows:
        email, reason = normalise_email(row.raw_email)
        if email is None:
            invalid.append(invalid_email(row, reason or "invalid"))
        else:
            by_email.setdefault(email, []).append(row)
    return by_email


def customer_from_rows(email: str, rows: Iterable[CrmRow]) -> CrmCustomer:
    """One customer from every eligible sale row of their email (pure, order-independent)."""
    names: list[str] = []
    lead_ids: set[str] = set()
    count = 0
    total = Decimal(0)
    for row in rows:
        count += 1
        name = clean_name(row.name)
        if name:
            names.append(name)
        lead = _lead_id(row.lead_id)
        if lead:
            lead_ids.add(lead)
        with contextlib.suppress(InvalidOperation, AttributeError):
            total += Decimal(row.value.strip())
    return CrmCustomer(
        email=email,
        # Rows come in no particular order: the name must not depend on it.
        name=min(names, default=None),
        lead_ids=tuple(sorted(lead_ids)),
        sale_rows=count,
        sale_value=total,
    )


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
class CustomerFailure:
    """A customer's step that failed: as found in this cycle, as settled (attempts counted,
    next attempt or parked) and as stored in `crm_sync_failures`.

    `outage` marks a failure that says "the service is down" rather than anything about the
    customer (no connection, a timeout, 429, a 5xx after retries); `permanent` one refused for
    good (an HTTP 4xx about the request, an SMTP 5xx), parked at once. Neither is stored.
    """

    email: str
    step: Step
    reason: str
    attempts: int = 0
    retriable: bool = True
    next_attempt_at: datetime | None = None
    parked: bool = False
    outage: bool = False
    permanent: bool = False
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuthAccount:
    """An auth user as the admin API returns it (only what the worker needs)."""

    id: str
    email: str
    created_by_crm_sync: bool
    has_signed_in: bool
    email_confirmed: bool = True
    taken_over_by_crm_sync: bool = False
    credential_nonce: str = ""  # what its temporary password is derived from, with the email

    @property
    def owner_signed_in(self) -> bool:
        """Whether the customer has signed in. An account taken over in place (by crm-sync
        before version 0015 of the schema: its password replaced, its creator's other ways in
        kept) may have been signed in to by whoever created it, so its sign-in proves nothing;
        an account crm-sync created, also as a take-over, was signed in to by the customer."""
        in_place = self.taken_over_by_crm_sync and not self.created_by_crm_sync
        return self.has_signed_in and not in_place

    @property
    def resumable(self) -> bool:
        """Ours (created or taken over) from a cycle cut off before its owner signed in."""
        return (
            self.created_by_crm_sync or self.taken_over_by_crm_sync
        ) and not self.owner_signed_in


@dataclass(frozen=True, slots=True)
class ShardFigures:
    """One shard's figures for the mass-deactivation guard, as its cycle planned them."""

    active: int
    eligible: int
    deactivating: tuple[str, ...]  # the emails it plans to deactivate


@dataclass(frozen=True, slots=True)
class LayoutFigures:
    """The figures of every shard of a layout: how many shards reported, the sums over their
    latest figures, every shard's pending deactivations, and which of this shard's are ready
    (first planned before every other shard's latest snapshot)."""

    shards: int
    active: int
    eligible: int
    pending: int
    ready: frozenset[str]


@dataclass(frozen=True, slots=True)
class IdentityHolder:
    """An email Supabase Auth counts as taken because an identity (`provider`) of another
    account carries it, while that account's own email is another one."""

    user_id: str
    provider: str


@dataclass(frozen=True, slots=True)
class Enrolment:
    """One customer to enrol: the CRM customer and the account it is enrolled with."""

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
    outcome: EnrolOutcome
    credits_granted: int = 0
    credits_remaining: int | None = None
    welcome_email_sent: bool = False
    account_origin: AccountOrigin | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome not in (EnrolOutcome.REJECTED, EnrolOutcome.ERROR)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a welcome email gives a person to sign in with. Never logged, never stored.

    `kind` is `new_account` (with a temporary password or a setup link) or `credits_added`
    (an account the person already uses: no credentials at all).
    """

    kind: EmailKind
    temporary_password: str | None = field(default=None, repr=False)
    setup_link: str | None = field(default=None, repr=False)
