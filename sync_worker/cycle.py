"""One sync cycle: read the CRM, plan, provision accounts, enrol, email, deactivate, report.

`run_cycle` is the single entry point used by the daemon, `--once` and `--dry-run`. Each
customer's failure is recorded and retried in a later cycle; it never stops the others. A
dependency that is down aborts the cycle (exit 69) without counting against customers.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

import structlog

from sync_worker.config import CredentialsMode, Settings
from sync_worker.customers import (
    AccountOrigin,
    AuthAccount,
    CrmCustomer,
    FailureState,
    TrackedCustomer,
)
from sync_worker.errors import (
    DependencyUnavailable,
    ExitCode,
    MailError,
    MailUnavailable,
    SupabaseError,
    SyncError,
)
from sync_worker.mailers import Mailer
from sync_worker.plan import Action, CustomerStep, SyncPlan, make_plan, next_attempt_delay
from sync_worker.progress import ProgressReporter
from sync_worker.provision import AccountExists, Provisioner, new_temporary_password
from sync_worker.record import Enrolment, EnrolmentResult, EnrolmentStore, FailureRecord
from sync_worker.report import CycleReport, FailureLine, InvalidLine
from sync_worker.source import CrmSnapshot
from sync_worker.welcome_email import WelcomeEmail

log = structlog.get_logger("crm_sync.cycle")
S = TypeVar("S")

# After this many customers in a row fail for a reason that says "the service is down", the
# cycle stops: the rest would fail the same way, and their attempt counts would suffer for it.
OUTAGE_THRESHOLD = 5


@dataclass
class CycleServices:
    """The cycle's collaborators: adapters at the edges, a clock, a stop flag."""

    read_crm: Callable[[], CrmSnapshot]
    load_tracking: Callable[[], dict[str, TrackedCustomer]]
    load_failures: Callable[[], dict[str, FailureState]]
    provisioner: Provisioner
    store: EnrolmentStore
    mailer: Mailer
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class _Provisioned:
    customer: CrmCustomer
    account: AuthAccount
    origin: AccountOrigin
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class _OwedEmail:
    email: str
    user_id: str
    origin: AccountOrigin
    name: str | None
    credits: int


@dataclass
class _Outcomes:
    """What happened to whom in this cycle (mutable while the cycle runs)."""

    created: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    enrolled: dict[str, EnrolmentResult] = field(default_factory=dict)
    emailed: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    failed: dict[str, tuple[str, SyncError | str]] = field(default_factory=dict)
    aborted: DependencyUnavailable | None = None
    consecutive_outage: int = 0
    interrupted: bool = False

    def fail(self, email: str, step: str, error: SyncError | str) -> None:
        self.failed[email] = (step, error)
        self.consecutive_outage = self.consecutive_outage + 1 if _is_outage(error) else 0
        if self.consecutive_outage >= OUTAGE_THRESHOLD and self.aborted is None:
            self.aborted = DependencyUnavailable("Supabase", str(error))

    def succeed(self) -> None:
        self.consecutive_outage = 0

    def stopping(self, services: CycleServices) -> bool:
        """Whether to skip the work in hand because a stop was asked for (and note it)."""
        if services.should_stop():
            self.interrupted = True
        return self.interrupted


def _is_outage(error: SyncError | str) -> bool:
    """A failure that says "the service is down" rather than anything about the customer:
    no connection, a timeout, 429, or a 5xx after retries."""
    if not isinstance(error, SupabaseError) or not error.retriable:
        return False
    return error.status in (None, 0, 429) or (error.status or 0) >= 500


