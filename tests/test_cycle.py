"""The sync cycle end to end: a real CRM database, the local Supabase stack, a real SMTP sink.

Every branch of a cycle is tested on in-memory fakes in test_cycle_phases.py; a test here
checks what only the real components show (a password signing in at Auth, the rows SQL
writes, the CRM query's rules, real retries under faults, the requests the stack sees),
and a situation it sets up carries every such check that needs it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from supabase import create_client
from supabase_auth.errors import AuthApiError

from supabase_sandbox.faults import FaultKind, FaultPlan
from supabase_sandbox.stack import Sandbox
from sync_worker.config import Settings
from sync_worker.cycle import run_cycle
from sync_worker.errors import ExitCode
from sync_worker.logs import configure_logging
from sync_worker.masking import SecretMasker
from sync_worker.report import CycleReport
from sync_worker.retrying import RetryPolicy
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices
from sync_worker.smtp_mailer import SmtpMailer
from sync_worker.status import status_command
from tests.stack import (
    BLOCK_SIGNUPS,
    FAST,
    LOGIN_URL,
    add_sales,
    closed_port,
    crm_database,
    settings_for,
)

PATIENT = dataclasses.replace(FAST, attempts=20, deadline=60)
PASSWORD_LINE = re.compile(r"Temporary password:\s*(\S+)")
SETUP_LINK = re.compile(r"https?://\S+token_hash=\S+")


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(
        admin_url, bcrypt_cost=4, redirect_allow_list=("https://careercast.example.com/**",)
    ) as running:
        yield running


@pytest.fixture
def crm_url(admin_url: str) -> Iterator[str]:
    with crm_database(admin_url) as url:
        yield url


@pytest.fixture(autouse=True)
def clean(sandbox: Sandbox) -> Iterator[None]:
    yield
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute("delete from auth.users")
        conn.execute("delete from public.crm_sync_failures")
        conn.execute("delete from public.crm_sync_invalid_rows")
    sandbox.mail.clear()
    sandbox.faults.clear()
    sandbox.requests.reset()


def run(settings: Settings, policy: RetryPolicy = FAST, *, dry_run: bool = False) -> CycleReport:
    with LiveServices(settings, policy=policy) as services:
        return run_cycle(
            services.options, services.for_cycle(), run_id=new_run_id(), dry_run=dry_run
        )


def query(sandbox: Sandbox, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def mail_to(sandbox: Sandbox, email: str) -> list[EmailMessage]:
    return [m for m in sandbox.mail if m["To"] and email in m["To"]]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def password_in(message: EmailMessage) -> str:
    match = PASSWORD_LINE.search(text_of(message))
    assert match, text_of(message)
    return match.group(1)


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token_hash"][0]


def sign_in(sandbox: Sandbox, email: str, password: str) -> str:
    client = create_client(sandbox.url, sandbox.anon_key)
    response = client.auth.sign_in_with_password({"email": email, "password": password})
    assert response.user is not None
    return str(response.user.id)


def assert_provisioned_once(sandbox: Sandbox, email: str, credits: int = 4) -> None:
    [(user_id,)] = query(sandbox, "select id from auth.users where lower(email) = %s", email)
    assert query(
        sandbox, "select credits_remaining from public.profiles where id = %s", user_id
    ) == [(credits,)]
    assert query(
        sandbox,
        "select user_id, is_active, welcome_email_status, credits_remaining"
        " from public.digital_resume_by_crm where email = %s",
        email,
    ) == [(user_id, True, "sent", credits)]
    assert query(
        sandbox, "select count(*) from public.crm_dashboard_stats where email = %s", email
    ) == [(1,)]
    assert query(
        sandbox,
        "select count(*) from public.credit_ledger where user_id = %s and reason = 'crm_enrolment'",
        user_id,
    ) == [(1,)]
    assert len(mail_to(sandbox, email)) == 1


def test_first_run_provisions_each_customer_once_and_second_run_does_nothing(
    sandbox: Sandbox, crm_url: str
) -> None:
    add_sales(
        crm_url,
        ("ann@example.com", "Ann Lee", Decimal("49.99"), "AWL-1"),
        ("  ANN@Example.com ", None, Decimal("10"), "AWL-2"),  # same customer, second sale
        ("Bob.Stone@Example.COM", "Bob Stone", Decimal("49.99"), "AWL-3"),
        ("cy@example.com", "Cy", None, "AWL-4"),  # NULL: not eligible
        ("di@example.com", "Di", Decimal("0"), "AWL-5"),  # zero
        ("ed@example.com", "Ed", Decimal("-1"), "AWL-6"),  # negative
        ("fay@@example", "Fay", Decimal("49.99"), "AWL-7"),  # invalid email
        (None, "Gus", Decimal("49.99"), "AWL-8"),  # no email
    )
    settings = settings_for(sandbox, crm_url)
    # A dry run first: the plan, and not one write to the stack (invalid rows included) or email.
    dry = run(settings, dry_run=True)
    assert dry.planned["provision"] == 2
    assert dry.preview["provision"] == ["ann@example.com", "bob.stone@example.com"]
    assert "DRY RUN" in dry.render()
    assert sandbox.requests.writes() == 0, sandbox.requests.snapshot()
    assert sandbox.mail == []

    first = run(settings)
    assert (first.created, first.linked, first.enrolled, first.emails_sent) == (2, 0, 2, 2)
    assert first.credits_granted == 8
    assert {i.email for i in first.invalid} == {"fay@@example", None}
    assert first.failures == []
    assert first.exit_code is ExitCode.OK
    for email in ("ann@example.com", "bob.stone@example.com"):
        assert_provisioned_once(sandbox, email)
    # Nothing invalid or ineligible reached Supabase.
    assert query(sandbox, "select count(*) from auth.users") == [(2,)]
    # The emailed password works at the password endpoint, and is personal.
    ann, bob = mail_to(sandbox, "ann@example.com")[0], mail_to(sandbox, "bob.stone@example.com")[0]
    assert "Ann Lee" in text_of(ann)
    assert LOGIN_URL in text_of(ann)
    assert password_in(ann) != password_in(bob)
    assert len(password_in(ann)) >= 16
    sign_in(sandbox, "ann@example.com", password_in(ann))
    [(meta,)] = query(
        sandbox, "select raw_user_meta_data from auth.users where email = 'ann@example.com'"
    )
    assert meta["source"] == "crm"
    assert meta["must_change_password"] is True

    sandbox.requests.reset()
    second = run(settings)
    assert second.planned["nothing"] == 2
    assert (second.created, second.enrolled, second.emails_sent) == (0, 0, 0)
    assert sandbox.requests.writes() == 0
    assert len(sandbox.mail) == 2
    assert second.exit_code is ExitCode.OK


def test_an_existing_user_is_linked_and_keeps_their_password(
    sandbox: Sandbox, crm_url: str
) -> None:
    admin = create_client(sandbox.url, sandbox.service_role_key).auth.admin
    admin.create_user(
        {"email": "kim@example.com", "password": "Kims-Own-Passw0rd", "email_confirm": True}
    )
    # A look-alike whose email contains Kim's: the substring filter finds it, we must not.
    admin.create_user({"email": "xkim@example.com.au", "password": "x" * 12, "email_confirm": True})
    # Auth's list filter is case-sensitive; a row written by SQL can differ in case.
    admin.create_user(
        {"email": "upper@example.com", "password": "Uppers-Own-Passw0rd", "email_confirm": True}
    )
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute(
            "update auth.users set email = 'Upper@Example.COM' where email = 'upper@example.com'"
        )
    # One of ours, created right before a crash (never enrolled): resumed as ours, not linked.
    admin.create_user(
        {
            "email": "cut@example.com",
            "password": "Lost-in-the-crash-1",
            "email_confirm": True,
            "app_metadata": {"created_by": "crm-sync"},
        }
    )
    add_sales(
        crm_url,
        ("KIM@example.com ", "Kim", Decimal("49.99"), "AWL-9"),
        ("upper@example.com", "Up", 1),
        ("cut@example.com", "Cut", 1, None),
    )
    settings = settings_for(sandbox, crm_url)
    report = run(settings)
    assert (report.created, report.linked, report.emails_sent, report.failures) == (1, 2, 3, [])
    user_id = sign_in(sandbox, "kim@example.com", "Kims-Own-Passw0rd")
    upper_id = sign_in(sandbox, "upper@example.com", "Uppers-Own-Passw0rd")
    [cut_message] = mail_to(sandbox, "cut@example.com")
    cut_id = sign_in(sandbox, "cut@example.com", password_in(cut_message))
    assert query(
        sandbox,
        "select user_id::text, account_origin from public.digital_resume_by_crm order by email",
    ) == [(cut_id, "created"), (user_id, "linked"), (upper_id, "linked")]
    [message] = mail_to(sandbox, "kim@example.com")
    assert "4 free credits were added" in message["Subject"]
    assert 'Use "Forgot password?" on the sign-in page' in text_of(message)
    assert "Kims-Own-Passw0rd" not in text_of(message)
    assert not PASSWORD_LINE.search(text_of(message))
    assert_provisioned_once(sandbox, "kim@example.com")
    again = run(settings)
    assert (again.linked, again.emails_sent, again.credits_granted) == (0, 0, 0)
    sign_in(sandbox, "kim@example.com", "Kims-Own-Passw0rd")


def test_mail_down_for_one_cycle(
    sandbox: Sandbox, crm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SMTP mailer finds the port closed and the cycle stops the mail: the customers
    are enrolled with their emails owed, and each password emailed a cycle later works."""
    monkeypatch.setattr(SmtpMailer, "DEFAULT_RETRY", FAST)  # give up in ms, not seconds
    add_sales(crm_url, ("mo@example.com", "Mo", 1, None), ("ny@example.com", "Ny", 1, None))
    down = run(settings_for(sandbox, crm_url, smtp_port=closed_port()))
    assert down.exit_code is ExitCode.UNAVAILABLE
    assert down.aborted
    assert "mail" in down.aborted
    assert query(
        sandbox,
        "select email, welcome_email_status, credits_remaining from public.digital_resume_by_crm"
        " order by email",
    ) == [("mo@example.com", "pending", 4), ("ny@example.com", "pending", 4)]

    run(settings_for(sandbox, crm_url))
    for email in ("mo@example.com", "ny@example.com"):
        assert_provisioned_once(sandbox, email)
        # The password set right before this email is the one that works.
        sign_in(sandbox, email, password_in(mail_to(sandbox, email)[0]))


