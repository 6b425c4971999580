"""Applies the packaged SQL migrations to the Supabase database, once each, in order.

Each file runs in its own transaction under a session advisory lock, so two migrators never
race and a failed file leaves the earlier ones applied and itself not applied at all.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import psycopg

from sync_worker.errors import Dependency, DependencyUnavailable, MigrationError, first_line

# An arbitrary constant shared by every crm-sync migrator: pg_advisory_lock(bigint).
MIGRATION_LOCK_KEY = 0x63726D73796E63  # "crmsync"
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One packaged SQL file."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What a `migrate` call did (or, with dry_run, would do)."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    already_applied: tuple[str, ...]


def packaged_migrations() -> list[Migration]:
    """Returns the migrations shipped in `sync_worker/migrations`, ordered by version."""
    found: list[Migration] = []
    for entry in resources.files("sync_worker.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(match["version"], entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


def pending_migrations(available: Sequence[Migration], applied: dict[str, str]) -> list[Migration]:
    """Decides which migrations still need to run; refuses if an applied file was edited.

    Args:
        available: the packaged migrations, ordered.
        applied: version -> checksum, as recorded in the history table.
    """
    for migration in available:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.name} was changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    return [m for m in available if m.version not in applied]


_HISTORY_DDL = """
create table if not exists public.crm_sync_schema_migrations (
  version text primary key,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now()
);
-- Bookkeeping is nobody's business but the migrator's: Supabase grants public to the API roles.
alter table public.crm_sync_schema_migrations enable row level security;
do $$ begin
  if exists (select 1 from pg_roles where rolname = 'anon') then
    revoke all on public.crm_sync_schema_migrations from anon, authenticated;
  end if;
end $$;
"""


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    rows = conn.execute(
        "select version, checksum from public.crm_sync_schema_migrations"
    ).fetchall()
    return {str(version): str(checksum) for version, checksum in rows}


def migrate(db_url: str, *, dry_run: bool = False) -> MigrationResult:
    """Applies every pending migration to the database at `db_url`.

    Args:
        db_url: libpq URL of the Supabase database (a role that may create objects).
        dry_run: only report what is pending.

    Raises:
        DependencyUnavailable: the database cannot be reached.
        MigrationError: a migration failed or an applied one was edited.
    """
    available = packaged_migrations()
    try:
        conn = psycopg.connect(db_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(Dependency.SUPABASE_DATABASE, first_line(exc)) from exc
    with conn:
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            if dry_run:
                has_history = conn.execute(
                    "select to_regclass(%s) is not null", ("public.crm_sync_schema_migrations",)
                ).fetchone()
                applied = _applied(conn) if has_history and has_history[0] else {}
                todo = pending_migrations(available, applied)
                return MigrationResult((), tuple(m.name for m in todo), tuple(sorted(applied)))
            with conn.transaction():
                conn.execute(_HISTORY_DDL.encode())
            applied = _applied(conn)
            todo = pending_migrations(available, applied)
            done: list[str] = []
            for migration in todo:
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "insert into public.crm_sync_schema_migrations"
                            " (version, name, checksum) values (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    hint = exc.diag.message_hint
                    raise MigrationError(
                        f"migration {migration.name} failed and was rolled back: "
                        f"{first_line(exc)}" + (f" (hint: {hint})" if hint else "")
                    ) from exc
                done.append(migration.name)
            return MigrationResult(tuple(done), (), tuple(sorted(applied)))
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
