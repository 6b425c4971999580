"""The one Retry-After parser, used by the Supabase and the Resend adapters alike."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from sync_worker.errors import SupabaseError
from sync_worker.retrying import RetryPolicy, retry_after_seconds

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Mon, 30 Nov 2026 12:00:07 GMT", 7.0),  # an HTTP date (RFC 9110, 10.2.3)
        ("Mon, 30 Nov 2026 11:59:00 GMT", 0.0),  # already past
        (None, None),
        ("", None),
        ("soon", None),
    ],
)
def test_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds


def test_a_policy_tells_its_own_listeners_of_every_retry_and_only_them() -> None:
    """The daemon counts retries in /metrics through its policy's listener: a policy made
    without one (another process's, a test's) tells nobody, and nothing is left behind."""
    heard: list[str] = []
    policy = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.001, listeners=(heard.append,))
    calls = 0

    def down_twice() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise SupabaseError("HTTP 503", status=503, retriable=True)
        return "ok"

    assert policy.call("read rows", down_twice) == "ok"
    assert heard == ["read rows", "read rows"]

    calls = 0
    assert RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.001).call("x", down_twice)
    assert heard == ["read rows", "read rows"]

    # What is derived from the policy (a patient release, a mailer's own numbers) tells them too.
    assert dataclasses.replace(policy, attempts=8).listeners == policy.listeners
    assert RetryPolicy(attempts=2).observed_by(policy.listeners).listeners == policy.listeners
    assert RetryPolicy().observed_by(()) == RetryPolicy()


def test_the_mailer_of_a_cycle_retries_under_the_listeners_of_its_supabase_policy() -> None:
    from sync_worker.config import Settings
    from sync_worker.services import LiveServices
    from sync_worker.smtp_mailer import SmtpMailer

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        crm_database_url="postgresql://crm@localhost/crm",
        supabase_url="http://localhost:54321",
        supabase_service_role_key="sb_secret_test",
        app_login_url="https://app.example/login",
        email_from="no-reply@example.com",
        smtp_host="localhost",
    )
    heard: list[str] = []
    policy = RetryPolicy(listeners=(heard.append,))
    with LiveServices(settings, policy) as live:
        mailer = live.for_cycle().mailer
    assert isinstance(mailer, SmtpMailer)
    assert mailer._retry.listeners == (heard.append,)
    assert mailer._retry.attempts == SmtpMailer.DEFAULT_RETRY.attempts
