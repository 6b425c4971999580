"""Sessions and refresh tokens in the `auth` schema, issued, rotated and revoked as Supabase
Auth does: a sign-in opens a session (`auth.sessions`) with a first refresh token
(`auth.refresh_tokens`) and the method it was opened with (`auth.mfa_amr_claims`)."""

# Follows supabase/auth internal/models/sessions.go, refresh_token.go, amr.go and
# internal/tokens/service.go (IssueRefreshToken, RefreshTokenGrant, GenerateAccessToken) for the
# 12-character refresh tokens that are kept in `auth.refresh_tokens` (refresh-token algorithm 1,
# which Supabase Auth still accepts and issues unless a project opts in to algorithm 2). Callers
# own the transaction.

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

from psycopg import Connection, sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from supabase_sandbox.auth_config import AuthSettings
from supabase_sandbox.auth_errors import AuthError, bad_request
from supabase_sandbox.auth_users import NIL_INSTANCE_ID, Row, UserStore
from supabase_sandbox.keys import SandboxKeys

REFRESH_TOKEN_LENGTH = 12
NOT_FOUND_MSG = "Invalid Refresh Token: Refresh Token Not Found"


def new_refresh_token() -> str:
    """crypto.SecureAlphanumeric(12): lower-case base32 of random bytes, 12 characters."""
    return base64.b32encode(secrets.token_bytes(8)).decode().rstrip("=").lower()[:12]


