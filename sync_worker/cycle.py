"""One sync cycle as a thin phase runner: read, plan, provision, enrol, email, deactivate,
settle, record. It sequences the I/O and passes values on; what to do is decided by the pure
`plan.make_plan`, and what to record by the pure `settle.settle`.

`run_cycle` is the single entry point used by the daemon, `--once` and `--dry-run`. Each
customer's failure is recorded and retried in a later cycle; it never stops the others. A
dependency that is down aborts the cycle (exit 69) without counting against customers.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from sync_worker.customers import (
    AccountOrigin,
    CredentialsMode,
    CrmCustomer,
    CrmGroup,
    CustomerFailure,
    Enrolment,
    EnrolmentResult,
    InvalidCrmRow,
    LayoutFigures,
    Step,
    TrackedCustomer,
    shard_label,
    shard_of,
)
from sync_worker.errors import (
    DependencyUnavailable,
    KeyRefused,
    MailError,
    MailUnavailable,
    SupabaseError,
    SyncError,
    is_outage,
)
from sync_worker.mailers import Mailer
from sync_worker.masking import SecretMasker
from sync_worker.plan import (
    Action,
    CustomerStep,
    PlanBuilder,
    SyncPlan,
    deactivation_guard,
    shard_figures,
)
from sync_worker.progress import ProgressReporter
from sync_worker.provision import (
    ProvisionedAccount,
    Provisioner,
    issue_credentials,
    provision_account,
)
from sync_worker.record import ENROL_BATCH_SIZE, EnrolmentStore, SentEmail
from sync_worker.report import CycleReport
from sync_worker.sent_emails import SentEmailRecorder
from sync_worker.settle import OUTAGE_THRESHOLD, CycleTally, Settlement, settle
from sync_worker.welcome_email import WelcomeEmail, compose, message_id

log = structlog.get_logger("crm_sync.cycle")
# New accounts are enrolled and emailed in batches of this many per concurrent call (at least
# MIN_BATCH): one enrolment call per batch, and the last batch is delivered after the last
# account, so small batches keep the tail short.
BATCH_PER_WORKER = 2
MIN_BATCH = 32
# At most this many batches wait for (or are in) delivery while accounts are created.
BATCHES_AHEAD = 2
S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CycleOptions:
    """What a cycle reads of the configuration (built from `Settings` at the edge)."""

    login_url: str = ""
    password_reset_url: str = ""
    setup_url: str = ""  # the app's page that redeems a setup link
    # Derives temporary passwords (CREDENTIALS_SECRET); never shown.
    credential_key: bytes = field(default=b"", repr=False)
    setup_link_reuse_seconds: int = 1800
    message_domain: str = "crm-sync.localhost"  # the sender's (`sender_domain`), for Message-IDs
    # `crm-sync deactivations --approve RUN_ID`: deactivate exactly this held-back set (those of
    # it still not eligible), and nobody else this run.
    approved_deactivations: frozenset[str] | None = None
    initial_credits: int = 4
    credentials_mode: CredentialsMode = CredentialsMode.TEMPORARY_PASSWORD
    send_email: bool = True
    concurrency: int = 8
    max_attempts: int = 8
    outage_threshold: int = OUTAGE_THRESHOLD
    deactivation_limit: int = 10
    deactivation_max_percent: float = 10.0
    allow_mass_deactivation: bool = False
    shard: tuple[int, int] = (0, 1)  # (index, count): this worker's share of the customers


@dataclass
class CycleServices:
    """The cycle's collaborators: adapters at the edges, a clock, a stop flag."""

    read_crm: Callable[[], Iterable[CrmGroup | CrmCustomer]]  # in email order
    stream_tracking: Callable[[], Iterable[TrackedCustomer]]  # in email order
    lookup_tracking: Callable[[Sequence[str]], Mapping[str, TrackedCustomer]]
    load_failures: Callable[[], dict[str, CustomerFailure]]
    provisioner: Provisioner
    store: EnrolmentStore
    mailer: Mailer
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    should_stop: Callable[[], bool] = lambda: False
    # Told of the recorder of accepted emails while it is open (None once it closed), so that
    # a shutdown past its grace can record what it holds (`shutdown.cut_off`).
    on_recorder: Callable[[SentEmailRecorder | None], None] = lambda recorder: None
    masker: SecretMasker = field(default_factory=SecretMasker)  # failure reasons are stored masked


