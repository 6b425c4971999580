"""Creates and drops throw-away PostgreSQL databases prepared like a Supabase project.

Used by the tests, the benchmarks and the sandbox server: `bootstrap.sql` plays the part of
what Supabase provisions (roles, `auth` schema), then our own migrations run on top.
"""

from __future__ import annotations

import secrets
from importlib import resources
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from sync_worker.migrate import migrate

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def bootstrap_sql() -> str:
    """The SQL that makes a plain database look like a fresh Supabase project."""
    return resources.files("supabase_sandbox").joinpath("bootstrap.sql").read_text("utf-8")


def database_url(admin_url: str, dbname: str) -> str:
    """`admin_url` with its database replaced by `dbname`; the rest of its query (a Unix
    socket's `host=/dir`, `port=`, `sslmode=`...) is kept, a `dbname=` there dropped (libpq
    would let it win over the path)."""
    parts = urlsplit(admin_url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.lower().startswith("dbname="))
    # Not urlunsplit: it drops the `//` of an empty host (`postgresql:///db?host=/dir`).
    return f"{parts.scheme}://{parts.netloc}/{dbname}" + (f"?{query}" if query else "")


def unique_name(prefix: str) -> str:
    """A database name nobody else is using: prefix plus random hex."""
    return f"{prefix}_{secrets.token_hex(5)}"


def create_database(admin_url: str, dbname: str, template: str | None = None) -> str:
    """Creates `dbname` (optionally as a copy of `template`) and returns its URL."""
    statement = sql.SQL("create database {}").format(sql.Identifier(dbname))
    if template:
        statement = sql.SQL("create database {} template {}").format(
            sql.Identifier(dbname), sql.Identifier(template)
        )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)
    return database_url(admin_url, dbname)


def drop_database(admin_url: str, dbname: str) -> None:
    """Drops `dbname`, disconnecting whoever is still connected."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
        )


def bootstrap_supabase(db_url: str) -> None:
    """Applies the Supabase-like bootstrap to an existing database."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(bootstrap_sql().encode())


def create_supabase_database(admin_url: str, dbname: str, *, with_migrations: bool = True) -> str:
    """Creates a database prepared like a Supabase project, with our migrations applied."""
    url = create_database(admin_url, dbname)
    try:
        bootstrap_supabase(url)
        if with_migrations:
            migrate(url)
    except BaseException:
        drop_database(admin_url, dbname)
        raise
    return url
