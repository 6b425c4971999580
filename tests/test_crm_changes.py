"""Change capture on a real PostgreSQL CRM: what `crm-sync crm-setup` installs, what it records,
who may install it, and that the CRM table itself is never altered."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from supabase_sandbox import database
from sync_worker import crm_changes
from sync_worker.cli import main
from sync_worker.crm_changes import (
    change_capture_installed,
    install,
    install_statements,
    missing_rights,
    pending,
    uninstall,
)
from sync_worker.errors import CrmSourceError, DependencyUnavailable
from sync_worker.shards import shard_of
from sync_worker.source import CrmColumns, stream_groups

LIVE = CrmColumns(
    table="sales_closure",
    email="email",
    eligibility="digital_sale_resume",
    name="lead_name",
    lead_id="lead_id",
)
# Every name needs quoting; one holds what would end a `$body$` dollar quote.
ODD = CrmColumns(table="crm.Sales Closure", email="Mail$body$", eligibility='amount"x')

CRM_DDL = """
create table sales_closure (
  id serial primary key,
  lead_id text,
  lead_name text,
  email varchar(320),
  digital_sale_resume text,
  notes text,
  closed_at timestamptz default now()
);
create index sales_closure_email on sales_closure (lower(email));
insert into sales_closure (lead_id, lead_name, email, digital_sale_resume)
values ('L-1', 'Ann', 'ann@example.com', '49.99'), ('L-2', 'Bo', null, '5');
create schema crm;
create table crm."Sales Closure" ("Mail$body$" text, "amount""x" numeric, other text);
"""


RESET = """
drop schema if exists crm_sync cascade;
drop schema if exists crm cascade;
drop table if exists public.sales_closure, public.mine cascade;
drop function if exists public.theirs();
"""


@pytest.fixture(scope="module")
def crm_db(admin_url: str) -> Iterator[str]:
    name = database.unique_name("crm_sync_crm")
    url = database.create_database(admin_url, name)
    yield url
    database.drop_database(admin_url, name)


@pytest.fixture
def crm(crm_db: str) -> str:
    """URL of the CRM database (as its owner, a superuser), as new: its tables as the seed
    makes them, no change capture."""
    with psycopg.connect(crm_db, autocommit=True) as conn:
        conn.execute(RESET + CRM_DDL)
    return crm_db


@pytest.fixture
def owner(crm: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(crm, autocommit=True) as conn:
        yield conn


@pytest.fixture
def roles(crm: str) -> Iterator[list[str]]:
    """The roles a test created (cluster-wide): what they own or were granted in the CRM
    database goes with them."""
    created: list[str] = []
    yield created
    with psycopg.connect(crm, autocommit=True) as conn:
        for role in created:
            conn.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


MakeRole = Callable[..., str]


@pytest.fixture
def make_role(crm: str, owner: psycopg.Connection[Any], roles: list[str]) -> MakeRole:
    """Creates a login role, runs `grants` (SQL with {role} for its name) as the CRM's owner,
    and returns a URL that connects as it."""

    def make(*grants: str) -> str:
        role = database.unique_name("crm_sync_role")
        password = secrets.token_hex(8)
        owner.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        roles.append(role)
        for grant in grants:
            owner.execute(sql.SQL(grant).format(role=sql.Identifier(role)))
        parts = urlsplit(crm)
        host = parts.netloc.rpartition("@")[2]
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{role}:{password}@{host}{parts.path}{query}"

    return make


def rows(conn: psycopg.Connection[Any]) -> list[str]:
    return [email for (email,) in conn.execute("select email from crm_sync.changes order by id")]


def clear(conn: psycopg.Connection[Any]) -> None:
    conn.execute("delete from crm_sync.changes")


def schema_exists(conn: psycopg.Connection[Any]) -> bool:
    query = "select exists (select from pg_namespace where nspname = 'crm_sync')"
    return [row[0] for row in conn.execute(query)] == [True]


def triggers(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [
        (table, name)
        for table, name in conn.execute(
            "select tgrelid::regclass::text, tgname::text from pg_trigger"
            " where not tgisinternal order by 1, 2"
        )
    ]


def table_definition(conn: psycopg.Connection[Any], table: str) -> dict[str, Any]:
    """Everything that defines a CRM table and its data, from the catalogs: a rewrite would
    change relfilenode, a new column pg_attribute, a new index or constraint their lists.
    pg_class.relhastriggers is left out: PostgreSQL sets it with a trigger and clears it only
    at a later VACUUM; it is a hint, not the table's definition."""

    def fetch(query: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(query, {"t": table})]

    return {
        "class": fetch(
            "select relname, relnamespace, reltype, relowner, relam, relfilenode, reltablespace,"
            " relkind, relnatts, relchecks, relpersistence, relreplident, relrowsecurity,"
            " relforcerowsecurity, relispartition, relhasrules, relhasindex, relacl::text,"
            " reloptions::text from pg_class where oid = %(t)s::regclass"
        ),
        "columns": fetch(
            "select attnum, attname, atttypid, atttypmod, attnotnull, atthasdef, attisdropped,"
            " attcollation, attidentity, attgenerated, attacl::text, attoptions::text"
            " from pg_attribute where attrelid = %(t)s::regclass and attnum > 0 order by attnum"
        ),
        "defaults": fetch(
            "select adnum, pg_get_expr(adbin, adrelid) from pg_attrdef"
            " where adrelid = %(t)s::regclass order by 1"
        ),
        "constraints": fetch(
            "select conname, pg_get_constraintdef(oid) from pg_constraint"
            " where conrelid = %(t)s::regclass order by 1"
        ),
        "indexes": fetch(
            "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index"
            " where indrelid = %(t)s::regclass order by 1"
        ),
        "policies": fetch("select polname from pg_policy where polrelid = %(t)s::regclass"),
        "data": fetch(f"select md5(string_agg(t::text, ',' order by t::text)) from {table} t"),
    }


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    *args: str,
    columns: CrmColumns = LIVE,
) -> int:
    monkeypatch.setenv("CRM_DATABASE_URL", url)
    monkeypatch.setenv("CRM_TABLE", columns.table)
    monkeypatch.setenv("CRM_EMAIL_COLUMN", columns.email)
    monkeypatch.setenv("CRM_ELIGIBILITY_COLUMN", columns.eligibility)
    monkeypatch.setenv("CRM_NAME_COLUMN", columns.name)
    monkeypatch.setenv("CRM_ID_COLUMN", columns.lead_id)
    return main(["crm-setup", *args])


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in ("CRM_TABLE", "CRM_NAME_COLUMN", "CRM_ID_COLUMN", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)


