"""The lease against the local stack: heartbeats, losing it, and never re-taking it late."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from supabase_sandbox.faults import FaultKind, FaultPlan
from supabase_sandbox.stack import Sandbox
from sync_worker.errors import LeaseHeld
from sync_worker.lease import SyncLease
from sync_worker.supabase_api import SupabaseApi
from tests.stack import FAST


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
    lease = SyncLease(api, "long", 3)
    with lease.held():
        time.sleep(4.5)  # longer than the time-to-live: only renewals keep it
        assert not lease.lost.is_set()
        assert not SyncLease(api, "intruder", 3).acquire()


def test_renewals_that_keep_failing_mean_the_lease_is_lost(
    sandbox: Sandbox, api: SupabaseApi
) -> None:
    lease = SyncLease(api, "cut-off", 3)
    with lease.held():
        sandbox.faults.rest = FaultPlan(fault_rate=1.0, mix={FaultKind.UNAVAILABLE: 1})
        deadline = time.monotonic() + 5
        while not lease.lost.is_set():
            assert time.monotonic() < deadline, "the lease was never given up"
            time.sleep(0.05)
        sandbox.faults.clear()


def test_a_renewal_never_takes_back_a_released_lease(api: SupabaseApi) -> None:
    lease = SyncLease(api, "late", 30)
    assert lease.acquire()
    lease.release()
    assert not lease.renew()
    assert SyncLease(api, "next", 30).acquire()
