"""Benchmark: `crm-sync --once` as a whole process over N customers already synced.

    python bench/scale.py [--customers 20000 100000] [--new 0] [--latency-ms 25] [--runs 3]

For each N: a local stack (Auth + REST + SMTP sink, the given latency on every request) whose
database is seeded by SQL with N synced customers (auth users, profiles, tracking rows: no API
calls), a CRM of the same N eligible customers plus `--new` more, then `crm-sync --once` run as
a separate process. Prints, per run: wall time (process start to exit), HTTP requests to the
stack, writes among them, the child's peak RSS, and the exit code; then the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import psycopg
from harness import crm_with_sales, postgres_server, run_worker, worker_env

from supabase_sandbox import FaultPlan, Sandbox

# Triggers off (session_replication_role = replica): the rows are written as the worker's
# enrolment would leave them, without going through it N times.
SEED_STATEMENTS = (
    """insert into auth.users (id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                               raw_user_meta_data, created_at, updated_at)
         select md5('bench' || g)::uuid, 'authenticated', 'authenticated',
                'c' || g || '@example.com', now(),
                '{"provider": "email", "providers": ["email"], "created_by": "crm-sync"}',
                '{"source": "crm"}', now(), now()
           from generate_series(1, %(n)s) g""",
    """insert into public.profiles (id, email, credits_remaining)
         select md5('bench' || g)::uuid, 'c' || g || '@example.com', 4
           from generate_series(1, %(n)s) g""",
    """insert into public.digital_resume_by_crm (email, user_id, credits_remaining,
                                                welcome_email_status, welcome_email_kind)
         select 'c' || g || '@example.com', md5('bench' || g)::uuid, 4, 'sent', 'new_account'
           from generate_series(1, %(n)s) g""",
)


# The guarded cycle's own bookkeeping (lease, run history): written by every run, no-op or not.
BOOKKEEPING = ("sync_lease", "crm_sync_runs")


@dataclass
class Run:
    wall: float
    requests: int
    writes: int
    data_writes: int
    peak_rss_mb: float
    code: int


def run_once(env: dict[str, str], sandbox: Sandbox) -> Run:
    sandbox.requests.reset()
    worker = run_worker(env)
    return Run(
        wall=worker.wall,
        requests=sum(sandbox.request_counts().values()),
        writes=sandbox.requests.writes(),
        data_writes=sum(
            n
            for key, n in sandbox.requests.snapshot().items()
            if key.method not in ("GET", "HEAD", "OPTIONS")
            and not any(part in key.route for part in BOOKKEEPING)
        ),
        peak_rss_mb=worker.peak_rss_mb,
        code=worker.code,
    )


def bench(admin_url: str, customers: int, new: int, latency_ms: int, runs: int) -> None:
    with (
        crm_with_sales(
            admin_url,
            customers + new,
            email=("C", "@Example.com"),
            column="digital_resume_sale_value",
        ) as crm_url,
        Sandbox.start(admin_url, bcrypt_cost=4) as sandbox,
    ):
        seeded = time.perf_counter()
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            with conn.transaction():
                conn.execute("set local session_replication_role = replica")
                for statement in SEED_STATEMENTS:
                    conn.execute(statement, {"n": customers})  # type: ignore[arg-type]
            conn.execute("analyze")
        seeding = time.perf_counter() - seeded
        sandbox.faults = FaultPlan(latency_ms=latency_ms)
        env = worker_env(
            sandbox,
            crm_url,
            CRM_ELIGIBILITY_COLUMN="digital_resume_sale_value",
            SYNC_CONCURRENCY="16",
        )
        print(
            f"customers={customers} new={new} latency_ms={latency_ms}"
            f" (seeded by SQL in {seeding:.1f} s)"
        )
        results = []
        for number in range(1, runs + 1):
            result = run_once(env, sandbox)
            results.append(result)
            print(
                f"  run {number}: wall {result.wall:6.2f} s  requests {result.requests:5d}"
                f"  writes {result.writes:3d} (customer data {result.data_writes})"
                f"  peak RSS {result.peak_rss_mb:6.1f} MB"
                f"  exit {result.code}"
            )
        if runs > 1:
            print(
                f"  median: wall {statistics.median(r.wall for r in results):6.2f} s"
                f"  requests {statistics.median(r.requests for r in results):5.0f}"
                f"  peak RSS {statistics.median(r.peak_rss_mb for r in results):6.1f} MB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--new", type=int, default=0, help="new customers among them")
    parser.add_argument("--latency-ms", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with postgres_server() as admin_url:
        for customers in args.customers:
            bench(admin_url, customers, args.new, args.latency_ms, args.runs)


if __name__ == "__main__":
    main()