# -- installing ---------------------------------------------------------------------------


def test_install_twice_is_idempotent(crm: str, owner: psycopg.Connection[Any]) -> None:
    assert not change_capture_installed(owner, LIVE)
    install(crm, LIVE)
    first = owner.execute(
        "select to_regclass('crm_sync.changes')::oid,"
        " to_regprocedure('crm_sync.record_change()')::oid"
    ).fetchone()
    install(crm, LIVE)
    assert (
        owner.execute(
            "select to_regclass('crm_sync.changes')::oid,"
            " to_regprocedure('crm_sync.record_change()')::oid"
        ).fetchone()
        == first
    )
    assert triggers(owner) == [("sales_closure", "crm_sync_changes")]
    assert change_capture_installed(owner, LIVE)
    owner.execute("insert into sales_closure (email) values ('twice@example.com')")
    assert rows(owner) == ["twice@example.com"]  # one trigger: one row


def test_the_function_runs_as_its_owner_with_a_pinned_path_and_no_public_execute(
    crm: str, owner: psycopg.Connection[Any], make_role: MakeRole
) -> None:
    install(crm, LIVE)
    definer, config, public = owner.execute(
        "select prosecdef, proconfig,"
        " exists (select from aclexplode(proacl) where grantee = 0 and privilege_type = 'EXECUTE')"
        " from pg_proc where oid = 'crm_sync.record_change()'::regprocedure"
    ).fetchone() or (None, None, None)
    assert definer is True
    assert config == ["search_path=pg_catalog, pg_temp"]
    assert public is False
    # A role that may put triggers on a table of its own cannot attach it there to write
    # into the change table as its owner.
    other = make_role(
        "grant create on schema public to {role}", "grant usage on schema crm_sync to {role}"
    )
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("create table public.mine (email text)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "create trigger steal after insert on public.mine"
                " for each row execute function crm_sync.record_change()"
            )


