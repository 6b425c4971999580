"""The `crm-sync` commands behind the command line: load each command's settings, configure
logging, run it, and turn every outcome into an exit code (README.md, "Commands"). Imported only
once the arguments are parsed, so `crm-sync --help` loads none of this; the daemon, status,
verify and migrate are imported by their own command only, so a `--once` run (cron) starts
without the scheduler and the probes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

import structlog

from sync_worker import config
from sync_worker.display import printable
from sync_worker.errors import (
    ConfigError,
    ExitCode,
    KeyRefused,
    SupabaseError,
    SyncError,
    supabase_unavailable,
)
from sync_worker.lease import worker_id
from sync_worker.logs import configure_logging
from sync_worker.masking import SecretMasker
from sync_worker.runner import run_guarded_cycle
from sync_worker.services import LiveServices
from sync_worker.shutdown import InFlightRun, run_within_grace
from sync_worker.signals import StopSignals

log = structlog.get_logger("crm_sync.cli")
S = TypeVar("S", bound=config.LoggingSettings)


class _Edge:
    """What one command makes at the edge: its settings, the one masker made from them, and
    the logging that masks with it. Before the settings are known (or when they cannot be
    read), logging has defaults and the masker knows no secret values."""

    def __init__(self) -> None:
        self.masker = SecretMasker()
        configure_logging(masker=self.masker)

    def load(self, kind: type[S]) -> S:
        """The command's settings; logging (and the masker) follow them from now on."""
        settings = config.load(kind)
        self.masker = SecretMasker(settings.secret_values())
        configure_logging(settings.log_format, settings.log_level, masker=self.masker)
        return settings


def _cmd_config(_args: argparse.Namespace, _edge: _Edge) -> int:
    settings = config.load(config.Settings)
    width = max(len(name) for name, _ in config.describe(settings))
    for name, shown in config.describe(settings):
        print(f"{name:<{width}}  {shown}")
    return ExitCode.OK


def _cmd_migrate(args: argparse.Namespace, edge: _Edge) -> int:
    from sync_worker.migrate import migrate  # noqa: PLC0415 (this command's own)

    settings = edge.load(config.MigrateSettings)
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


def _cmd_crm_setup(args: argparse.Namespace, edge: _Edge) -> int:
    """`crm-sync crm-setup [--dry-run] [--uninstall]`: installs (or removes) change capture on
    the CRM database; it needs the CRM settings only."""
    from sync_worker import crm_changes  # noqa: PLC0415 (this command's own)
    from sync_worker.services import crm_columns  # noqa: PLC0415

    settings = edge.load(config.CrmSettings)
    columns = crm_columns(settings)
    act = crm_changes.uninstall if args.uninstall else crm_changes.install
    plan = act(settings.crm_database_url.get_secret_value(), columns, dry_run=args.dry_run)
    if args.dry_run:
        print("-- what crm-sync crm-setup would run, in one transaction")
        print("begin;")
        for statement in plan.statements:
            print(f"{statement};")
        print("commit;")
        if plan.missing:
            raise ConfigError(list(plan.missing))
    else:
        print(plan.summary)
    log.info(
        "crm_setup_finished",
        uninstall=args.uninstall,
        dry_run=args.dry_run,
        statements=len(plan.statements),
        missing=len(plan.missing),
    )
    return ExitCode.OK


def _cmd_run(args: argparse.Namespace, edge: _Edge) -> int:
    settings = edge.load(config.Settings)
    keys = targeted_keys(args.emails, settings) if args.emails else None
    if keys is not None and not (args.once or args.dry_run):
        raise ConfigError(["--email: works with --once (or --dry-run): one targeted cycle"])
    if not args.once and not args.dry_run:
        from sync_worker.daemon import Daemon  # noqa: PLC0415 (the scheduler: the daemon's own)

        return Daemon(settings, edge.masker).run()
    # A cron or CronJob run is stopped like the daemon: finish in-flight calls, record,
    # release the lease; a second signal exits at once.
    # Past the grace, what the run owes is settled and the process exits 1 (`shutdown`).
    stop = StopSignals().install()
    worker = worker_id()
    with LiveServices(
        settings, allow_mass_deactivation=args.allow_mass_deactivation, masker=edge.masker
    ) as services:
        in_flight = InFlightRun(args.run_id, worker, services.options.shard, masker=edge.masker)
        report = run_within_grace(
            lambda: run_guarded_cycle(
                services,
                worker=worker,
                run_id=args.run_id,
                dry_run=args.dry_run,
                should_stop=stop.requested.is_set,
                lease_ttl_seconds=settings.sync_lease_ttl_seconds,
                in_flight=in_flight,
                keys=keys,
            ),
            stop=stop.requested,
            grace=settings.sync_shutdown_grace_seconds,
            in_flight=in_flight,
            url=settings.supabase_url,
            service_role_key=settings.supabase_service_role_key.get_secret_value(),
        )
    print(report.render())
    return report.exit_code


