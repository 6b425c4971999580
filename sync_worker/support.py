"""Support commands about one customer: `crm-sync resend EMAIL` and `crm-sync status EMAIL`.

`resend` sends a customer's welcome email again on demand (it never arrived, a setup link
expired): under the lease and in the run history like any run, with the credentials a welcome
email would carry now (the same temporary password as before while they never signed in; the
"credits added" email once they have). `story` reads what is stored about one customer, so
support can answer "I never got my login" without reading logs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel, Field

from sync_worker.auth_admin import account_from
from sync_worker.clock import SYSTEM_CLOCK, Clock
from sync_worker.crm_text import normalise_email
from sync_worker.customers import CrmCustomer, EmailKind, Outcome
from sync_worker.display import printable
from sync_worker.errors import ConfigError
from sync_worker.lease import SyncLease
from sync_worker.runs import RunHistory
from sync_worker.services import LiveServices
from sync_worker.shards import parse_shard_label, shard_of
from sync_worker.stages import welcome_email_for
from sync_worker.supabase_api import SupabaseApi
from sync_worker.welcome_email import accepted
from sync_worker.work import CustomerWork

log = structlog.get_logger("crm_sync.support")


def customer_email(raw: str) -> str:
    """The normalised email a support command is about.

    Raises:
        ConfigError: it is not an email address (exit 2).
    """
    email, reason = normalise_email(raw)
    if email is None:
        raise ConfigError([f"EMAIL: {reason or 'is not an email address'}"])
    return email


def resend(
    live: LiveServices,
    raw_email: str,
    *,
    worker: str,
    run_id: str,
    ttl: int,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Sends the customer's welcome email again, under a lease paced by `clock` and in the
    run history; returns its kind.

    Raises:
        ConfigError: not an enrolled, active customer (exit 2; nothing was sent).
        LeaseHeld: another run holds the lease (exit 75).
        SupabaseError, MailError: a call failed (the run is recorded as failed).
    """
    email = customer_email(raw_email)
    options = live.options
    services = live.for_cycle(clock=clock)
    mailer = services.mailer
    if mailer is None:
        raise ConfigError(["EMAIL_BACKEND: is disabled, so no email can be re-sent"])
    # The lease of the customer's own shard, so no cycle of that shard acts on them meanwhile.
    count = options.shard[1]
    shard = (shard_of(email, count), count)
    lease = SyncLease(live.api, worker, ttl, shard=shard, clock=clock)
    history = RunHistory(live.api, worker, shard, masker=live.masker)
    with lease.held():
        history_id = history.start(run_id, clock.now())
        try:
            tracked = services.lookup_tracking([email]).get(email)
            if tracked is None:
                raise ConfigError([f"{email} is not an enrolled customer: nothing to re-send"])
            if not tracked.is_active:
                raise ConfigError([f"{email} was deactivated: nothing to re-send"])
            work = CustomerWork.tracked(CrmCustomer(email, name=tracked.full_name), tracked)
            message = welcome_email_for(options, services.provisioner, work)
            mailer.send(message)
            services.store.record_welcome_emails(
                [accepted(message, run_id, options.message_domain)]
            )
        except Exception as exc:
            history.finish(history_id, clock.now(), Outcome.FAILED, None, str(exc))
            raise
        finally:
            mailer.close()
        history.finish(
            history_id,
            clock.now(),
            Outcome.SUCCEEDED,
            None,
            counts={"resent": 1, "kind": message.kind},
        )
    log.info("welcome_email_resent", email=email, kind=message.kind)
    return message.kind


class SentWelcomeEmail(BaseModel):
    kind: EmailKind
    sent_at: datetime
    run_id: str | None = None
    message_id: str | None = None


class CustomerStory(BaseModel):
    """What is stored about one customer, from their account to their last email."""

    email: str
    account: dict[str, Any] | None = None  # who holds the email in Auth, and how
    tracking: dict[str, Any] | None = None  # enrolment, credits, activity
    welcome_emails: list[SentWelcomeEmail] = Field(default_factory=list)
    failure: dict[str, Any] | None = None


def story(api: SupabaseApi, raw_email: str) -> CustomerStory:
    """Reads one customer's story (see `CustomerStory`)."""
    email = customer_email(raw_email)
    holders = api.rpc("crm_sync_find_auth_account", {"p_email": email}, operation="find account")
    account = None
    if holders:
        holder = holders[0]  # the user whose email it is comes first
        found = account_from({**holder, "id": holder["user_id"]})
        account = {
            "user_id": found.id,
            "holds_it_as": "its email" if holder.get("via") == "user" else "an identity",
            "provider": holder.get("provider"),
            "email_confirmed_at": holder.get("email_confirmed_at"),
            "last_sign_in_at": holder.get("last_sign_in_at"),
            "created_by_crm_sync": found.created_by_crm_sync,
            "taken_over_by_crm_sync": found.taken_over_by_crm_sync,
        }
    columns = (
        "email,user_id,full_name,crm_lead_id,credits_remaining,is_active,deactivated_at,"
        "account_origin,welcome_email_status,welcome_email_kind,welcome_email_sent_at,"
        "created_at,last_sync_at"
    )
    tracking = next(
        iter(
            api.select("digital_resume_by_crm", columns, order=("email",), where={"email": email})
        ),
        None,
    )
    emails = [
        SentWelcomeEmail(**row)
        for row in api.select(
            "crm_sync_welcome_emails",
            "kind,sent_at,run_id,message_id",
            order=("sent_at", "id"),
            where={"email": email},
            operation="read welcome emails",
        )
    ]
    failure = next(
        iter(
            api.select(
                "crm_sync_failures",
                "step,reason,attempts,first_failed_at,last_failed_at,next_attempt_at,parked_at",
                order=("email",),
                where={"email": email},
            )
        ),
        None,
    )
    return CustomerStory(
        email=email, account=account, tracking=tracking, welcome_emails=emails, failure=failure
    )


