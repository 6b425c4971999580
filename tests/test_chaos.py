"""A small, seeded chaos run: 20% of Supabase calls failing, 10% of SMTP
deliveries refused, and runs killed at random moments, on the local stack. Whatever happens,
no customer is lost, no account or grant is doubled, every last emailed password works, and
the only duplicate emails are those a kill between the server's accept and the record makes.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import pytest
from supabase import create_client

from supabase_sandbox.faults import FaultKind, FaultPlan
from supabase_sandbox.stack import Sandbox
from sync_worker.cycle import CycleServices
from sync_worker.errors import SyncError
from sync_worker.runner import run_guarded_cycle
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices
from sync_worker.welcome_email import WelcomeEmail
from tests.stack import FAST, add_sales, crm_database, settings_for

SEED = 20261130
FIRST_CUSTOMERS = 12
NEW_PER_ROUND = 3  # sales keep coming in while runs are being killed
KILLED_ROUNDS = 8
CUSTOMERS = FIRST_CUSTOMERS + NEW_PER_ROUND * KILLED_ROUNDS
ROUNDS = 40
MIN_KILLS = 5
PASSWORD_LINE = re.compile(r"Temporary password:\s*(\S+)")


class Killed(BaseException):
    """The process died here: nothing after this point of the cycle ran."""


@dataclass
class Assassin:
    """Decides, with a seeded generator, whether and where the next run is killed."""

    rng: random.Random
    after_accept: int | None = None  # kill right after the n-th email the server accepted
    after_create: int | None = None  # kill right after the n-th account created
    kills: Counter[str] = field(default_factory=Counter)

    def arm(self, round_number: int) -> None:
        """The first rounds are all armed, at a random point, and so are later ones until
        `MIN_KILLS` runs were killed (a round cut short by faults may never reach its point);
        after that, now and then."""
        self.after_accept = self.after_create = None
        armed = round_number < KILLED_ROUNDS or sum(self.kills.values()) < MIN_KILLS
        roll = self.rng.random() * 0.6 if armed else self.rng.random()
        if roll < 0.3:
            self.after_accept = self.rng.randint(1, 3)
        elif roll < 0.6:
            self.after_create = self.rng.randint(1, 3)


class KillingMailer:
    def __init__(self, inner: Any, assassin: Assassin) -> None:
        self._inner, self._assassin, self._accepted = inner, assassin, 0

    def send(self, message: WelcomeEmail) -> None:
        self._inner.send(message)
        self._accepted += 1
        if self._accepted == self._assassin.after_accept:
            self._assassin.kills["after_accept"] += 1
            raise Killed

    def close(self) -> None:
        self._inner.close()


class KillingProvisioner:
    def __init__(self, inner: Any, assassin: Assassin) -> None:
        self._inner, self._assassin, self._created = inner, assassin, 0

    def create_account(self, customer: Any, password: str | None, **kwargs: Any) -> Any:
        account = self._inner.create_account(customer, password, **kwargs)
        self._created += 1
        if self._created == self._assassin.after_create:
            self._assassin.kills["after_create"] += 1
            raise Killed
        return account

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def stack(admin_url: str) -> Iterator[tuple[Sandbox, str]]:
    with crm_database(admin_url) as crm_url, Sandbox.start(admin_url, bcrypt_cost=4) as sandbox:
        yield sandbox, crm_url


def query(sandbox: Sandbox, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute(statement).fetchall()  # type: ignore[arg-type]


def test_faults_and_kills_lose_nobody_double_nothing_and_duplicate_only_after_an_accept(
    stack: tuple[Sandbox, str],
) -> None:
    sandbox, crm_url = stack
    emails = [f"chaos{i:02}@example.com" for i in range(CUSTOMERS)]
    add_sales(
        crm_url,
        *[(email, f"Customer {i}", 49.99) for i, email in enumerate(emails)][:FIRST_CUSTOMERS],
    )
    faults = FaultPlan(
        fault_rate=0.2,
        mix={
            FaultKind.UNAVAILABLE: 1,
            FaultKind.RATE_LIMITED: 1,
            FaultKind.DROP: 1,
            FaultKind.DROP_AFTER: 1,
        },
        seed=SEED,
        retry_after_s=0,
    )
    sandbox.faults.set("auth", faults)
    sandbox.faults.set("rest", faults)
    sandbox.mail_sink.refuse(0.1, seed=SEED)
    settings = settings_for(sandbox, crm_url, sync_concurrency=4, sync_lease_ttl_seconds=3)
    assassin = Assassin(random.Random(SEED))
    # Few attempts per call, as a busy day would leave them: the record of an accepted email
    # must still get through (it is retried much longer).
    policy = replace(FAST, attempts=2, deadline=5)

    done = False
    for round_number in range(ROUNDS):
        # Backoff is minutes long; the test does not wait for it.
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            conn.execute("update public.crm_sync_failures set next_attempt_at = now()")
        if round_number < KILLED_ROUNDS:
            start = FIRST_CUSTOMERS + NEW_PER_ROUND * round_number
            add_sales(crm_url, *[(e, None, 10) for e in emails[start : start + NEW_PER_ROUND]])
        assassin.arm(round_number)
        with LiveServices(settings, policy=policy) as live:
            build = live.for_cycle

            def for_cycle(*args: Any, build: Any = build, **kwargs: Any) -> CycleServices:
                services: CycleServices = build(*args, **kwargs)
                services.mailer = KillingMailer(services.mailer, assassin)  # type: ignore[assignment]
                services.provisioner = KillingProvisioner(services.provisioner, assassin)
                return services

            live.for_cycle = for_cycle  # type: ignore[method-assign]
            try:
                report = run_guarded_cycle(live, worker="chaos", run_id=new_run_id())
            except (Killed, SyncError):
                continue
        sent = query(
            sandbox,
            "select count(*) from public.digital_resume_by_crm where welcome_email_status = 'sent'",
        )
        if round_number >= KILLED_ROUNDS and report.exit_code == 0 and sent == [(CUSTOMERS,)]:
            done = True
            break
    assert done, "the customers were not all served within the rounds"
    assert sum(assassin.kills.values()) >= MIN_KILLS, assassin.kills  # the seed did kill runs
    assert sandbox.faults.injected
    assert sandbox.mail_sink.refused

    # No customer lost, no account doubled, no grant doubled.
    assert query(
        sandbox, "select lower(email), count(*) from auth.users group by 1 order by 1"
    ) == [(email, 1) for email in emails]
    assert query(
        sandbox,
        "select count(*), min(credits_remaining), max(credits_remaining)"
        " from public.digital_resume_by_crm where is_active",
    ) == [(CUSTOMERS, 4, 4)]
    assert query(
        sandbox,
        "select count(*), count(distinct user_id) from public.credit_ledger"
        " where reason = 'crm_enrolment'",
    ) == [(CUSTOMERS, CUSTOMERS)]
    # Every customer was emailed, and every email any customer received works: a duplicate
    # carries the same password and the same Message-ID.
    received = Counter(str(m["To"].addresses[0].addr_spec) for m in sandbox.mail)
    assert set(received) == set(emails)
    sandbox.faults.clear()
    for email in emails:
        theirs = [m for m in sandbox.mail if m["To"].addresses[0].addr_spec == email]
        passwords = set()
        for message in theirs:
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            match = PASSWORD_LINE.search(str(body.get_content()))  # type: ignore[attr-defined]
            assert match, email
            passwords.add(match.group(1))
        assert len(passwords) == 1, email
        assert len({m["Message-ID"] for m in theirs}) == 1, email
        client = create_client(sandbox.url, sandbox.anon_key)
        client.auth.sign_in_with_password({"email": email, "password": passwords.pop()})
    # The only duplicates: a process killed after the server accepted, before the record.
    duplicates = sum(count - 1 for count in received.values())
    assert duplicates <= assassin.kills["after_accept"], (duplicates, assassin.kills)