def test_supabase_down_then_failing_for_a_while_costs_nobody_and_duplicates_nothing(
    sandbox: Sandbox, crm_url: str
) -> None:
    emails = [f"flaky{i}@example.com" for i in range(20)]
    add_sales(crm_url, *[(e, None, 1, None) for e in emails])
    # Down: every Auth call answers 503 through its retries; the cycle aborts on the outage
    # and records it against no customer, so nobody waits out a backoff afterwards.
    sandbox.faults.auth = FaultPlan(fault_rate=1.0, mix={FaultKind.UNAVAILABLE: 1})
    down = run(settings_for(sandbox, crm_url, sync_concurrency=1))
    assert down.exit_code is ExitCode.UNAVAILABLE
    assert down.aborted
    assert "Supabase" in down.aborted
    assert query(sandbox, "select count(*) from public.crm_sync_failures") == [(0,)]
    sandbox.faults.clear()
    sandbox.requests.reset()

    settings = settings_for(sandbox, crm_url, sync_concurrency=4)
    sandbox.faults = FaultPlan(
        fault_rate=0.3,
        mix={FaultKind.UNAVAILABLE: 1, FaultKind.RATE_LIMITED: 1},
        seed=7,
        retry_after_s=1,
    )
    # Enough attempts that no call fails six times in a row by chance (30% faults: 0.3^20):
    # what is under test is that retries never duplicate, not how often a call gives up.
    flaky = run(settings, PATIENT)
    sandbox.faults.clear()
    steady = run(settings)
    assert flaky.created + steady.created == 20
    assert steady.failures == []
    for email in emails:
        assert_provisioned_once(sandbox, email)
    assert sandbox.requests.count(group="auth", method="POST", route="/admin/users") >= 20


