"""A shutdown past its grace settles the run around the call it cannot interrupt: the emails
the mail server accepted are recorded, the run is interrupted, the lease released."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from supabase_sandbox.stack import Sandbox
from sync_worker.masking import SecretMasker
from sync_worker.runner import run_guarded_cycle
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices
from sync_worker.shutdown import InFlightRun, cut_off
from sync_worker.store import SupabaseStore
from sync_worker.welcome_email import SentEmail
from tests.stack import FAST, add_sales, crm_database, settings_for


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(admin_url, bcrypt_cost=4) as running:
        yield running


@pytest.fixture
def crm_url(admin_url: str) -> Iterator[str]:
    with crm_database(admin_url) as url:
        yield url


def query(sandbox: Sandbox, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute(statement).fetchall()  # type: ignore[arg-type]


def test_the_emails_accepted_and_not_yet_recorded_are_recorded_at_the_cut_off(
    sandbox: Sandbox, crm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_sales(crm_url, ("cut@example.com", None, 1))
    original = SupabaseStore.record_welcome_emails
    stuck = threading.Event()
    release = threading.Event()
    calls = 0

    def slow_first_record(store: SupabaseStore, sent: Sequence[SentEmail]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the cycle's recorder: Supabase is slow for it
            stuck.set()
            release.wait(30)
        return original(store, sent)

    monkeypatch.setattr(SupabaseStore, "record_welcome_emails", slow_first_record)
    settings = settings_for(sandbox, crm_url, sync_concurrency=1)
    run_id = new_run_id()
    in_flight = InFlightRun(run_id, "cut-worker", masker=SecretMasker())
    with LiveServices(settings, policy=FAST) as live:
        cycle = threading.Thread(
            target=run_guarded_cycle,
            args=(live,),
            kwargs={"worker": "cut-worker", "run_id": run_id, "in_flight": in_flight},
            daemon=True,
        )
        cycle.start()
        try:
            assert stuck.wait(20)
            assert len(sandbox.mail) == 1  # accepted; its record is stuck
            began = time.monotonic()
            cut_off(in_flight, sandbox.url, sandbox.service_role_key, margin=3)
            assert time.monotonic() - began < 3.5
            sent = query(
                sandbox,
                "select count(*) from public.digital_resume_by_crm"
                " where welcome_email_status = 'sent'",
            )
            assert sent == [(1,)]
            assert query(sandbox, "select run_id, status from public.crm_sync_runs") == [
                (run_id, "interrupted")
            ]
            assert query(sandbox, "select count(*) from public.crm_sync_lease") == [(0,)]
        finally:
            release.set()
            cycle.join(30)


def test_a_cut_off_that_cannot_reach_supabase_returns_within_its_margin() -> None:
    run = InFlightRun("r", "w", history_id=str(uuid.uuid4()), masker=SecretMasker())
    began = time.monotonic()
    cut_off(run, "http://127.0.0.1:9", "sb_secret_not_a_real_key_0000", margin=1)
    assert time.monotonic() - began < 1.5


def test_a_cut_off_against_a_supabase_that_never_answers_returns_within_its_margin() -> None:
    """The records, the run and the lease side by side, each within the margin: a server that
    takes connections and never answers holds none of them past it."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        run = InFlightRun("r", "w", history_id=str(uuid.uuid4()), masker=SecretMasker())
        began = time.monotonic()
        cut_off(run, f"http://127.0.0.1:{port}", "sb_secret_not_a_real_key_0000", margin=1)
        assert time.monotonic() - began < 1.5
