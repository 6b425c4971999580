"""In-memory fakes of the cycle's interfaces (`Provisioner`, `EnrolmentStore`, `Mailer`) for
fast unit tests of every branch of a cycle: no network, no database.

They keep the state a real project keeps (accounts, tracking rows, failures), so several
cycles can run one after another, and each can be told to fail in the ways the real
services fail. The CRM is its sale rows, read as the production reader groups them
(`source.group_rows`, in the SQL's order and shard filter), so invalid rows and emails the
merge sets aside go through the cycle's real path.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sync_worker.customers import (
    AuthAccount,
    CrmCustomer,
    CrmGroup,
    CrmRow,
    CustomerFailure,
    Enrolment,
    EnrolmentResult,
    EnrolOutcome,
    IdentityHolder,
    InvalidCrmRow,
    LayoutFigures,
    ShardFigures,
    TrackedCustomer,
)
from sync_worker.cycle import CycleOptions, CycleServices
from sync_worker.errors import MailError, SupabaseError
from sync_worker.masking import SecretMasker
from sync_worker.provision import AccountExists
from sync_worker.shards import shard_of
from sync_worker.source import group_rows, order_key
from sync_worker.welcome_email import SentEmail, WelcomeEmail

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OPTIONS = CycleOptions(
    login_url="https://app.example/login",
    concurrency=2,
    max_attempts=3,
    credential_key=b"a key for the fakes only",
)


def outage(operation: str = "create account") -> SupabaseError:
    """What a call answers when Supabase is down: 503 after retries."""
    return SupabaseError(f"{operation}: HTTP 503", status=503, retriable=True)


def refusal(operation: str = "create account") -> SupabaseError:
    """A refusal about this one request (a 400): nothing to do with an outage."""
    return SupabaseError(f"{operation}: bad request", status=400, retriable=False)


@dataclass
class FakeAccount:
    id: str
    email: str
    created_by_crm_sync: bool
    has_signed_in: bool = False
    password: str | None = field(default=None, repr=False)
    email_confirmed: bool = True
    taken_over: bool = False
    nonce: str = ""

    def view(self) -> AuthAccount:
        return AuthAccount(
            self.id,
            self.email,
            self.created_by_crm_sync,
            self.has_signed_in,
            self.email_confirmed,
            self.taken_over,
            self.nonce,
        )


@dataclass
class FakeProvisioner:
    """The Auth admin API: accounts by email; `failing[email]` is raised by its calls."""

    accounts: dict[str, FakeAccount] = field(default_factory=dict)
    failing: dict[str, SupabaseError] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    on_create: Callable[[str], None] = lambda email: None
    # Addresses held by an identity of another account, which has another email.
    identities: dict[str, IdentityHolder] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def add(
        self, email: str, *, ours: bool = False, signed_in: bool = True, confirmed: bool = True
    ) -> FakeAccount:
        account = FakeAccount(
            f"user-{next(self._ids)}", email, ours, signed_in, "their-own", confirmed
        )
        self.accounts[email] = account
        return account

    def _check(self, operation: str, email: str) -> None:
        self.calls.append((operation, email))
        if email in self.failing:
            raise self.failing[email]

    def create_account(
        self,
        customer: CrmCustomer,
        password: str | None,
        *,
        taken_over: bool = False,
        nonce: str = "",
    ) -> AuthAccount:
        self.on_create(customer.email)
        self._check("create", customer.email)
        if customer.email in self.accounts or customer.email in self.identities:
            raise AccountExists("email_exists", status=422, code="email_exists")
        account = FakeAccount(
            f"user-{next(self._ids)}",
            customer.email,
            True,
            False,
            password,
            taken_over=taken_over,
            nonce=nonce,
        )
        self.accounts[customer.email] = account
        return account.view()

    def find_account(self, email: str) -> AuthAccount | IdentityHolder | None:
        self._check("find", email)
        account = self.accounts.get(email)
        if account is None and email in self.identities:
            return self.identities[email]
        return account.view() if account else None

    def _by_id(self, user_id: str) -> FakeAccount:
        return next(a for a in self.accounts.values() if a.id == user_id)

    def get_account(self, user_id: str) -> AuthAccount:
        account = self._by_id(user_id)
        self._check("get", account.email)
        return account.view()

    def set_temporary_password(self, user_id: str, password: str) -> None:
        account = self._by_id(user_id)
        self._check("set_password", account.email)
        account.password = password

    def delete_account(self, user_id: str) -> None:
        account = self._by_id(user_id)
        self._check("delete", account.email)
        del self.accounts[account.email]

    def recovery_token_hash(self, email: str, user_id: str, *, reuse_seconds: int) -> str:
        self._check("setup_link", email)
        return f"hash-{email}"


@dataclass
class FakeStore:
    """The enrolment RPCs and bookkeeping tables, as `enrol_crm_customers` & co. behave."""

    tracking: dict[str, TrackedCustomer] = field(default_factory=dict)
    failures: dict[str, CustomerFailure] = field(default_factory=dict)
    enrol_error: SupabaseError | None = None
    enrol_error_for: dict[str, SupabaseError] = field(default_factory=dict)  # fails its call
    refuse: dict[str, str] = field(default_factory=dict)  # email -> the RPC's error text
    record_email_error: dict[str, SupabaseError] = field(default_factory=dict)
    deactivate_error: SupabaseError | None = None
    writes: list[str] = field(default_factory=list)
    # crm_sync_shard_figures: (count, index) -> (when recorded, as a sequence number, figures)
    shard_figures: dict[tuple[int, int], tuple[int, ShardFigures]] = field(default_factory=dict)
    _recorded: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # crm_sync_pending_deactivations: (count, index) -> email -> when first planned
    pending: dict[tuple[int, int], dict[str, int]] = field(default_factory=dict)
    held: dict[str, set[str]] = field(default_factory=dict)  # crm_sync_held_deactivations
    invalid_rows: dict[str, dict[str, InvalidCrmRow]] = field(default_factory=dict)
    # Who was deactivated when (the project's clock): the targeted cycle's window.
    deactivated_at: list[tuple[str, datetime]] = field(default_factory=list)
    clock: Callable[[], datetime] = lambda: NOW

    def report_invalid_rows(
        self, reported_by: str, rows: Sequence[InvalidCrmRow]
    ) -> list[InvalidCrmRow]:
        known = self.invalid_rows.setdefault(reported_by, {})
        current = {row.key(reported_by): row for row in rows}
        new = [row for key, row in current.items() if key not in known]
        self.invalid_rows[reported_by] = current
        return new

    def hold_deactivations(self, run_id: str, emails: Sequence[str], shard: str) -> None:
        self.held.setdefault(run_id, set()).update(emails)

    def layout_figures(
        self,
        shard: tuple[int, int],
        run_id: str,
        figures: ShardFigures,
        snapshot_at: datetime,
        *,
        record: bool,
    ) -> LayoutFigures:
        index, count = shard
        if record:
            # The fake's clock stands still: a sequence number stands for a snapshot's time.
            at = next(self._recorded)
            self.shard_figures[(count, index)] = (at, figures)
            before = self.pending.get((count, index), {})
            self.pending[(count, index)] = {e: before.get(e, at) for e in figures.deactivating}
        layout = {i: v for (c, i), v in self.shard_figures.items() if c == count}
        siblings = [at for i, (at, _) in layout.items() if i != index]
        mine = self.pending.get((count, index), {})
        ready = frozenset(
            e
            for e, first in mine.items()
            if e in figures.deactivating and siblings and first < min(siblings)
        )
        return LayoutFigures(
            shards=len(layout),
            active=sum(f.active for _, f in layout.values()),
            eligible=sum(f.eligible for _, f in layout.values()),
            pending=sum(len(p) for (c, _), p in self.pending.items() if c == count),
            ready=ready,
        )

    def enrol(self, batch: Sequence[Enrolment], initial_credits: int) -> list[EnrolmentResult]:
        self.writes.append("enrol")
        if self.enrol_error is not None:
            raise self.enrol_error
        for item in batch:
            if item.customer.email in self.enrol_error_for:
                raise self.enrol_error_for[item.customer.email]
        results = []
        for item in batch:
            email = item.customer.email
            if email in self.refuse:
                results.append(
                    EnrolmentResult(
                        email, item.user_id, EnrolOutcome.ERROR, error=self.refuse[email]
                    )
                )
                continue
            before = self.tracking.get(email)
            granted = initial_credits if before is None else 0
            row = TrackedCustomer(
                email=email,
                user_id=item.user_id,
                is_active=True,
                welcome_email_status=before.welcome_email_status if before else "pending",
                account_origin=before.account_origin if before else item.origin,
                full_name=item.customer.name,
                crm_lead_id=item.customer.lead_id,
                credits_remaining=(before.credits_remaining if before else 0) + granted,
            )
            self.tracking[email] = row
            outcome = (
                EnrolOutcome.ENROLLED
                if before is None
                else EnrolOutcome.REACTIVATED
                if not before.is_active
                else EnrolOutcome.UPDATED
                if before != row
                else EnrolOutcome.UNCHANGED
            )
            results.append(
                EnrolmentResult(
                    email,
                    item.user_id,
                    outcome,
                    credits_granted=granted,
                    credits_remaining=row.credits_remaining,
                    welcome_email_sent=row.welcome_email_sent,
                    account_origin=row.account_origin,
                )
            )
        return results

    def recent_deactivations(self, since: datetime) -> int:
        return sum(1 for _, at in self.deactivated_at if at >= since)

    def deactivate(self, emails: Sequence[str]) -> list[str]:
        self.writes.append("deactivate")
        if self.deactivate_error is not None:
            raise self.deactivate_error
        changed = []
        for email in emails:
            row = self.tracking.get(email)
            if row is not None and row.is_active:
                self.tracking[email] = replace(row, is_active=False)
                changed.append(email)
                self.deactivated_at.append((email, self.clock()))
        return changed

    def record_welcome_emails(self, sent: Sequence[SentEmail]) -> list[str]:
        """One call: refused as a whole when any of its emails has a `record_email_error`."""
        self.writes.append("record_welcome_emails")
        for email, *_ in sent:
            if email in self.record_email_error:
                raise self.record_email_error[email]
        recorded = []
        for email, *_ in sent:
            row = self.tracking[email]
            if row.welcome_email_status != "sent":
                self.tracking[email] = replace(row, welcome_email_status="sent")
                recorded.append(email)
        return recorded

    def record_failures(self, failures: Sequence[CustomerFailure]) -> None:
        if failures:
            self.writes.append("record_failures")
        for failure in failures:
            self.failures[failure.email] = failure

    def clear_failures(self, emails: Sequence[str]) -> None:
        if emails:
            self.writes.append("clear_failures")
        for email in emails:
            self.failures.pop(email, None)


@dataclass
class FakeMailer:
    """A mail server: `failing[email]` is raised for that recipient; `before_send` runs first."""

    sent: list[WelcomeEmail] = field(default_factory=list)
    failing: dict[str, MailError] = field(default_factory=dict)
    # Delivered, and then the reply lost: the message arrives, the sender hears an error.
    lost_reply: dict[str, MailError] = field(default_factory=dict)
    before_send: Callable[[WelcomeEmail], None] = lambda message: None
    closed: int = 0

    def send(self, message: WelcomeEmail) -> None:
        self.before_send(message)
        if message.to in self.failing:
            raise self.failing[message.to]
        self.sent.append(message)
        if message.to in self.lost_reply:
            raise self.lost_reply[message.to]

    def close(self) -> None:
        self.closed += 1

    def to(self, email: str) -> list[WelcomeEmail]:
        return [m for m in self.sent if m.to == email]


def key(row: CrmRow) -> str | None:
    """A sale row's order key, as the CRM query computes it (None without an email)."""
    return None if row.raw_email is None else order_key(row.raw_email)


