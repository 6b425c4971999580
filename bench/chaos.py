"""Benchmark: duplicate welcome emails, and whether every email works, under faults and kills.

    python bench/chaos.py [--customers 150] [--kill-share 0.44] [--seed 7]

A local stack where 20% of Auth and REST requests fail (503, 429, connections dropped before
and after the commit), 10% of SMTP deliveries are refused (451) and 5% are delivered with the
reply lost (the connection drops before the 250). Each round starts three `crm-sync --once`
processes at once (they race for the lease) and SIGKILLs a seeded share of the rounds' workers
at a random moment, until every customer has been served; then four shard workers
(`SYNC_SHARD_COUNT=4`) run side by side. Prints the runs, the kills, the emails, every
duplicate with its reason, and checks that no customer is lost, no account or grant doubled,
no balance wrong, and that every email any customer received carries a password that signs in.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict

import psycopg
from harness import crm_with_sales, postgres_server, start_worker, worker_env
from supabase import create_client

from supabase_sandbox import FaultKind, FaultPlan, Sandbox

LEASE_TTL_SECONDS = 3
RACING_WORKERS = 3
SHARDS = 4
PASSWORD_LINE = re.compile(r"Temporary password:\s*(\S+)")


def query(url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement).fetchall()  # type: ignore[arg-type]


def served(sandbox: Sandbox) -> int:
    [(count,)] = query(
        sandbox.db_url,
        "select count(*) from public.digital_resume_by_crm where welcome_email_status = 'sent'",
    )
    return int(count)  # type: ignore[call-overload]


def run_until_served(
    args: argparse.Namespace, rng: random.Random, env: dict[str, str], sandbox: Sandbox
) -> tuple[int, int, int]:
    """Rounds of racing `crm-sync --once` processes (a seeded share of them killed) until
    everyone is served; returns the runs, the kills and the runs that found the lease held."""
    runs = kills = held = 0
    for _ in range(args.max_rounds):
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            conn.execute("update public.crm_sync_failures set next_attempt_at = now()")
        processes = [start_worker(env) for _ in range(RACING_WORKERS)]
        runs += len(processes)
        codes = []
        killed_any = False
        for process in processes:
            if rng.random() < args.kill_share:
                try:
                    codes.append(process.wait(timeout=rng.uniform(0.3, 4.0)))
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    kills += 1
                    killed_any = True
                    continue
            else:
                codes.append(process.wait())
        held += codes.count(75)
        if killed_any:
            time.sleep(LEASE_TTL_SECONDS)  # the killed holder's lease runs out
            continue
        if 0 in codes and served(sandbox) == args.customers:
            break
    return runs, kills, held


def run_shards(env: dict[str, str]) -> list[int]:
    """Four shard workers side by side, to their end; their exit codes."""
    processes = [
        start_worker({**env, "SYNC_SHARD_INDEX": str(index), "SYNC_SHARD_COUNT": str(SHARDS)})
        for index in range(SHARDS)
    ]
    return [process.wait() for process in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=150)
    parser.add_argument("--kill-share", type=float, default=0.3)
    parser.add_argument("--max-rounds", type=int, default=60)
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
        sandbox.mail_sink.lose_replies(0.05, seed=args.seed)
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
        shard_codes = run_shards(env)
        took = time.perf_counter() - began
        sandbox.faults.clear()
        report(args, sandbox, runs=runs, kills=kills, held=held, shard_codes=shard_codes, took=took)


def report(
    args: argparse.Namespace,
    sandbox: Sandbox,
    *,
    runs: int,
    kills: int,
    held: int,
    shard_codes: list[int],
    took: float,
) -> None:
    by_customer: dict[str, list[str]] = defaultdict(list)
    message_ids: dict[str, set[str]] = defaultdict(set)
    for message in sandbox.mail:
        to = str(message["To"].addresses[0].addr_spec)
        body = message.get_body(preferencelist=("plain",))
        match = PASSWORD_LINE.search(str(body.get_content())) if body else None  # type: ignore[attr-defined]
        by_customer[to].append(match.group(1) if match else "")
        message_ids[to].add(str(message["Message-ID"]))
    working = broken = 0
    for email, passwords in sorted(by_customer.items()):
        for password in set(passwords):
            client = create_client(sandbox.url, sandbox.anon_key)
            try:
                client.auth.sign_in_with_password({"email": email, "password": password})
            except Exception:
                broken += passwords.count(password)
            else:
                working += passwords.count(password)
    lost = Counter(sandbox.mail_sink.lost_reply_to)
    reasons: Counter[str] = Counter()
    for email, passwords in by_customer.items():
        extra = len(passwords) - 1
        from_lost = min(extra, lost[email])
        reasons["the SMTP reply was lost after delivery"] += from_lost
        reasons["killed between the server's 250 and the record"] += extra - from_lost
    duplicates = sum(len(p) - 1 for p in by_customer.values())
    accounts = query(
        sandbox.db_url, "select count(*), count(distinct lower(email)) from auth.users"
    )
    grants = query(
        sandbox.db_url,
        "select count(*), count(distinct user_id) from public.credit_ledger"
        " where reason = 'crm_enrolment'",
    )
    wrong = query(
        sandbox.db_url,
        "select count(*) from public.digital_resume_by_crm t join public.profiles p"
        " on p.id = t.user_id where p.credits_remaining <> 4 or t.credits_remaining <> 4",
    )
    print(
        f"customers={args.customers} runs={runs} (x{RACING_WORKERS} racing) killed={kills}"
        f" lease_held={held} shards={SHARDS} exit codes {shard_codes} seconds={took:.0f}"
    )
    print(
        f"  faults injected: {sum(sandbox.faults.injected.values())},"
        f" SMTP refusals: {sandbox.mail_sink.refused},"
        f" lost SMTP replies: {sandbox.mail_sink.lost_replies}"
    )
    print(f"  customers emailed: {len(by_customer)} of {args.customers}; served: {served(sandbox)}")
    print(f"  accounts (rows, distinct emails): {accounts[0]}; grants: {grants[0]}")
    print(f"  wrong balances: {wrong[0][0]}")
    print(
        f"  emails: {working + broken}, whose password signs in: {working}, does not: {broken};"
        f" customers with more than one Message-ID: {sum(len(m) > 1 for m in message_ids.values())}"
    )
    print(f"  duplicates: {duplicates} ({100 * duplicates / args.customers:.1f}% of customers)")
    for reason, count in reasons.most_common():
        if count:
            print(f"    {count} x {reason}")


if __name__ == "__main__":
    main()
