"""The part of Supabase Auth an app calls for its users: the signed-in user (`GET`/`PUT /user`),
sign-out (`POST /logout`), emailed links and codes (`GET`/`POST /verify`), password recovery
(`POST /recover`) and the PKCE code exchange (`POST /token?grant_type=pkce`)."""

# Each handler cites the file of supabase/auth whose behaviour it follows: api/auth.go
# (requireAuthentication), user.go, logout.go, verify.go, recover.go, mail.go, pkce.go, token.go
# and models/flow_state.go. Email and phone changes are not implemented: the sandbox says so.

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import smtplib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from supabase_sandbox.auth_config import AuthSettings
from supabase_sandbox.auth_errors import AuthError, bad_request, unexpected_failure
from supabase_sandbox.auth_mail import AuthMailer
from supabase_sandbox.auth_params import (
    check_password_strength,
    new_otp,
    random_password,
    request_fields,
    token_hash,
    validate_email,
    validate_phone,
)
from supabase_sandbox.auth_sessions import SessionStore, TokenIssuer
from supabase_sandbox.auth_users import (
    NIL_INSTANCE_ID,
    Row,
    UserStore,
    hash_password,
    password_matches,
)
from supabase_sandbox.keys import InvalidToken, SandboxKeys
from supabase_sandbox.wire import ApiRequest, ApiResponse

log = logging.getLogger(__name__)

PKCE_PREFIX = "pkce_"
_BEARER = re.compile(r"(?i)^bearer (\S+)$")
_CODE_CHALLENGE = re.compile(r"^[a-zA-Z._~0-9-]+$")
_LINK_EXPIRED = "Email link is invalid or has expired"
_CODE_INVALID = "Token has expired or is invalid"
# api/errors.go oauthErrorMap: the `error` of a failed link's redirect.
_OAUTH_ERRORS = {
    400: "invalid_request",
    401: "unauthorized_client",
    403: "access_denied",
    500: "server_error",
    503: "temporarily_unavailable",
}
# Which user columns hold the token of each link type (models.FindUserBy...Token).
_TOKEN_COLUMNS = {
    "email": ("confirmation_token", "recovery_token"),
    "signup": ("confirmation_token",),
    "invite": ("confirmation_token",),
    "recovery": ("recovery_token",),
    "magiclink": ("recovery_token",),
}
_EMAIL_TYPES = frozenset(_TOKEN_COLUMNS)


def not_implemented(what: str) -> AuthError:
    """A feature of Supabase Auth the sandbox does not have (never a silent success)."""
    return AuthError(501, "not_implemented", f"{what} is not implemented by the crm-sync sandbox")


def bearer_claims(request: ApiRequest, keys: SandboxKeys) -> dict[str, Any]:
    """api/auth.go extractBearerToken + parseJWTClaims: the verified claims of the bearer."""
    match = _BEARER.match(request.header("authorization") or "")
    if match is None:
        raise AuthError(401, "no_authorization", "This endpoint requires a valid Bearer token")
    try:
        return keys.verify(match.group(1))
    except InvalidToken as exc:
        if exc.expired:
            detail = "token has invalid claims: token is expired"
        elif exc.malformed:
            detail = f"token is malformed: {exc.reason}"
        else:
            detail = "token signature is invalid: signature is invalid"
        raise AuthError(
            403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {detail}"
        ) from exc


def _go_html_escape(text: str) -> str:
    """net/http's htmlEscape (the body of a redirect)."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;")):
        text = text.replace(char, entity)
    return text.replace("'", "&#39;")


def see_other(location: str, request: ApiRequest) -> ApiResponse:
    """http.Redirect(w, r, url, 303): a short HTML body for GET, none otherwise."""
    headers = [("Location", location)]
    body = b""
    if request.method in ("GET", "HEAD"):
        headers.append(("Content-Type", "text/html; charset=utf-8"))
    if request.method == "GET":
        body = f'<a href="{_go_html_escape(location)}">See Other</a>.\n\n'.encode()
    return ApiResponse(303, body, headers)


def _values(items: Mapping[str, str]) -> str:
    """Go's url.Values.Encode: keys sorted, QueryEscape'd."""
    return urlencode(sorted(items.items()))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request authenticated as: the JWT's claims, the user, and their session (None for
    a token that names none)."""

    claims: dict[str, Any]
    user: Row
    session: Row | None