# What the CRM query calls a plain decimal, and the blanks it trims.
_DECIMAL = re.compile(r"^[ \t]*[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})[ \t]*$")
_BLANKS = " \t\r\n"


def crm_groups(rows: Sequence[CrmRow], shard: tuple[int, int] = (0, 1)) -> Iterator[CrmGroup]:
    """The groups the CRM query gives for these sale rows: eligible (a plain decimal above
    zero) or unreadable ones, keyed by the email trimmed and lower-cased, in byte order with
    rows without an email last, only the shard's (and every key that is not plain ASCII)."""
    index, count = shard

    def listed(row: CrmRow) -> bool:
        if _DECIMAL.match(row.value):
            return float(row.value) > 0
        return row.value.strip(_BLANKS) != "" and row.value.strip().lower() not in ("nan", "inf")

    def mine(order_key: str | None) -> bool:
        if count <= 1:
            return True
        if order_key is None:
            return index == 0
        if not re.fullmatch(r"[ -~]*", order_key):
            return True
        digest = hashlib.md5(order_key.encode(), usedforsecurity=False).hexdigest()
        return int(digest[:8], 16) % count == index

    chosen = [
        (key(row), row.raw_email, row.value, row.name, row.lead_id, bool(_DECIMAL.match(row.value)))
        for row in rows
        if listed(row) and mine(key(row))
    ]
    chosen.sort(key=lambda row: (row[0] is None, (row[0] or "").encode()))
    return group_rows(chosen)