class SessionStore:
    """SQL for Supabase Auth's sessions on one connection (the caller's transaction)."""

    def __init__(self, conn: Connection[Any]) -> None:
        self._conn = conn

    def _one(self, query: sql.SQL | sql.Composed, params: Sequence[Any]) -> Row | None:
        with self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchone()

    def _run(self, query: LiteralString, params: Sequence[Any]) -> None:
        self._conn.execute(query, params)

    # -- sessions ----------------------------------------------------------------------------

    def open(self, user_id: str, user_agent: str | None) -> tuple[str, str]:
        """models.GrantAuthenticatedUser: a new session and its first refresh token."""
        session_id = str(uuid.uuid4())
        self._run(
            "insert into auth.sessions (id, user_id, created_at, updated_at, aal, user_agent)"
            " values (%s, %s, now(), now(), 'aal1', %s)",
            (session_id, user_id, user_agent),
        )
        return session_id, self.insert_refresh_token(user_id, session_id, parent=None)

    def find(self, session_id: str, *, for_update: bool = False) -> Row | None:
        """models.FindSessionByID."""
        query: sql.SQL | sql.Composed = sql.SQL("select * from auth.sessions where id = %s")
        if for_update:
            query = query + sql.SQL(" for update")
        return self._one(query, (session_id,))

    def add_claim(self, session_id: str, method: str) -> None:
        """models.AddClaimToSession: one claim per method, its time refreshed on reuse."""
        self._run(
            "insert into auth.mfa_amr_claims (id, session_id, created_at, updated_at,"
            " authentication_method) values (%s, %s, now(), now(), %s)"
            " on conflict on constraint mfa_amr_claims_session_id_authentication_method_pkey"
            " do update set updated_at = now()",
            (str(uuid.uuid4()), session_id, method),
        )

    def amr(self, session_id: str) -> list[dict[str, Any]]:
        """Session.CalculateAALAndAMR: the `amr` claim, a method and a unix time per claim."""
        with self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "select authentication_method, updated_at from auth.mfa_amr_claims"
                " where session_id = %s order by created_at, id",
                (session_id,),
            )
            rows = cur.fetchall()
        return [
            {
                "method": row["authentication_method"],
                "timestamp": int(row["updated_at"].timestamp()),
            }
            for row in rows
        ]

    def record_refresh(self, session_id: str, user_agent: str | None) -> None:
        """Session.UpdateOnlyRefreshInfo: refreshed_at is a timestamp without time zone (UTC)."""
        self._run(
            "update auth.sessions set refreshed_at = (now() at time zone 'utc'),"
            " user_agent = %s, updated_at = now() where id = %s",
            (user_agent, session_id),
        )

    def logout_user(self, user_id: str) -> None:
        """models.Logout: every session of the user (refresh tokens and claims cascade)."""
        self._run("delete from auth.sessions where user_id = %s", (user_id,))

    def logout_session(self, session_id: str) -> None:
        """models.LogoutSession."""
        self._run("delete from auth.sessions where id = %s", (session_id,))

    def logout_others(self, session_id: str, user_id: str) -> None:
        """models.LogoutAllExceptMe."""
        self._run(
            "delete from auth.sessions where id != %s and user_id = %s", (session_id, user_id)
        )

    # -- refresh tokens ----------------------------------------------------------------------

    def insert_refresh_token(self, user_id: str, session_id: str, parent: str | None) -> str:
        """createRefreshToken's insert; `user_id` is a varchar column in this table, and the
        first token of a session has no parent (NULL)."""
        token = new_refresh_token()
        self._run(
            "insert into auth.refresh_tokens (instance_id, token, user_id, revoked, created_at,"
            " updated_at, parent, session_id) values (%s, %s, %s, false, now(), now(), %s, %s)",
            (NIL_INSTANCE_ID, token, user_id, parent, session_id),
        )
        return token

    def find_refresh_token(self, token: str) -> Row | None:
        """findUserWithLegacyRefreshToken's lookup, the row locked for the rotation."""
        return self._one(
            sql.SQL("select * from auth.refresh_tokens where token = %s limit 1 for update"),
            (token,),
        )

    def active_refresh_token(self, session_id: str) -> Row | None:
        """Session.FindCurrentlyActiveRefreshToken: the newest token not revoked."""
        return self._one(
            sql.SQL(
                "select * from auth.refresh_tokens where session_id = %s and revoked is false"
                " order by id desc limit 1"
            ),
            (session_id,),
        )

    def swap(self, token: Row) -> str:
        """models.GrantRefreshTokenSwap: revokes `token`, issues its child in the session."""
        self._run(
            "update auth.refresh_tokens set revoked = true, updated_at = now() where id = %s",
            (token["id"],),
        )
        return self.insert_refresh_token(
            str(token["user_id"]), str(token["session_id"]), parent=token["token"]
        )

    def revoke_family(self, session_id: str) -> None:
        """models.RevokeTokenFamily for a token with a session: all of the session's tokens."""
        self._run(
            "update auth.refresh_tokens set revoked = true, updated_at = now()"
            " where session_id = %s and revoked = false",
            (session_id,),
        )

    def delete_refresh_token(self, token_id: int) -> None:
        self._run("delete from auth.refresh_tokens where id = %s", (token_id,))


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What the refresh-token grant decided: a response body, or an error to send after the
    transaction committed (a detected reuse revokes the session's tokens for good)."""

    body: dict[str, Any] | None = None
    error: AuthError | None = None


class TokenIssuer:
    """Issues and rotates sessions: the access token (a JWT) and the refresh token."""

    def __init__(self, keys: SandboxKeys, settings: AuthSettings) -> None:
        self._keys = keys
        self._settings = settings

    def issue(
        self,
        conn: Connection[Any],
        user_id: str,
        method: str,
        *,
        user_agent: str | None,
        weak_password: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """tokens/service.go IssueRefreshToken: a new session signed in with `method`
        ("password", "otp", "recovery", ...), last_sign_in_at updated; the response body."""
        users, sessions = UserStore(conn), SessionStore(conn)
        session_id, refresh_token = sessions.open(user_id, user_agent)
        users.update(user_id, last_sign_in_at=datetime.now(UTC))
        sessions.add_claim(session_id, method)
        body = self.session_body(conn, user_id, session_id, refresh_token)
        if weak_password is not None:
            body["weak_password"] = weak_password
        return body

    def session_body(
        self, conn: Connection[Any], user_id: str, session_id: str, refresh_token: str
    ) -> dict[str, Any]:
        """AccessTokenResponse: a fresh access token for the session and the user as it is."""
        users = UserStore(conn)
        row = users.find_by_id(user_id)
        if row is None:
            raise bad_request("user_not_found", "User not found")
        user = users.as_json(row)
        now = int(time.time())
        access_token, expires_at = self._keys.access_token(
            user=user,
            session_id=session_id,
            issuer=self._settings.external_url,
            lifetime_s=self._settings.jwt_expiry_s,
            now=now,
            amr=SessionStore(conn).amr(session_id),
        )
        return {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": expires_at - now,
            "expires_at": expires_at,
            "refresh_token": refresh_token,
            "user": user,
        }

    def refresh(
        self, pool: ConnectionPool[Any], refresh_token: str, user_agent: str | None
    ) -> dict[str, Any]:
        """tokens/service.go RefreshTokenGrant for 12-character refresh tokens.

        A revoked token is still honoured when it is the parent of the session's active token
        (the client lost the last response: the active token is returned again) or when it
        was revoked less than the reuse interval ago (a new child is issued). Otherwise it is
        a reuse: every token of the session is revoked and 400 refresh_token_already_used.
        """
        if len(refresh_token) != REFRESH_TOKEN_LENGTH:
            # Shorter ones are never looked up; longer ones are algorithm-2 tokens, which the
            # sandbox never issues, so none can be valid.
            raise bad_request("refresh_token_not_found", NOT_FOUND_MSG)
        with pool.connection() as conn, conn.transaction():
            outcome = self._rotate(conn, refresh_token, user_agent)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.body is not None
        return outcome.body

    def _rotate(
        self, conn: Connection[Any], refresh_token: str, user_agent: str | None
    ) -> RefreshOutcome:
        users, sessions = UserStore(conn), SessionStore(conn)
        token = sessions.find_refresh_token(refresh_token)
        if token is None:
            raise bad_request("refresh_token_not_found", NOT_FOUND_MSG)
        user = users.find_by_id(str(token["user_id"]))
        if user is None:
            raise bad_request("refresh_token_not_found", NOT_FOUND_MSG)
        now = datetime.now(UTC)
        if user["banned_until"] is not None and user["banned_until"] > now:
            raise bad_request("user_banned", "Invalid Refresh Token: User Banned")
        session = None
        if token["session_id"] is not None:
            session = sessions.find(str(token["session_id"]), for_update=True)
        if session is None:
            sessions.delete_refresh_token(token["id"])
            return RefreshOutcome(
                error=bad_request(
                    "session_not_found", "Invalid Refresh Token: No Valid Session Found"
                )
            )
        if session["not_after"] is not None and now > session["not_after"]:
            raise bad_request("session_expired", "Invalid Refresh Token: Session Expired")

        issued: str | None = None
        if token["revoked"]:
            active = sessions.active_refresh_token(str(session["id"]))
            reuse_until = token["updated_at"] + timedelta(
                seconds=self._settings.refresh_token_reuse_interval_s
            )
            if active is not None and active["parent"] == token["token"]:
                issued = str(active["token"])
            elif now > reuse_until:
                sessions.revoke_family(str(session["id"]))
                return RefreshOutcome(
                    error=bad_request(
                        "refresh_token_already_used", "Invalid Refresh Token: Already Used"
                    )
                )
        if issued is None:
            issued = sessions.swap(token)
            # createRefreshToken saves last_sign_in_at unchanged: only updated_at moves.
            users.update(str(user["id"]), last_sign_in_at=user["last_sign_in_at"])
        sessions.record_refresh(str(session["id"]), user_agent)
        return RefreshOutcome(
            body=self.session_body(conn, str(user["id"]), str(session["id"]), issued)
        )