@dataclass(frozen=True, slots=True)
class _VerifyParams:
    """api/verify.go VerifyParams, `token_hash` already worked out from an OTP code."""

    type: str
    token: str
    token_hash: str
    email: str
    phone: str

    @property
    def by_hash(self) -> bool:
        """isUsingTokenHash."""
        return bool(self.token_hash) and not (self.token or self.phone or self.email)


class UserApi:
    """The user-facing endpoints; AuthApi routes to them."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        keys: SandboxKeys,
        settings: AuthSettings,
        tokens: TokenIssuer,
        mailer: AuthMailer | None,
    ) -> None:
        self._pool = pool
        self._keys = keys
        self._settings = settings
        self._tokens = tokens
        self._mailer = mailer

    # -- authentication (api/auth.go) -----------------------------------------------------------

    def authenticate(self, request: ApiRequest) -> Caller:
        """requireAuthentication: a valid JWT naming an existing user (and session), not banned."""
        claims = bearer_claims(request, self._keys)
        user, session = self.load_user_and_session(claims)
        banned_until = user["banned_until"]
        if banned_until is not None and banned_until > datetime.now(UTC):
            raise AuthError(403, "user_banned", "User is banned")
        return Caller(claims, user, session)

    def load_user_and_session(self, claims: Mapping[str, Any]) -> tuple[Row, Row | None]:
        """maybeLoadUserOrSession: the `sub` claim's user and the `session_id` claim's session."""
        subject = claims.get("sub") or ""
        if not subject:
            raise AuthError(403, "bad_jwt", "invalid claim: missing sub claim")
        try:
            user_id = str(uuid.UUID(str(subject)))
        except ValueError as exc:
            raise AuthError(400, "bad_jwt", "invalid claim: sub claim must be a UUID") from exc
        session_id = str(claims.get("session_id") or "")
        with self._pool.connection() as conn:
            user = UserStore(conn).find_by_id(user_id)
            if user is None:
                raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
            if not session_id or session_id == NIL_INSTANCE_ID:
                return user, None
            try:
                session_id = str(uuid.UUID(session_id))
            except ValueError as exc:
                raise AuthError(
                    403, "bad_jwt", "invalid claim: session_id claim must be a UUID"
                ) from exc
            session = SessionStore(conn).find(session_id)
        if session is None:
            raise AuthError(
                403, "session_not_found", "Session from session_id claim in JWT does not exist"
            )
        return user, session

    # -- GET /user, PUT /user (api/user.go) -----------------------------------------------------

    def get_user(self, request: ApiRequest) -> ApiResponse:
        """UserGet: the signed-in user, if the token's audience is the request's."""
        caller = self.authenticate(request)
        claimed = caller.claims.get("aud")
        audiences = claimed if isinstance(claimed, list) else [claimed] if claimed else []
        wanted = request.header("x-jwt-aud") or (audiences[0] if audiences else "")
        wanted = wanted or self._settings.audience
        if not audiences or audiences[0] != wanted:
            raise bad_request("validation_failed", "Token audience doesn't match request audience")
        with self._pool.connection() as conn:
            return ApiResponse.json(200, UserStore(conn).as_json(caller.user))

    def update_user(self, request: ApiRequest) -> ApiResponse:
        """UserUpdate: password and user_metadata (`data`); a new password logs out every
        other session of the user and voids the emailed links still pending."""
        caller = self.authenticate(request)
        params = request_fields(
            request,
            {
                "email": str,
                "password": str,
                "current_password": str,
                "nonce": str,
                "data": dict,
                "app_metadata": dict,
                "phone": str,
                "channel": str,
                "code_challenge": str,
                "code_challenge_method": str,
            },
        )
        user, user_id = caller.user, str(caller.user["id"])
        email = validate_email(params["email"]) if params["email"] else ""
        phone = validate_phone(params["phone"]) if params["phone"] else ""
        password: str | None = params["password"]
        if password is not None:
            check_password_strength(password, self._settings.password_min_length)
        if params["app_metadata"] is not None and not self._is_admin(user):
            raise AuthError(403, "not_admin", "Updating app_metadata requires admin privileges")
        if user["is_anonymous"] and password and not email and not phone:
            raise AuthError(
                422,
                "validation_failed",
                "Updating password of an anonymous user without an email or phone is not allowed",
            )
        self._refuse_contact_change(user, email, phone)
        encrypted: str | None = None
        if password is not None:
            if password and password_matches(password, user["encrypted_password"]):
                raise AuthError(
                    422,
                    "same_password",
                    "New password should be different from the old password.",
                )
            encrypted = hash_password(password, self._settings.bcrypt_cost)
        with self._pool.connection() as conn, conn.transaction():
            store, sessions = UserStore(conn), SessionStore(conn)
            if encrypted is not None:
                store.set_password(user_id, encrypted)
                if caller.session is None:
                    sessions.logout_user(user_id)
                else:
                    sessions.logout_others(str(caller.session["id"]), user_id)
            if params["data"] is not None:
                store.merge_metadata(user_id, "raw_user_meta_data", params["data"])
            if params["app_metadata"] is not None:
                store.merge_metadata(user_id, "raw_app_meta_data", params["app_metadata"])
            row = store.find_by_id(user_id)
            assert row is not None
            body = store.as_json(row)
        return ApiResponse.json(200, body)

    def _is_admin(self, user: Row) -> bool:
        """api/helpers.go isAdmin: the project's audience and the `admin` role."""
        return bool(user["aud"] == self._settings.audience and user["role"] == "admin")

    def _refuse_contact_change(self, user: Row, email: str, phone: str) -> None:
        """The duplicate checks of an email or phone change, then the sandbox's refusal: it
        sends no change confirmations."""
        aud = self._settings.audience
        with self._pool.connection() as conn:
            store = UserStore(conn)
            if email and email != (user["email"] or ""):
                if store.is_duplicated_email(email, aud, exclude=str(user["id"])):
                    raise AuthError(
                        422,
                        "email_exists",
                        "A user with this email address has already been registered",
                    )
                raise not_implemented("Changing the email with PUT /user")
            if phone and phone != (user["phone"] or ""):
                with conn.cursor() as cur:
                    cur.execute(
                        "select 1 from auth.users where phone = %s and aud = %s", (phone, aud)
                    )
                    if cur.fetchone() is not None:
                        raise AuthError(
                            422,
                            "phone_exists",
                            "Phone number already registered by another user",
                        )
                raise not_implemented("Changing the phone with PUT /user")

    # -- POST /logout (api/logout.go) -----------------------------------------------------------

    def logout(self, request: ApiRequest) -> ApiResponse:
        """Logout: 204; `scope` global (default, every session of the user), local (this one)
        or others (all but this one). The refresh tokens go with their sessions."""
        caller = self.authenticate(request)
        scope = request.query_value("scope") or ""
        if scope not in ("", "global", "local", "others"):
            raise bad_request("validation_failed", f"Unsupported logout scope {json.dumps(scope)}")
        user_id = str(caller.user["id"])
        with self._pool.connection() as conn, conn.transaction():
            sessions = SessionStore(conn)
            if caller.session is None:
                log.info("user has an empty session_id claim: %s", user_id)
                sessions.logout_user(user_id)
            elif scope == "local":
                sessions.logout_session(str(caller.session["id"]))
            elif scope == "others":
                sessions.logout_others(str(caller.session["id"]), user_id)
            else:
                sessions.logout_user(user_id)
        return ApiResponse(204)

    # -- GET /verify, POST /verify (api/verify.go) ----------------------------------------------

    def verify(self, request: ApiRequest) -> ApiResponse:
        """Verify: GET follows an emailed link and redirects (303) to its `redirect_to` with the
        session in the fragment (or, for a PKCE link, an auth code in the query); POST takes a
        token hash or an emailed code and answers the session as JSON."""
        if request.method == "GET":
            link_type = request.query_value("type") or ""
            token = request.query_value("token") or ""
            redirect_to = self._settings.request_referrer(request)
            if not link_type:
                raise bad_request("validation_failed", "Verify requires a verification type")
            if not token:
                raise bad_request("validation_failed", "Verify requires a token or a token hash")
            return self._verify_get(request, token, link_type, redirect_to)
        return self._verify_post(request, self._verify_params(request))

    def _verify_params(self, request: ApiRequest) -> _VerifyParams:
        """VerifyParams.Validate for POST."""
        fields = request_fields(
            request,
            {
                "type": str,
                "token": str,
                "token_hash": str,
                "email": str,
                "phone": str,
                "redirect_to": str,
            },
        )
        link_type, token = fields["type"] or "", fields["token"] or ""
        hashed, email, phone = (
            fields["token_hash"] or "",
            fields["email"] or "",
            fields["phone"] or "",
        )
        if not link_type:
            raise bad_request("validation_failed", "Verify requires a verification type")
        if bool(token) == bool(hashed):
            raise bad_request("validation_failed", "Verify requires either a token or a token hash")
        if token:
            if phone and not email:
                phone = validate_phone(phone)
                hashed = token_hash(phone, token)
            elif email and not phone:
                try:
                    email = validate_email(email)
                except AuthError as exc:
                    raise AuthError(422, "validation_failed", "Invalid email format") from exc
                hashed = token_hash(email, token)
            else:
                raise bad_request(
                    "validation_failed",
                    "Only an email address or phone number should be provided on verify",
                )
        elif email or phone or fields["redirect_to"]:
            raise bad_request(
                "validation_failed", "Only the token_hash and type should be provided"
            )
        return _VerifyParams(link_type, token, hashed, email, phone)

    def _verify_get(
        self, request: ApiRequest, token: str, link_type: str, redirect_to: str
    ) -> ApiResponse:
        """verifyGet."""
        pkce = token.startswith(PKCE_PREFIX)
        method = "email/signup" if link_type.endswith("signup") else link_type
        code: str | None = None
        body: dict[str, Any] = {}
        try:
            with self._pool.connection() as conn, conn.transaction():
                user, link_type = self._user_by_link(conn, token, link_type)
                self._confirm_link(conn, user, link_type)
                if pkce:
                    code = self._issue_auth_code(conn, str(user["id"]), method)
                else:
                    body = self._tokens.issue(
                        conn, str(user["id"]), "otp", user_agent=request.header("user-agent")
                    )
        except AuthError as error:
            return see_other(_error_redirect(redirect_to, error, pkce=pkce), request)
        if code is not None:
            parts = urlsplit(redirect_to)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            query["code"] = code
            return see_other(urlunsplit(parts._replace(query=_values(query))), request)
        fragment = {
            "access_token": body["access_token"],
            "token_type": body["token_type"],
            "expires_in": str(body["expires_in"]),
            "expires_at": str(body["expires_at"]),
            "refresh_token": body["refresh_token"],
            "sb": "",
            "type": link_type,
        }
        return see_other(f"{redirect_to}#{_values(fragment)}", request)

    def _verify_post(self, request: ApiRequest, params: _VerifyParams) -> ApiResponse:
        """verifyPost."""
        with self._pool.connection() as conn, conn.transaction():
            if params.by_hash:
                user, link_type = self._user_by_link(conn, params.token_hash, params.type)
            else:
                user, link_type = self._user_by_code(conn, params)
            self._confirm_link(conn, user, link_type)
            body = self._tokens.issue(
                conn, str(user["id"]), "otp", user_agent=request.header("user-agent")
            )
        return ApiResponse.json(200, body)

    def _user_by_link(
        self, conn: psycopg.Connection[Any], hashed: str, link_type: str
    ) -> tuple[Row, str]:
        """verifyTokenHash: the user holding the token, and the link type it settles to
        (`email` becomes signup or magiclink)."""
        if link_type == "email_change":
            raise not_implemented("Verifying an email change")
        columns = _TOKEN_COLUMNS.get(link_type)
        if columns is None:
            raise bad_request("validation_failed", "Invalid email verification type")
        user = UserStore(conn).find_by_token(columns, hashed)
        if user is None:
            raise AuthError(403, "otp_expired", _LINK_EXPIRED)
        if _banned(user):
            raise AuthError(403, "user_banned", "User is banned")
        sent_at = user["confirmation_sent_at"]
        if link_type == "email":
            link_type = "signup"
            if user["recovery_token"] == hashed:
                sent_at, link_type = user["recovery_sent_at"], "magiclink"
        elif link_type in ("recovery", "magiclink"):
            sent_at = user["recovery_sent_at"]
        if self._expired(sent_at):
            raise AuthError(403, "otp_expired", _LINK_EXPIRED)
        return user, link_type

    def _user_by_code(
        self, conn: psycopg.Connection[Any], params: _VerifyParams
    ) -> tuple[Row, str]:
        """verifyUserAndToken: an emailed code checked against the user's pending token."""
        if params.type == "email_change":
            raise not_implemented("Verifying an email change")
        user = None
        if params.type in _EMAIL_TYPES:
            # The sandbox sends no SMS: no phone code can be pending (sms, phone_change).
            user = UserStore(conn).find_by_email(params.email, self._settings.audience)
        if user is None:
            raise AuthError(403, "otp_expired", _CODE_INVALID)
        if _banned(user):
            raise AuthError(403, "user_banned", "User is banned")
        pending = {
            "signup": (user["confirmation_token"], user["confirmation_sent_at"]),
            "magiclink": (user["recovery_token"], user["recovery_sent_at"]),
        }
        candidates = {
            "email": ("signup", "magiclink"),
            "signup": ("signup",),
            "invite": ("signup",),
            "recovery": ("magiclink",),
            "magiclink": ("magiclink",),
        }[params.type]
        for candidate in candidates:
            if self._otp_valid(params.token_hash, *pending[candidate]):
                # An `email` code settles to what it confirms; the others keep their type.
                return user, candidate if params.type == "email" else params.type
        raise AuthError(403, "otp_expired", _CODE_INVALID)

    def _confirm_link(self, conn: psycopg.Connection[Any], user: Row, link_type: str) -> None:
        """signupVerify (signup, invite) and recoverVerify (recovery, magiclink)."""
        store, user_id = UserStore(conn), str(user["id"])
        if link_type in ("signup", "invite"):
            if not user["encrypted_password"] and user["invited_at"] is not None:
                # An invited user gets a random password; the app asks them to set their own.
                store.set_password(
                    user_id, hash_password(random_password(), self._settings.bcrypt_cost)
                )
                SessionStore(conn).logout_user(user_id)
            self._confirm(store, user_id)
            if user["email"]:
                store.update_identity_data(user_id, "email", {"email_verified": True})
        elif link_type in ("recovery", "magiclink"):
            store.update(user_id, recovery_token="")
            if user["email_confirmed_at"] is None:
                self._confirm(store, user_id)
        else:
            raise bad_request("validation_failed", "Unsupported verification type")

    @staticmethod
    def _confirm(store: UserStore, user_id: str) -> None:
        """models.User.Confirm."""
        store.update(user_id, confirmation_token="", email_confirmed_at=datetime.now(UTC))
        store.merge_metadata(user_id, "raw_user_meta_data", {"email_verified": True})

    def _expired(self, sent_at: datetime | None) -> bool:
        """isOtpExpired (a token never sent counts as expired)."""
        if sent_at is None:
            return True
        return datetime.now(UTC) > sent_at + timedelta(seconds=self._settings.otp_expiry_s)

    def _otp_valid(self, actual: str, expected: str | None, sent_at: datetime | None) -> bool:
        """isOtpValid: pending, not expired, equal (a PKCE token carries its prefix)."""
        if not expected or sent_at is None or self._expired(sent_at):
            return False
        return actual == expected or PKCE_PREFIX + actual == expected

    # -- POST /recover (api/recover.go, mail.go sendPasswordRecovery) --------------------------

    def recover(self, request: ApiRequest) -> ApiResponse:
        """Recover: emails a recovery link; 200 `{}` whether or not the email has an account.
        With a PKCE challenge the link's token is prefixed and the link ends in an auth code."""
        params = request_fields(
            request, {"email": str, "code_challenge": str, "code_challenge_method": str}
        )
        raw_email = params["email"] or ""
        if not raw_email:
            raise bad_request("validation_failed", "Password recovery requires an email")
        email = validate_email(raw_email)
        challenge = params["code_challenge"] or ""
        challenge_method = params["code_challenge_method"] or ""
        _validate_pkce(challenge_method, challenge)
        referrer = self._settings.request_referrer(request)
        with self._pool.connection() as conn:
            user = UserStore(conn).find_by_email(email, self._settings.audience)
        if user is None:
            return ApiResponse.json(200, {})
        if challenge:
            self._new_flow_state(str(user["id"]), challenge_method, challenge)
        with self._pool.connection() as conn, conn.transaction():
            store = UserStore(conn)
            locked = store.find_by_id(str(user["id"]), for_update=True)
            assert locked is not None
            self._check_frequency(locked["recovery_sent_at"])
            hashed = token_hash(locked["email"] or "", new_otp(self._settings.otp_length))
            if challenge:
                hashed = PKCE_PREFIX + hashed
            link = self._settings.action_link(hashed, "recovery", referrer)
            if self._mailer is not None:
                try:
                    self._mailer.send_recovery(locked["email"] or email, link)
                except (OSError, smtplib.SMTPException) as exc:
                    log.warning("recovery email failed: %s", type(exc).__name__)
                    raise unexpected_failure("Error sending recovery email") from exc
            store.update(str(user["id"]), recovery_token=hashed, recovery_sent_at=datetime.now(UTC))
        return ApiResponse.json(200, {})

    def _check_frequency(self, sent_at: datetime | None) -> None:
        """validateSentWithinFrequencyLimit."""
        if sent_at is None:
            return
        allowed_at = sent_at + timedelta(seconds=self._settings.email_max_frequency_s)
        left = allowed_at - datetime.now(UTC)
        if left > timedelta(0):
            raise AuthError(
                429,
                "over_email_send_rate_limit",
                "For security purposes, you can only request this after "
                f"{int(left.total_seconds())} seconds.",
            )

    # -- PKCE (api/pkce.go, models/flow_state.go, token.go PKCE) --------------------------------

    def _new_flow_state(self, user_id: str, challenge_method: str, challenge: str) -> None:
        """generateFlowState for a recovery: a fresh auth code bound to the challenge."""
        method = challenge_method.lower()
        if method not in ("s256", "plain"):
            raise unexpected_failure(
                "Unexpected failure, please check server logs for more information"
            )
        with self._pool.connection() as conn:
            conn.execute(
                "insert into auth.flow_state (id, user_id, auth_code, code_challenge_method,"
                " code_challenge, provider_type, authentication_method, created_at, updated_at)"
                " values (%s, %s, %s, %s, %s, 'recovery', 'recovery', now(), now())",
                (str(uuid.uuid4()), user_id, str(uuid.uuid4()), method, challenge),
            )

    def _issue_auth_code(self, conn: psycopg.Connection[Any], user_id: str, method: str) -> str:
        """issueAuthCode: the newest flow state of the user for the method, its issue time
        recorded."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "select * from auth.flow_state where user_id = %s and authentication_method = %s"
                " order by created_at desc limit 1",
                (user_id, method),
            )
            flow = cur.fetchone()
        if flow is None or not flow["code_challenge"]:
            # issueAuthCode's 422, wrapped by verifyGet into a 400.
            raise bad_request(
                "flow_state_not_found",
                "No associated flow state found. 422: No valid flow state found for user.",
            )
        conn.execute(
            "update auth.flow_state set auth_code_issued_at = now(), updated_at = now()"
            " where id = %s",
            (flow["id"],),
        )
        return str(flow["auth_code"])

    def pkce_grant(self, request: ApiRequest) -> ApiResponse:
        """token.go PKCE: an auth code and its verifier for a session."""
        params = request_fields(request, {"auth_code": str, "code_verifier": str})
        auth_code, verifier = params["auth_code"] or "", params["code_verifier"] or ""
        if not auth_code or not verifier:
            raise bad_request(
                "validation_failed",
                "invalid request: both auth code and code verifier should be non-empty",
            )
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("select * from auth.flow_state where auth_code = %s", (auth_code,))
            flow = cur.fetchone()
        if flow is None or flow["user_id"] is None:
            raise AuthError(
                404, "flow_state_not_found", "invalid flow state, no valid flow state found"
            )
        started = flow["created_at"]
        if flow["authentication_method"] == "magiclink" and flow["auth_code_issued_at"]:
            started = flow["auth_code_issued_at"]
        if datetime.now(UTC) > started + timedelta(seconds=self._settings.flow_state_expiry_s):
            raise AuthError(422, "flow_state_expired", "invalid flow state, flow state has expired")
        _verify_pkce(str(flow["code_challenge_method"]), flow["code_challenge"], verifier)
        with self._pool.connection() as conn, conn.transaction():
            if UserStore(conn).find_by_id(str(flow["user_id"])) is None:
                raise AuthError(404, "user_not_found", "User not found")
            body = self._tokens.issue(
                conn,
                str(flow["user_id"]),
                flow["authentication_method"],
                user_agent=request.header("user-agent"),
            )
            conn.execute("delete from auth.flow_state where id = %s", (flow["id"],))
        return ApiResponse.json(200, body)


def _banned(user: Row) -> bool:
    banned_until = user["banned_until"]
    return banned_until is not None and banned_until > datetime.now(UTC)


def _error_redirect(redirect_to: str, error: AuthError, *, pkce: bool) -> str:
    """prepErrorRedirectURL: the error in the fragment (and, for PKCE, in the query)."""
    parts = urlsplit(redirect_to)
    details = {"error_code": error.code, "error_description": error.message}
    oauth_error = _OAUTH_ERRORS.get(error.status)
    if oauth_error:
        details["error"] = oauth_error
    query = parts.query
    if pkce:
        merged = dict(parse_qsl(parts.query, keep_blank_values=True))
        merged.update(details)
        query = _values(merged)
    return urlunsplit(parts._replace(query=query, fragment=_values({**details, "sb": ""})))


def _validate_pkce(method: str, challenge: str) -> None:
    """validatePKCEParams."""
    if bool(challenge) != bool(method):
        raise bad_request(
            "validation_failed", "PKCE flow requires code_challenge_method and code_challenge"
        )
    if not challenge:
        return
    if not 43 <= len(challenge) <= 128:
        raise bad_request(
            "validation_failed", "code challenge has to be between 43 and 128 characters"
        )
    if not _CODE_CHALLENGE.match(challenge):
        raise bad_request(
            "validation_failed",
            "code challenge can only contain alphanumeric characters, hyphens, periods,"
            " underscores and tildes",
        )


def _verify_pkce(method: str, challenge: str, verifier: str) -> None:
    """security.VerifyPKCEChallenge, its failures as 400 bad_code_verifier."""
    if method.lower() == "s256":
        digest = hashlib.sha256(verifier.encode()).digest()
        expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    elif method.lower() == "plain":
        expected = verifier
    else:
        raise bad_request("bad_code_verifier", "code challenge method not supported")
    if not hmac.compare_digest(challenge.encode(), expected.encode()):
        raise bad_request(
            "bad_code_verifier", "code challenge does not match previously saved code verifier"
        )
