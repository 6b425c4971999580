"""Every branch of a cycle, on in-memory fakes: no network, no database (the end-to-end runs
on the local stack are in test_cycle.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from sync_worker import cycle
from sync_worker.customers import (
    AccountOrigin,
    CredentialsMode,
    CustomerFailure,
    IdentityHolder,
    Outcome,
    Step,
)
from sync_worker.cycle import CycleOptions, run_cycle
from sync_worker.errors import ExitCode, MailError, MailUnavailable, SupabaseError
from sync_worker.metrics import SyncMetrics
from sync_worker.report import CycleReport
from sync_worker.settle import OUTAGE_THRESHOLD
from sync_worker.shards import shard_of
from sync_worker.welcome_email import WelcomeEmail
from tests.fakes import NOW, OPTIONS, FakeProject, outage, refusal


def run(project: FakeProject, options: CycleOptions = OPTIONS, **kwargs: bool) -> CycleReport:
    return run_cycle(options, project.services(), run_id="test", **kwargs)


def test_a_new_customer_gets_an_account_credits_and_one_email() -> None:
    project = FakeProject()
    project.sell("ann@example.com", name="Ann")
    report = run(project)
    assert (report.created, report.enrolled, report.credits_granted, report.emails_sent) == (
        1,
        1,
        4,
        1,
    )
    assert report.outcome is Outcome.SUCCEEDED
    assert report.exit_code is ExitCode.OK
    assert report.failures == []
    [message] = project.mailer.sent
    assert message.kind == "new_account"
    assert message.name == "Ann"
    assert message.login_url == OPTIONS.login_url
    assert message.temporary_password == project.auth.accounts["ann@example.com"].password
    tracked = project.store.tracking["ann@example.com"]
    assert (tracked.is_active, tracked.welcome_email_sent, tracked.credits_remaining) == (
        True,
        True,
        4,
    )
    assert project.mailer.closed == 1

    project.store.writes.clear()
    again = run(project)
    assert again.planned["nothing"] == 1
    assert (again.created, again.enrolled, again.emails_sent) == (0, 0, 0)
    assert again.exit_code is ExitCode.OK
    assert project.store.writes == []
    assert len(project.mailer.sent) == 1


def test_a_linked_account_keeps_its_password_and_is_told_of_its_credits() -> None:
    project = FakeProject()
    kim = project.auth.add("kim@example.com")
    project.sell("kim@example.com")
    report = run(project)
    assert (report.created, report.linked, report.emails_sent) == (0, 1, 1)
    [message] = project.mailer.sent
    assert message.kind == "credits_added"
    assert message.temporary_password is None
    assert message.credits_granted == 4
    assert kim.password == "their-own"
    assert ("set_password", "kim@example.com") not in project.auth.calls
    assert project.store.tracking["kim@example.com"].account_origin is AccountOrigin.LINKED
    again = run(project)
    assert (again.linked, again.emails_sent, again.credits_granted) == (0, 0, 0)
    assert kim.password == "their-own"


def test_an_account_of_ours_cut_off_before_enrolment_is_resumed_with_a_fresh_password() -> None:
    project = FakeProject()
    cut = project.auth.add("cut@example.com", ours=True, signed_in=False)
    project.sell("cut@example.com")
    report = run(project)
    assert (report.created, report.linked, report.emails_sent) == (1, 0, 1)
    [message] = project.mailer.sent
    assert message.kind == "new_account"
    assert message.temporary_password == cut.password != "their-own"


def test_a_retried_email_carries_the_password_of_the_one_it_may_duplicate() -> None:
    """The first email may have arrived (the server took it, its reply was
    lost): the retry carries the same password, set again right before it, so every email
    the customer holds works."""
    project = FakeProject()
    project.sell("mo@example.com")
    project.mailer.lost_reply["mo@example.com"] = MailError("lost reply", retriable=True)
    first = run(project)
    assert [(f.email, f.step) for f in first.failures] == [("mo@example.com", Step.EMAIL)]
    [delivered] = project.mailer.sent

    del project.mailer.lost_reply["mo@example.com"]
    project.clock = NOW + timedelta(hours=1)
    second = run(project)
    assert second.planned["resume_email"] == 1
    [_, again] = project.mailer.sent
    account = project.auth.accounts["mo@example.com"]
    assert again.temporary_password == delivered.temporary_password == account.password
    assert again.idempotency_key == delivered.idempotency_key
    assert ("set_password", "mo@example.com") in project.auth.calls
    assert project.store.failures == {}


def test_a_resumed_account_of_an_earlier_version_gets_its_derived_password() -> None:
    project = FakeProject()
    project.sell("old@example.com")
    legacy = project.auth.add("old@example.com", ours=True, signed_in=False)  # random password
    run(project)
    [message] = project.mailer.sent
    assert message.temporary_password == legacy.password != "their-own"


def test_a_retried_email_to_someone_who_already_signed_in_changes_no_password() -> None:
    project = FakeProject()
    project.sell("sig@example.com")
    project.mailer.failing["sig@example.com"] = MailError("452 busy", retriable=True)
    run(project)
    account = project.auth.accounts["sig@example.com"]
    account.has_signed_in = True
    password = account.password
    del project.mailer.failing["sig@example.com"]
    project.clock = NOW + timedelta(hours=1)
    run(project)
    [message] = project.mailer.sent
    assert message.kind == "credits_added"
    assert account.password == password


def test_setup_link_mode_sends_a_link_and_no_password() -> None:
    project = FakeProject()
    project.sell("lin@example.com")
    report = run(project, dataclasses.replace(OPTIONS, credentials_mode=CredentialsMode.SETUP_LINK))
    assert report.emails_sent == 1
    [message] = project.mailer.sent
    # The link opens the app's page with the token as query parameters: fetching it (a mail
    # scanner, a link preview) consumes nothing; the page redeems it with verifyOtp.
    assert message.setup_link == (
        f"{OPTIONS.login_url}?token_hash=hash-lin%40example.com&type=recovery"
    )
    assert "/auth/v1/verify" not in message.setup_link
    assert message.temporary_password is None
    assert project.auth.accounts["lin@example.com"].password is None


def test_setup_links_open_the_configured_setup_page_and_keep_its_query() -> None:
    project = FakeProject()
    project.sell("lia@example.com")
    page = "https://app.example/welcome/set-password?lang=en"
    options = dataclasses.replace(
        OPTIONS, credentials_mode=CredentialsMode.SETUP_LINK, setup_url=page
    )
    run(project, options)
    [message] = project.mailer.sent
    assert message.setup_link == f"{page}&token_hash=hash-lia%40example.com&type=recovery"


def test_email_disabled_enrols_and_sends_nothing() -> None:
    project = FakeProject()
    project.sell("quiet@example.com")
    services = dataclasses.replace(project.services(), mailer=None)  # EMAIL_BACKEND=disabled
    report = run_cycle(OPTIONS, services, run_id="test")
    assert (report.enrolled, report.emails_sent) == (1, 0)
    assert project.mailer.sent == []
    assert not project.store.tracking["quiet@example.com"].welcome_email_sent


def test_one_failing_customer_never_stops_the_others_and_is_parked_at_max_attempts() -> None:
    project = FakeProject()
    project.sell("ok@example.com", "no@example.com")
    project.auth.failing["no@example.com"] = refusal()
    first = run(project)
    assert first.created == 1
    assert [(f.email, f.step) for f in first.failures] == [("no@example.com", Step.ACCOUNT)]
    assert first.outcome is Outcome.PARTIAL
    assert first.exit_code is ExitCode.CUSTOMERS_FAILED
    failure = project.store.failures["no@example.com"]
    assert (failure.step, failure.attempts, failure.parked) == (Step.ACCOUNT, 1, False)
    assert failure.next_attempt_at == NOW + timedelta(minutes=5)
    assert failure.first_failed_at == failure.last_failed_at == NOW

    waiting = run(project)
    assert waiting.planned["wait"] == 1
    assert waiting.exit_code is ExitCode.OK

    for attempt in (2, 3):
        project.clock += timedelta(hours=7)
        report = run(project)
        assert report.failures[0].attempts == attempt
    failure = project.store.failures["no@example.com"]
    assert (failure.attempts, failure.parked, failure.next_attempt_at) == (3, True, None)
    assert failure.first_failed_at == NOW
    project.clock += timedelta(days=1)
    parked = run(project)
    assert parked.planned["parked"] == 1
    assert parked.exit_code is ExitCode.OK
    assert project.auth.calls.count(("create", "no@example.com")) == 3
    assert len(project.mailer.to("ok@example.com")) == 1


def test_a_failure_is_cleared_once_the_customer_is_done() -> None:
    project = FakeProject()
    project.sell("back@example.com")
    project.auth.failing["back@example.com"] = refusal()
    run(project)
    assert "back@example.com" in project.store.failures
    del project.auth.failing["back@example.com"]
    project.clock += timedelta(hours=1)
    report = run(project)
    assert report.emails_sent == 1
    assert project.store.failures == {}


def test_a_failure_of_someone_who_left_the_crm_unenrolled_is_cleared() -> None:
    project = FakeProject()
    project.sell("gone@example.com")
    project.auth.failing["gone@example.com"] = refusal()
    run(project)
    del project.crm["gone@example.com"]
    report = run(project)
    assert report.planned == dict.fromkeys(report.planned, 0)
    assert project.store.failures == {}


def test_an_outage_aborts_the_cycle_and_counts_against_no_customer() -> None:
    project = FakeProject()
    emails = [f"down{i}@example.com" for i in range(OUTAGE_THRESHOLD + 3)]
    project.sell(*emails)
    for email in emails:
        project.auth.failing[email] = outage()
    report = run(project, dataclasses.replace(OPTIONS, concurrency=1))
    assert report.outcome is Outcome.FAILED
    assert report.exit_code is ExitCode.UNAVAILABLE
    assert report.aborted is not None
    assert report.aborted.startswith("Supabase is unreachable")
    # The cycle stopped at the threshold: the rest were not even tried.
    assert len(report.failures) == OUTAGE_THRESHOLD
    assert project.store.failures == {}
    assert project.store.writes == []
    # Counted against nobody: once Supabase is back, the next cycle serves every one of them.
    project.auth.failing.clear()
    assert run(project).created == len(emails)


def test_outages_with_successes_between_them_do_not_abort() -> None:
    project = FakeProject()
    emails = [f"c{i:02}@example.com" for i in range(2 * OUTAGE_THRESHOLD)]
    project.sell(*emails)
    for email in emails[::2]:  # every other customer: never five in a row
        project.auth.failing[email] = outage()
    report = run(project, dataclasses.replace(OPTIONS, concurrency=1))
    assert report.aborted is None
    assert report.created == OUTAGE_THRESHOLD
    # Not aborted: each failure counts as an attempt.
    assert {f.attempts for f in project.store.failures.values()} == {1}
    assert len(project.store.failures) == OUTAGE_THRESHOLD


def test_a_transient_enrolment_failure_aborts_and_leaves_accounts_for_the_next_run() -> None:
    project = FakeProject()
    project.sell("en1@example.com", "en2@example.com")
    project.store.enrol_error = outage("enrol customers")
    report = run(project)
    assert report.outcome is Outcome.FAILED
    assert report.aborted is not None
    assert "enrolment" in report.aborted
    assert report.created == 2
    assert {f.step for f in report.failures} == {Step.ENROL}
    assert project.mailer.sent == []
    assert project.store.failures == {}  # an outage counts against nobody

    project.store.enrol_error = None
    again = run(project)
    assert (again.created, again.linked, again.emails_sent) == (2, 0, 2)


def test_a_refused_enrolment_is_a_failure_of_that_customer_only() -> None:
    project = FakeProject()
    project.sell("ok@example.com", "bad@example.com")
    project.store.refuse["bad@example.com"] = "profiles_email_check"
    report = run(project)
    assert report.emails_sent == 1
    [failure] = report.failures
    assert (failure.email, failure.step) == ("bad@example.com", Step.ENROL)
    assert failure.reason == "error: profiles_email_check"
    assert report.outcome is Outcome.PARTIAL


def test_a_permanent_enrolment_error_fails_the_batch_without_aborting() -> None:
    project = FakeProject()
    project.sell("x@example.com")
    project.store.enrol_error = refusal("enrol customers")
    report = run(project)
    assert report.aborted is None
    assert [f.step for f in report.failures] == [Step.ENROL]
    assert project.store.failures["x@example.com"].attempts == 1


def test_an_email_accepted_whose_recording_fails_is_a_record_email_failure() -> None:
    project = FakeProject()
    project.sell("rec@example.com", "fine@example.com")
    project.store.record_email_error["rec@example.com"] = refusal("record welcome email")
    report = run(project)
    assert len(project.mailer.sent) == 2
    assert report.emails_sent == 1
    [failure] = report.failures
    assert (failure.email, failure.step) == ("rec@example.com", Step.RECORD_EMAIL)
    assert not project.store.tracking["rec@example.com"].welcome_email_sent


def test_mail_unavailable_aborts_and_every_email_stays_owed() -> None:
    project = FakeProject()
    project.sell("m1@example.com", "m2@example.com")
    project.mailer.failing = {
        e: MailUnavailable("cannot talk to the SMTP server", retriable=True) for e in project.crm
    }
    report = run(project)
    assert report.aborted is not None
    assert report.aborted.startswith("mail is unreachable")
    assert report.exit_code is ExitCode.UNAVAILABLE
    assert (report.created, report.emails_sent) == (2, 0)
    assert project.store.failures == {}
    assert all(not row.welcome_email_sent for row in project.store.tracking.values())
    assert {row.credits_remaining for row in project.store.tracking.values()} == {4}
    project.mailer.failing = {}
    back = run(project)
    assert (back.created, back.emails_sent, back.failures) == (0, 2, [])
    assert back.exit_code is ExitCode.OK
    assert run(project).emails_sent == 0
    assert len(project.mailer.sent) == 2


def test_removed_from_the_crm_is_deactivated_and_coming_back_reactivates() -> None:
    project = FakeProject()
    project.sell("pat@example.com", "stays@example.com")
    run(project)
    del project.crm["pat@example.com"]
    gone = run(project)
    assert gone.deactivated == 1
    assert not project.store.tracking["pat@example.com"].is_active
    project.sell("pat@example.com")
    back = run(project)
    assert (back.reactivated, back.emails_sent, back.credits_granted) == (1, 0, 0)
    assert project.store.tracking["pat@example.com"].is_active
    assert project.store.tracking["pat@example.com"].credits_remaining == 4
    assert project.store.tracking["pat@example.com"].welcome_email_sent
    assert len(project.mailer.to("pat@example.com")) == 1


def test_a_failed_deactivation_is_recorded_against_the_customer() -> None:
    project = FakeProject()
    project.sell("dee@example.com", "stays@example.com")
    run(project)
    del project.crm["dee@example.com"]
    project.store.deactivate_error = refusal("deactivate customers")
    report = run(project)
    assert [(f.email, f.step) for f in report.failures] == [("dee@example.com", Step.DEACTIVATE)]


def test_a_changed_name_refreshes_the_tracking_row_without_an_email() -> None:
    project = FakeProject()
    project.sell("ren@example.com", name="Old")
    run(project)
    project.sell("ren@example.com", name="New")
    report = run(project)
    assert (report.refreshed, report.emails_sent) == (1, 0)
    assert project.store.tracking["ren@example.com"].full_name == "New"


def test_dry_run_writes_nothing_and_previews_the_plan() -> None:
    project = FakeProject()
    project.sell("dry@example.com")
    report = run(project, dry_run=True)
    assert report.planned["provision"] == 1
    assert report.preview["provision"] == ["dry@example.com"]
    assert "DRY RUN" in report.render()
    assert project.auth.calls == []
    assert project.store.writes == []
    assert project.mailer.sent == []


def test_a_stop_during_provisioning_enrols_what_was_created_and_sends_nothing() -> None:
    project = FakeProject()
    emails = [f"s{i}@example.com" for i in range(6)]
    project.sell(*emails)
    created: list[str] = []

    def created_one(email: str) -> None:
        created.append(email)

    project.auth.on_create = created_one
    project.stop = lambda: len(created) >= 2
    report = run(project, dataclasses.replace(OPTIONS, concurrency=1))
    assert report.interrupted
    assert report.outcome is Outcome.INTERRUPTED
    assert report.exit_code is ExitCode.CUSTOMERS_FAILED
    assert report.created == 2
    # Created accounts are enrolled even when stopping, so no account is left half-done.
    assert report.enrolled == 2
    assert project.mailer.sent == []
    assert project.store.failures == {}
    project.stop = lambda: False
    resumed = run(project)
    assert (resumed.created, resumed.emails_sent) == (4, 6)


def test_a_stop_during_the_email_phase_leaves_the_rest_owed() -> None:
    project = FakeProject()
    project.sell("e1@example.com", "e2@example.com", "e3@example.com")

    def stop_after_first(message: WelcomeEmail) -> None:
        project.stop = lambda: True

    project.mailer.before_send = stop_after_first
    report = run(project)
    assert report.interrupted
    assert report.emails_sent == 1
    assert sum(not row.welcome_email_sent for row in project.store.tracking.values()) == 2
    project.stop = lambda: False
    project.mailer.before_send = lambda message: None
    assert run(project).emails_sent == 2


def test_a_stop_before_deactivation_deactivates_nobody() -> None:
    project = FakeProject()
    project.sell("d1@example.com", "stays@example.com")
    run(project)
    del project.crm["d1@example.com"]
    project.stop = lambda: True
    report = run(project)
    assert report.interrupted
    assert report.deactivated == 0
    assert project.store.tracking["d1@example.com"].is_active


def test_settled_failures_keep_their_first_failure_time() -> None:
    project = FakeProject()
    project.sell("f@example.com")
    project.store.failures["f@example.com"] = CustomerFailure(
        "f@example.com",
        Step.ACCOUNT,
        "earlier",
        attempts=2,
        next_attempt_at=NOW - timedelta(minutes=1),
        first_failed_at=NOW - timedelta(days=2),
    )
    project.auth.failing["f@example.com"] = refusal()
    report = run(project)
    [failure] = report.failures
    assert failure.attempts == 3
    assert failure.parked  # OPTIONS.max_attempts == 3
    assert failure.first_failed_at == NOW - timedelta(days=2)
    assert failure.last_failed_at == NOW


@pytest.mark.parametrize(
    ("aborted", "interrupted", "failed", "outcome", "code"),
    [
        (False, False, False, Outcome.SUCCEEDED, ExitCode.OK),
        (False, False, True, Outcome.PARTIAL, ExitCode.CUSTOMERS_FAILED),
        (False, True, False, Outcome.INTERRUPTED, ExitCode.CUSTOMERS_FAILED),
        (False, True, True, Outcome.INTERRUPTED, ExitCode.CUSTOMERS_FAILED),
        (True, True, True, Outcome.FAILED, ExitCode.UNAVAILABLE),
    ],
)
def test_one_mapping_from_a_report_to_outcome_and_exit_code(
    aborted: bool, interrupted: bool, failed: bool, outcome: Outcome, code: ExitCode
) -> None:
    report = CycleReport(run_id="r", started_at=NOW)
    report.aborted = "Supabase is unreachable: down" if aborted else None
    report.interrupted = interrupted
    report.failures = [CustomerFailure("a@x.co", Step.ACCOUNT, "no")] if failed else []
    assert report.outcome is outcome
    assert report.exit_code is code
    assert report.log_fields()["outcome"] == outcome.value


def test_an_unconfirmed_account_is_taken_over_never_linked_as_it_is() -> None:
    """Pre-hijacking: anyone can sign up with the customer's email and wait for the credits.
    The squatter's account is deleted (with every way in its creator gave it) and a fresh one
    created in its place."""
    project = FakeProject()
    squatter = project.auth.add("vic@example.com", confirmed=False, signed_in=False)
    project.sell("vic@example.com", name="Vic")
    report = run(project)
    assert (report.created, report.linked, report.taken_over) == (0, 0, 1)
    fresh = project.auth.accounts["vic@example.com"]
    assert fresh.id != squatter.id
    assert ("delete", "vic@example.com") in project.auth.calls
    [message] = project.mailer.sent
    assert message.kind == "new_account"
    assert message.name == "Vic"
    assert message.temporary_password == fresh.password
    assert fresh.password not in (None, "their-own")
    assert fresh.email_confirmed
    assert fresh.taken_over
    tracked = project.store.tracking["vic@example.com"]
    assert tracked.account_origin is AccountOrigin.TAKEN_OVER
    assert tracked.user_id == fresh.id
    assert (tracked.full_name, tracked.credits_remaining) == ("Vic", 4)
    assert "unconfirmed taken over" in report.render()
    assert run(project).emails_sent == 0


def test_an_unconfirmed_account_in_setup_link_mode_is_replaced_too() -> None:
    project = FakeProject()
    squatter = project.auth.add("sue@example.com", confirmed=False, signed_in=False)
    project.sell("sue@example.com")
    run(project, dataclasses.replace(OPTIONS, credentials_mode=CredentialsMode.SETUP_LINK))
    [message] = project.mailer.sent
    assert message.kind == "new_account"
    assert message.temporary_password is None
    assert message.setup_link is not None
    assert message.setup_link.startswith(f"{OPTIONS.login_url}?token_hash=")
    fresh = project.auth.accounts["sue@example.com"]
    # The squatter's password went with their account; the new one has none anybody knows.
    assert fresh.id != squatter.id
    assert fresh.password is None


def test_an_address_held_by_another_accounts_identity_is_parked_at_once_with_its_owner() -> None:
    """Auth's duplicate check also matches identities' emails."""
    project = FakeProject()
    project.auth.identities["ida@example.com"] = IdentityHolder("user-holder", "github")
    project.sell("ida@example.com")
    report = run(project)
    assert report.created == 0
    assert [f.email for f in report.failures] == ["ida@example.com"]
    failure = project.store.failures["ida@example.com"]
    assert (failure.step, failure.attempts, failure.parked) == (Step.ACCOUNT, 1, True)
    assert "user-holder" in failure.reason
    assert "'github' identity" in failure.reason
    # One exact look-up; nothing is retried.
    assert project.auth.calls.count(("find", "ida@example.com")) == 1
    again = run(project)
    assert again.created == 0
    assert again.planned["parked"] == 1
    assert project.auth.calls.count(("create", "ida@example.com")) == 1


def test_a_sign_in_on_an_account_taken_over_in_place_still_gets_credentials() -> None:
    """An account an earlier crm-sync took over in place (its creator's
    identities kept) may show the squatter's sign-in; its resumed email still carries
    credentials, never a bare "credits added"."""
    project = FakeProject()
    project.sell("tom@example.com")
    account = project.auth.add("tom@example.com", confirmed=True, signed_in=True)
    account.taken_over = True
    report = run(project)
    assert report.taken_over == 1
    [message] = project.mailer.sent
    assert message.kind == "new_account"
    assert message.temporary_password == account.password != "their-own"


def test_a_taken_over_account_cut_off_before_its_email_is_resumed_as_taken_over() -> None:
    project = FakeProject()
    project.sell("tia@example.com")
    account = project.auth.add("tia@example.com", confirmed=True, signed_in=False)
    account.taken_over = True
    report = run(project)
    assert report.taken_over == 1
    [message] = project.mailer.sent
    assert message.kind == "new_account"
    assert message.temporary_password == account.password != "their-own"


def test_a_linked_account_is_told_how_to_take_it_over_from_its_inbox() -> None:
    project = FakeProject()
    project.auth.add("kim@example.com")
    project.sell("kim@example.com")
    reset = "https://app.example/forgot-password"
    run(project, dataclasses.replace(OPTIONS, password_reset_url=reset))
    [message] = project.mailer.sent
    assert message.kind == "credits_added"
    assert message.password_reset_url == reset


def test_a_failure_reason_is_stored_without_any_secret() -> None:
    from sync_worker.masking import SecretMasker

    secret = "re_live_9f8e7d6c5b4a"
    project = FakeProject(masker=SecretMasker([secret]))
    project.sell("sec@example.com")
    project.mailer.failing["sec@example.com"] = MailError(
        f"Invalid header value b'Bearer {secret}\\n'", retriable=True
    )
    report = run(project)
    stored = project.store.failures["sec@example.com"].reason
    assert secret not in stored
    assert "********" in stored
    assert secret not in report.render()


def test_a_permanent_refusal_is_parked_at_once_with_its_reason() -> None:
    """An SMTP 5xx or an HTTP 4xx about the request is not retried for days
    (each retried email would also set a new password)."""
    project = FakeProject()
    project.sell("five@example.com", "four@example.com")
    project.mailer.failing["five@example.com"] = MailError(
        "the SMTP server did not accept the message: 550 no such mailbox", permanent=True
    )
    project.auth.failing["four@example.com"] = SupabaseError(
        "create account: Unable to validate email address", status=400, permanent=True
    )
    report = run(project)
    assert {f.email: (f.step, f.attempts, f.parked) for f in report.failures} == {
        "five@example.com": (Step.EMAIL, 1, True),
        "four@example.com": (Step.ACCOUNT, 1, True),
    }
    stored = project.store.failures["five@example.com"]
    assert "550 no such mailbox" in stored.reason
    assert stored.next_attempt_at is None
    password = project.auth.accounts["five@example.com"].password
    project.clock += timedelta(days=2)
    later = run(project)
    assert later.planned["parked"] == 2
    assert project.auth.accounts["five@example.com"].password == password


def _enrolled_project(count: int) -> FakeProject:
    project = FakeProject()
    project.sell(*[f"c{i:03}@example.com" for i in range(count)])
    run(project)
    project.mailer.sent.clear()
    return project


def test_a_mass_deactivation_is_held_back_and_says_why() -> None:
    """A wrong CRM_EMAIL_COLUMN planned to deactivate 47 of 49 customers."""
    project = _enrolled_project(49)
    for email in sorted(project.crm)[2:]:
        del project.crm[email]
    report = run(project)
    assert report.planned["deactivate"] == 47
    assert report.deactivated == 0
    assert all(row.is_active for row in project.store.tracking.values())
    assert report.deactivation_blocked is not None
    assert "47" in report.deactivation_blocked
    assert "--allow-mass-deactivation" in report.deactivation_blocked
    assert report.outcome is Outcome.PARTIAL
    assert report.exit_code is ExitCode.CUSTOMERS_FAILED
    assert "DEACTIVATION HELD BACK" in report.render()
    assert report.log_fields()["deactivation_blocked"] == report.deactivation_blocked
    metrics = SyncMetrics()
    metrics.observe_cycle(report)
    assert b"crm_sync_deactivation_guard_tripped 1.0" in metrics.exposition()
    # A dry run says the same before anything happens.
    assert run(project, dry_run=True).deactivation_blocked == report.deactivation_blocked
    # An operator lets one run through.
    allowed = run(project, dataclasses.replace(OPTIONS, allow_mass_deactivation=True))
    assert (allowed.deactivated, allowed.deactivation_blocked) == (47, None)


def test_an_empty_crm_while_customers_are_active_is_suspicious_too() -> None:
    project = _enrolled_project(3)
    project.crm.clear()
    report = run(project)
    assert report.deactivated == 0
    assert report.deactivation_blocked is not None
    assert "no eligible customer" in report.deactivation_blocked


def test_ordinary_churn_is_deactivated() -> None:
    project = _enrolled_project(49)
    for email in sorted(project.crm)[:4]:
        del project.crm[email]
    report = run(project)
    assert (report.deactivated, report.deactivation_blocked) == (4, None)
    assert report.outcome is Outcome.SUCCEEDED


def test_a_slow_account_holds_back_neither_the_next_accounts_nor_the_emails() -> None:
    # One creation stuck in retries must not stall the others: accounts keep being created
    # `concurrency` at a time, and those ready are enrolled and emailed meanwhile.
    project = FakeProject()
    emails = [f"n{i:03}@example.com" for i in range(80)]
    project.sell(*emails)
    emailed = threading.Event()
    waited: list[bool] = []

    def slow_first(email: str) -> None:
        if email == emails[0]:
            waited.append(emailed.wait(timeout=10))

    project.auth.on_create = slow_first
    project.mailer.before_send = lambda message: emailed.set()
    report = run(project, dataclasses.replace(OPTIONS, concurrency=2))
    assert waited == [True]
    assert (report.created, report.enrolled, report.emails_sent) == (80, 80, 80)
    assert report.outcome is Outcome.SUCCEEDED


def test_accounts_wait_for_a_slow_mail_server_instead_of_piling_up() -> None:
    # A slow mail server holds account creation back to two batches ahead of the emails:
    # memory stays flat, and a run killed meanwhile leaves few accounts without their email.
    project = FakeProject()
    project.sell(*(f"m{i:03}@example.com" for i in range(300)))
    ahead: list[int] = []
    project.auth.on_create = lambda email: ahead.append(
        len(project.auth.accounts) - len(project.mailer.sent)
    )
    project.mailer.before_send = lambda message: time.sleep(0.001)
    report = run(project, dataclasses.replace(OPTIONS, concurrency=2))
    assert report.emails_sent == 300
    batch = cycle.MIN_BATCH
    assert max(ahead) <= 3 * batch + 2 * 2  # two batches queued, one filling, two per worker


def test_a_mail_outage_still_enrols_every_account_already_created() -> None:
    # The mail server going down stops the sending, not Supabase: accounts created meanwhile
    # get their credits and tracking row now, and only their emails stay owed.
    project = FakeProject()
    project.sell(*(f"o{i:03}@example.com" for i in range(120)))

    def down_after_five(message: WelcomeEmail) -> None:
        if len(project.mailer.sent) >= 5:
            # Down once more accounts exist than the first batch: their batches are
            # delivered after the outage.
            deadline = time.monotonic() + 10
            while len(project.auth.accounts) < 40 and time.monotonic() < deadline:
                time.sleep(0.001)
            raise MailUnavailable("cannot talk to the SMTP server", retriable=True)

    project.mailer.before_send = down_after_five
    report = run(project, dataclasses.replace(OPTIONS, concurrency=2))
    assert report.aborted is not None
    assert report.aborted.startswith("mail is unreachable")
    assert report.emails_sent == 5
    assert report.created >= 40
    assert set(project.store.tracking) == set(project.auth.accounts)
    assert report.enrolled == report.created


def test_a_shard_leaves_the_failures_of_other_shards_alone() -> None:
    # The failures table is one for all shards: a shard that cleared the failures of customers
    # it never sees would unpark them and cut their retry delays short.
    project = FakeProject()
    parked, waiting = (
        next(e for e in (f"p{i}@example.com" for i in range(100)) if shard_of(e, 2) == 1),
        next(e for e in (f"w{i}@example.com" for i in range(100)) if shard_of(e, 2) == 1),
    )
    project.sell(parked, waiting)
    project.store.record_email_error[parked] = SupabaseError(
        "record: 400", status=400, permanent=True
    )
    project.auth.failing[waiting] = outage()
    shard = dataclasses.replace(OPTIONS, shard=(1, 2))
    run_cycle(shard, project.services(shard=(1, 2)), run_id="shard-1")
    before = dict(project.store.failures)
    assert set(before) == {parked, waiting}
    run_cycle(
        dataclasses.replace(OPTIONS, shard=(0, 2)), project.services(shard=(0, 2)), run_id="s0"
    )
    assert project.store.failures == before
    project.auth.failing.clear()
    # The clock moves: a failure another shard had cleared or rewritten would show now.
    project.clock = NOW + timedelta(minutes=4)  # the first retry is due after 5 minutes
    again = run_cycle(shard, project.services(shard=(1, 2)), run_id="shard-1-again")
    assert again.emails_sent == 0  # one waits for its next attempt, the other is parked
    assert len(project.mailer.to(parked)) == 1
    project.clock = NOW + timedelta(minutes=6)
    due = run_cycle(shard, project.services(shard=(1, 2)), run_id="shard-1-due")
    assert due.emails_sent == 1
    assert len(project.mailer.to(waiting)) == 1
    assert len(project.mailer.to(parked)) == 1
    assert project.store.failures[parked].parked


def test_an_enrolment_call_refused_fails_only_the_customers_it_carried() -> None:
    # Enrolment goes 200 customers per call, each call committed on its own: a later call's
    # refusal is no failure of the customers an earlier call enrolled.
    project = _enrolled_project(250)
    for email in project.crm:
        project.sell(email, name="Renamed")  # every one of them is refreshed
    project.store.enrol_error_for["c230@example.com"] = refusal("enrol customers")
    report = run(project)
    failed = {f.email for f in report.failures}
    assert failed == {f"c{i:03}@example.com" for i in range(200, 250)}
    assert report.refreshed == 200


def _round_of_shards(project: FakeProject, count: int, tag: str) -> list[CycleReport]:
    """One cycle of every shard of a layout, one after another, as side-by-side workers."""
    return [
        run_cycle(
            dataclasses.replace(OPTIONS, shard=(index, count), deactivation_limit=10),
            project.services(shard=(index, count)),
            run_id=f"{tag}-{index}",
        )
        for index in range(count)
    ]


def test_a_mass_deactivation_is_held_back_over_every_shard() -> None:
    """40 of 100 customers gone at once, 4 shards of about 10 each: decided
    per shard each was "not more than 10"; decided over the whole CRM, nobody goes."""
    project = _enrolled_project(100)
    for email in sorted(project.crm)[:40]:
        del project.crm[email]
    first = _round_of_shards(project, 4, "first")
    second = _round_of_shards(project, 4, "second")
    assert sum(r.planned["deactivate"] for r in second) == 40
    assert sum(r.deactivated for r in first + second) == 0
    assert all(row.is_active for row in project.store.tracking.values())
    held = [r.deactivation_blocked for r in second if r.planned["deactivate"]]
    assert held
    assert all(h is not None and "40 of 100" in h and "over every shard" in h for h in held)
    assert all(r.exit_code is ExitCode.CUSTOMERS_FAILED for r in second if r.planned["deactivate"])


def test_churn_in_shards_is_deactivated_once_every_shard_has_reported() -> None:
    """One customer leaving a shard where nobody else is eligible is churn, not an empty CRM:
    deferred for a cycle until every shard's figures include it, then deactivated."""
    project = _enrolled_project(8)
    count = 8
    shards = [shard_of(email, count) for email in sorted(project.crm)]
    gone = next(e for e in sorted(project.crm) if shards.count(shard_of(e, count)) == 1)
    index = shard_of(gone, count)
    del project.crm[gone]
    first = _round_of_shards(project, count, "first")
    assert first[index].deactivated == 0
    assert first[index].deactivation_blocked is None
    assert first[index].deactivation_deferred is not None
    assert first[index].exit_code is ExitCode.OK
    second = _round_of_shards(project, count, "second")
    assert [r.deactivated for r in second] == [1 if i == index else 0 for i in range(count)]
    assert all(r.deactivation_blocked is None for r in second)
    assert not project.store.tracking[gone].is_active


