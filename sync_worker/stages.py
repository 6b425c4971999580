"""The stages one customer goes through in a cycle, each over one `work.CustomerWork`: the
account (created, resumed or linked), the enrolment (one RPC per batch), the welcome email
(its credentials set right before it is sent, recorded once the server accepted it).

Each stage notes what it achieved, or the customer's failure, in the cycle's `CycleTally`;
one customer's failure never stops the others. `cycle` orders the stages.
"""

from __future__ import annotations

import structlog

from sync_worker.customers import CustomerFailure, Step
from sync_worker.errors import (
    Dependency,
    MailError,
    MailUnavailable,
    SupabaseError,
    SyncError,
    is_outage,
)
from sync_worker.options import CycleOptions
from sync_worker.plan import Provision
from sync_worker.ports import ENROL_BATCH_SIZE, CycleServices, Provisioner
from sync_worker.progress import ProgressReporter
from sync_worker.provision import issue_credentials, provision_account
from sync_worker.sent_emails import SentEmailRecorder
from sync_worker.settle import CycleTally
from sync_worker.welcome_email import WelcomeEmail, accepted, compose
from sync_worker.work import CustomerWork

__all__ = [
    "account",
    "deactivate",
    "enrol",
    "failure_of",
    "send_welcome_emails",
    "stopping",
    "welcome_email_for",
]

log = structlog.get_logger("crm_sync.cycle")


def account(
    options: CycleOptions, services: CycleServices, tally: CycleTally, entry: Provision
) -> CustomerWork | None:
    """The account stage: the customer's account, or None (failed, or the cycle stopped)."""
    if stopping(services, tally):
        return None
    try:
        ready = provision_account(
            services.provisioner, entry.customer, options.credentials_mode, options.credential_key
        )
    except SyncError as exc:
        log.warning("account_failed", email=entry.email, error=str(exc))
        # Noted as it happens, so that a run of outages stops the tasks still queued.
        tally.fail(failure_of(services, entry.email, Step.ACCOUNT, exc))
        return None
    tally.account_ready(entry.email, ready.origin)
    log.info("account_ready", email=entry.email, origin=ready.origin.value)
    return CustomerWork(entry.customer).with_account(ready.account.id, ready.origin, ready.password)


def enrol(
    options: CycleOptions, services: CycleServices, works: list[CustomerWork], tally: CycleTally
) -> list[CustomerWork]:
    """The enrolment stage, `ENROL_BATCH_SIZE` per call; returns the customers enrolled. Each
    call commits on its own, so a refused call fails only the customers it carried. Skipped
    once Supabase is down; a mail server that is down stops the emails, not the enrolments."""
    enrolled: list[CustomerWork] = []
    for start in range(0, len(works), ENROL_BATCH_SIZE):
        if tally.aborted is not None and tally.aborted.dependency is Dependency.SUPABASE:
            break
        chunk = {work.email: work for work in works[start : start + ENROL_BATCH_SIZE]}
        try:
            results = services.store.enrol(
                [w.as_enrolment() for w in chunk.values()], options.initial_credits
            )
        except SupabaseError as exc:
            if exc.retriable:
                tally.abort(Dependency.SUPABASE, f"enrolment: {exc}")
            for email in chunk:
                tally.fail(failure_of(services, email, Step.ENROL, exc), in_a_row=False)
            continue
        for result in results:
            if not result.ok:
                log.warning("enrolment_refused", email=result.email, error=result.error)
                reason = f"{result.outcome.value}: {result.error}"
                tally.fail(failure_of(services, result.email, Step.ENROL, reason), in_a_row=False)
                continue
            tally.enrolment(result)
            log.info(
                "customer_enrolled",
                email=result.email,
                outcome=result.outcome.value,
                credits_granted=result.credits_granted,
            )
            enrolled.append(chunk[result.email].enrolled(result))
    return enrolled


