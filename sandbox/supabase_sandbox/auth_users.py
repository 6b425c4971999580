"""Reads and writes `auth.users` and `auth.identities` the way Supabase Auth's models do."""

# The SQL mirrors supabase/auth internal/models/user.go and identity.go (column values, the nil
# `instance_id`, lookups by lower-cased email) and the JSON mirrors the struct tags of
# `models.User` and `models.Identity`; callers own the transaction.

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bcrypt
from psycopg import Connection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# Supabase Auth stores every user of a project under the nil instance id and filters on it.
NIL_INSTANCE_ID = "00000000-0000-0000-0000-000000000000"
BCRYPT_MAX_BYTES = 72

Row = dict[str, Any]
Query = sql.SQL | sql.Composed


def format_time(value: datetime | None) -> str | None:
    """A timestamp as Go's encoding/json writes time.Time (RFC 3339, UTC, 'Z')."""
    if value is None:
        return None
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def hash_password(password: str, cost: int) -> str:
    """A bcrypt hash as crypto.GenerateFromPassword makes it (cost 10 in Supabase Auth)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


def password_matches(password: str, encrypted: str | None) -> bool:
    """Checks a password against a stored bcrypt hash; other hash formats never match here."""
    if not encrypted or not encrypted.startswith("$2"):
        return False
    candidate = password.encode()
    if len(candidate) > BCRYPT_MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(candidate, encrypted.encode())
    except ValueError:
        return False


def _json_map(value: Any) -> dict[str, Any]:
    # models.JSONMap scans NULL as an empty object.
    return dict(value) if isinstance(value, Mapping) else {}


def identity_json(row: Row) -> dict[str, Any]:
    """A models.Identity as JSON: the row id is `identity_id`, the provider id is `id`."""
    body: dict[str, Any] = {
        "identity_id": str(row["id"]),
        "id": row["provider_id"],
        "user_id": str(row["user_id"]),
        "identity_data": _json_map(row["identity_data"]),
        "provider": row["provider"],
    }
    if row["last_sign_in_at"] is not None:
        body["last_sign_in_at"] = format_time(row["last_sign_in_at"])
    body["created_at"] = format_time(row["created_at"])
    body["updated_at"] = format_time(row["updated_at"])
    if row["email"]:
        body["email"] = row["email"]
    return body


def user_json(row: Row, identities: Sequence[Row]) -> dict[str, Any]:
    """A models.User as JSON, in its field order, `omitempty` fields left out when empty."""
    body: dict[str, Any] = {
        "id": str(row["id"]),
        "aud": row["aud"] or "",
        "role": row["role"] or "",
        "email": row["email"] or "",
    }

    def optional_time(key: str, column: str) -> None:
        if row[column] is not None:
            body[key] = format_time(row[column])

    optional_time("email_confirmed_at", "email_confirmed_at")
    optional_time("invited_at", "invited_at")
    body["phone"] = row["phone"] or ""
    optional_time("phone_confirmed_at", "phone_confirmed_at")
    optional_time("confirmation_sent_at", "confirmation_sent_at")
    optional_time("confirmed_at", "confirmed_at")
    optional_time("recovery_sent_at", "recovery_sent_at")
    if row["email_change"]:
        body["new_email"] = row["email_change"]
    optional_time("email_change_sent_at", "email_change_sent_at")
    if row["phone_change"]:
        body["new_phone"] = row["phone_change"]
    optional_time("phone_change_sent_at", "phone_change_sent_at")
    optional_time("reauthentication_sent_at", "reauthentication_sent_at")
    optional_time("last_sign_in_at", "last_sign_in_at")
    body["app_metadata"] = _json_map(row["raw_app_meta_data"])
    body["user_metadata"] = _json_map(row["raw_user_meta_data"])
    body["identities"] = [identity_json(identity) for identity in identities]
    body["created_at"] = format_time(row["created_at"])
    body["updated_at"] = format_time(row["updated_at"])
    optional_time("banned_until", "banned_until")
    optional_time("deleted_at", "deleted_at")
    body["is_anonymous"] = bool(row["is_anonymous"])
    return body


@dataclass(frozen=True, slots=True)
class UserPage:
    """One page of `GET /admin/users` and the total behind it."""

    users: list[dict[str, Any]]
    total: int


class UserStore:
    """SQL for Supabase Auth's users on one connection (the caller's transaction)."""

    def __init__(self, conn: Connection[Any]) -> None:
        self._conn = conn

    @property
    def connection(self) -> Connection[Any]:
        return self._conn

    def _one(self, query: Query, params: Sequence[Any]) -> Row | None:
        with self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchone()

    def _all(self, query: Query, params: Sequence[Any]) -> list[Row]:
        with self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    # -- reads ---------------------------------------------------------------------------------

    def find_by_id(self, user_id: str, *, for_update: bool = False) -> Row | None:
        """models.FindUserByID."""
        query: Query = sql.SQL("select * from auth.users where instance_id = %s and id = %s")
        if for_update:
            query = query + sql.SQL(" for update")
        return self._one(query, (NIL_INSTANCE_ID, user_id))

    def find_by_email(self, email: str, aud: str) -> Row | None:
        """models.FindUserByEmailAndAudience: lower(email), SSO users excluded."""
        query = sql.SQL(
            "select * from auth.users where instance_id = %s and lower(email) = %s"
            " and aud = %s and is_sso_user = false limit 1"
        )
        return self._one(query, (NIL_INSTANCE_ID, email.lower(), aud))

    def find_by_token(self, columns: Sequence[str], token_hash: str) -> Row | None:
        """models.FindUserBy...Token: the user holding `token_hash` in one of `columns`
        (confirmation_token, recovery_token, ...)."""
        where = sql.SQL(" or ").join(
            sql.SQL("{} = %s").format(sql.Identifier(column)) for column in columns
        )
        query = sql.SQL("select * from auth.users where instance_id = %s and ({}) limit 1")
        return self._one(query.format(where), (NIL_INSTANCE_ID, *([token_hash] * len(columns))))

    def is_duplicated_email(self, email: str, aud: str, exclude: str | None = None) -> bool:
        """models.IsDuplicatedEmail: any identity with that (lower-case) email, else any user."""
        query = sql.SQL(
            "select u.id from auth.identities i join auth.users u on u.id = i.user_id"
            " where i.email = %s and u.aud = %s and u.id is distinct from %s::uuid limit 1"
        )
        if self._one(query, (email.lower(), aud, exclude)) is not None:
            return True
        found = self.find_by_email(email, aud)
        return found is not None and str(found["id"]) != exclude

    def identities_of(self, user_ids: Sequence[str]) -> dict[str, list[Row]]:
        if not user_ids:
            return {}
        rows = self._all(
            sql.SQL(
                "select * from auth.identities where user_id = any(%s::uuid[])"
                " order by created_at, id"
            ),
            (list(user_ids),),
        )
        grouped: dict[str, list[Row]] = {uid: [] for uid in user_ids}
        for row in rows:
            grouped.setdefault(str(row["user_id"]), []).append(row)
        return grouped

    def as_json(self, row: Row) -> dict[str, Any]:
        identities = self.identities_of([str(row["id"])])
        return user_json(row, identities.get(str(row["id"]), []))

    def page(self, aud: str, page: int, per_page: int, filter_text: str) -> UserPage:
        """models.FindUsersInAudience with pop's Paginate.

        `filter` is `email LIKE '%f%' OR full_name ILIKE '%f%'` with the caller's text used
        as-is, so `_` and `%` stay wildcards. Sorted by created_at desc as Supabase Auth's default
        sort; `id` is added only to make ties deterministic.
        """
        where: Query = sql.SQL("instance_id = %s and aud = %s")
        params: list[Any] = [NIL_INSTANCE_ID, aud]
        if filter_text:
            pattern = f"%{filter_text}%"
            where = where + sql.SQL(
                " and (email like %s or raw_user_meta_data->>'full_name' ilike %s)"
            )
            params += [pattern, pattern]
        total_row = self._one(
            sql.SQL("select count(*) as total from auth.users where {}").format(where), params
        )
        total = int(total_row["total"]) if total_row else 0
        rows = self._all(
            sql.SQL(
                "select * from auth.users where {} order by created_at desc, id limit %s offset %s"
            ).format(where),
            [*params, per_page, (page - 1) * per_page],
        )
        ids = [str(row["id"]) for row in rows]
        identities = self.identities_of(ids)
        return UserPage(
            [user_json(row, identities.get(uid, [])) for row, uid in zip(rows, ids, strict=True)],
            total,
        )

    # -- writes --------------------------------------------------------------------------------

    def insert_user(
        self,
        *,
        user_id: str,
        aud: str,
        email: str,
        encrypted_password: str,
        user_metadata: Mapping[str, Any],
        app_metadata: Mapping[str, Any],
        phone: str = "",
    ) -> None:
        """`tx.Create(user)`: the row as models.NewUser leaves it (role still empty)."""
        self._conn.execute(
            sql.SQL(
                "insert into auth.users (instance_id, id, aud, role, email, encrypted_password,"
                " confirmation_token, recovery_token, email_change_token_new, email_change,"
                " raw_app_meta_data, raw_user_meta_data, created_at, updated_at,"
                " phone_change, phone_change_token, email_change_token_current,"
                " email_change_confirm_status, reauthentication_token, is_sso_user,"
                " is_anonymous, phone)"
                " values (%s, %s, %s, '', %s, %s, '', '', '', '', %s, %s, now(), now(),"
                " '', '', '', 0, '', false, false, %s)"
            ),
            (
                NIL_INSTANCE_ID,
                user_id,
                aud,
                email or None,
                encrypted_password,
                Jsonb(dict(app_metadata)),
                Jsonb(dict(user_metadata)),
                phone or None,
            ),
        )

    def insert_identity(
        self, user_id: str, provider: str, identity_data: Mapping[str, Any]
    ) -> None:
        """models.NewIdentity + create: provider_id is the user id for the email provider."""
        self._conn.execute(
            sql.SQL(
                "insert into auth.identities (provider_id, user_id, identity_data, provider,"
                " last_sign_in_at, created_at, updated_at)"
                " values (%s, %s, %s, %s, now(), now(), now())"
            ),
            (str(identity_data["sub"]), user_id, Jsonb(dict(identity_data)), provider),
        )

    def update(self, user_id: str, **columns: Any) -> None:
        """`tx.UpdateOnly(user, columns...)`: one UPDATE, so row triggers see each step."""
        assignments = [sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns]
        values = [Jsonb(value) if isinstance(value, dict) else value for value in columns.values()]
        self._conn.execute(
            sql.SQL("update auth.users set {}, updated_at = now() where id = %s").format(
                sql.SQL(", ").join(assignments)
            ),
            [*values, user_id],
        )

    def set_password(self, user_id: str, encrypted_password: str) -> None:
        """User.UpdatePassword's write: the new hash, and every emailed token still pending
        (confirmation, recovery, email and phone change, reauthentication) cleared with it.
        The caller logs sessions out as the password change requires."""
        self.update(
            user_id,
            encrypted_password=encrypted_password,
            confirmation_token="",
            confirmation_sent_at=None,
            recovery_token="",
            recovery_sent_at=None,
            email_change_token_current="",
            email_change_token_new="",
            email_change_sent_at=None,
            phone_change_token="",
            phone_change_sent_at=None,
            reauthentication_token="",
            reauthentication_sent_at=None,
        )

    def merge_metadata(self, user_id: str, column: str, updates: Mapping[str, Any]) -> None:
        """User.UpdateUserMetaData / UpdateAppMetaData: set keys, a null value deletes the key."""
        row = self.find_by_id(user_id)
        current = _json_map(row[column]) if row else {}
        for key, value in updates.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        self.update(user_id, **{column: current})

    def update_identity_data(self, user_id: str, provider: str, updates: Mapping[str, Any]) -> bool:
        """Identity.UpdateIdentityData; False when the user has no identity for `provider`."""
        row = self._one(
            sql.SQL(
                "select id, identity_data from auth.identities"
                " where provider_id = %s and provider = %s"
            ),
            (user_id, provider),
        )
        if row is None:
            return False
        data = _json_map(row["identity_data"])
        data.update(updates)
        self._conn.execute(
            sql.SQL(
                "update auth.identities set identity_data = %s, updated_at = now() where id = %s"
            ),
            (Jsonb(data), row["id"]),
        )
        return True

    def delete(self, user_id: str) -> None:
        """`tx.Destroy(user)`: identities go with it (on delete cascade)."""
        self._conn.execute(sql.SQL("delete from auth.users where id = %s"), (user_id,))

    def soft_delete(self, user_id: str) -> None:
        """User.SoftDeleteUser + SoftDeleteUserIdentities, simplified: the email and phone are
        obfuscated so they can be registered again, identities are removed."""
        self._conn.execute(
            sql.SQL(
                "update auth.users set deleted_at = now(), updated_at = now(),"
                " email = case when email is null then null"
                "   else encode(sha256(convert_to(email || id::text, 'utf8')), 'hex') end,"
                " phone = null, encrypted_password = '',"
                " raw_app_meta_data = '{}'::jsonb, raw_user_meta_data = '{}'::jsonb"
                " where id = %s"
            ),
            (user_id,),
        )
        self._conn.execute(sql.SQL("delete from auth.identities where user_id = %s"), (user_id,))