def test_a_shard_whose_siblings_have_not_reported_deactivates_nobody() -> None:
    project = _enrolled_project(20)
    gone = sorted(project.crm)[0]
    del project.crm[gone]
    index = shard_of(gone, 4)
    for _ in range(3):  # only this shard ever runs
        report = run_cycle(
            dataclasses.replace(OPTIONS, shard=(index, 4)),
            project.services(shard=(index, 4)),
            run_id="alone",
        )
        assert report.deactivated == 0
        assert report.deactivation_deferred is not None
        assert "1 of 4" in report.deactivation_deferred


def test_churn_before_a_drop_does_not_let_the_drop_through_the_shards() -> None:
    """A previous record of ordinary churn does not stand for a drop seen only now: 10 shards,
    1,000 customers, one leaving per shard is churn; 19% leaving at once is held back."""
    project = _enrolled_project(1000)
    emails = sorted(project.crm)
    count = 10
    churn = [next(e for e in emails if shard_of(e, count) == index) for index in range(count)]
    for email in churn:
        del project.crm[email]
    for tag in ("churn-1", "churn-2"):
        _round_of_shards(project, count, tag)
    assert sum(not row.is_active for row in project.store.tracking.values()) == count
    remaining = [e for e in emails if e not in churn]
    for email in remaining[::5][:190]:
        del project.crm[email]
    reports = [
        r for tag in ("drop-1", "drop-2", "drop-3") for r in _round_of_shards(project, count, tag)
    ]
    assert sum(r.deactivated for r in reports) == 0
    assert sum(not row.is_active for row in project.store.tracking.values()) == count


