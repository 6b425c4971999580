"""`crm-sync migrate`: ordered, once each, under a lock, on fresh and on live-like databases."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from supabase_sandbox import database
from sync_worker import migrate as migrate_module
from sync_worker.cli import main
from sync_worker.errors import DependencyUnavailable, MigrationError
from sync_worker.migrate import Migration, migrate, packaged_migrations, pending_migrations
from tests.pg import acting_as, create_auth_user, scalar


@pytest.fixture
def bootstrapped(admin_url: str) -> Iterator[str]:
    """A Supabase-like database with no migration applied yet."""
    name = database.unique_name("crm_sync_mig")
    url = database.create_supabase_database(admin_url, name, with_migrations=False)
    yield url
    database.drop_database(admin_url, name)


def test_migrations_are_numbered_and_ordered() -> None:
    names = [m.name for m in packaged_migrations()]
    assert names == sorted(names)
    assert names[0].startswith("0001_")
    assert len(names) >= 6


def test_migrate_twice_is_a_no_op(bootstrapped: str) -> None:
    first = migrate(bootstrapped)
    assert first.applied == tuple(m.name for m in packaged_migrations())
    second = migrate(bootstrapped)
    assert second.applied == ()
    assert len(second.already_applied) == len(first.applied)
    assert migrate(bootstrapped, dry_run=True).pending == ()


def test_dry_run_lists_pending_and_changes_nothing(bootstrapped: str) -> None:
    result = migrate(bootstrapped, dry_run=True)
    assert result.pending == tuple(m.name for m in packaged_migrations())
    with psycopg.connect(bootstrapped) as conn:
        assert scalar(conn, "select to_regclass('public.crm_sync_schema_migrations')") is None
        assert scalar(conn, "select to_regclass('public.digital_resume_by_crm')") is None


def test_two_migrators_at_once_apply_each_file_once(bootstrapped: str) -> None:
    results: list[Any] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        results.append(migrate(bootstrapped))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    applied = sorted(len(r.applied) for r in results)
    assert applied == [0, len(packaged_migrations())]


def test_applies_on_a_database_that_already_has_profiles_and_payments(bootstrapped: str) -> None:
    """The live app already has profiles (with balances) and payment_details."""
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        conn.execute(
            """
            create table public.profiles (
              id uuid primary key references auth.users (id) on delete cascade,
              email text,
              full_name text,
              avatar_url text,
              credits_remaining integer default 0 not null
            );
            create table public.payment_details (
              id uuid primary key default gen_random_uuid(),
              user_id uuid references auth.users (id),
              amount numeric,
              currency text,
              status text,
              provider_order_id text,
              created_at timestamptz default now(),
              updated_at timestamptz default now()
            );
            """
        )
        user = create_auth_user(conn, "Legacy.User@example.com")
        conn.execute(
            "insert into public.profiles (id, email, credits_remaining) values (%s, %s, 5)",
            (user.id, "Legacy.User@Example.com"),
        )
    result = migrate(bootstrapped)
    assert len(result.applied) == len(packaged_migrations())
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        assert scalar(conn, "select email from public.profiles where id = %s", user.id) == (
            "legacy.user@example.com"
        )
        # The old balance became the ledger's opening entry, so balance = ledger holds.
        assert (
            scalar(conn, "select sum(delta) from public.credit_ledger where user_id = %s", user.id)
            == 5
        )
        conn.execute(
            "insert into public.payment_details (user_id, amount, status)"
            " values (%s, 9.99, 'completed')",
            (user.id,),
        )
        assert (
            scalar(conn, "select credits_remaining from public.profiles where id = %s", user.id)
            == 8
        )
        # The app's extra column is the app's to grant again (crm-sync cannot tell a
        # descriptive column from a privileged one); the balance is never editable.
        assert not scalar(
            conn,
            "select has_column_privilege('authenticated', 'public.profiles', 'avatar_url',"
            " 'update')",
        )
        assert not scalar(
            conn,
            "select has_column_privilege('authenticated', 'public.profiles',"
            " 'credits_remaining', 'update')",
        )


def test_an_edited_applied_migration_is_refused() -> None:
    original = Migration("0001", "0001_x.sql", "select 1;")
    edited = Migration("0001", "0001_x.sql", "select 2;")
    assert pending_migrations([original], {"0001": original.checksum}) == []
    with pytest.raises(MigrationError, match="changed after it was applied"):
        pending_migrations([edited], {"0001": original.checksum})


def test_a_failing_migration_is_rolled_back_whole(
    bootstrapped: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = [
        Migration("0001", "0001_ok.sql", "create table public.ok_table (id int);"),
        Migration(
            "0002",
            "0002_broken.sql",
            "create table public.half_done (id int); select * from no_such_table;",
        ),
    ]
    monkeypatch.setattr(migrate_module, "packaged_migrations", lambda: broken)
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed"):
        migrate(bootstrapped)
    with psycopg.connect(bootstrapped) as conn:
        assert scalar(conn, "select to_regclass('public.ok_table')") is not None
        assert scalar(conn, "select to_regclass('public.half_done')") is None
        assert scalar(conn, "select count(*) from public.crm_sync_schema_migrations") == 1


def test_an_unreachable_database_is_a_dependency_error() -> None:
    with pytest.raises(DependencyUnavailable):
        migrate("postgresql://postgres@127.0.0.1:1/nothing")


def test_cli_migrate(
    bootstrapped: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPABASE_DB_URL", bootstrapped)
    assert main(["migrate", "--dry-run"]) == 0
    assert "pending  0001_" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert "applied  0006_operations.sql" in out
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.startswith("0 applied")


def unix_socket_url(url: str) -> str:
    """The database at `url` reached through its server's Unix socket (skips without one)."""
    with psycopg.connect(url) as conn:
        directories, port, dbname, user = conn.execute(
            "select current_setting('unix_socket_directories'), current_setting('port'),"
            " current_database(), current_user"
        ).fetchone() or ("", "", "", "")
    directory = next((d.strip() for d in directories.split(",") if d.strip()[:1] == "/"), None)
    if directory is None:
        pytest.skip("this server listens on no Unix socket")
    socket_url = f"postgresql://{user}@/{dbname}?host={directory}&port={port}"
    try:
        psycopg.connect(socket_url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"this server refuses {user} on its Unix socket: {exc}")
    return socket_url


