"""The `crm-sync` command line: parses the arguments, then hands them to `commands`.

Only argparse is loaded before the arguments are parsed, so `crm-sync --help` is quick; the
commands (and the libraries they need) are imported once there is a command to run.
Configuration errors exit 2 before any I/O; every other outcome maps to the exit codes of
README.md ("Commands") through `sync_worker.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import NoReturn

from sync_worker import __version__

_DESCRIPTION = """\
Provision CareerCast (Supabase) accounts for CRM customers with a Digital Resume sale.

commands:
  run [--once] [--dry-run]   daemon (scheduler + health server) until SIGTERM; --once: one cycle
  --once --email EMAIL ...   one targeted cycle for these customers only (support)
  migrate [--dry-run]        apply the SQL migrations to SUPABASE_DB_URL
  status [EMAIL] [--json]    last runs, pending and failed customers, monitoring queries;
                             with EMAIL: that customer's story (account, enrolment, emails)
  resend EMAIL               send a customer's welcome email again (it never arrived)
  deactivations [--json]     the deactivations a tripped guard held back, per run
  deactivations --approve RUN_ID   deactivate exactly that run's held-back set
  verify [--repair]          check credits, stats and isolation; --repair fixes stats and mirrors
  crm-setup [--dry-run] [--uninstall]
                             install change capture on the CRM (a trigger and a change
                             table in the schema crm_sync); --uninstall removes it
  config                     print the effective configuration, secrets masked

exit codes of a one-off run:
  0 done   1 some customers failed   2 usage or configuration error
  69 a dependency was unreachable    70 internal error (a bug; reported, secrets masked)
  75 another run holds the lease
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; `crm-sync --once` and `crm-sync run --once` are the same."""
    parser = argparse.ArgumentParser(
        prog="crm-sync",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"crm-sync {__version__}")
    parser.add_argument("--once", action="store_true", help="run one sync cycle and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="read and plan only: no writes, no emails"
    )
    parser.add_argument(
        "--allow-mass-deactivation",
        action="store_true",
        help="with --once: let this one cycle deactivate more than the guard allows",
    )
    parser.add_argument(
        "--email",
        action="append",
        dest="emails",
        metavar="EMAIL",
        help="with --once: a targeted cycle for this customer only (repeatable)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="daemon, or one cycle with --once")
    run.add_argument("--once", action="store_true", default=argparse.SUPPRESS)
    run.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS)
    run.add_argument("--allow-mass-deactivation", action="store_true", default=argparse.SUPPRESS)
    run.add_argument("--email", action="append", dest="emails", default=argparse.SUPPRESS)

    migrate = commands.add_parser("migrate", help="apply the SQL migrations")
    migrate.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS, help="list pending only"
    )

    status = commands.add_parser("status", help="last runs and pending/failed customers")
    status.add_argument("email", nargs="?", help="one customer's story instead")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    held = commands.add_parser("deactivations", help="held-back deactivations; --approve")
    held.add_argument("--json", action="store_true", help="machine-readable output")
    held.add_argument("--approve", metavar="RUN_ID", help="deactivate exactly this run's set")

    resend = commands.add_parser("resend", help="send a customer's welcome email again")
    resend.add_argument("email", help="the customer's email")

    verify = commands.add_parser("verify", help="check the success metrics")
    verify.add_argument("--repair", action="store_true", help="fix stats and mirrors")

    crm_setup = commands.add_parser(
        "crm-setup", help="install change capture on the CRM database (optional)"
    )
    crm_setup.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS, help="print the SQL only"
    )
    crm_setup.add_argument("--uninstall", action="store_true", help="remove change capture")

    commands.add_parser("config", help="print the effective configuration, secrets masked")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args.command = "run"
    from sync_worker.commands import run_command  # noqa: PLC0415 (after --help, not before)
    from sync_worker.runs import new_run_id  # noqa: PLC0415

    # The command's run id (the daemon mints one per cycle too): every log line carries it.
    args.run_id = new_run_id()

    return run_command(args)


def run() -> NoReturn:
    """The `crm-sync` process: `main`, then exit with its code.

    What the run leaves in memory is frozen out of the garbage collector first: Python's last
    collections at exit took a quarter of a second on a 2-core machine, a tenth of a no-op
    run, to free what the process is about to give back anyway. Nothing is lost: streams are
    flushed and atexit handlers run as before, and every file, socket and connection was
    closed by the command itself.
    """
    code = main()
    gc.freeze()
    sys.exit(code)