def test_a_failing_customer_never_stops_the_others_and_is_parked(
    sandbox: Sandbox, crm_url: str
) -> None:
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute(BLOCK_SIGNUPS)
    try:
        add_sales(crm_url, ("ok@example.com", None, 1, None), ("no@blocked.example", None, 1, None))
        settings = settings_for(sandbox, crm_url, sync_max_attempts=2)
        first = run(settings)
        assert first.created == 1
        assert [(f.email, f.step) for f in first.failures] == [("no@blocked.example", "account")]
        assert first.exit_code is ExitCode.CUSTOMERS_FAILED
        [(attempts, parked, due)] = query(
            sandbox,
            "select attempts, parked_at is not null, next_attempt_at > now()"
            " from public.crm_sync_failures where email = 'no@blocked.example'",
        )
        assert (attempts, parked, due) == (1, False, True)
        waiting = run(settings)
        assert waiting.planned["wait"] == 1
        assert waiting.exit_code is ExitCode.OK
        query(sandbox, "select 1")
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            conn.execute("update public.crm_sync_failures set next_attempt_at = now()")
        second = run(settings)
        assert len(second.failures) == 1
        assert query(
            sandbox, "select attempts, parked_at is not null from public.crm_sync_failures"
        ) == [(2, True)]
        parked = run(settings)
        assert parked.planned["parked"] == 1
        assert parked.exit_code is ExitCode.OK
        assert_provisioned_once(sandbox, "ok@example.com")
    finally:
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            conn.execute("drop trigger if exists block_signups on auth.users")