def test_an_unconfirmed_account_that_was_signed_in_to_is_neither_deleted_nor_confirmed() -> None:
    """It may hold its owner's data (they signed in by phone or another provider): a person
    decides; the customer is parked at once with the account named."""
    project = FakeProject()
    other = project.auth.add("pho@example.com", confirmed=False, signed_in=True)
    project.sell("pho@example.com")
    report = run(project)
    assert report.taken_over == 0
    assert project.auth.accounts["pho@example.com"] is other
    assert not other.email_confirmed
    failure = project.store.failures["pho@example.com"]
    assert failure.parked
    assert other.id in failure.reason


def test_an_account_created_again_for_an_email_gets_another_password() -> None:
    project = FakeProject()
    project.sell("gdpr@example.com")
    run(project)
    [first] = project.mailer.sent
    # Deleted (a data-protection request), sold again: a new account, a new password.
    del project.auth.accounts["gdpr@example.com"]
    del project.store.tracking["gdpr@example.com"]
    run(project)
    second = project.mailer.sent[-1]
    assert second.temporary_password != first.temporary_password


def test_a_resent_setup_link_to_someone_who_chose_a_password_is_credits_added() -> None:
    project = FakeProject()
    project.sell("set@example.com")
    options = dataclasses.replace(OPTIONS, credentials_mode=CredentialsMode.SETUP_LINK)
    project.mailer.lost_reply["set@example.com"] = MailError("lost reply", retriable=True)
    run(project, options)
    del project.mailer.lost_reply["set@example.com"]
    project.auth.accounts["set@example.com"].has_signed_in = True  # used the first link
    project.clock = NOW + timedelta(hours=1)
    run(project, options)
    assert [m.kind for m in project.mailer.sent] == ["new_account", "credits_added"]


