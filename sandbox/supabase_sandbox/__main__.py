"""`python -m supabase_sandbox serve`: runs the local Supabase-compatible stack until stopped."""

# Once ready it prints the contract lines (SUPABASE_URL=..., see Sandbox.contract_lines) on
# stdout; it stops and drops its databases on SIGTERM or SIGINT. Its PostgreSQL server is the
# one --db-url or CRM_SYNC_TEST_ADMIN_URL names, else the local one if it answers, else an
# embedded one it starts, and stops when it stops (supabase_sandbox.postgres).

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psycopg
from psycopg_pool import PoolTimeout

from supabase_sandbox import postgres
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
    server = serve.add_mutually_exclusive_group()
    server.add_argument(
        "--db-url",
        help="PostgreSQL server to create the sandbox databases on, a libpq URL of a role that"
        f" may create databases (default: ${postgres.ADMIN_URL_VARIABLE}, else {DEFAULT_ADMIN_URL}"
        " if it answers, else an embedded PostgreSQL); 'embedded' is --embedded-postgres",
    )
    server.add_argument(
        "--embedded-postgres",
        action="store_true",
        help="start an embedded PostgreSQL in a throw-away directory for the sandbox's"
        " databases, and stop it when the sandbox stops",
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
    commands.add_parser(
        "choose-postgres",
        help=f"print the PostgreSQL server serve would use: a URL, or '{postgres.EMBEDDED}'"
        " (and, on stderr, which and why)",
        description=f"Prints the URL of the PostgreSQL server serve and the tests would use, or"
        f" '{postgres.EMBEDDED}' when they would start an embedded one; a line on stderr says"
        f" which and why. {postgres.ADMIN_URL_VARIABLE} decides as it does for them.",
    )
    return parser


def _requested_server(args: argparse.Namespace) -> tuple[str | None, str]:
    """What was asked for (a URL, `embedded` or nothing) and where (an option, a variable)."""
    if getattr(args, "embedded_postgres", False):
        return postgres.EMBEDDED, "--embedded-postgres"
    if getattr(args, "db_url", None):
        return args.db_url, "--db-url"
    return os.environ.get(postgres.ADMIN_URL_VARIABLE), postgres.ADMIN_URL_VARIABLE


def choose(args: argparse.Namespace) -> int:
    """`choose-postgres`: the URL (or `embedded`) on stdout, the announcement on stderr."""
    requested, source = _requested_server(args)
    choice = postgres.choose_server(requested)
    if choice.url is None:
        version = postgres.embedded_version()
        print(postgres.describe(choice, version, source=source), file=sys.stderr)
        print(postgres.EMBEDDED)
    else:
        version = postgres.server_version(choice.url)
        print(postgres.describe(choice, version, source=source), file=sys.stderr)
        print(choice.url)
    return 0


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
    requested, source = _requested_server(args)
    try:
        with postgres.admin_server(requested, source=source) as (admin_url, which):
            log.info("%s", which)
            return _serve_on(admin_url, args, faults, stop)
    except postgres.EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _serve_on(
    admin_url: str, args: argparse.Namespace, faults: Faults, stop: threading.Event
) -> int:
    try:
        sandbox = Sandbox.start(
            admin_url,
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
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every SMTP connection at INFO; the sink's messages are the record.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # embedded-postgres logs each initdb/pg_ctl call with its whole output at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if args.command == "serve":
        return serve(args)
    if args.command == "choose-postgres":
        return choose(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
