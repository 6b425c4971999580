"""The `crm-sync` command line: parses arguments, loads settings, and calls one command.

Configuration errors exit 2 before any I/O; every other outcome maps to the exit codes of
DESIGN.md through `sync_worker.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence

import structlog

from sync_worker import __version__, config
from sync_worker.daemon import Daemon
from sync_worker.display import printable
from sync_worker.errors import ConfigError, ExitCode, KeyRefused, SyncError
from sync_worker.lease import worker_id
from sync_worker.logs import configure_logging, mask_secrets
from sync_worker.migrate import migrate
from sync_worker.runner import run_guarded_cycle
from sync_worker.services import LiveServices
from sync_worker.signals import StopSignals
from sync_worker.status import status_command
from sync_worker.verify import verify_command

log = structlog.get_logger("crm_sync.cli")

_DESCRIPTION = """\
Provision CareerCast (Supabase) accounts for CRM customers with a Digital Resume sale.

commands:
  run [--once] [--dry-run]   daemon (scheduler + health server) until SIGTERM; --once: one cycle
  migrate [--dry-run]        apply the SQL migrations to SUPABASE_DB_URL
  status [--json]            last runs, pending and failed customers, monitoring queries
  verify [--repair]          check credits, stats and isolation; --repair fixes stats and mirrors
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="daemon, or one cycle with --once")
    run.add_argument("--once", action="store_true", default=argparse.SUPPRESS)
    run.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS)
    run.add_argument("--allow-mass-deactivation", action="store_true", default=argparse.SUPPRESS)

    migrate = commands.add_parser("migrate", help="apply the SQL migrations")
    migrate.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS, help="list pending only"
    )

    status = commands.add_parser("status", help="last runs and pending/failed customers")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    verify = commands.add_parser("verify", help="check the success metrics")
    verify.add_argument("--repair", action="store_true", help="fix stats and mirrors")

    commands.add_parser("config", help="print the effective configuration, secrets masked")
    return parser


def _cmd_config(_args: argparse.Namespace) -> int:
    settings = config.load(config.Settings)
    width = max(len(name) for name, _ in config.describe(settings))
    for name, shown in config.describe(settings):
        print(f"{name:<{width}}  {shown}")
    return ExitCode.OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = config.load(config.MigrateSettings)
    _configure(settings, *settings.secret_values())
    result = migrate(settings.supabase_db_url.get_secret_value(), dry_run=args.dry_run)
    if args.dry_run:
        for name in result.pending:
            print(f"pending  {name}")
        print(f"{len(result.pending)} pending, {len(result.already_applied)} already applied")
    else:
        for name in result.applied:
            print(f"applied  {name}")
        print(f"{len(result.applied)} applied, {len(result.already_applied)} already applied")
    log.info(
        "migrate_finished",
        dry_run=args.dry_run,
        applied=list(result.applied),
        pending=list(result.pending),
    )
    return ExitCode.OK


def _cmd_run(args: argparse.Namespace) -> int:
    settings = config.load(config.Settings)
    _configure(settings, *settings.secret_values())
    if not args.once and not args.dry_run:
        return Daemon(settings).run()
    # A cron or CronJob run is stopped like the daemon: finish in-flight calls, record,
    # release the lease; a second signal exits at once.
    stop = StopSignals().install()
    with LiveServices(settings, allow_mass_deactivation=args.allow_mass_deactivation) as services:
        report = run_guarded_cycle(
            services,
            worker=worker_id(),
            run_id=args.run_id,
            dry_run=args.dry_run,
            should_stop=stop.requested.is_set,
            lease_ttl_seconds=settings.sync_lease_ttl_seconds,
        )
    print(report.render())
    return report.exit_code


def _cmd_status(args: argparse.Namespace) -> int:
    settings = config.load(config.SupabaseSettings)
    _configure(settings, *settings.secret_values())
    return status_command(settings, as_json=args.json)


def _cmd_verify(args: argparse.Namespace) -> int:
    settings = config.load(config.VerifySettings)
    _configure(settings, *settings.secret_values())
    return verify_command(settings, repair=args.repair)


def _configure(settings: config.LoggingSettings, *secrets: str) -> None:
    configure_logging(settings.log_format, settings.log_level, secrets=secrets)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "config": _cmd_config,
    "migrate": _cmd_migrate,
    "run": _cmd_run,
    "status": _cmd_status,
    "verify": _cmd_verify,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args.command = "run"
    args.run_id = uuid.uuid4().hex[:12]
    structlog.contextvars.bind_contextvars(run_id=args.run_id)
    # Logging before settings are known: defaults, so even config errors are structured.
    configure_logging()
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {printable(problem)}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyRefused as exc:
        log.error("command_failed", command=args.command, error=exc.problem)
        print(f"configuration error: {printable(exc.problem)}", file=sys.stderr)
        return ExitCode.USAGE
    except SyncError as exc:
        log.error("command_failed", command=args.command, error=str(exc))
        print(f"crm-sync {args.command}: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug, not an outcome: logged with its traceback and printed in one line, both
        # through the masker, so a crash never shows a secret (EX_SOFTWARE).
        log.error("command_crashed", command=args.command, exc_info=exc)
        shown = mask_secrets.mask_text(f"{type(exc).__name__}: {exc}")
        print(f"crm-sync {args.command}: internal error: {printable(shown)}", file=sys.stderr)
        return ExitCode.SOFTWARE