def test_steady_churn_in_shards_is_deactivated_a_cycle_later_and_never_piles_up() -> None:
    """A customer leaving every cycle: each is deactivated once every shard has reported after
    the cycle that first planned it, so the pending set never grows into a 'mass' one."""
    project = _enrolled_project(200)
    emails = sorted(project.crm)
    count = 4
    for round_number in range(12):
        gone = emails[round_number * 3 : round_number * 3 + 3]
        for email in gone:
            del project.crm[email]
        reports = _round_of_shards(project, count, f"churn-{round_number}")
        assert all(r.deactivation_blocked is None for r in reports)
    inactive = {e for e, row in project.store.tracking.items() if not row.is_active}
    # Everyone who left before the last round is gone; the last round's wait one more cycle.
    assert set(emails[: 11 * 3]) <= inactive <= set(emails[: 12 * 3])


def test_invalid_crm_rows_are_reported_and_cost_nobody_else_anything() -> None:
    project = FakeProject()
    project.sell("ok@example.com")
    project.sell_row("not an email")
    project.sell_row(None)
    project.sell_row("usd@example.com", value="49 USD")
    with capture_logs() as logs:
        report = run(project)
    assert report.emails_sent == 1
    assert sorted((line.email or "", line.reason[:24]) for line in report.invalid) == [
        ("", "no email"),
        ("not an email", "An email address must ha"),
        ("usd@example.com", "the eligibility value is"),
    ]
    assert sorted(str(e["email"]) for e in logs if e["event"] == "crm_row_invalid") == [
        "None",
        "not an email",
        "usd@example.com",
    ]
    # Kept for `crm-sync status`, and warned about once: a second cycle reports nothing new.
    assert len(project.store.invalid_rows["0/1"]) == 3
    with capture_logs() as logs:
        assert run(project).emails_sent == 0
    assert [e for e in logs if e["event"] == "crm_row_invalid"] == []
    # A row that changed is new again.
    del project.crm["not an email"]
    project.sell_row("still@@bad")
    with capture_logs() as logs:
        run(project)
    assert [e["email"] for e in logs if e["event"] == "crm_row_invalid"] == ["still@@bad"]


