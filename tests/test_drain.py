"""Draining the CRM's change table on the local stack: a change row is deleted only once its
targeted cycle settled it, so an outage in the middle loses no sale."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import parseaddr

import psycopg
import pytest

from supabase_sandbox.faults import FaultKind, FaultPlan
from supabase_sandbox.stack import Sandbox
from sync_worker import crm_changes
from sync_worker.drain import drain_changes
from sync_worker.errors import DependencyUnavailable
from sync_worker.metrics import SyncMetrics
from sync_worker.services import LiveServices, crm_columns
from sync_worker.smtp_mailer import SmtpMailer
from tests.stack import FAST, add_sales, closed_port, crm_database, settings_for


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(admin_url, bcrypt_cost=4) as running:
        yield running


@pytest.fixture
def crm_url(admin_url: str, sandbox: Sandbox) -> Iterator[str]:
    with crm_database(admin_url) as url:
        yield url
    sandbox.faults.clear()
    sandbox.mail.clear()


def changes(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [email for (email,) in conn.execute("select email from crm_sync.changes")]


def test_an_outage_keeps_the_changes_and_the_next_drain_serves_them(
    sandbox: Sandbox, crm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SmtpMailer, "DEFAULT_RETRY", FAST)  # a closed port fails at once
    settings = settings_for(sandbox, crm_url)
    crm_changes.install(crm_url, crm_columns(settings))
    add_sales(crm_url, ("ann@example.com", "Ann", 49), ("  BOB@example.com", "Bob", 49))
    assert sorted(changes(crm_url)) == ["ann@example.com", "bob@example.com"]
    metrics = SyncMetrics()
    # Supabase down: the targeted cycle cannot even take its lease.
    with LiveServices(settings, FAST) as live:
        sandbox.faults = FaultPlan(fault_rate=1.0, mix={FaultKind.UNAVAILABLE: 1}, seed=3)
        with pytest.raises(DependencyUnavailable):
            drain_changes(live, worker="drain-test", metrics=metrics)
        sandbox.faults.clear()
    assert sorted(changes(crm_url)) == ["ann@example.com", "bob@example.com"]
    # The mail server down: the cycle is cut short with the emails owed.
    with LiveServices(settings_for(sandbox, crm_url, smtp_port=closed_port()), FAST) as live:
        down = drain_changes(live, worker="drain-test", metrics=metrics)
    assert down.left_over
    assert sorted(changes(crm_url)) == ["ann@example.com", "bob@example.com"]
    assert len(sandbox.mail) == 0
    with LiveServices(settings, FAST) as live:
        back = drain_changes(live, worker="drain-test", metrics=metrics)
    assert (back.changes, back.left_over) == (2, False)
    assert changes(crm_url) == []
    assert sorted(parseaddr(m["To"])[1] for m in sandbox.mail) == [
        "ann@example.com",
        "bob@example.com",
    ]
    exposition = metrics.exposition().decode()
    assert "crm_sync_sale_to_email_seconds_count 2.0" in exposition
    assert "crm_sync_change_backlog 0.0" in exposition


def test_a_burst_is_served_in_batches_oldest_first(sandbox: Sandbox, crm_url: str) -> None:
    settings = settings_for(sandbox, crm_url)
    crm_changes.install(crm_url, crm_columns(settings))
    add_sales(crm_url, *((f"b{i:02}@example.com", None, 1) for i in range(25)))
    with LiveServices(settings, FAST) as live:
        drained = drain_changes(live, worker="drain-test", metrics=SyncMetrics(), batch=10)
    assert (drained.changes, drained.cycles) == (25, 3)
    assert len(sandbox.mail) == 25
    assert changes(crm_url) == []