@dataclass
class FakeProject:
    """A CRM and a Supabase project in memory, wired as a cycle's services."""

    # The CRM's sale rows, by the email they were sold to as typed.
    crm: dict[str | None, list[CrmRow]] = field(default_factory=dict)
    auth: FakeProvisioner = field(default_factory=FakeProvisioner)
    store: FakeStore = field(default_factory=FakeStore)
    mailer: FakeMailer = field(default_factory=FakeMailer)
    clock: datetime = NOW
    stop: Callable[[], bool] = lambda: False
    masker: SecretMasker = field(default_factory=SecretMasker)

    def sell(self, *emails: str, name: str | None = None) -> None:
        """One sale to each of `emails` (its only one: a name given again replaces it)."""
        for email in emails:
            self.crm[email] = [CrmRow(email, "49.00", name)]

    def sell_row(
        self,
        raw_email: str | None,
        value: str = "49.00",
        name: str | None = None,
        lead_id: str | None = None,
    ) -> None:
        """One more sale row, as the CRM holds it: any email, any value."""
        self.crm.setdefault(raw_email, []).append(CrmRow(raw_email, value, name, lead_id))

    def services(self, shard: tuple[int, int] = (0, 1)) -> CycleServices:
        """The cycle's services; with a `shard`, the CRM and the tracking rows are that shard's
        (as the SQL filters them), the failures everyone's (one table, read whole)."""

        def mine(email: str) -> bool:
            return shard_of(email, shard[1]) == shard[0]

        self.store.clock = lambda: self.clock

        return CycleServices(
            read_crm=lambda: crm_groups([r for rows in self.crm.values() for r in rows], shard),
            stream_tracking=lambda: [
                self.store.tracking[e] for e in sorted(self.store.tracking) if mine(e)
            ],
            lookup_tracking=lambda emails: {
                e: self.store.tracking[e] for e in emails if e in self.store.tracking
            },
            load_failures=lambda: dict(self.store.failures),
            provisioner=self.auth,
            store=self.store,
            mailer=self.mailer,
            clock=lambda: self.clock,
            should_stop=lambda: self.stop(),  # noqa: PLW0108 (read when called)
            masker=self.masker,
        )

    def services_for(self, *keys: str) -> CycleServices:
        """A targeted cycle's services: the CRM rows, tracking rows and failures of these
        customers only (`keys`: emails as the change table records them)."""
        wanted = set(keys)
        rows = [r for rows in self.crm.values() for r in rows]

        return replace(
            self.services(),
            read_crm=lambda: crm_groups([r for r in rows if key(r) in wanted]),
            stream_tracking=lambda: [
                self.store.tracking[e] for e in sorted(wanted) if e in self.store.tracking
            ],
            load_failures=lambda: {e: f for e, f in self.store.failures.items() if e in wanted},
        )