@dataclass(frozen=True, slots=True)
class _OwedEmail:
    email: str
    user_id: str
    origin: AccountOrigin
    name: str | None
    credits: int


def run_cycle(
    options: CycleOptions,
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
        failures = _read_state("failures", services.load_failures)
        index, count = options.shard
        builder = PlanBuilder(
            _reading("tracking rows", services.stream_tracking()),
            failures,
            started,
            owns=lambda email: shard_of(email, count) == index,
        )
        for item in services.read_crm():
            if isinstance(item, CrmGroup):
                builder.add_group(item)
            else:
                builder.add_customer(item)
        aside = sorted(builder.set_aside)
        plan = builder.finish(
            _read_state("tracking rows", lambda: services.lookup_tracking(aside)) if aside else {}
        )
        report = CycleReport.begin(run_id, started, dry_run, builder.tally, plan)
        guard = deactivation_guard(
            plan,
            limit=options.deactivation_limit,
            max_percent=options.deactivation_max_percent,
            shard_count=count,
            layout=_layout_figures(
                options, services, plan, run_id=run_id, started=started, dry_run=dry_run
            ),
        )
        # An operator approved exactly this set (`deactivations --approve`), or the guard lets
        # through only part of the plan, or all of it (None).
        only = options.approved_deactivations
        if only is not None or options.allow_mass_deactivation:
            pass
        elif guard.held:
            log.warning("deactivation_held_back", reason=guard.held)
            report.deactivation_blocked = guard.held
            if not dry_run:
                _hold_deactivations(services, plan, run_id, options.shard)
        else:
            only = guard.only
            if guard.deferred:
                log.info("deactivation_deferred", reason=guard.deferred)
                report.deactivation_deferred = guard.deferred
        for row in _newly_invalid(options, services, builder.tally.invalid, dry_run):
            log.warning("crm_row_invalid", email=row.raw_email, reason=row.reason)
        if dry_run:
            report.finish(services.clock(), time.monotonic() - began, plan_preview=plan)
            log.info("cycle_finished", **report.log_fields())
            return report
        tally = CycleTally(outage_threshold=options.outage_threshold, run_id=run_id)
        try:
            _new_customers_phase(options, services, plan, tally)
            _existing_customers_phase(options, services, plan, tally)
            if report.deactivation_blocked is None:
                _deactivate_phase(services, plan, tally, only)
        finally:
            services.mailer.close()
        settlement = settle(plan, tally, services.clock(), options.max_attempts)
        _store_settlement(services.store, settlement)
        report.apply(tally, settlement)
        report.finish(services.clock(), time.monotonic() - began)
        log.info("cycle_finished", **report.log_fields())
        return report


def _layout_figures(
    options: CycleOptions,
    services: CycleServices,
    plan: SyncPlan,
    *,
    run_id: str,
    started: datetime,
    dry_run: bool,
) -> LayoutFigures | None:
    """A shard's figures recorded (not in a dry run) and its layout's read; None unsharded,
    or when they cannot be had (the guard then defers, and says so)."""
    if options.shard[1] <= 1:
        return None
    try:
        return services.store.layout_figures(
            options.shard, run_id, shard_figures(plan), started, record=not dry_run
        )
    except SupabaseError as exc:
        log.warning("shard_figures_unavailable", error=str(exc))
        return None


@contextmanager
def _reading_supabase(what: str) -> Iterator[None]:
    """A read the cycle cannot start without: Supabase failing it means Supabase is down (a
    refused key stays a configuration error)."""
    try:
        yield
    except KeyRefused:
        raise
    except SupabaseError as exc:
        raise DependencyUnavailable("Supabase", f"reading {what}: {exc}") from exc


def _reading(what: str, rows: Iterable[T]) -> Iterator[T]:
    """A stream read from Supabase, read under `_reading_supabase`."""
    with _reading_supabase(what):
        yield from rows


def _read_state(what: str, load: Callable[[], Mapping[str, S]]) -> Mapping[str, S]:
    with _reading_supabase(what):
        return load()


def _failure(
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


def _stopping(services: CycleServices, tally: CycleTally) -> bool:
    """Whether to skip the work in hand: a dependency is down, or a stop was asked for."""
    return tally.stopping(services.should_stop)


def _new_customers_phase(
    options: CycleOptions, services: CycleServices, plan: SyncPlan, tally: CycleTally
) -> None:
    """Creates (or finds and links) the accounts of new customers, `concurrency` at a time
    without a pause; a second thread enrols and emails them in batches as they become ready,
    so the emails cost no time of their own and one slow account holds back nobody."""
    steps = plan.of(Action.PROVISION)
    if not steps:
        return
    size = max(options.concurrency * BATCH_PER_WORKER, MIN_BATCH)
    progress = ProgressReporter(len(steps), "provisioning new customers")
    with (
        progress,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-sync-deliver") as delivery,
    ):
        deliveries: deque[Future[None]] = deque()
        ready: dict[str, ProvisionedAccount] = {}
        for provisioned in _provision_accounts(options, services, steps, tally, progress):
            if provisioned is not None:
                ready[provisioned.customer.email] = provisioned
            if len(ready) >= size:
                if len(deliveries) >= BATCHES_AHEAD:
                    # A slow mail server holds creation back: memory stays flat, and a run
                    # killed meanwhile leaves few accounts without their email.
                    deliveries.popleft().result()
                deliveries.append(_hand_over(delivery, options, services, ready, tally))
                ready = {}
        if ready:
            deliveries.append(_hand_over(delivery, options, services, ready, tally))
        for delivered in deliveries:
            delivered.result()


def _hand_over(
    delivery: ThreadPoolExecutor,
    options: CycleOptions,
    services: CycleServices,
    ready: dict[str, ProvisionedAccount],
    tally: CycleTally,
) -> Future[None]:
    """Queues one batch of ready accounts for enrolment and their emails (in a copy of this
    thread's context, so its log lines carry the run id)."""
    return delivery.submit(
        contextvars.copy_context().run, _deliver, options, services, ready, tally
    )


def _provision_accounts(
    options: CycleOptions,
    services: CycleServices,
    steps: list[CustomerStep],
    tally: CycleTally,
    progress: ProgressReporter,
) -> Iterator[ProvisionedAccount | None]:
    """New customers' accounts, `concurrency` at a time, each as soon as it is ready (None for
    a customer who failed or was skipped). At most two per worker are queued ahead, so memory
    does not grow with the number of new customers; none are queued once the cycle stops."""

    def one(step: CustomerStep) -> ProvisionedAccount | None:
        if _stopping(services, tally):
            return None
        assert step.customer is not None
        try:
            result = provision_account(
                services.provisioner,
                step.customer,
                options.credentials_mode,
                options.credential_key,
            )
        except SyncError as exc:
            log.warning("account_failed", email=step.email, error=str(exc))
            # Noted as it happens, so that a run of outages stops the tasks still queued.
            tally.fail(_failure(services, step.email, Step.ACCOUNT, exc))
            return None
        tally.account_ready(step.email, result.origin)
        log.info("account_ready", email=step.email, origin=result.origin.value)
        return result

    queued = iter(steps)
    ahead = options.concurrency * 2
    with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        pending: set[Future[ProvisionedAccount | None]] = set()
        while True:
            while len(pending) < ahead and not _stopping(services, tally):
                step = next(queued, None)
                if step is None:
                    break
                # Each task runs in a copy of this thread's context, so its log lines
                # (retries) carry the run id too.
                pending.add(pool.submit(contextvars.copy_context().run, one, step))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for finished in done:
                progress.advance()
                yield finished.result()


def _deliver(
    options: CycleOptions,
    services: CycleServices,
    provisioned: dict[str, ProvisionedAccount],
    tally: CycleTally,
) -> None:
    """Enrols one batch of new accounts and sends their welcome emails.

    Enrolment runs even when a stop was asked for or the mail server is down: the accounts
    created so far are enrolled in one short call rather than left for the next run to find
    again.
    """
    enrolments = [
        Enrolment(p.customer, p.account.id, p.origin) for _, p in sorted(provisioned.items())
    ]
    results = _enrol(options, services, enrolments, tally)
    names = {email: p.customer.name for email, p in provisioned.items()}
    _send(options, services, _owed_from(results, names), provisioned, tally, progress=None)


def _existing_customers_phase(
    options: CycleOptions, services: CycleServices, plan: SyncPlan, tally: CycleTally
) -> None:
    """Reactivates and refreshes enrolled customers, and sends the welcome emails still owed
    from earlier cycles."""
    enrolments = []
    for step in plan.of(Action.REACTIVATE, Action.REFRESH):
        assert step.customer is not None
        assert step.tracked is not None
        enrolments.append(
            Enrolment(step.customer, step.tracked.user_id, step.tracked.account_origin)
        )
    names = {s.email: s.customer.name for s in plan.steps if s.customer is not None}
    owed = _owed_from(_enrol(options, services, enrolments, tally), names)
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
    if owed:
        progress = ProgressReporter(len(owed), "sending welcome emails")
        with progress:
            _send(options, services, owed, {}, tally, progress=progress)


def _enrol(
    options: CycleOptions,
    services: CycleServices,
    enrolments: list[Enrolment],
    tally: CycleTally,
) -> list[EnrolmentResult]:
    """Enrols customers through the RPC, `ENROL_BATCH_SIZE` per call; returns the enrolments
    that succeeded. Each call commits on its own, so a refused call fails only the customers
    it carried. Skipped once Supabase is down; a mail server that is down stops the emails,
    not the enrolments."""
    results: list[EnrolmentResult] = []
    for start in range(0, len(enrolments), ENROL_BATCH_SIZE):
        if tally.aborted is not None and tally.aborted.dependency == "Supabase":
            break
        chunk = enrolments[start : start + ENROL_BATCH_SIZE]
        try:
            results += services.store.enrol(chunk, options.initial_credits)
        except SupabaseError as exc:
            if exc.retriable:
                tally.abort("Supabase", f"enrolment: {exc}")
            for enrolment in chunk:
                tally.fail(
                    _failure(services, enrolment.customer.email, Step.ENROL, exc), in_a_row=False
                )
    enrolled: list[EnrolmentResult] = []
    for result in results:
        if result.ok:
            enrolled.append(result)
            tally.enrolment(result)
            log.info(
                "customer_enrolled",
                email=result.email,
                outcome=result.outcome.value,
                credits_granted=result.credits_granted,
            )
        else:
            log.warning("enrolment_refused", email=result.email, error=result.error)
            tally.fail(
                _failure(
                    services, result.email, Step.ENROL, f"{result.outcome.value}: {result.error}"
                ),
                in_a_row=False,
            )
    return enrolled


def _owed_from(results: list[EnrolmentResult], names: Mapping[str, str | None]) -> list[_OwedEmail]:
    """The welcome emails these enrolments still owe."""
    return [
        _OwedEmail(
            result.email,
            result.user_id,
            result.account_origin or AccountOrigin.CREATED,
            names.get(result.email),
            result.credits_remaining or 0,
        )
        for result in results
        if not result.welcome_email_sent and result.user_id
    ]


def _send(
    options: CycleOptions,
    services: CycleServices,
    owed: list[_OwedEmail],
    provisioned: Mapping[str, ProvisionedAccount],
    tally: CycleTally,
    *,
    progress: ProgressReporter | None,
) -> None:
    """Sends each welcome email owed, once; records it only after the server accepted it."""
    if not owed or not options.send_email or tally.aborted is not None:
        return
    # Accepted emails are recorded in the background while the next ones are sent, those
    # accepted meanwhile together with the next call.
    with SentEmailRecorder(services.store.record_welcome_emails) as recorder:
        services.on_recorder(recorder)
        for item in owed:
            if _stopping(services, tally):
                break
            if progress is not None:
                progress.advance()
            fresh = provisioned.get(item.email)
            try:
                message = welcome_email_for(
                    options,
                    services.provisioner,
                    email=item.email,
                    user_id=item.user_id,
                    origin=item.origin,
                    name=item.name,
                    credits=item.credits,
                    fresh_password=fresh.password if fresh else None,
                    just_created=fresh is not None,
                )
                services.mailer.send(message)
            except MailUnavailable as exc:
                # Every later message would fail too; they stay owed for the next cycle.
                tally.abort("mail", str(exc))
                log.error("mail_unavailable", error=str(exc))
                break
            except (MailError, SupabaseError) as exc:
                log.warning("welcome_email_failed", email=item.email, error=str(exc))
                tally.fail(_failure(services, item.email, Step.EMAIL, exc))
                continue
            recorder.add(sent_email(message, options, tally.run_id))
    for (email, kind, *_), error in recorder.results:
        if error is not None:
            # Sent but not recorded: the next cycle sends again (better twice than never).
            log.error("welcome_email_not_recorded", email=email, error=str(error))
            tally.fail(_failure(services, email, Step.RECORD_EMAIL, error))
            continue
        tally.email_recorded(email)
        log.info("welcome_email_sent", email=email, kind=kind)


def _deactivate_phase(
    services: CycleServices,
    plan: SyncPlan,
    tally: CycleTally,
    only: frozenset[str] | None = None,
) -> None:
    """Marks the customers who are no longer eligible as inactive (nothing is deleted); with
    `only`, just those of them (an approved held-back set, or those the guard let through)."""
    emails = [s.email for s in plan.of(Action.DEACTIVATE) if only is None or s.email in only]
    if not emails or _stopping(services, tally):
        return
    try:
        tally.deactivated = services.store.deactivate(emails)
    except SupabaseError as exc:
        for email in emails:
            tally.fail(_failure(services, email, Step.DEACTIVATE, exc), in_a_row=False)
    for email in tally.deactivated:
        log.info("customer_deactivated", email=email)


def _newly_invalid(
    options: CycleOptions,
    services: CycleServices,
    invalid: Sequence[InvalidCrmRow],
    dry_run: bool,
) -> Sequence[InvalidCrmRow]:
    """The invalid CRM rows to warn about: those that appeared or changed since the last
    cycle (the current list is kept for `crm-sync status`); every one on a dry run, or when
    the list cannot be kept."""
    if dry_run:
        return invalid
    try:
        return services.store.report_invalid_rows(shard_label(options.shard), invalid)
    except SupabaseError as exc:
        log.warning("invalid_rows_not_kept", error=str(exc))
        return invalid


def welcome_email_for(
    options: CycleOptions,
    provisioner: Provisioner,
    *,
    email: str,
    user_id: str,
    origin: AccountOrigin,
    name: str | None,
    credits: int,
    fresh_password: str | None = None,
    just_created: bool = False,
) -> WelcomeEmail:
    """One customer's welcome email with the credentials it carries now (set on the account
    right before it is sent); `just_created` (and `fresh_password`, its password) when this
    cycle created the account.

    Raises:
        SupabaseError: the Auth API failed (after retries).
    """
    credentials = issue_credentials(
        provisioner,
        email=email,
        user_id=user_id,
        origin=origin,
        mode=options.credentials_mode,
        fresh_password=fresh_password,
        setup_url=options.setup_url or options.login_url,
        key=options.credential_key,
        setup_link_reuse_seconds=options.setup_link_reuse_seconds,
        just_created=just_created,
    )
    return compose(
        to=email,
        name=name,
        credentials=credentials,
        credits=credits,
        login_url=options.login_url,
        password_reset_url=options.password_reset_url,
        initial_credits=options.initial_credits,
        digest_key=options.credential_key,
    )


def sent_email(message: WelcomeEmail, options: CycleOptions, run_id: str | None) -> SentEmail:
    """How an email the server accepted is recorded: its kind, run and Message-ID."""
    return SentEmail(message.to, message.kind, run_id, message_id(message, options.message_domain))


def _hold_deactivations(
    services: CycleServices, plan: SyncPlan, run_id: str, shard: tuple[int, int]
) -> None:
    """Keeps the set the guard held back, for `crm-sync deactivations` to list and approve."""
    emails = [s.email for s in plan.of(Action.DEACTIVATE)]
    try:
        services.store.hold_deactivations(run_id, emails, shard_label(shard))
    except SupabaseError as exc:
        log.error("held_deactivations_not_recorded", error=str(exc), count=len(emails))


def _store_settlement(store: EnrolmentStore, settlement: Settlement) -> None:
    """Records the settled failures and clears those of customers who are done."""
    try:
        store.record_failures(settlement.record)
        store.clear_failures(settlement.clear)
    except SupabaseError as exc:
        log.error("failures_not_recorded", error=str(exc), count=len(settlement.record))


__all__ = ["CycleOptions", "CycleServices", "run_cycle"]