def render_story(found: CustomerStory) -> str:
    """The story as plain lines; each line is escaped whole, so no stored value (a server's
    reply in a failure reason) can add a line or a terminal control of its own."""
    lines = [f"crm-sync status of {found.email}"]
    if found.account is None:
        lines.append("  account: none in Supabase Auth")
    else:
        a = found.account
        origin = (
            "taken over by crm-sync"
            if a["taken_over_by_crm_sync"]
            else "created by crm-sync"
            if a["created_by_crm_sync"]
            else "not crm-sync's"
        )
        lines.append(
            f"  account: {a['user_id']} (holds the address as {a['holds_it_as']},"
            f" {origin}); confirmed {a['email_confirmed_at'] or 'no'};"
            f" last sign-in {a['last_sign_in_at'] or 'never'}"
        )
    if found.tracking is None:
        lines.append("  enrolment: not enrolled")
    else:
        t = found.tracking
        state = "active" if t["is_active"] else f"deactivated at {t['deactivated_at']}"
        lines.append(
            f"  enrolment: {t['account_origin']} at {t['created_at']}, {state};"
            f" {t['credits_remaining']} credits; welcome email {t['welcome_email_status']}"
        )
    if not found.welcome_emails:
        lines.append("  welcome emails: none sent")
    for sent in found.welcome_emails:
        lines.append(
            f"  welcome email: {sent.kind} at {sent.sent_at:%Y-%m-%d %H:%M:%S} UTC,"
            f" run {sent.run_id or '-'}, Message-ID {sent.message_id or '-'}"
        )
    if found.failure is not None:
        f = found.failure
        state = "parked" if f["parked_at"] else f"retried after {f['next_attempt_at']}"
        lines.append(f"  failing: {f['step']} ({f['attempts']} attempts, {state}): {f['reason']}")
    return "\n".join(printable(line) for line in lines)


class HeldDeactivations(BaseModel):
    """The deactivations one run's tripped guard held back."""

    run_id: str
    shard: str  # the shard whose run held it back ("index/count")
    held_at: datetime
    emails: list[str]


def held_deactivations(api: SupabaseApi, *, runs: int = 5) -> list[HeldDeactivations]:
    """The held-back sets of the last `runs` runs whose guard tripped, newest first."""
    found: dict[str, HeldDeactivations] = {}
    for row in api.select(
        "crm_sync_held_deactivations",
        "run_id,shard,email,held_at",
        order=("held_at.desc", "run_id", "email"),
        operation="read held deactivations",
    ):
        held = found.get(row["run_id"])
        if held is None:
            if len(found) == runs:
                break
            held = found[row["run_id"]] = HeldDeactivations(
                run_id=row["run_id"], shard=row["shard"], held_at=row["held_at"], emails=[]
            )
        held.emails.append(row["email"])
    return list(found.values())


def render_held(sets: list[HeldDeactivations]) -> str:
    if not sets:
        return "No deactivations are held back."
    lines = []
    for held in sets:
        lines.append(
            f"run {held.run_id} (shard {held.shard}) at {held.held_at:%Y-%m-%d %H:%M:%S} UTC"
            " held back"
            f" {len(held.emails)} deactivations (approve: crm-sync deactivations --approve"
            f" {held.run_id}):"
        )
        lines.extend(f"  {email}" for email in sorted(held.emails))
    return "\n".join(printable(line) for line in lines)


def approved_set(api: SupabaseApi, run_id: str) -> tuple[frozenset[str], tuple[int, int]]:
    """The set a run held back, to approve, and the shard it belongs to (the approving run
    acts under that shard's lease, on that shard's customers).

    Raises:
        ConfigError: that run held nothing back (exit 2).
    """
    rows = list(
        api.select(
            "crm_sync_held_deactivations",
            "email,shard",
            order=("email",),
            where={"run_id": run_id},
            operation="read held deactivations",
        )
    )
    if not rows:
        raise ConfigError([f"run {run_id!r} held no deactivations back: nothing to approve"])
    return frozenset(row["email"] for row in rows), parse_shard_label(str(rows[0]["shard"]))