def test_odd_names_are_quoted_and_a_qualified_table_works(
    crm: str, owner: psycopg.Connection[Any]
) -> None:
    install(crm, ODD)
    assert triggers(owner) == [('crm."Sales Closure"', "crm_sync_changes")]
    assert change_capture_installed(owner, ODD)
    owner.execute("""insert into crm."Sales Closure" values (' Odd@Example.com', 1, 'x')""")
    owner.execute("""update crm."Sales Closure" set "amount""x" = 2""")
    owner.execute("""update crm."Sales Closure" set other = 'y'""")
    assert rows(owner) == ["odd@example.com", "odd@example.com"]


def test_a_partitioned_crm_table_records_each_change_once(
    crm: str, owner: psycopg.Connection[Any]
) -> None:
    owner.execute(
        "create table crm.sales (email text, amount numeric, region text)"
        " partition by list (region);"
        " create table crm.sales_eu partition of crm.sales for values in ('eu');"
        " create table crm.sales_us partition of crm.sales for values in ('us')"
    )
    columns = CrmColumns(table="crm.sales", eligibility="amount")
    install(crm, columns)
    assert change_capture_installed(owner, columns)
    owner.execute("insert into crm.sales values ('eu@example.com', 1, 'eu')")
    owner.execute("insert into crm.sales_us values ('us@example.com', 1, 'us')")
    owner.execute("update crm.sales set amount = 2")
    assert sorted(rows(owner)) == ["eu@example.com"] * 2 + ["us@example.com"] * 2
    # The partitions' clones of the trigger are not other tables to move it from.
    assert "removed from" not in install(crm, columns).summary
    uninstall(crm, columns)
    assert triggers(owner) == []


def test_install_statements_are_built_not_formatted() -> None:
    statements = [s.as_string() for s in install_statements(ODD)]
    assert statements[0] == 'create schema if not exists "crm_sync"'
    trigger = statements[-1]
    assert 'update of "Mail$body$", "amount""x" on "crm"."Sales Closure"' in trigger
    function = next(s for s in statements if "create or replace function" in s)
    # The body's dollar quote is one the names do not contain.
    assert "as $body1$" in function
    assert function.rstrip().endswith("$body1$")
    told_it_exists = [s.as_string() for s in install_statements(ODD, create_schema=False)]
    assert told_it_exists == statements[2:]  # neither `create schema` nor its comment


# -- what the trigger records -------------------------------------------------------------


def test_insert_update_and_delete_record_the_right_keys(
    crm: str, owner: psycopg.Connection[Any]
) -> None:
    install(crm, LIVE)
    owner.execute(
        "insert into sales_closure (lead_id, email, digital_sale_resume)"
        " values ('L-9', E' \\tNew@Example.COM\\r\\n', '10')"
    )
    assert rows(owner) == ["new@example.com"]
    clear(owner)

    owner.execute("update sales_closure set digital_sale_resume = '0' where lead_id = 'L-9'")
    owner.execute("update sales_closure set lead_name = 'Newt' where lead_id = 'L-9'")
    owner.execute("update sales_closure set lead_id = 'L-10' where lead_id = 'L-9'")
    assert rows(owner) == ["new@example.com"] * 3
    clear(owner)

    # An email change records the new key and the old one.
    owner.execute("update sales_closure set email = 'moved@example.com' where lead_id = 'L-10'")
    assert rows(owner) == ["moved@example.com", "new@example.com"]
    clear(owner)

    # A change of spelling only (same key) records it once.
    owner.execute("update sales_closure set email = ' MOVED@example.com' where lead_id = 'L-10'")
    assert rows(owner) == ["moved@example.com"]
    clear(owner)

    # Unwatched columns, and watched ones set to what they were: nothing.
    owner.execute("update sales_closure set notes = 'call back', closed_at = now()")
    owner.execute(
        "update sales_closure set digital_sale_resume = digital_sale_resume, email = email"
    )
    assert rows(owner) == []

    # No email: nothing to record, on insert, update or delete.
    owner.execute("insert into sales_closure (lead_id, digital_sale_resume) values ('L-11', '5')")
    owner.execute("update sales_closure set digital_sale_resume = '6' where email is null")
    owner.execute("delete from sales_closure where email is null")
    assert rows(owner) == []

    # An email set where there was none, and one removed: the key that exists.
    owner.execute("update sales_closure set email = null where lead_id = 'L-10'")
    assert rows(owner) == ["moved@example.com"]
    clear(owner)

    owner.execute("delete from sales_closure")
    assert rows(owner) == ["ann@example.com"]


