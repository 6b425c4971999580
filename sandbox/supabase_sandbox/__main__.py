"""`python -m supabase_sandbox serve`: runs the local Supabase-compatible stack until stopped."""

# Once ready it prints the contract lines (SUPABASE_URL=..., see Sandbox.contract_lines) on
# stdout; it stops and drops its databases on SIGTERM or SIGINT.

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psycopg
from psycopg_pool import PoolTimeout

from supabase_sandbox.database import DEFAULT_ADMIN_URL
from supabase_sandbox.faults import GROUPS, FaultPlan, Faults
from supabase_sandbox.stack import Sandbox

EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE, as crm-sync uses it

log = logging.getLogger("supabase_sandbox")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supabase_sandbox",
        description="Local Supabase-compatible stack: Auth admin API, PostgREST, SMTP sink.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the stack and run until SIGTERM/SIGINT")
    serve.add_argument(
        "--db-url",
        default=DEFAULT_ADMIN_URL,
        help="PostgreSQL server to create the sandbox databases on (default: %(default)s)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=0, help="HTTP port (0: any free port)")
    serve.add_argument("--smtp-port", type=int, default=0, help="SMTP port (0: any free port)")
    serve.add_argument("--latency-ms", type=int, default=0, help="added to every request")
    serve.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of requests that fail (0..1)"
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of the fault sequence")
    serve.add_argument(
        "--fault-groups",
        default=",".join(GROUPS),
        help="route groups that get latency and faults (default: %(default)s)",
    )
    serve.add_argument(
        "--demo-data", action="store_true", help="also create a CRM database with demo sales"
    )
    serve.add_argument("--mail-dir", type=Path, help="also write received emails here (.eml)")
    serve.add_argument(
        "--bcrypt-cost", type=int, default=10, help="bcrypt cost of password hashes (Auth: 10)"
    )
    serve.add_argument(
        "--redirect-url",
        action="append",
        default=[],
        metavar="GLOB",
        help="add to Auth's redirect allow list (URI_ALLOW_LIST), e.g. the app's sign-in page",
    )
    serve.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def _faults(args: argparse.Namespace) -> Faults:
    groups = {name.strip() for name in args.fault_groups.split(",") if name.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        raise SystemExit(f"--fault-groups: unknown group(s) {sorted(unknown)}; use {GROUPS}")
    plan = FaultPlan(latency_ms=args.latency_ms, fault_rate=args.fault_rate, seed=args.seed)
    faults = Faults()
    for group in groups:
        faults.set(group, plan)
    return faults


def serve(args: argparse.Namespace) -> int:
    """Starts the sandbox, prints the contract lines, waits for a stop signal."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        faults = _faults(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sandbox = Sandbox.start(
            args.db_url,
            faults=faults,
            host=args.host,
            port=args.port,
            smtp_port=args.smtp_port,
            demo_data=args.demo_data,
            mail_folder=args.mail_dir,
            redirect_allow_list=tuple(args.redirect_url),
            bcrypt_cost=args.bcrypt_cost,
        )
    except (psycopg.OperationalError, PoolTimeout) as exc:
        print(f"error: cannot prepare the sandbox databases: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        print("\n".join(sandbox.contract_lines()), flush=True)
        log.info("sandbox ready at %s", sandbox.url)
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        log.info("sandbox stopped, databases dropped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every SMTP connection at INFO; the sink's messages are the record.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
