"""Latency and fault injection: the configured mix, reproducible from the seed, switchable at
run time, and lost responses after a commit."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import psycopg
import pytest
from supabase import Client
from supabase_auth.errors import AuthApiError, AuthRetryableError

from supabase_sandbox import FaultKind, FaultPlan, Faults, Sandbox

REQUESTS = 120


def observe(sandbox: Sandbox, client: httpx.Client, count: int) -> list[FaultKind | None]:
    """Sends `count` requests one by one and classifies what came back."""
    seen: list[FaultKind | None] = []
    headers = {"apikey": sandbox.anon_key}
    for _ in range(count):
        try:
            response = client.post(f"{sandbox.url}/rest/v1/rpc/whoami", headers=headers, json={})
        except httpx.RemoteProtocolError:
            seen.append(FaultKind.DROP)
            continue
        marker = response.headers.get("X-Sandbox-Fault")
        seen.append(FaultKind(marker) if marker else None)
        if marker == FaultKind.RATE_LIMITED:
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "2"
        elif marker in (FaultKind.SERVER_ERROR, FaultKind.UNAVAILABLE):
            assert response.status_code == int(marker)
        else:
            assert response.status_code == 200
    return seen


def test_fault_mix_is_the_configured_one_and_repeats_with_the_seed(sandbox: Sandbox) -> None:
    plan = FaultPlan(fault_rate=0.5, seed=7, slow_ms=5, retry_after_s=2)
    expected = [plan.decide("rest", index) for index in range(REQUESTS)]

    with httpx.Client(timeout=5) as client:
        sandbox.faults.rest = plan
        first = observe(sandbox, client, REQUESTS)
        sandbox.faults.rest = plan  # setting a plan restarts its sequence
        second = observe(sandbox, client, REQUESTS)

    assert first == expected
    assert second == first
    kinds = Counter(kind for kind in first if kind is not None)
    assert set(kinds) == {
        FaultKind.SERVER_ERROR,
        FaultKind.UNAVAILABLE,
        FaultKind.RATE_LIMITED,
        FaultKind.DROP,
        FaultKind.SLOW,
    }
    assert 0.35 * REQUESTS < sum(kinds.values()) < 0.65 * REQUESTS
    assert sandbox.faults.injected[("rest", FaultKind.DROP)] == 2 * kinds[FaultKind.DROP]
    assert sandbox.requests.count(group="rest", route="/rpc/whoami") == 2 * REQUESTS


def test_another_seed_gives_another_sequence() -> None:
    one = [FaultPlan(fault_rate=0.5, seed=1).decide("auth", i) for i in range(50)]
    two = [FaultPlan(fault_rate=0.5, seed=2).decide("auth", i) for i in range(50)]

    assert one != two


def test_faults_are_per_route_group_and_can_be_switched_off(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    always_429 = FaultPlan(fault_rate=1.0, mix={FaultKind.RATE_LIMITED: 1.0})

    with sandbox.faults.applied(auth=always_429):
        with pytest.raises(AuthApiError) as caught:
            service.auth.admin.create_user({"email": new_email()})
        rest_still_works = service.rpc("add_numbers", {"a": 1}).execute().data
    created = service.auth.admin.create_user({"email": new_email()})

    assert caught.value.status == 429
    assert caught.value.code == "over_request_rate_limit"
    assert rest_still_works == 11
    assert created.user.id


def test_unavailable_auth_is_a_retryable_error(sandbox: Sandbox, service: Client) -> None:
    sandbox.faults.auth = FaultPlan(fault_rate=1.0, mix={FaultKind.UNAVAILABLE: 1.0})

    with pytest.raises(AuthRetryableError) as caught:
        service.auth.admin.list_users()

    assert caught.value.status == 503


def test_a_response_lost_after_commit_leaves_the_user_created(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    sandbox.faults.auth = FaultPlan(fault_rate=1.0, mix={FaultKind.DROP_AFTER: 1.0})

    with pytest.raises(AuthRetryableError):
        service.auth.admin.create_user({"email": email})
    sandbox.faults.clear()

    with psycopg.connect(sandbox.db_url) as conn:
        found = conn.execute("select count(*) from auth.users where email = %s", (email,))
        assert found.fetchone() == (1,)


def test_latency_is_added_to_every_request_of_the_group(sandbox: Sandbox) -> None:
    sandbox.faults.rest = FaultPlan(latency_ms=60)
    headers = {"apikey": sandbox.anon_key}

    with httpx.Client(timeout=5) as client:
        client.post(f"{sandbox.url}/rest/v1/rpc/whoami", headers=headers, json={})  # warm up
        started = time.perf_counter()
        for _ in range(3):
            client.post(f"{sandbox.url}/rest/v1/rpc/whoami", headers=headers, json={})
        elapsed = time.perf_counter() - started
        sandbox.faults.clear()
        started = time.perf_counter()
        client.get(f"{sandbox.url}/auth/v1/health", headers=headers)
        fast = time.perf_counter() - started

    assert elapsed >= 0.18
    assert fast < 0.06


def test_fault_plans_are_validated() -> None:
    with pytest.raises(ValueError, match="fault_rate"):
        FaultPlan(fault_rate=1.5)
    with pytest.raises(ValueError, match="unknown route group"):
        Faults().set("storage", FaultPlan())
