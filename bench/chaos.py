"""Benchmark: duplicate welcome emails under faults and killed runs.

    python bench/chaos.py [--customers 150] [--kill-share 0.44] [--seed 7]

A local stack where 20% of Auth and REST requests fail (503, 429, connections dropped before
and after the commit) and 10% of SMTP deliveries are refused (451); `crm-sync --once` is run
as a process again and again, and a seeded share of the runs is killed (SIGKILL) at a random
moment, until every customer has been served. Prints the runs, the kills, the emails and the
duplicate rate, and checks that no customer is lost and no account or grant doubled.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import time
from collections import Counter

import psycopg
from harness import crm_with_sales, postgres_server, start_worker, worker_env

from supabase_sandbox import FaultKind, FaultPlan, Sandbox

LEASE_TTL_SECONDS = 3


def query(url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement).fetchall()  # type: ignore[arg-type]


def run_until_served(
    args: argparse.Namespace, rng: random.Random, env: dict[str, str], sandbox: Sandbox
) -> tuple[int, int, int]:
    """Runs `crm-sync --once` (killing a seeded share of the runs) until everyone is served;
    returns the runs, the kills and the runs that found the lease held."""
    runs = kills = held = 0
    while runs < args.max_runs:
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            conn.execute("update public.crm_sync_failures set next_attempt_at = now()")
        runs += 1
        process = start_worker(env)
        if rng.random() < args.kill_share:
            try:
                process.wait(timeout=rng.uniform(0.3, 4.0))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                time.sleep(LEASE_TTL_SECONDS)  # its lease runs out
                continue
        code = process.wait()
        if code == 75:
            held += 1
            time.sleep(1)
            continue
        sent = query(
            sandbox.db_url,
            "select count(*) from public.digital_resume_by_crm where welcome_email_status = 'sent'",
        )
        if code == 0 and sent == [(args.customers,)]:
            break
    return runs, kills, held


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=150)
    parser.add_argument("--kill-share", type=float, default=0.44)
    parser.add_argument("--max-runs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with (
        postgres_server() as admin_url,
        crm_with_sales(admin_url, args.customers, email=("chaos", "@example.com")) as crm_url,
        Sandbox.start(admin_url, bcrypt_cost=4) as sandbox,
    ):
        faults = FaultPlan(
            fault_rate=0.2,
            mix={
                FaultKind.UNAVAILABLE: 1,
                FaultKind.RATE_LIMITED: 1,
                FaultKind.DROP: 1,
                FaultKind.DROP_AFTER: 1,
            },
            seed=args.seed,
            retry_after_s=0,
        )
        sandbox.faults = faults
        sandbox.mail_sink.refuse(0.1, seed=args.seed)
        env = worker_env(
            sandbox,
            crm_url,
            CRM_ELIGIBILITY_COLUMN="digital_sale_resume",
            SYNC_CONCURRENCY="4",
            SYNC_LEASE_TTL_SECONDS=str(LEASE_TTL_SECONDS),
            LOG_LEVEL="ERROR",
        )
        began = time.perf_counter()
        runs, kills, held = run_until_served(args, rng, env, sandbox)
        took = time.perf_counter() - began
        received = Counter(str(m["To"].addresses[0].addr_spec) for m in sandbox.mail)
        duplicates = sum(n - 1 for n in received.values())
        accounts = query(
            sandbox.db_url, "select count(*), count(distinct lower(email)) from auth.users"
        )
        grants = query(
            sandbox.db_url,
            "select count(*), count(distinct user_id) from public.credit_ledger"
            " where reason = 'crm_enrolment'",
        )
        print(
            f"customers={args.customers} runs={runs} killed={kills} lease_held={held}"
            f" seconds={took:.0f}"
        )
        print(
            f"  faults injected: {sum(sandbox.faults.injected.values())},"
            f" SMTP refusals: {sandbox.mail_sink.refused}"
        )
        print(f"  customers emailed: {len(received)} of {args.customers}")
        print(f"  accounts (rows, distinct emails): {accounts[0]}; grants: {grants[0]}")
        for step, reason, parked, count in query(
            sandbox.db_url,
            "select step, left(reason, 90), parked_at is not null, count(*)"
            " from public.crm_sync_failures group by 1, 2, 3 order by 4 desc limit 5",
        ):
            print(f"  still failing: {count} x {step} (parked {parked}): {reason}")
        print(
            f"  emails: {sum(received.values())}, duplicates: {duplicates}"
            f" ({100 * duplicates / args.customers:.1f}% of customers)"
        )


if __name__ == "__main__":
    main()