def test_recorded_keys_are_the_readers_order_keys(crm: str, owner: psycopg.Connection[Any]) -> None:
    """Whatever the spelling (case, blanks, a non-ASCII letter), the key recorded is the key
    the CRM reader groups and shards by, and a shard's changes are that shard's customers."""
    install(crm, LIVE)
    owner.execute("delete from sales_closure")
    clear(owner)
    raw = [
        " Plain@Example.com",
        "\tTAB@example.com\n",
        "ÉVA@Example.com",
        "zoë@example.com",
        *(f"user{i}@Example.com" for i in range(40)),
    ]
    with owner.cursor() as cur:
        cur.executemany(
            "insert into sales_closure (email, digital_sale_resume) values (%s, '1')",
            [(email,) for email in raw],
        )
    recorded = rows(owner)
    read = [group.key for group in stream_groups(crm, LIVE)]
    assert sorted(recorded) == sorted(read)
    assert len(set(recorded)) == len(raw)
    for shard in ((0, 3), (1, 3), (2, 3)):
        mine = {c.email for c in pending(owner, shard=shard, limit=1000)}
        assert mine == {group.key for group in stream_groups(crm, LIVE, shard)}


def test_pending_honours_the_shard_and_the_order(crm: str, owner: psycopg.Connection[Any]) -> None:
    install(crm, LIVE)
    clear(owner)
    emails = [f"p{i}@example.com" for i in range(30)] + ["ünï@example.com"]
    for email in emails:  # one transaction each: the order they were recorded in
        owner.execute("insert into sales_closure (email) values (%s)", (email,))
    everything = pending(owner, limit=1000)
    assert [c.email for c in everything] == emails
    assert [c.changed_at for c in everything] == sorted(c.changed_at for c in everything)
    assert pending(owner, limit=5) == everything[:5]

    count = 4
    seen: list[str] = []
    for index in range(count):
        mine = pending(owner, shard=(index, count), limit=1000)
        assert [c.email for c in mine] == [
            e for e in emails if not e.isascii() or shard_of(e, count) == index
        ]
        assert "ünï@example.com" in [c.email for c in mine]  # not ASCII: every shard's
        depth, oldest = crm_changes.backlog(owner, (index, count))
        assert depth == len(mine)
        assert oldest == mine[0].changed_at
        seen += [c.email for c in mine if c.email.isascii()]
        first = pending(owner, shard=(index, count), limit=2)
        assert first == mine[:2]
    assert sorted(seen) == sorted(e for e in emails if e.isascii())  # each in one shard

    # Deleting what was read leaves what was not, and a change recorded since.
    read = pending(owner, limit=3)
    owner.execute("insert into sales_closure (email) values (%s)", (emails[0],))
    assert crm_changes.delete(owner, [c.id for c in read]) == 3
    assert crm_changes.delete(owner, []) == 0
    left = [c.email for c in pending(owner, limit=1000)]
    assert left == [*emails[3:], emails[0]]
    assert crm_changes.backlog(owner) == (len(left), pending(owner, limit=1)[0].changed_at)
    clear(owner)
    assert crm_changes.backlog(owner) == (0, None)