def test_an_unconfirmed_account_loses_every_way_in_its_creator_gave_it(
    sandbox: Sandbox, crm_url: str
) -> None:
    """A squatter's OAuth identity, confirmed phone, session and metadata
    do not survive the take-over: the account holding the customer's email is a fresh one."""
    admin = create_client(sandbox.url, sandbox.service_role_key).auth.admin
    squatter = admin.create_user(
        {
            "email": "oli@example.com",
            "password": "Squatters-Passw0rd",
            "email_confirm": False,
            "user_metadata": {
                "name": "Oli (support)",
                "avatar_url": "https://evil.test/a.png",
                "full_name": "Security team: call +1-555-0100 to verify your card",
            },
        }
    ).user
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        # What GoTrue writes for an OAuth sign-in whose provider did not vouch for the email,
        # and a phone the squatter confirmed, with a session from it.
        conn.execute(
            "insert into auth.identities (provider_id, user_id, identity_data, provider,"
            " created_at, updated_at)"
            " values ('gh-4242', %s, %s, 'github', now(), now())",
            (squatter.id, json.dumps({"sub": "gh-4242", "email": "oli@example.com"})),
        )
        conn.execute(
            "update auth.users set phone = '15550100', phone_confirmed_at = now() where id = %s",
            (squatter.id,),
        )
        conn.execute(
            "insert into auth.sessions (id, user_id, created_at, updated_at)"
            " values (gen_random_uuid(), %s, now(), now())",
            (squatter.id,),
        )
    add_sales(crm_url, ("oli@example.com", "Oli", 1, None))
    report = run(settings_for(sandbox, crm_url))
    assert (report.created, report.linked, report.taken_over, report.failures) == (0, 0, 1, [])
    [(user_id, phone, metadata, app_metadata)] = query(
        sandbox,
        "select id::text, phone, raw_user_meta_data, raw_app_meta_data from auth.users"
        " where email = 'oli@example.com'",
    )
    assert user_id != str(squatter.id)
    assert phone is None
    assert set(metadata) <= {"source", "full_name", "must_change_password", "email_verified"}
    assert metadata["full_name"] == "Oli"
    assert app_metadata["taken_over_by"] == "crm-sync"
    assert query(sandbox, "select provider from auth.identities where user_id = %s", user_id) == [
        ("email",)
    ]
    assert query(sandbox, "select count(*) from auth.identities where provider = 'github'") == [
        (0,)
    ]
    assert query(sandbox, "select count(*) from auth.sessions") == [(0,)]
    # Nothing the squatter chose at sign-up is shown to the customer as theirs.
    assert query(sandbox, "select full_name from public.profiles") == [("Oli",)]
    assert query(sandbox, "select raw_user_meta_data ->> 'full_name' from auth.users") == [("Oli",)]
    assert query(
        sandbox,
        "select user_id::text, account_origin, credits_remaining from public.digital_resume_by_crm",
    ) == [(user_id, "taken_over", 4)]
    [message] = mail_to(sandbox, "oli@example.com")
    assert message["Subject"] == "Your CareerCast Digital Resume account is ready"
    sign_in(sandbox, "oli@example.com", password_in(message))
    with pytest.raises(AuthApiError):
        sign_in(sandbox, "oli@example.com", "Squatters-Passw0rd")
    assert run(settings_for(sandbox, crm_url)).emails_sent == 0


