"""Test helpers for talking to the Supabase-like database the way its clients do."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def create_auth_user(
    conn: psycopg.Connection[Any], email: str, full_name: str | None = None
) -> User:
    """Inserts an auth user as Supabase Auth does (lower-cased email, confirmed)."""
    user_id = uuid.uuid4()
    meta = {"full_name": full_name} if full_name else {}
    conn.execute(
        """
        insert into auth.users (id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                                raw_user_meta_data, created_at, updated_at)
        values (%s, 'authenticated', 'authenticated', %s, now(),
                '{"provider": "email", "providers": ["email"]}', %s, now(), now())
        """,
        (user_id, email.strip().lower(), json.dumps(meta)),
    )
    return User(user_id, email.strip().lower())


def claims_for(role: str, user: User | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role, "iss": "supabase"}
    if user is not None:
        claims.update(sub=str(user.id), email=user.email, aud="authenticated")
    return claims


@contextmanager
def acting_as(
    conn: psycopg.Connection[Any], role: str, user: User | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """Runs the block as PostgREST runs a request: one transaction, `set local role` and the
    JWT claims in `request.jwt.claims`. The transaction rolls back if the block raises."""
    with conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps(claims_for(role, user)),),
        )
        yield conn


def as_user(conn: psycopg.Connection[Any], user: User) -> Any:
    return acting_as(conn, "authenticated", user)


def enrol(
    conn: psycopg.Connection[Any],
    customers: list[dict[str, Any]],
    initial_credits: int = 4,
) -> list[dict[str, Any]]:
    """Calls the enrolment RPC as the worker does (service role)."""
    payload = [{**c, "user_id": str(c["user_id"])} for c in customers]
    with acting_as(conn, "service_role"), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select * from public.enrol_crm_customers(%s::jsonb, %s)",
            (json.dumps(payload), initial_credits),
        )
        return cur.fetchall()


def enrol_user(conn: psycopg.Connection[Any], user: User, **extra: Any) -> dict[str, Any]:
    [row] = enrol(conn, [{"email": user.email, "user_id": user.id, **extra}])
    assert row["error"] is None, row
    return row


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def balance(conn: psycopg.Connection[Any], user: User) -> int:
    return int(scalar(conn, "select credits_remaining from public.profiles where id = %s", user.id))


def ledger_sum(conn: psycopg.Connection[Any], user: User) -> int:
    return int(
        scalar(
            conn,
            "select coalesce(sum(delta), 0) from public.credit_ledger where user_id = %s",
            user.id,
        )
    )


def mirror(conn: psycopg.Connection[Any], user: User) -> int | None:
    row = conn.execute(
        "select credits_remaining from public.digital_resume_by_crm where user_id = %s",
        (user.id,),
    ).fetchone()
    return None if row is None else int(row[0])