def test_a_notification_arrives_at_commit_once_per_transaction(
    crm: str, owner: psycopg.Connection[Any]
) -> None:
    install(crm, LIVE)
    with psycopg.connect(crm, autocommit=True) as listener, psycopg.connect(crm) as writer:
        listener.execute(crm_changes.listen_statement())

        def heard() -> list[tuple[str, str]]:
            return [(n.channel, n.payload) for n in listener.notifies(timeout=0.5)]

        with writer.transaction():
            writer.execute(
                "insert into sales_closure (email)"
                " select 'bulk' || i || '@example.com' from generate_series(1, 200) i"
            )
            assert heard() == []  # nothing before the commit
        assert heard() == [("crm_sync_changes", "")]  # 200 rows, one notification

        with writer.transaction():
            writer.execute("update sales_closure set lead_name = 'X' where email like 'bulk1%'")
            writer.execute("delete from sales_closure where email like 'bulk2%'")
        assert heard() == [("crm_sync_changes", "")]

        with writer.transaction():  # rolled back: no notification, no change row
            writer.execute("insert into sales_closure (email) values ('gone@example.com')")
            raise psycopg.Rollback
        with writer.transaction():  # nothing watched changed: none either
            writer.execute("update sales_closure set notes = 'n'")
        assert heard() == []
    assert "gone@example.com" not in rows(owner)


# -- dry run, uninstall, the CRM table ----------------------------------------------------