def test_cli_migrate_through_a_unix_socket(
    bootstrapped: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SUPABASE_DB_URL may name a Unix socket (`?host=/dir`), as a server on the same machine
    is often reached; the embedded PostgreSQL of the tests listens on nothing else."""
    monkeypatch.setenv("SUPABASE_DB_URL", unix_socket_url(bootstrapped))
    assert main(["migrate"]) == 0
    assert "applied  0006_operations.sql" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.startswith("0 applied")


def test_cli_migrate_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SUPABASE_DB_URL", raising=False)
    monkeypatch.chdir("/")  # no .env here
    assert main(["migrate"]) == 2
    assert "SUPABASE_DB_URL: is required" in capsys.readouterr().err
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://postgres:hunter22@127.0.0.1:1/x")
    assert main(["migrate"]) == 69
    captured = capsys.readouterr()
    assert "hunter22" not in captured.out + captured.err


def test_no_migration_leaves_anything_open_when_it_commits(
    bootstrapped: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file locks down what it creates in its own transaction: after any prefix of the
    migrations, anon can execute nothing of ours and every table has row-level security."""
    everything = packaged_migrations()
    for count in range(1, len(everything) + 1):
        monkeypatch.setattr(migrate_module, "packaged_migrations", lambda n=count: everything[:n])
        migrate(bootstrapped)
        with psycopg.connect(bootstrapped) as conn:
            open_functions = conn.execute(
                "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                " where n.nspname = 'public' and has_function_privilege('anon', p.oid, 'execute')"
            ).fetchall()
            open_tables = conn.execute(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity"
            ).fetchall()
            readable = conn.execute(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = 'public' and c.relkind in ('r', 'v')"
                " and has_table_privilege('anon', c.oid, 'select')"
            ).fetchall()
        assert (open_functions, open_tables, readable) == ([], [], []), everything[count - 1].name


def test_an_apps_privileged_profile_columns_stay_out_of_users_reach(bootstrapped: str) -> None:
    """The live app keeps `is_admin` and `plan` on profiles, which its users cannot update:
    migrating must not hand them to every signed-in user for their own row."""
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        conn.execute(
            """
            create table public.profiles (
              id uuid primary key references auth.users (id) on delete cascade,
              email text,
              full_name text,
              is_admin boolean not null default false,
              plan text not null default 'free',
              credits_remaining integer not null default 0
            );
            grant select, update (full_name) on public.profiles to authenticated;
            """
        )
    migrate(bootstrapped)
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        user = create_auth_user(conn, "mallory@example.com")
        for column in ("is_admin", "plan", "credits_remaining", "email"):
            assert not scalar(
                conn,
                "select has_column_privilege('authenticated', 'public.profiles', %s, 'update')",
                column,
            ), column
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # noqa: SIM117
            with acting_as(conn, "authenticated", user):
                conn.execute(
                    "update public.profiles set is_admin = true, plan = 'enterprise' where id = %s",
                    (user.id,),
                )
        with acting_as(conn, "authenticated", user):
            conn.execute(
                "update public.profiles set full_name = 'Mallory' where id = %s", (user.id,)
            )
        assert scalar(conn, "select full_name from public.profiles where id = %s", user.id) == (
            "Mallory"
        )


def test_an_apps_permissive_policies_and_strict_profiles_are_tamed(bootstrapped: str) -> None:
    """The live app's 'profiles are public' policy no longer shows others' rows, and a profiles
    column crm-sync cannot fill never breaks a signup."""
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        conn.execute(
            """
            create table public.profiles (
              id uuid primary key references auth.users (id) on delete cascade,
              email text,
              username text not null,
              credits_remaining integer not null default 0
            );
            alter table public.profiles enable row level security;
            create policy "Public profiles are viewable by everyone." on public.profiles
              for select using (true);
            """
        )
    migrate(bootstrapped)
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        first = create_auth_user(conn, "first@example.com")  # no profile: username unknown
        second = create_auth_user(conn, "second@example.com")
        assert scalar(conn, "select count(*) from public.profiles") == 0
        for user in (first, second):
            conn.execute(
                "insert into public.profiles (id, email, username) values (%s, %s, %s)",
                (user.id, user.email, user.email.split("@")[0]),
            )
        with acting_as(conn, "authenticated", first):
            visible = conn.execute("select id from public.profiles").fetchall()
        assert visible == [(first.id,)]


def test_a_first_implementation_table_is_named_not_clobbered(bootstrapped: str) -> None:
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        conn.execute("create table digital_resume_by_CRM (email text primary key)")
    with pytest.raises(MigrationError, match="digital_resume_by_crm already exists"):
        migrate(bootstrapped)
