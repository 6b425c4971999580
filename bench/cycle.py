"""Benchmark: how fast a first and a second sync cycle go on the local stack.

    python bench/cycle.py [--customers N] [--latency-ms L] [--concurrency C]

Starts a sandbox (Auth + REST + SMTP sink on localhost, bcrypt cost 10 as Supabase uses)
and a CRM database of N eligible customers, runs two cycles and prints their figures. The
sandbox's per-request latency stands in for the network distance to a hosted project.
"""

from __future__ import annotations

import argparse
import time

from harness import crm_with_sales, postgres_server

from supabase_sandbox import FaultPlan, Sandbox
from sync_worker.config import Settings
from sync_worker.cycle import run_cycle
from sync_worker.logs import configure_logging
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bcrypt-cost", type=int, default=10)
    args = parser.parse_args()
    configure_logging("json", "ERROR")

    with (
        postgres_server() as admin_url,
        crm_with_sales(admin_url, args.customers, email=("bench", "@example.com")) as crm_url,
        Sandbox.start(admin_url, bcrypt_cost=args.bcrypt_cost) as sandbox,
    ):
        sandbox.faults = FaultPlan(latency_ms=args.latency_ms)
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            crm_database_url=crm_url,  # type: ignore[arg-type]
            supabase_url=sandbox.url,
            supabase_service_role_key=sandbox.service_role_key,  # type: ignore[arg-type]
            app_login_url="https://careercast.example.com/login",
            email_backend="smtp",  # type: ignore[arg-type]
            email_from="no-reply@applywizz.example",
            smtp_host=sandbox.smtp_host,
            smtp_port=sandbox.smtp_port,
            smtp_security="none",  # type: ignore[arg-type]
            sync_concurrency=args.concurrency,
        )
        print(
            f"customers={args.customers} latency_ms={args.latency_ms}"
            f" concurrency={args.concurrency} bcrypt_cost={args.bcrypt_cost}"
        )
        for label in ("first cycle", "second cycle"):
            sandbox.requests.reset()
            began = time.perf_counter()
            with LiveServices(settings) as live:
                report = run_cycle(live.options, live.for_cycle(), run_id=new_run_id())
            took = time.perf_counter() - began
            print(
                f"{label:>12}: {took:7.2f} s  {args.customers / took:8.1f} customers/s"
                f"  created={report.created} emails={report.emails_sent}"
                f" failures={len(report.failures)}"
                f" api_requests={sum(sandbox.request_counts().values())}"
                f" api_writes={sandbox.requests.writes()}"
            )


if __name__ == "__main__":
    main()
