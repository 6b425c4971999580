"""The lease against the local stack: heartbeats, losing it, and never re-taking it late.

Time moves by a test clock (the heartbeat's) and by ageing the lease in the database (whose
clock decides expiry), never by waiting."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from supabase_sandbox.faults import FaultKind, FaultPlan
from supabase_sandbox.stack import Sandbox
from sync_worker.errors import LeaseHeld
from sync_worker.lease import SyncLease
from sync_worker.supabase_api import SupabaseApi
from tests.clock import ManualClock
from tests.stack import FAST, age_leases


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(admin_url, bcrypt_cost=4) as running:
        yield running


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[SupabaseApi]:
    client = SupabaseApi(sandbox.url, sandbox.service_role_key, policy=FAST)
    yield client
    client.close()
    sandbox.faults.clear()
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute("delete from public.crm_sync_lease")


def holders(sandbox: Sandbox) -> list[tuple[str]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute("select holder from public.crm_sync_lease").fetchall()


def test_one_holder_at_a_time_and_released_after(sandbox: Sandbox, api: SupabaseApi) -> None:
    first, second = SyncLease(api, "first", 30), SyncLease(api, "second", 30)
    with first.held():
        assert holders(sandbox) == [("first",)]
        with pytest.raises(LeaseHeld), second.held():
            pass
    assert holders(sandbox) == []
    with second.held():
        assert holders(sandbox) == [("second",)]


def test_the_heartbeat_keeps_a_long_cycle_covered(sandbox: Sandbox, api: SupabaseApi) -> None:
    clock = ManualClock()
    lease = SyncLease(api, "long", 3, clock=clock)
    with lease.held():
        clock.wait_for_waiters(1)  # the heartbeat, until its first renewal
        # 4.5 s in all, longer than the time-to-live: only renewals keep it. The database's
        # clock decides expiry, so the lease is aged there by the same time.
        for _ in range(3):
            age_leases(sandbox.db_url, 1.5)
            clock.advance(1.5)
            clock.wait_for_waiters(1)  # renewed, and waiting for the next one
        assert not lease.lost.is_set()
        assert not SyncLease(api, "intruder", 3).acquire()


def test_renewals_that_keep_failing_mean_the_lease_is_lost(
    sandbox: Sandbox, api: SupabaseApi
) -> None:
    clock = ManualClock()
    lease = SyncLease(api, "cut-off", 3, clock=clock)
    with lease.held():
        sandbox.faults.rest = FaultPlan(fault_rate=1.0, mix={FaultKind.UNAVAILABLE: 1})
        clock.wait_for_waiters(1)
        clock.advance(1)  # a renewal fails; two thirds of the time-to-live have not passed
        clock.wait_for_waiters(1)
        assert not lease.lost.is_set()
        clock.advance(1.5)  # the next one fails too, past two thirds of it: given up
        assert lease.lost.wait(5), "the lease was never given up"
        sandbox.faults.clear()


def test_a_renewal_never_takes_back_a_released_lease(api: SupabaseApi) -> None:
    lease = SyncLease(api, "late", 30)
    assert lease.acquire()
    lease.release()
    assert not lease.renew()
    assert SyncLease(api, "next", 30).acquire()