def test_a_customer_whose_only_row_became_unreadable_is_not_deactivated() -> None:
    project = FakeProject()
    project.sell("usd@example.com", "stays@example.com")
    run(project)
    project.crm["usd@example.com"] = []
    project.sell_row("usd@example.com", value="49 USD")
    report = run(project)
    assert report.deactivated == 0
    assert project.store.tracking["usd@example.com"].is_active
    del project.crm["usd@example.com"]
    assert run(project).deactivated == 1


def test_an_internationalised_domain_is_set_aside_provisioned_once_and_then_left_alone() -> None:
    project = FakeProject()
    project.sell_row("Ann@Bücher.example", name="Ann")
    project.sell_row("zed@example.com")
    first = run(project)
    assert first.created == 2
    assert sorted(project.auth.accounts) == ["ann@xn--bcher-kva.example", "zed@example.com"]
    assert len(project.mailer.to("ann@xn--bcher-kva.example")) == 1
    again = run(project)
    assert again.planned["nothing"] == 2
    assert again.emails_sent == 0
    assert again.deactivated == 0


def test_two_spellings_of_one_email_are_one_customer_with_one_email() -> None:
    project = FakeProject()
    project.sell_row("new@example.com", value="100", name="Ann", lead_id="L1")
    project.sell_row("new@example.com\u00a0", value="50", name="Ann", lead_id="L2")
    report = run(project)
    assert report.created == 1
    assert report.eligible_customers == 1
    assert len(project.mailer.to("new@example.com")) == 1
    assert project.store.tracking["new@example.com"].crm_lead_id == "L1"