def send_welcome_emails(
    options: CycleOptions,
    services: CycleServices,
    works: list[CustomerWork],
    tally: CycleTally,
    progress: ProgressReporter | None = None,
) -> None:
    """The email stage: each welcome email owed, sent once, recorded only after the server
    accepted it (in the background, while the next ones are sent)."""
    owed = [work for work in works if work.owes_email]
    mailer = services.mailer
    if not owed or mailer is None or tally.aborted is not None:
        return
    with SentEmailRecorder(services.store.record_welcome_emails) as recorder:
        services.on_recorder(recorder)
        for work in owed:
            if stopping(services, tally):
                break
            if progress is not None:
                progress.advance()
            try:
                message = welcome_email_for(options, services.provisioner, work)
                mailer.send(message)
            except MailUnavailable as exc:
                # Every later message would fail too; they stay owed for the next cycle.
                tally.abort(Dependency.MAIL, str(exc))
                log.error("mail_unavailable", error=str(exc))
                break
            except (MailError, SupabaseError) as exc:
                log.warning("welcome_email_failed", email=work.email, error=str(exc))
                tally.fail(failure_of(services, work.email, Step.EMAIL, exc))
                continue
            recorder.add(accepted(message, tally.run_id, options.message_domain))
    for (email, kind, *_), error in recorder.results:
        if error is not None:
            # Sent but not recorded: the next cycle sends again (better twice than never).
            log.error("welcome_email_not_recorded", email=email, error=str(error))
            tally.fail(failure_of(services, email, Step.RECORD_EMAIL, error))
            continue
        tally.email_recorded(email)
        log.info("welcome_email_sent", email=email, kind=kind)


def welcome_email_for(
    options: CycleOptions, provisioner: Provisioner, work: CustomerWork
) -> WelcomeEmail:
    """One customer's welcome email with the credentials it carries now (set on the account
    right before it is sent).

    Raises:
        SupabaseError: the Auth API failed (after retries).
    """
    if work.user_id is None or work.origin is None:
        raise ValueError(f"{work.email} has no account to write about yet")
    credentials = issue_credentials(
        provisioner,
        email=work.email,
        user_id=work.user_id,
        origin=work.origin,
        mode=options.credentials_mode,
        fresh_password=work.password,
        setup_url=options.setup_url or options.login_url,
        key=options.credential_key,
        setup_link_reuse_seconds=options.setup_link_reuse_seconds,
        just_created=work.just_created,
    )
    return compose(
        to=work.email,
        name=work.name,
        credentials=credentials,
        credits=work.credits,
        login_url=options.login_url,
        password_reset_url=options.password_reset_url,
        initial_credits=options.initial_credits,
        digest_key=options.credential_key,
    )


def deactivate(services: CycleServices, emails: list[str], tally: CycleTally) -> None:
    """Marks customers who are no longer eligible as inactive (nothing is deleted)."""
    if not emails or stopping(services, tally):
        return
    try:
        deactivated = services.store.deactivate(emails)
    except SupabaseError as exc:
        for email in emails:
            tally.fail(failure_of(services, email, Step.DEACTIVATE, exc), in_a_row=False)
        return
    tally.deactivated(deactivated)
    for email in deactivated:
        log.info("customer_deactivated", email=email)


def stopping(services: CycleServices, tally: CycleTally) -> bool:
    """Whether to skip the work in hand: a dependency is down, or a stop was asked for."""
    return tally.stopping(services.should_stop)


def failure_of(
    services: CycleServices, email: str, step: Step, error: SyncError | str
) -> CustomerFailure:
    """One customer's failure as the domain records it (its reason is stored: masked)."""
    if isinstance(error, str):
        return CustomerFailure(email, step, services.masker.mask_text(error))
    return CustomerFailure(
        email,
        step,
        services.masker.mask_text(str(error)),
        retriable=bool(getattr(error, "retriable", True)),
        outage=is_outage(error),
        permanent=bool(getattr(error, "permanent", False)),
    )