def run_cycle(
    settings: Settings,
    services: CycleServices,
    *,
    dry_run: bool = False,
    run_id: str | None = None,
) -> CycleReport:
    """Runs one cycle and reports what it did; never raises for one customer's failure.

    Raises:
        DependencyUnavailable: the CRM or Supabase could not be read at the start.
        CrmSourceError: the CRM table or columns are wrong.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    started = services.clock()
    began = time.monotonic()
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        log.info("cycle_started", dry_run=dry_run)
        snapshot = services.read_crm()
        tracked = _read_state("tracking rows", services.load_tracking)
        failures = _read_state("failures", services.load_failures)
        plan = make_plan(snapshot.customers, tracked, failures, started)
        report = CycleReport.begin(run_id, started, dry_run, snapshot, plan)
        for row in snapshot.invalid:
            log.warning("crm_row_invalid", email=row.raw_email, reason=row.reason)
        if dry_run:
            report.finish(services.clock(), time.monotonic() - began, plan_preview=plan)
            log.info("cycle_finished", **report.log_fields())
            return report
        outcomes = _Outcomes()
        try:
            _execute(settings, services, plan, outcomes)
        finally:
            services.mailer.close()
        _record_failures(settings, services, plan, outcomes)
        report.apply(
            created=outcomes.created,
            linked=outcomes.linked,
            enrolled=outcomes.enrolled,
            emailed=outcomes.emailed,
            deactivated=outcomes.deactivated,
            failures=_failure_lines(outcomes),
            aborted=outcomes.aborted,
        )
        report.interrupted = outcomes.interrupted
        report.finish(services.clock(), time.monotonic() - began)
        log.info("cycle_finished", **report.log_fields())
        return report


def _read_state(what: str, load: Callable[[], dict[str, S]]) -> dict[str, S]:
    try:
        return load()
    except SupabaseError as exc:
        raise DependencyUnavailable("Supabase", f"reading {what}: {exc}") from exc


def _execute(
    settings: Settings, services: CycleServices, plan: SyncPlan, outcomes: _Outcomes
) -> None:
    provisioned = _provision_accounts(settings, services, plan.of(Action.PROVISION), outcomes)
    enrolments = [Enrolment(p.customer, p.account.id, p.origin) for p in provisioned.values()]
    for step in plan.of(Action.REACTIVATE, Action.REFRESH, Action.RESUME_EMAIL):
        assert step.customer is not None
        assert step.tracked is not None
        if step.action is not Action.RESUME_EMAIL:
            enrolments.append(
                Enrolment(step.customer, step.tracked.user_id, step.tracked.account_origin)
            )
    # Enrolment runs even when asked to stop: the accounts created so far are enrolled in one
    # short call rather than left for the next run to find again.
    if outcomes.aborted is None:
        _enrol(settings, services, enrolments, outcomes)
    if outcomes.aborted is None:
        _send_welcome_emails(settings, services, plan, provisioned, outcomes)
    if outcomes.aborted is None:
        _deactivate(services, plan, outcomes)


def _provision_accounts(
    settings: Settings, services: CycleServices, steps: list[CustomerStep], outcomes: _Outcomes
) -> dict[str, _Provisioned]:
    """Creates (or finds and links) the account of each new customer, SYNC_CONCURRENCY at a
    time."""
    done: dict[str, _Provisioned] = {}
    if not steps:
        return done
    progress = ProgressReporter(len(steps), "provisioning accounts")

    def one(step: CustomerStep) -> tuple[CustomerStep, _Provisioned | SyncError | None]:
        if outcomes.aborted is not None or outcomes.stopping(services):
            return step, None
        assert step.customer is not None
        try:
            return step, _provision_one(settings, services.provisioner, step.customer)
        except SyncError as exc:
            return step, exc

    # Each task runs in a copy of this thread's context, so its log lines (retries) carry the
    # run id too.
    tasks = [(contextvars.copy_context(), step) for step in steps]
    with progress, ThreadPoolExecutor(max_workers=settings.sync_concurrency) as pool:
        for step, result in pool.map(lambda task: task[0].run(one, task[1]), tasks):
            progress.advance()
            if result is None:
                continue
            if isinstance(result, SyncError):
                log.warning("account_failed", email=step.email, error=str(result))
                outcomes.fail(step.email, "account", result)
                continue
            outcomes.succeed()
            done[step.email] = result
            (
                outcomes.created if result.origin is AccountOrigin.CREATED else outcomes.linked
            ).append(step.email)
            log.info("account_ready", email=step.email, origin=result.origin.value)
    return done


def _provision_one(
    settings: Settings, provisioner: Provisioner, customer: CrmCustomer
) -> _Provisioned:
    password = (
        new_temporary_password()
        if settings.credentials_mode is CredentialsMode.TEMPORARY_PASSWORD
        else None
    )
    try:
        account = provisioner.create_account(customer, password)
        return _Provisioned(customer, account, AccountOrigin.CREATED, password)
    except AccountExists:
        pass
    account_or_none = provisioner.find_account(customer.email)
    if account_or_none is None:
        # Taken a moment ago and gone now, or the list is behind: try again next cycle.
        raise SupabaseError(
            "the email is registered but its account was not found", status=422, retriable=True
        )
    if account_or_none.created_by_crm_sync and not account_or_none.has_signed_in:
        # Ours, from a cycle cut off before enrolment: resume it; its credentials are set
        # right before the email.
        return _Provisioned(customer, account_or_none, AccountOrigin.CREATED)
    return _Provisioned(customer, account_or_none, AccountOrigin.LINKED)


def _enrol(
    settings: Settings,
    services: CycleServices,
    enrolments: list[Enrolment],
    outcomes: _Outcomes,
) -> None:
    if not enrolments:
        return
    try:
        results = services.store.enrol(enrolments, settings.initial_credits)
    except SupabaseError as exc:
        if exc.retriable:
            outcomes.aborted = DependencyUnavailable("Supabase", f"enrolment: {exc}")
        for enrolment in enrolments:
            outcomes.failed[enrolment.customer.email] = ("enrol", exc)
        return
    for result in results:
        if result.ok:
            outcomes.enrolled[result.email] = result
            log.info(
                "customer_enrolled",
                email=result.email,
                outcome=result.outcome,
                credits_granted=result.credits_granted,
            )
        else:
            log.warning("enrolment_refused", email=result.email, error=result.error)
            outcomes.failed[result.email] = ("enrol", f"{result.outcome}: {result.error}")


def _send_welcome_emails(
    settings: Settings,
    services: CycleServices,
    plan: SyncPlan,
    provisioned: dict[str, _Provisioned],
    outcomes: _Outcomes,
) -> None:
    """Sends each welcome email that is still owed, once; records it only after acceptance."""
    owed: list[_OwedEmail] = []
    names = {s.email: s.customer.name for s in plan.steps if s.customer is not None}
    for email, result in outcomes.enrolled.items():
        if result.welcome_email_status == "pending" and result.user_id:
            owed.append(
                _OwedEmail(
                    email,
                    result.user_id,
                    result.account_origin or AccountOrigin.CREATED,
                    names.get(email),
                    result.credits_remaining or 0,
                )
            )
    for step in plan.of(Action.RESUME_EMAIL):
        assert step.tracked is not None
        owed.append(
            _OwedEmail(
                step.email,
                step.tracked.user_id,
                step.tracked.account_origin,
                step.customer.name if step.customer else step.tracked.full_name,
                step.tracked.credits_remaining,
            )
        )
    if not owed or settings.email_backend == "disabled":
        return
    progress = ProgressReporter(len(owed), "sending welcome emails")
    # Each accepted email is recorded at once, by a small pool, while the next one is sent:
    # the record's round trip to Supabase would otherwise set the pace of the whole phase.
    recording: list[tuple[str, str, Future[bool]]] = []
    with progress, ThreadPoolExecutor(max_workers=settings.sync_concurrency) as recorder:
        for item in owed:
            email = item.email
            if outcomes.aborted is not None or outcomes.stopping(services):
                break
            progress.advance()
            fresh = provisioned.get(email)
            try:
                message = _welcome_email(
                    settings, services.provisioner, item, fresh.password if fresh else None
                )
                services.mailer.send(message)
            except MailUnavailable as exc:
                # Every later message would fail too; they stay owed for the next cycle.
                outcomes.aborted = DependencyUnavailable("mail", str(exc))
                log.error("mail_unavailable", error=str(exc))
                break
            except (MailError, SupabaseError) as exc:
                log.warning("welcome_email_failed", email=email, error=str(exc))
                outcomes.fail(email, "email", exc)
                continue
            future = recorder.submit(
                contextvars.copy_context().run,
                services.store.record_welcome_email,
                email,
                message.kind,
            )
            recording.append((email, message.kind, future))
    for email, kind, future in recording:
        try:
            future.result()
        except SupabaseError as exc:
            # Sent but not recorded: the next cycle sends again (better twice than never).
            log.error("welcome_email_not_recorded", email=email, error=str(exc))
            outcomes.fail(email, "record_email", exc)
            continue
        outcomes.succeed()
        outcomes.emailed.append(email)
        log.info("welcome_email_sent", email=email, kind=kind)


def _welcome_email(
    settings: Settings, provisioner: Provisioner, owed: _OwedEmail, fresh_password: str | None
) -> WelcomeEmail:
    email, user_id = owed.email, owed.user_id
    kind: Literal["new_account", "credits_added"] = (
        "new_account" if owed.origin is AccountOrigin.CREATED else "credits_added"
    )
    password: str | None = None
    link: str | None = None
    if kind == "new_account":
        if settings.credentials_mode is CredentialsMode.SETUP_LINK:
            link = provisioner.setup_link(email)
        elif fresh_password is not None:
            password = fresh_password
        elif provisioner.get_account(user_id).has_signed_in:
            # They already have working credentials: never reset a used account's password.
            kind = "credits_added"
        else:
            # A retried email carries a password that works: set a new one right before.
            password = new_temporary_password()
            provisioner.set_temporary_password(user_id, password)
    return WelcomeEmail(
        to=email,
        name=owed.name,
        kind=kind,
        login_url=settings.app_login_url,
        credits=owed.credits,
        temporary_password=password,
        setup_link=link,
        credits_granted=settings.initial_credits if kind == "credits_added" else None,
    )


def _deactivate(services: CycleServices, plan: SyncPlan, outcomes: _Outcomes) -> None:
    emails = [s.email for s in plan.of(Action.DEACTIVATE)]
    if not emails or outcomes.stopping(services):
        return
    try:
        outcomes.deactivated = services.store.deactivate(emails)
    except SupabaseError as exc:
        for email in emails:
            outcomes.failed[email] = ("deactivate", exc)
    for email in outcomes.deactivated:
        log.info("customer_deactivated", email=email)


def _record_failures(
    settings: Settings, services: CycleServices, plan: SyncPlan, outcomes: _Outcomes
) -> None:
    """Stores this cycle's failures (attempts, next attempt, parked) and clears the failures of
    customers who are now done."""
    now = services.clock()
    previous = {s.email: s.failure for s in plan.steps if s.failure is not None}
    nothing_left = {s.email for s in plan.of(Action.NOTHING)}
    records: list[FailureRecord] = []
    for email, (step, error) in outcomes.failed.items():
        if outcomes.aborted is not None and _is_outage(error):
            # The service was down, not the customer's case: no attempt is counted against
            # them, and they are simply tried again next cycle.
            continue
        before = previous.get(email)
        attempts = (before.attempts if before else 0) + 1
        retriable = not isinstance(error, SyncError) or getattr(error, "retriable", True)
        parked = attempts >= settings.sync_max_attempts
        records.append(
            FailureRecord(
                email=email,
                step=step,
                reason=str(error)[:1000],
                attempts=attempts,
                retriable=bool(retriable),
                next_attempt_at=None if parked else now + next_attempt_delay(attempts),
                parked=parked,
            )
        )
    cleared = [
        email
        for email in previous
        if email not in outcomes.failed and (email in nothing_left or _is_done(email, outcomes))
    ]
    # Failures of emails that left the CRM before they were ever enrolled concern nobody now.
    cleared += list(plan.stale_failures)
    try:
        services.store.record_failures(records, now)
        services.store.clear_failures(cleared)
    except SupabaseError as exc:
        log.error("failures_not_recorded", error=str(exc), count=len(records))


def _is_done(email: str, outcomes: _Outcomes) -> bool:
    if email in outcomes.emailed or email in outcomes.deactivated:
        return True
    result = outcomes.enrolled.get(email)
    return result is not None and result.welcome_email_status == "sent"


def _failure_lines(outcomes: _Outcomes) -> Iterable[FailureLine]:
    for email, (step, error) in sorted(outcomes.failed.items()):
        yield FailureLine(email=email, step=step, reason=str(error))


def exit_code_of(report: CycleReport) -> ExitCode:
    """Maps a report to the exit codes of a one-off run (DESIGN.md)."""
    if report.aborted:
        return ExitCode.UNAVAILABLE
    if report.failures or report.interrupted:
        # Not everyone was served in this cycle; the next one retries them.
        return ExitCode.CUSTOMERS_FAILED
    return ExitCode.OK


__all__ = ["CycleServices", "InvalidLine", "exit_code_of", "run_cycle"]