# -- the targeted cycle: a few changed customers, the same stages ---------------------------


def targeted(project: FakeProject, *keys: str, options: CycleOptions = OPTIONS) -> CycleReport:
    return run_cycle(options, project.services_for(*keys), run_id="targeted", targeted=True)


def test_a_targeted_cycle_serves_the_changed_customer_and_nobody_else() -> None:
    project = FakeProject()
    project.sell("old@example.com", "waiting@example.com")
    run(project)
    project.sell("new@example.com")
    project.sell("later@example.com")
    report = targeted(project, "new@example.com")
    assert (report.created, report.emails_sent) == (1, 1)
    assert "later@example.com" not in project.auth.accounts
    assert report.planned["provision"] == 1
    # A change that needs nothing writes nothing.
    project.store.writes.clear()
    nothing = targeted(project, "old@example.com")
    assert nothing.planned["nothing"] == 1
    assert project.store.writes == []


def test_a_refund_seen_by_a_targeted_cycle_deactivates_within_the_window() -> None:
    project = FakeProject()
    project.sell(*(f"c{i}@example.com" for i in range(30)))
    run(project)
    options = dataclasses.replace(OPTIONS, deactivation_limit=3)
    for i in range(3):
        del project.crm[f"c{i}@example.com"]
        assert targeted(project, f"c{i}@example.com", options=options).deactivated == 1
    # A fourth within the hour passes the limit: left to the full cycle and its guard.
    del project.crm["c3@example.com"]
    held = targeted(project, "c3@example.com", options=options)
    assert held.deactivated == 0
    assert held.deactivation_deferred is not None
    assert project.store.tracking["c3@example.com"].is_active
    # An hour later the window is clear again.
    project.clock = NOW + timedelta(hours=1, seconds=1)
    assert targeted(project, "c3@example.com", options=options).deactivated == 1