def test_dry_run_executes_nothing_and_prints_the_sql(
    crm: str,
    owner: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_definition(owner, "sales_closure")
    assert run_cli(monkeypatch, crm, "--dry-run") == 0
    out = capsys.readouterr().out
    assert 'create schema if not exists "crm_sync"' in out
    assert 'create table if not exists "crm_sync"."changes"' in out
    assert 'create or replace trigger "crm_sync_changes"' in out
    assert out.splitlines()[1] == "begin;"
    assert out.splitlines()[-1] == "commit;"
    assert not schema_exists(owner)
    assert triggers(owner) == []
    assert table_definition(owner, "sales_closure") == before

    install(crm, LIVE)
    assert run_cli(monkeypatch, crm, "--uninstall", "--dry-run") == 0
    out = capsys.readouterr().out
    assert 'drop trigger if exists "crm_sync_changes" on "public"."sales_closure"' in out
    assert 'drop schema if exists "crm_sync"' in out
    assert change_capture_installed(owner, LIVE)


def test_uninstall_removes_everything_and_the_crm_table_is_never_altered(
    crm: str,
    owner: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_definition(owner, "sales_closure")
    assert run_cli(monkeypatch, crm) == 0
    assert "change capture installed: trigger crm_sync_changes on public.sales_closure" in (
        capsys.readouterr().out
    )
    assert table_definition(owner, "sales_closure") == before
    owner.execute("insert into sales_closure (email) values ('kept@example.com')")
    owner.execute("delete from sales_closure where email = 'kept@example.com'")

    assert run_cli(monkeypatch, crm, "--uninstall") == 0
    assert "change capture uninstalled" in capsys.readouterr().out
    assert not schema_exists(owner)
    assert triggers(owner) == []
    assert table_definition(owner, "sales_closure") == before
    assert not change_capture_installed(owner, LIVE)
    # Again: nothing to do, still fine.
    assert run_cli(monkeypatch, crm, "--uninstall") == 0
    assert "not installed" in capsys.readouterr().out


def test_a_failed_install_leaves_nothing_behind(
    crm: str, owner: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = crm_changes.install_statements

    def failing_last(*args: Any, **kwargs: Any) -> list[sql.Composed]:
        return [*real(*args, **kwargs), sql.Composed([sql.SQL("select 1 / 0")])]

    monkeypatch.setattr(crm_changes, "install_statements", failing_last)
    with pytest.raises(CrmSourceError, match="nothing was installed"):
        install(crm, LIVE)
    assert not schema_exists(owner)
    assert triggers(owner) == []


def test_a_busy_crm_table_is_waited_for_briefly_then_left_alone(
    crm: str, owner: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crm_changes, "LOCK_TIMEOUT_MS", 200)
    with psycopg.connect(crm) as busy:
        busy.execute("insert into sales_closure (email) values ('busy@example.com')")
        with pytest.raises(DependencyUnavailable, match="nothing was installed"):
            install(crm, LIVE)
    assert not schema_exists(owner)


def test_a_new_crm_table_moves_the_trigger(crm: str, owner: psycopg.Connection[Any]) -> None:
    install(crm, LIVE)
    plan = install(crm, ODD)
    assert "removed from public.sales_closure" in plan.summary
    assert triggers(owner) == [('crm."Sales Closure"', "crm_sync_changes")]
    assert not change_capture_installed(owner, LIVE)
    owner.execute("insert into sales_closure (email) values ('old@example.com')")  # still fine
    assert rows(owner) == []
    uninstall(crm, LIVE)  # finds the trigger wherever it is
    assert triggers(owner) == []
    assert not schema_exists(owner)


def test_installed_means_installed_as_configured(crm: str, owner: psycopg.Connection[Any]) -> None:
    install(crm, LIVE)
    without_name = CrmColumns(table=LIVE.table, email=LIVE.email, eligibility=LIVE.eligibility)
    assert not change_capture_installed(owner, without_name)
    install(crm, without_name)
    assert change_capture_installed(owner, without_name)
    assert not change_capture_installed(owner, LIVE)
    owner.execute("alter table sales_closure disable trigger crm_sync_changes")
    assert not change_capture_installed(owner, without_name)


def test_someone_elses_trigger_of_that_name_is_left_alone(
    crm: str,
    owner: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    owner.execute(
        "create function public.theirs() returns trigger language plpgsql"
        " as $$ begin return null; end $$;"
        " create trigger crm_sync_changes after insert on sales_closure"
        " for each row execute function public.theirs()"
    )
    assert run_cli(monkeypatch, crm) == 2
    assert "already has a trigger named crm_sync_changes" in capsys.readouterr().err
    assert not schema_exists(owner)


def test_uninstall_keeps_everything_when_the_schema_holds_something_else(
    crm: str, owner: psycopg.Connection[Any]
) -> None:
    install(crm, LIVE)
    owner.execute("create table crm_sync.someone_elses (x int)")
    with pytest.raises(CrmSourceError, match="nothing was uninstalled"):
        uninstall(crm, LIVE)
    assert change_capture_installed(owner, LIVE)


def test_a_wrong_table_or_column_is_a_configuration_error(
    crm: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, crm, columns=CrmColumns(table="no_such")) == 2
    assert "CRM_TABLE: the CRM database has no table no_such" in capsys.readouterr().err
    wrong = CrmColumns(email="mail", eligibility="digital_sale_resume", name="nom")
    assert run_cli(monkeypatch, crm, columns=wrong) == 2
    err = capsys.readouterr().err
    assert "CRM_EMAIL_COLUMN: the CRM table sales_closure has no column 'mail'" in err
    assert "CRM_NAME_COLUMN: the CRM table sales_closure has no column 'nom'" in err
    assert run_cli(monkeypatch, "postgresql://postgres:hunter22@127.0.0.1:1/crm") == 69
    captured = capsys.readouterr()
    assert "hunter22" not in captured.out + captured.err


# -- rights -------------------------------------------------------------------------------


def test_a_role_without_rights_is_told_what_to_grant_and_nothing_is_created(
    crm: str,
    owner: psycopg.Connection[Any],
    make_role: MakeRole,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reader = make_role("grant select on sales_closure to {role}")
    before = table_definition(owner, "sales_closure")
    role = urlsplit(reader).username
    assert run_cli(monkeypatch, reader) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("configuration error:")]
    assert len(problems) == 3, err
    database_name = urlsplit(crm).path.lstrip("/")
    assert f"lacks CREATE on database {database_name}" in problems[0]
    assert f'GRANT CREATE ON DATABASE "{database_name}" TO "{role}";' in problems[0]
    assert f'CREATE SCHEMA "crm_sync" AUTHORIZATION "{role}";' in problems[0]
    assert "lacks TRIGGER on table public.sales_closure" in problems[1]
    assert f'GRANT TRIGGER ON TABLE "public"."sales_closure" TO "{role}";' in problems[1]
    assert "nothing was installed" in problems[2]
    assert not schema_exists(owner)
    assert triggers(owner) == []
    assert table_definition(owner, "sales_closure") == before

    # The dry run shows the SQL all the same, and what is missing to run it.
    assert run_cli(monkeypatch, reader, "--dry-run") == 2
    captured = capsys.readouterr()
    assert "create or replace trigger" in captured.out
    assert "lacks TRIGGER on table public.sales_closure" in captured.err
    assert not schema_exists(owner)


def test_the_documented_grants_are_enough(
    crm: str,
    owner: psycopg.Connection[Any],
    make_role: MakeRole,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/CHANGE-CAPTURE.md: the schema created for the worker's role and TRIGGER on the
    table; installing again needs nothing more; the CRM's writers need nothing at all."""
    worker = make_role(
        "grant select on sales_closure to {role}",
        "create schema crm_sync authorization {role}",
        "grant trigger on table public.sales_closure to {role}",
    )
    with psycopg.connect(worker, autocommit=True) as conn:
        assert missing_rights(conn, LIVE) == []
    assert run_cli(monkeypatch, worker) == 0
    assert run_cli(monkeypatch, worker) == 0
    capsys.readouterr()

    writer = make_role(
        "grant select, insert, update, delete on sales_closure to {role}",
        "grant usage on sequence sales_closure_id_seq to {role}",
    )
    with psycopg.connect(writer, autocommit=True) as conn:
        conn.execute("insert into sales_closure (email) values ('w@example.com')")
        conn.execute(
            "update sales_closure set email = 'w2@example.com' where email = 'w@example.com'"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from crm_sync.changes")
    with psycopg.connect(worker, autocommit=True) as conn:
        read = pending(conn, limit=10)
        assert [c.email for c in read] == ["w@example.com", "w2@example.com", "w@example.com"]
        assert crm_changes.delete(conn, [c.id for c in read]) == 3

        # Dropping a trigger takes the table's ownership: the table's owner drops it.
        assert [m for m in missing_rights(conn, LIVE, uninstall=True) if "ownership" in m]
    assert run_cli(monkeypatch, worker, "--uninstall") == 2
    err = capsys.readouterr().err
    assert "lacks the ownership of table public.sales_closure (owned by 'postgres')" in err
    assert 'DROP TRIGGER IF EXISTS "crm_sync_changes" ON "public"."sales_closure";' in err
    assert change_capture_installed(owner, LIVE)
    owner.execute('DROP TRIGGER IF EXISTS "crm_sync_changes" ON "public"."sales_closure"')
    assert run_cli(monkeypatch, worker, "--uninstall") == 0
    assert not schema_exists(owner)


def test_create_on_the_database_lets_the_role_create_the_schema(
    crm: str, owner: psycopg.Connection[Any], make_role: MakeRole
) -> None:
    name = urlsplit(crm).path.lstrip("/")
    worker = make_role(
        f'grant create on database "{name}" to {{role}}',
        "grant trigger on table public.sales_closure to {role}",
    )
    install(worker, LIVE)
    assert change_capture_installed(owner, LIVE)
    # Another role, even with every grant on the schema, may not replace what it does not own.
    other = make_role(
        "grant usage, create on schema crm_sync to {role}",
        "grant trigger on table public.sales_closure to {role}",
    )
    with psycopg.connect(other, autocommit=True) as conn:
        problems = missing_rights(conn, LIVE)
    assert len(problems) == 2
    assert "lacks the ownership of table crm_sync.changes" in problems[0]
    assert "lacks the ownership of function crm_sync.record_change" in problems[1]


def test_help_lists_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "  crm-setup [--dry-run] [--uninstall]" in capsys.readouterr().out