def test_an_address_held_by_an_identity_of_another_account_is_a_conflict_named_at_once(
    sandbox: Sandbox, crm_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Auth refuses the email because an identity of another account
    carries it; the worker finds that account with one exact look-up (no list of the users),
    parks the customer at once and names the account and the identity."""
    admin = create_client(sandbox.url, sandbox.service_role_key).auth.admin
    holder = admin.create_user(
        {"email": "someone.else@example.com", "password": "Holders-Passw0rd", "email_confirm": True}
    ).user
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.identities (provider_id, user_id, identity_data, provider,"
            " created_at, updated_at)"
            " values ('gg-77', %s, %s, 'google', now(), now())",
            (holder.id, json.dumps({"sub": "gg-77", "email": "Ida@Example.com"})),
        )
    # An unconfirmed account holds the other address, and an identity of another account too:
    # deleting the unconfirmed one would not free it (Auth counts the identity), so it is not
    # deleted and the conflict is named at once as well.
    squatter = admin.create_user(
        {"email": "two@example.com", "password": "Squatters-Passw0rd", "email_confirm": False}
    ).user
    holder2 = admin.create_user(
        {"email": "holder2@example.com", "password": "Holders-Passw0rd", "email_confirm": True}
    ).user
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.identities (provider_id, user_id, identity_data, provider,"
            " created_at, updated_at) values ('gh-9', %s, %s, 'github', now(), now())",
            (holder2.id, json.dumps({"sub": "gh-9", "email": "two@example.com"})),
        )
    add_sales(crm_url, ("ida@example.com", "Ida", 1, None), ("two@example.com", None, 1, None))
    sandbox.requests.reset()
    report = run(settings_for(sandbox, crm_url, sync_max_attempts=8))
    assert (report.created, report.taken_over) == (0, 0)
    assert sorted(f.email for f in report.failures) == ["ida@example.com", "two@example.com"]
    [(step, attempts, parked, reason)] = query(
        sandbox,
        "select step, attempts, parked_at is not null, reason from public.crm_sync_failures"
        " where email = 'ida@example.com'",
    )
    assert (step, attempts, parked) == ("account", 1, True)
    assert str(holder.id) in reason
    assert "'google' identity" in reason
    assert query(sandbox, "select count(*) from auth.users where id = %s", squatter.id) == [(1,)]
    [(step, attempts, parked, reason)] = query(
        sandbox,
        "select step, attempts, parked_at is not null, reason from public.crm_sync_failures"
        " where email = 'two@example.com'",
    )
    assert (step, attempts, parked) == ("account", 1, True)
    assert str(holder2.id) in reason
    listed = [
        k for k in sandbox.requests.snapshot() if k.route == "/admin/users" and k.method == "GET"
    ]
    assert listed == [], listed
    # Parked: the next cycle does not try again (nor delete the unconfirmed account then).
    sandbox.requests.reset()
    assert run(settings_for(sandbox, crm_url)).planned["parked"] == 2
    assert sandbox.requests.writes("auth") == 0
    # And support sees who holds the address.
    capsys.readouterr()
    assert status_command(settings_for(sandbox, crm_url), as_json=True) == 0
    shown = json.loads(capsys.readouterr().out)
    [listed_failure] = [f for f in shown["failed"] if f["email"] == "ida@example.com"]
    assert str(holder.id) in listed_failure["reason"]


@pytest.mark.scale
def test_thousands_of_customers_past_every_page(sandbox: Sandbox, crm_url: str) -> None:
    """2,500 customers: every page of the CRM, of the state and of the enrolment batches."""
    with psycopg.connect(crm_url, autocommit=True) as conn:
        conn.execute(
            "insert into sales_closure (email, digital_resume_sale_value)"
            " select 'Bulk' || g || '@Example.com', 1 from generate_series(1, 2500) g"
        )
    settings = settings_for(sandbox, crm_url, sync_concurrency=8)
    first = run(settings)
    assert (first.created, first.enrolled, first.emails_sent) == (2500, 2500, 2500)
    assert first.failures == []
    assert query(
        sandbox, "select count(*), sum(credits_remaining) from public.digital_resume_by_crm"
    ) == [(2500, 10000)]
    sandbox.requests.reset()
    second = run(settings)
    assert second.planned["nothing"] == 2500
    assert sandbox.requests.writes() == 0


def test_every_log_line_carries_the_run_id_and_no_secret(sandbox: Sandbox, crm_url: str) -> None:
    add_sales(crm_url, *[(f"log{i}@example.com", None, 1) for i in range(8)])
    settings = settings_for(sandbox, crm_url, sync_concurrency=4)
    stream = io.StringIO()
    configure_logging("json", "DEBUG", masker=SecretMasker(settings.secret_values()), stream=stream)
    sandbox.faults = FaultPlan(fault_rate=0.4, mix={FaultKind.UNAVAILABLE: 1}, seed=3)
    report = run(settings)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line["event"] == "retrying" for line in lines)
    assert {line.get("run_id") for line in lines} == {report.run_id}
    passwords = [password_in(m) for m in sandbox.mail]
    assert passwords
    for secret in (*passwords, sandbox.service_role_key):
        assert secret not in stream.getvalue()


def test_a_ten_kilobyte_name_is_capped_and_the_email_still_goes_out(
    sandbox: Sandbox, crm_url: str
) -> None:
    """The SMTP server answered 500 Line too long after the account existed."""
    add_sales(crm_url, ("long@example.com", "Ann " + "Lee" * 3400 + "\x07\x1b", 1, None))
    report = run(settings_for(sandbox, crm_url))
    assert (report.created, report.emails_sent, report.failures) == (1, 1, [])
    [(name,)] = query(sandbox, "select full_name from public.digital_resume_by_crm")
    assert name.startswith("Ann LeeLee")
    assert len(name) <= 200
    assert name.isprintable()


def test_setup_links_open_the_app_work_once_and_a_resent_one_is_the_same_link(
    sandbox: Sandbox, crm_url: str
) -> None:
    """The email links to the app's page with the token as query parameters (no
    /auth/v1/verify URL a mail scanner could burn); the app redeems it with verifyOtp. A
    re-sent setup link must not void one that may have arrived."""
    add_sales(crm_url, ("lin@example.com", "Lin", 1, None), ("lia@example.com", "Lia", 1, None))
    settings = settings_for(sandbox, crm_url, credentials_mode="setup_link")
    assert run(settings).emails_sent == 2
    [message] = mail_to(sandbox, "lin@example.com")
    body = text_of(message)
    html = str(message.get_body(preferencelist=("html",)).get_content())  # type: ignore[union-attr]
    assert not PASSWORD_LINE.search(body)
    assert "/auth/v1/verify" not in body + html
    assert sandbox.url not in body + html
    [link] = SETUP_LINK.findall(body)
    page = urlsplit(link)
    assert f"{page.scheme}://{page.netloc}{page.path}" == LOGIN_URL
    assert parse_qs(page.query)["type"] == ["recovery"]
    [lia_link] = SETUP_LINK.findall(text_of(mail_to(sandbox, "lia@example.com")[0]))

    # The record of the emails was lost (a kill after the server's 250): they are sent again,
    # each with the link it had.
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute("update public.digital_resume_by_crm set welcome_email_status = 'pending'")
    assert run(settings).emails_sent == 2
    assert SETUP_LINK.findall(text_of(mail_to(sandbox, "lin@example.com")[-1])) == [link]
    assert SETUP_LINK.findall(text_of(mail_to(sandbox, "lia@example.com")[-1])) == [lia_link]

    # With reuse turned off, a re-sent link is a new one, and the one before is void.
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute(
            "update public.digital_resume_by_crm set welcome_email_status = 'pending'"
            " where email = 'lia@example.com'"
        )
    run(settings_for(sandbox, crm_url, credentials_mode="setup_link", setup_link_reuse_seconds=0))
    [new_link] = SETUP_LINK.findall(text_of(mail_to(sandbox, "lia@example.com")[-1]))
    assert new_link != lia_link
    with pytest.raises(AuthApiError):
        create_client(sandbox.url, sandbox.anon_key).auth.verify_otp(
            {"token_hash": token_of(lia_link), "type": "recovery"}
        )
    app = create_client(sandbox.url, sandbox.anon_key)
    assert app.auth.verify_otp({"token_hash": token_of(new_link), "type": "recovery"}).user

    # Lin's link, sent twice, still works. What the app's page does on its button press: one
    # call, then the new password.
    app = create_client(sandbox.url, sandbox.anon_key)
    session = app.auth.verify_otp({"token_hash": token_of(link), "type": "recovery"})
    assert session.user is not None
    assert session.user.email == "lin@example.com"
    app.auth.update_user({"password": "Lins-Own-Passw0rd", "data": {"must_change_password": False}})
    sign_in(sandbox, "lin@example.com", "Lins-Own-Passw0rd")
    # A link works once.
    with pytest.raises(AuthApiError):
        create_client(sandbox.url, sandbox.anon_key).auth.verify_otp(
            {"token_hash": token_of(link), "type": "recovery"}
        )


def test_support_resends_a_welcome_email_and_tells_a_customers_story(
    sandbox: Sandbox, crm_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`crm-sync resend EMAIL` and `crm-sync status EMAIL`."""
    from sync_worker.errors import ConfigError
    from sync_worker.support import resend

    add_sales(crm_url, ("sue@example.com", "Sue", 1, None))
    settings = settings_for(sandbox, crm_url)
    first_run = run(settings)
    [first] = mail_to(sandbox, "sue@example.com")
    with LiveServices(settings, policy=FAST) as live:
        # Never signed in: the same credentials again, so the first email still works.
        assert resend(live, " Sue@Example.com", worker="support", run_id="resend-1", ttl=5) == (
            "new_account"
        )
        with pytest.raises(ConfigError, match="not an enrolled customer"):
            resend(live, "nobody@example.com", worker="support", run_id="resend-x", ttl=5)
        with pytest.raises(ConfigError, match="EMAIL"):
            resend(live, "not an email", worker="support", run_id="resend-y", ttl=5)
    again = mail_to(sandbox, "sue@example.com")[-1]
    assert password_in(again) == password_in(first)
    assert again["Message-ID"] == first["Message-ID"]
    sign_in(sandbox, "sue@example.com", password_in(first))
    # Signed in now: a re-send adds no credentials, it says where the credits went.
    with LiveServices(settings, policy=FAST) as live:
        assert resend(live, "sue@example.com", worker="support", run_id="resend-2", ttl=5) == (
            "credits_added"
        )
    assert len(mail_to(sandbox, "sue@example.com")) == 3
    assert query(
        sandbox, "select run_id, status from public.crm_sync_runs order by started_at"
    ) == [
        ("resend-1", "succeeded"),
        ("resend-x", "failed"),
        ("resend-2", "succeeded"),
    ]
    capsys.readouterr()
    assert status_command(settings, as_json=True, email="sue@example.com") == 0
    story = json.loads(capsys.readouterr().out)
    assert story["account"]["created_by_crm_sync"] is True
    assert story["account"]["last_sign_in_at"] is not None
    assert story["tracking"]["account_origin"] == "created"
    assert [(e["kind"], e["run_id"]) for e in story["welcome_emails"]] == [
        ("new_account", first_run.run_id),
        ("new_account", "resend-1"),
        ("credits_added", "resend-2"),
    ]
    ids = [e["message_id"] for e in story["welcome_emails"]]
    assert ids[0] == ids[1] == first["Message-ID"] != ids[2]
    assert status_command(settings, as_json=False, email="sue@example.com") == 0
    text = capsys.readouterr().out
    assert "created by crm-sync" in text
    assert "resend-2" in text