def test_a_targeted_cycle_keeps_the_shards_figures_and_invalid_rows_list() -> None:
    project = FakeProject()
    project.sell("ok@example.com")
    project.sell_row("usd@example.com", value="49 USD")
    run(project)
    listed = dict(project.store.invalid_rows["0/1"])
    report = targeted(project, "ok@example.com")
    assert report.invalid == []
    assert project.store.invalid_rows["0/1"] == listed
    sharded = dataclasses.replace(OPTIONS, shard=(0, 2))
    run_cycle(sharded, project.services_for("ok@example.com"), run_id="t", targeted=True)
    assert project.store.shard_figures == {}


def test_once_email_names_customers_by_their_crm_key_and_refuses_other_shards() -> None:
    from sync_worker.commands import targeted_keys
    from sync_worker.config import Settings
    from sync_worker.errors import ConfigError

    def settings(**extra: object) -> Settings:
        return Settings(
            _env_file=None,  # type: ignore[call-arg]
            crm_database_url="postgresql://crm@localhost/crm",
            supabase_url="http://localhost:54321",
            supabase_service_role_key="sb_secret_test",
            app_login_url="https://app.example/login",
            email_from="no-reply@example.com",
            smtp_host="localhost",
            **extra,
        )

    assert targeted_keys([" Ann@Example.com ", "ann@example.com"], settings()) == [
        "ann@example.com"
    ]
    with pytest.raises(ConfigError, match="not an email"):
        targeted_keys(["not an email"], settings())
    other = next(e for e in (f"s{i}@example.com" for i in range(50)) if shard_of(e, 2) == 1)
    with pytest.raises(ConfigError, match="SYNC_SHARD_INDEX=1"):
        targeted_keys([other], settings(sync_shard_count=2, sync_shard_index=0))