def targeted_keys(emails: list[str], settings: config.Settings) -> list[str]:
    """The CRM order keys of the customers `--email` names (trimmed, lower-cased, as the CRM
    reader and the change table key them), each checked to be this worker's shard's.

    Raises:
        ConfigError: an email that cannot be one, or of another shard (exit 2).
    """
    from sync_worker.crm_text import normalise_email  # noqa: PLC0415
    from sync_worker.shards import shard_of  # noqa: PLC0415
    from sync_worker.source import order_key  # noqa: PLC0415

    count = settings.sync_shard_count
    keys, problems = [], []
    for raw in emails:
        email, reason = normalise_email(raw)
        if email is None:
            problems.append(f"--email {raw!r}: {reason}")
            continue
        if shard_of(email, count) != settings.sync_shard_index:
            problems.append(
                f"--email {email}: belongs to shard {shard_of(email, count)} of {count}; run"
                f" with SYNC_SHARD_INDEX={shard_of(email, count)}"
            )
            continue
        keys.append(order_key(raw))
    if problems:
        raise ConfigError(problems)
    return sorted(set(keys))


def _cmd_status(args: argparse.Namespace, edge: _Edge) -> int:
    from sync_worker.status import status_command  # noqa: PLC0415 (this command's own)

    settings = edge.load(config.SupabaseSettings)
    return status_command(settings, as_json=args.json, email=args.email)


def _cmd_deactivations(args: argparse.Namespace, edge: _Edge) -> int:
    """`crm-sync deactivations [--json]` lists the held-back sets; `--approve RUN_ID` runs one
    cycle that deactivates exactly that set (those of it still not eligible)."""
    import dataclasses  # noqa: PLC0415

    from sync_worker.support import approved_set, held_deactivations, render_held  # noqa: PLC0415

    settings = edge.load(config.Settings if args.approve else config.SupabaseSettings)
    if not args.approve:
        from sync_worker.supabase_api import SupabaseApi  # noqa: PLC0415

        api = SupabaseApi(
            settings.supabase_url, settings.supabase_service_role_key.get_secret_value()
        )
        try:
            sets = held_deactivations(api)
        except SupabaseError as exc:
            raise supabase_unavailable(exc) from exc
        finally:
            api.close()
        if args.json:
            print("[" + ",".join(s.model_dump_json() for s in sets) + "]")
        else:
            print(render_held(sets))
        return ExitCode.OK
    assert isinstance(settings, config.Settings)
    with LiveServices(settings, masker=edge.masker) as services:
        approved, shard = approved_set(services.api, args.approve)
        services.options = dataclasses.replace(
            services.options, approved_deactivations=approved, shard=shard
        )
        report = run_guarded_cycle(
            services,
            worker=worker_id(),
            run_id=args.run_id,
            lease_ttl_seconds=settings.sync_lease_ttl_seconds,
        )
        if report.aborted is None:  # the set was acted on: it is no longer pending review
            services.api.delete_in("crm_sync_held_deactivations", "run_id", [args.approve])
    print(report.render())
    return report.exit_code


def _cmd_resend(args: argparse.Namespace, edge: _Edge) -> int:
    from sync_worker.support import resend  # noqa: PLC0415 (this command's own)

    settings = edge.load(config.Settings)
    with LiveServices(settings, masker=edge.masker) as services:
        kind = resend(
            services,
            args.email,
            worker=worker_id(),
            run_id=args.run_id,
            ttl=settings.sync_lease_ttl_seconds,
        )
    print(f"welcome email ({kind}) sent again to {printable(args.email.strip())}")
    return ExitCode.OK


def _cmd_verify(args: argparse.Namespace, edge: _Edge) -> int:
    from sync_worker.verify import verify_command  # noqa: PLC0415 (this command's own)

    settings = edge.load(config.VerifySettings)
    return verify_command(settings, repair=args.repair)


_COMMANDS: dict[str, Callable[[argparse.Namespace, _Edge], int]] = {
    "config": _cmd_config,
    "crm-setup": _cmd_crm_setup,
    "migrate": _cmd_migrate,
    "deactivations": _cmd_deactivations,
    "resend": _cmd_resend,
    "run": _cmd_run,
    "status": _cmd_status,
    "verify": _cmd_verify,
}


def run_command(args: argparse.Namespace) -> int:
    """Runs the parsed command; returns the process exit code."""
    structlog.contextvars.bind_contextvars(run_id=args.run_id)
    # Logging before settings are known: defaults, so even config errors are structured.
    edge = _Edge()
    try:
        return _COMMANDS[args.command](args, edge)
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
        shown = edge.masker.mask_text(f"{type(exc).__name__}: {exc}")
        print(f"crm-sync {args.command}: internal error: {printable(shown)}", file=sys.stderr)
        return ExitCode.SOFTWARE