def test_an_invalid_crm_row_is_reported_when_it_appears_or_changes_and_listed_in_status(
    sandbox: Sandbox, crm_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a warning on every cycle for ever; the current list in status."""
    add_sales(crm_url, ("ok@example.com", None, 1, "AWL-1"), ("not-an-email", None, 1, "AWL-2"))
    settings = settings_for(sandbox, crm_url)

    def warnings() -> list[dict[str, Any]]:
        stream = io.StringIO()
        configure_logging(
            "json", "INFO", masker=SecretMasker(settings.secret_values()), stream=stream
        )
        run(settings)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [line for line in lines if line["event"] == "crm_row_invalid"]

    try:
        assert [w["email"] for w in warnings()] == ["not-an-email"]
        assert warnings() == []  # the same row, the next cycle: nothing new to say
        with psycopg.connect(crm_url, autocommit=True) as conn:
            conn.execute("update sales_closure set email = 'still@@bad' where lead_id = 'AWL-2'")
        assert [w["email"] for w in warnings()] == ["still@@bad"]
    finally:
        configure_logging("console", "INFO")
    capsys.readouterr()
    assert status_command(settings, as_json=True) == 0
    listed = json.loads(capsys.readouterr().out)["invalid_rows"]
    assert [(r["raw_email"], r["lead_id"]) for r in listed] == [("still@@bad", "AWL-2")]
    assert status_command(settings, as_json=False) == 0
    assert "still@@bad" in capsys.readouterr().out
