"""The subset of Supabase Auth (GoTrue) under `/auth/v1` that supabase-py's clients use, answering
as the real server does, error for error: the admin API (users, invites, links), the password,
refresh-token and PKCE grants, and (in auth_user_api.py) what an app calls for its users."""

# Each handler cites the file of supabase/auth (v2.196) whose behaviour it follows.

from __future__ import annotations

import logging
import re
import smtplib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from supabase_sandbox.auth_config import AuthSettings
from supabase_sandbox.auth_errors import (
    AuthError,
    bad_request,
    render_auth_error,
    unexpected_failure,
)
from supabase_sandbox.auth_mail import AuthMailer
from supabase_sandbox.auth_params import (
    check_password_strength,
    decode_params,
    new_otp,
    random_password,
    request_fields,
    token_hash,
    typed_fields,
    validate_email,
    validate_phone,
)
from supabase_sandbox.auth_sessions import SessionStore, TokenIssuer
from supabase_sandbox.auth_user_api import UserApi, bearer_claims
from supabase_sandbox.auth_users import (
    BCRYPT_MAX_BYTES,
    Row,
    UserStore,
    hash_password,
    password_matches,
)
from supabase_sandbox.keys import SandboxKeys
from supabase_sandbox.wire import ApiRequest, ApiResponse

__all__ = [
    "AuthApi",
    "AuthSettings",
    "parse_go_duration",
    "random_password",
    "validate_email",
    "validate_phone",
]

log = logging.getLogger(__name__)

DUPLICATE_EMAIL_MSG = "A user with this email address has already been registered"
INVALID_LOGIN_MSG = "Invalid login credentials"
_NIL_UUID = "00000000-0000-0000-0000-000000000000"

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_USER_PATH = re.compile(r"^/admin/users/(?P<user_id>[^/]+)$")


def parse_go_duration(text: str) -> timedelta:
    """Go's time.ParseDuration, for `ban_duration` (e.g. "24h", "1h30m")."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return timedelta(0)
    position, seconds = 0, 0.0
    for match in _GO_DURATION_PART.finditer(body):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(body) or not body:
        raise ValueError(f'time: invalid duration "{text}"')
    return timedelta(seconds=sign * seconds)


_BCRYPT_HASH = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True, slots=True)
class _AdminUserParams:
    """api/admin.go AdminUserParams."""

    id: str | None = None
    aud: str | None = None
    role: str | None = None
    email: str | None = None
    phone: str | None = None
    password: str | None = None
    password_hash: str | None = None
    email_confirm: bool = False
    phone_confirm: bool = False
    user_metadata: dict[str, Any] | None = None
    app_metadata: dict[str, Any] | None = None
    ban_duration: str | None = None

    @classmethod
    def parse(cls, request: ApiRequest) -> _AdminUserParams:
        fields = typed_fields(
            decode_params(request),
            {
                "id": str,
                "aud": str,
                "role": str,
                "email": str,
                "phone": str,
                "password": str,
                "password_hash": str,
                "email_confirm": bool,
                "phone_confirm": bool,
                "user_metadata": dict,
                "app_metadata": dict,
                "ban_duration": str,
            },
        )
        fields["email_confirm"] = bool(fields["email_confirm"])
        fields["phone_confirm"] = bool(fields["phone_confirm"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class _LinkParams:
    """api/mail.go GenerateLinkParams."""

    type: str
    email: str
    new_email: str
    password: str
    data: dict[str, Any] | None
    redirect_to: str

    @classmethod
    def parse(cls, request: ApiRequest) -> _LinkParams:
        fields = typed_fields(
            decode_params(request),
            {
                "type": str,
                "email": str,
                "new_email": str,
                "password": str,
                "data": dict,
                "redirect_to": str,
            },
        )
        return cls(
            type=fields["type"] or "",
            email=fields["email"] or "",
            new_email=fields["new_email"] or "",
            password=fields["password"] or "",
            data=fields["data"],
            redirect_to=fields["redirect_to"] or "",
        )


@dataclass(frozen=True, slots=True)
class _Link:
    """One generate_link request once its type is settled."""

    type: str
    email: str
    otp: str
    token_hash: str
    password: str
    params: _LinkParams


def _new_user_id(requested: str | None) -> str:
    """adminUserCreate's optional `id`: a UUID, not the nil one."""
    if not requested:
        return str(uuid.uuid4())
    try:
        custom = uuid.UUID(requested)
    except ValueError as exc:
        raise bad_request("validation_failed", "ID must conform to the uuid v4 format") from exc
    if custom.int == 0:
        raise bad_request("validation_failed", "ID cannot be a nil uuid")
    return str(custom)


class AuthApi:
    """Answers `/auth/v1/...` requests (the path given here has the prefix removed)."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        keys: SandboxKeys,
        settings: AuthSettings,
        mailer: AuthMailer | None = None,
    ) -> None:
        self._pool = pool
        self._keys = keys
        self._settings = settings
        self._mailer = mailer
        self._tokens = TokenIssuer(keys, settings)
        self._users = UserApi(pool, keys, settings, self._tokens, mailer)

    # -- routing (api/api.go) -------------------------------------------------------------------

    def handle(self, request: ApiRequest, path: str) -> ApiResponse:
        """The response to one request; never raises for client or database errors."""
        path = path.rstrip("/") or "/"
        try:
            return self._route(request, path)
        except AuthError as error:
            return render_auth_error(error, request)
        except psycopg.Error as exc:
            log.warning("auth request failed in the database: %s", type(exc).__name__)
            return render_auth_error(
                unexpected_failure(
                    "Unexpected failure, please check server logs for more information"
                ),
                request,
            )

    def _route(self, request: ApiRequest, path: str) -> ApiResponse:
        method = request.method
        routes: dict[str, dict[str, Callable[[ApiRequest], ApiResponse]]] = {
            "/health": {"GET": self._health},
            "/token": {"POST": self._token},
            "/user": {"GET": self._users.get_user, "PUT": self._users.update_user},
            "/logout": {"POST": self._users.logout},
            "/verify": {"GET": self._users.verify, "POST": self._users.verify},
            "/recover": {"POST": self._users.recover},
            "/invite": {"POST": self._admin(self._invite)},
            "/admin/users": {
                "GET": self._admin(self._list_users),
                "POST": self._admin(self._create_user),
            },
            "/admin/generate_link": {"POST": self._admin(self._generate_link)},
        }
        if path in routes:
            handler = routes[path].get(method)
            return handler(request) if handler else ApiResponse(405)
        match = _USER_PATH.match(path)
        if match:
            user_routes: dict[str, Callable[[ApiRequest, str], ApiResponse]] = {
                "GET": self._get_user,
                "PUT": self._update_user,
                "DELETE": self._delete_user,
            }
            user_handler = user_routes.get(method)
            if user_handler is None:
                return ApiResponse(405)
            self._require_admin(request)
            return user_handler(request, match["user_id"])
        if path.startswith("/admin/"):
            self._require_admin(request)
        return ApiResponse(
            404, b"404 page not found\n", [("Content-Type", "text/plain; charset=utf-8")]
        )

    def _admin(
        self, handler: Callable[[ApiRequest], ApiResponse]
    ) -> Callable[[ApiRequest], ApiResponse]:
        def guarded(request: ApiRequest) -> ApiResponse:
            self._require_admin(request)
            return handler(request)

        return guarded

    # -- authentication (api/auth.go, api/middleware.go requireAdminCredentials) ---------------

    def _require_admin(self, request: ApiRequest) -> dict[str, Any]:
        claims = bearer_claims(request, self._keys)
        session_id = claims.get("session_id") or ""
        if session_id and session_id != _NIL_UUID:
            # maybeLoadUserOrSession, for tokens that name a session.
            self._users.load_user_and_session(claims)
        if claims.get("role") not in self._settings.admin_roles:
            raise AuthError(403, "not_admin", "User not allowed")
        return claims

    # -- handlers --------------------------------------------------------------------------------

    def _health(self, _request: ApiRequest) -> ApiResponse:
        """api/api.go HealthCheck."""
        return ApiResponse.json(
            200,
            {
                "version": "sandbox",
                "name": "GoTrue",
                "description": "GoTrue is a user registration and authentication API",
            },
        )

    def _list_users(self, request: ApiRequest) -> ApiResponse:
        """api/admin.go adminUsers with api/pagination.go paginate and addPaginationHeaders."""
        page = _parse_uint(request.query_value("page"), 1)
        per_page = _parse_uint(request.query_value("per_page"), 50)
        # pop's Paginate treats page < 1 as 1 and per_page < 1 as 20.
        page = max(page, 1)
        per_page = per_page if per_page >= 1 else 20
        filter_text = request.query_value("filter") or ""
        with self._pool.connection() as conn:
            result = UserStore(conn).page(self._settings.audience, page, per_page, filter_text)
        headers = _pagination_headers(request, page, per_page, result.total)
        return ApiResponse.json(
            200, {"users": result.users, "aud": self._settings.audience}, headers
        )

    def _get_user(self, _request: ApiRequest, user_id: str) -> ApiResponse:
        """api/admin.go loadUser + adminUserGet."""
        with self._pool.connection() as conn:
            store = UserStore(conn)
            row = self._load_user(store, user_id)
            return ApiResponse.json(200, store.as_json(row))

    def _load_user(self, store: UserStore, user_id: str, *, for_update: bool = False) -> Row:
        try:
            uuid.UUID(user_id)
        except ValueError as exc:
            raise AuthError(404, "validation_failed", "user_id must be an UUID") from exc
        row = store.find_by_id(user_id, for_update=for_update)
        if row is None:
            raise AuthError(404, "user_not_found", "User not found")
        return row

    def _create_user(self, request: ApiRequest) -> ApiResponse:
        """api/admin.go adminUserCreate."""
        params = _AdminUserParams.parse(request)
        aud = params.aud or self._settings.audience
        if not params.email and not params.phone:
            raise bad_request(
                "validation_failed", "Cannot create a user without either an email or phone"
            )
        email, phone = self._unused_contacts(params, aud)
        encrypted = self._initial_password_hash(params)
        user_id = _new_user_id(params.id)
        ban = self._ban_until(params.ban_duration)
        try:
            with self._pool.connection() as conn, conn.transaction():
                store = UserStore(conn)
                self._insert_new_user(
                    store,
                    user_id=user_id,
                    aud=aud,
                    email=email,
                    phone=phone,
                    encrypted=encrypted,
                    params=params,
                )
                if ban is not None:
                    store.update(user_id, banned_until=ban[0])
                body = self._user_body(store, user_id)
        except psycopg.Error as exc:
            raise unexpected_failure("Database error creating new user", exc) from exc
        return ApiResponse.json(200, body)

    def _unused_contacts(self, params: _AdminUserParams, aud: str) -> tuple[str, str]:
        """Validated email and phone, refused when another user already has them."""
        email = phone = ""
        with self._pool.connection() as conn:
            store = UserStore(conn)
            if params.email:
                email = validate_email(params.email)
                if store.is_duplicated_email(email, aud):
                    raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
            if params.phone:
                phone = validate_phone(params.phone)
                if self._find_by_phone(conn, phone, aud) is not None:
                    raise AuthError(
                        422, "phone_exists", "Phone number already registered by another user"
                    )
        return email, phone

    def _initial_password_hash(self, params: _AdminUserParams) -> str:
        """models.NewUser / NewUserWithPasswordHash: a random password when none is given;
        no strength rules, but bcrypt's 72-byte limit."""
        if params.password is not None and params.password_hash:
            raise bad_request(
                "validation_failed", "Only a password or a password hash should be provided"
            )
        if params.password_hash:
            if not _BCRYPT_HASH.match(params.password_hash):
                raise unexpected_failure("Error creating user")
            return params.password_hash
        password = params.password or random_password()
        if len(password.encode()) > BCRYPT_MAX_BYTES:
            raise bad_request("validation_failed", "bcrypt: password length exceeds 72 bytes")
        return hash_password(password, self._settings.bcrypt_cost)

    def _insert_new_user(
        self,
        store: UserStore,
        *,
        user_id: str,
        aud: str,
        email: str,
        phone: str,
        encrypted: str,
        params: _AdminUserParams,
    ) -> None:
        """The writes of adminUserCreate's transaction, one statement per model call, so
        triggers on auth.users see the row as they would under Supabase Auth."""
        providers = [name for name, value in (("email", email), ("phone", phone)) if value]
        store.insert_user(
            user_id=user_id,
            aud=aud,
            email=email,
            encrypted_password=encrypted,
            user_metadata=params.user_metadata or {},
            app_metadata={"provider": providers[0], "providers": providers},
            phone=phone,
        )
        if email:
            store.insert_identity(user_id, "email", _identity_claims(user_id, email=email))
        if phone:
            store.insert_identity(user_id, "phone", _identity_claims(user_id, phone=phone))
        store.update(user_id, role=(params.role or "authenticated").strip())
        if params.app_metadata is not None:
            store.merge_metadata(user_id, "raw_app_meta_data", params.app_metadata)
        if params.email_confirm:
            self._confirm_email(store, user_id)
        if params.phone_confirm:
            store.update(user_id, phone_confirmed_at=datetime.now(UTC))

    def _update_user(self, request: ApiRequest, user_id: str) -> ApiResponse:
        """api/admin.go adminUserUpdate (strength rules apply here, unlike on create)."""
        with self._pool.connection() as conn:
            self._load_user(UserStore(conn), user_id)
        params = _AdminUserParams.parse(request)
        email = validate_email(params.email) if params.email else ""
        phone = validate_phone(params.phone) if params.phone else ""
        ban = self._ban_until(params.ban_duration)
        encrypted: str | None = None
        if params.password is not None:
            check_password_strength(params.password, self._settings.password_min_length)
            encrypted = hash_password(params.password, self._settings.bcrypt_cost)
        try:
            with self._pool.connection() as conn, conn.transaction():
                store = UserStore(conn)
                row = self._load_user(store, user_id, for_update=True)
                self._apply_update(store, row, params, encrypted)
                if email:
                    self._change_contact(store, row, "email", email, params.email_confirm)
                if phone:
                    self._change_contact(store, row, "phone", phone, params.phone_confirm)
                if params.app_metadata is not None:
                    store.merge_metadata(user_id, "raw_app_meta_data", params.app_metadata)
                if params.user_metadata is not None:
                    store.merge_metadata(user_id, "raw_user_meta_data", params.user_metadata)
                if ban is not None:
                    store.update(user_id, banned_until=ban[0])
                body = self._user_body(store, user_id)
        except psycopg.Error as exc:
            raise unexpected_failure("Error updating user", exc) from exc
        return ApiResponse.json(200, body)

    def _apply_update(
        self, store: UserStore, row: Row, params: _AdminUserParams, encrypted: str | None
    ) -> None:
        user_id = str(row["id"])
        if params.role:
            store.update(user_id, role=params.role.strip())
        if params.email_confirm:
            self._confirm_email(store, user_id)
        if params.phone_confirm:
            store.update(user_id, phone_confirmed_at=datetime.now(UTC))
        if encrypted is not None:
            # User.UpdatePassword without a session: pending links voided, every session ended.
            store.set_password(user_id, encrypted)
            SessionStore(store.connection).logout_user(user_id)

    def _change_contact(
        self, store: UserStore, row: Row, provider: str, value: str, confirmed: bool
    ) -> None:
        """adminUserUpdate's email/phone branch: update (or create) the identity, then the user.

        There is no duplicate check here: a taken email fails on the unique index (500).
        """
        user_id = str(row["id"])
        verified_key = f"{provider}_verified"
        changes = {provider: value, verified_key: confirmed}
        if not store.update_identity_data(user_id, provider, changes):
            claims = {"sub": user_id, "email_verified": False, "phone_verified": False}
            claims.update(changes)
            store.insert_identity(user_id, provider, claims)
        if row["is_anonymous"] and confirmed:
            store.update(user_id, is_anonymous=False)
        store.update(user_id, **{provider: value})

    def _user_body(self, store: UserStore, user_id: str) -> dict[str, Any]:
        row = store.find_by_id(user_id)
        if row is None:
            raise AuthError(404, "user_not_found", "User not found")
        return store.as_json(row)

    def _delete_user(self, request: ApiRequest, user_id: str) -> ApiResponse:
        """api/admin.go adminUserDelete: 200 with `{}`; `should_soft_delete` optional."""
        with self._pool.connection() as conn:
            self._load_user(UserStore(conn), user_id)
        soft = False
        if request.body:
            params = request_fields(request, {"should_soft_delete": bool})
            soft = bool(params["should_soft_delete"])
        with self._pool.connection() as conn, conn.transaction():
            store = UserStore(conn)
            row = self._load_user(store, user_id, for_update=True)
            try:
                if not soft:
                    store.delete(user_id)
                elif row["deleted_at"] is None:
                    store.soft_delete(user_id)
                    SessionStore(conn).logout_user(user_id)
            except psycopg.Error as exc:
                message = "Error soft deleting user" if soft else "Database error deleting user"
                raise unexpected_failure(message, exc) from exc
        return ApiResponse.json(200, {})

    def _invite(self, request: ApiRequest) -> ApiResponse:
        """api/invite.go Invite: creates the user if needed and emails the invite link."""
        params = request_fields(request, {"email": str, "data": dict})
        email = validate_email(params["email"] or "")
        aud = self._settings.audience
        with self._pool.connection() as conn, conn.transaction():
            store = UserStore(conn)
            row = store.find_by_email(email, aud)
            if row is not None and row["email_confirmed_at"] is not None:
                raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
            if row is None:
                user_id = self._signup_new_user(store, email, "", params["data"] or {})
            else:
                user_id = str(row["id"])
            hashed = token_hash(email, new_otp(self._settings.otp_length))
            referrer = self._settings.request_referrer(request)
            link = self._settings.action_link(hashed, "invite", referrer)
            if self._mailer is not None:
                try:
                    self._mailer.send_invite(email, link)
                except (OSError, smtplib.SMTPException) as exc:
                    log.warning("invite email failed: %s", type(exc).__name__)
                    raise unexpected_failure("Error sending invite email") from exc
            now = datetime.now(UTC)
            store.update(
                user_id, confirmation_token=hashed, confirmation_sent_at=now, invited_at=now
            )
            body = self._user_body(store, user_id)
        return ApiResponse.json(200, body)

    def _generate_link(self, request: ApiRequest) -> ApiResponse:
        """api/mail.go adminGenerateLink: returns the link and its tokens, sends nothing."""
        params = _LinkParams.parse(request)
        email = validate_email(params.email)
        referrer = self._settings.request_referrer(request)
        if params.redirect_to and self._settings.redirect_allowed(params.redirect_to):
            referrer = params.redirect_to
        aud = self._settings.audience
        with self._pool.connection() as conn:
            row = UserStore(conn).find_by_email(email, aud)
        link_type, password = params.type, params.password
        if row is None:
            if link_type == "magiclink":
                link_type, password = "signup", random_password()
            elif link_type in ("recovery", "email_change_current", "email_change_new"):
                raise AuthError(404, "user_not_found", "User with this email not found")
            if link_type == "signup":
                check_password_strength(password, self._settings.password_min_length, required=True)
        writers = {
            "magiclink": self._link_recovery,
            "recovery": self._link_recovery,
            "invite": self._link_invite,
            "signup": self._link_signup,
            "email_change_current": self._link_email_change,
            "email_change_new": self._link_email_change,
        }
        writer = writers.get(link_type)
        otp = new_otp(self._settings.otp_length)
        link = _Link(link_type, email, otp, token_hash(email, otp), password, params)
        with self._pool.connection() as conn, conn.transaction():
            store = UserStore(conn)
            if writer is None:
                raise bad_request(
                    "validation_failed",
                    f"Invalid email action link type requested: {link_type}",
                )
            user_id = writer(store, row, link)
            body = self._user_body(store, user_id)
        url_type = "email_change" if link_type.startswith("email_change") else link_type
        body.update(
            {
                "action_link": self._settings.action_link(link.token_hash, url_type, referrer),
                "email_otp": otp,
                "hashed_token": link.token_hash,
                "verification_type": link_type,
                "redirect_to": referrer,
            }
        )
        return ApiResponse.json(200, body)

    def _link_recovery(self, store: UserStore, row: Row | None, link: _Link) -> str:
        assert row is not None
        user_id = str(row["id"])
        store.update(user_id, recovery_token=link.token_hash, recovery_sent_at=datetime.now(UTC))
        return user_id

    def _link_invite(self, store: UserStore, row: Row | None, link: _Link) -> str:
        if row is not None and row["email_confirmed_at"] is not None:
            raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
        if row is None:
            user_id = self._signup_new_user(store, link.email, "", link.params.data or {})
        else:
            user_id = str(row["id"])
        now = datetime.now(UTC)
        store.update(
            user_id, confirmation_token=link.token_hash, confirmation_sent_at=now, invited_at=now
        )
        return user_id

    def _link_signup(self, store: UserStore, row: Row | None, link: _Link) -> str:
        if row is None:
            user_id = self._signup_new_user(
                store, link.email, link.password, link.params.data or {}
            )
        else:
            if row["email_confirmed_at"] is not None:
                raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
            user_id = str(row["id"])
            if link.params.data:
                store.merge_metadata(user_id, "raw_user_meta_data", link.params.data)
        store.update(
            user_id, confirmation_token=link.token_hash, confirmation_sent_at=datetime.now(UTC)
        )
        return user_id

    def _link_email_change(self, store: UserStore, row: Row | None, link: _Link) -> str:
        assert row is not None
        user_id = str(row["id"])
        new_email = validate_email(link.params.new_email)
        if store.is_duplicated_email(new_email, self._settings.audience, exclude=user_id):
            raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
        if link.type == "email_change_current":
            tokens = {"email_change_token_current": link.token_hash}
        else:
            tokens = {"email_change_token_new": token_hash(new_email, link.otp)}
        store.update(
            user_id,
            email_change=new_email,
            email_change_sent_at=datetime.now(UTC),
            email_change_confirm_status=0,
            **tokens,
        )
        return user_id

    def _token(self, request: ApiRequest) -> ApiResponse:
        """api/token.go Token: the password, refresh_token and pkce grants."""
        grant_type = request.query_value("grant_type") or ""
        if grant_type == "password":
            return self._password_grant(request)
        if grant_type == "refresh_token":
            return self._refresh_grant(request)
        if grant_type == "pkce":
            return self._users.pkce_grant(request)
        raise bad_request("invalid_credentials", "unsupported_grant_type")

    def _password_grant(self, request: ApiRequest) -> ApiResponse:
        """api/token.go ResourceOwnerPasswordGrant."""
        params = request_fields(request, {"email": str, "phone": str, "password": str})
        email, phone = params["email"] or "", params["phone"] or ""
        password = params["password"] or ""
        if email and phone:
            raise bad_request(
                "validation_failed",
                "Only an email address or phone number should be provided on login.",
            )
        if not email and not phone:
            raise bad_request("validation_failed", "missing email or phone")
        aud = self._settings.audience
        with self._pool.connection() as conn:
            store = UserStore(conn)
            if email:
                row = store.find_by_email(email, aud)
            else:
                row = self._find_by_phone(conn, validate_phone(phone), aud)
        if row is None or not row["encrypted_password"]:
            raise bad_request("invalid_credentials", INVALID_LOGIN_MSG)
        banned_until = row["banned_until"]
        if banned_until is not None and banned_until > datetime.now(UTC):
            raise bad_request("user_banned", "User is banned")
        if not password_matches(password, row["encrypted_password"]):
            raise bad_request("invalid_credentials", INVALID_LOGIN_MSG)
        if email and row["email_confirmed_at"] is None:
            raise bad_request("email_not_confirmed", "Email not confirmed")
        if phone and row["phone_confirmed_at"] is None:
            raise bad_request("phone_not_confirmed", "Phone not confirmed")
        weak: dict[str, Any] | None = None
        if len(password) < self._settings.password_min_length:
            weak = {
                "message": f"Password should be at least "
                f"{self._settings.password_min_length} characters.",
                "reasons": ["length"],
            }
        with self._pool.connection() as conn, conn.transaction():
            body = self._tokens.issue(
                conn,
                str(row["id"]),
                "password",
                user_agent=request.header("user-agent"),
                weak_password=weak,
            )
        return ApiResponse.json(200, body)

    def _refresh_grant(self, request: ApiRequest) -> ApiResponse:
        """tokens/service.go RefreshTokenGrant (see TokenIssuer.refresh)."""
        params = request_fields(request, {"refresh_token": str})
        refresh_token = params["refresh_token"] or ""
        if not refresh_token:
            # An OAuthError (apierrors.NewOAuthError), rendered as OAuth 2 does: always 400.
            return ApiResponse.json(
                400, {"error": "invalid_request", "error_description": "refresh_token required"}
            )
        body = self._tokens.refresh(self._pool, refresh_token, request.header("user-agent"))
        return ApiResponse.json(200, body)

    # -- helpers ---------------------------------------------------------------------------------

    def _signup_new_user(
        self, store: UserStore, email: str, password: str, data: Mapping[str, Any]
    ) -> str:
        """api/signup.go signupNewUser + createNewIdentity, inside the caller's transaction."""
        user_id = str(uuid.uuid4())
        encrypted = hash_password(password, self._settings.bcrypt_cost) if password else ""
        store.insert_user(
            user_id=user_id,
            aud=self._settings.audience,
            email=email,
            encrypted_password=encrypted,
            user_metadata=data,
            app_metadata={"provider": "email", "providers": ["email"]},
        )
        store.update(user_id, role="authenticated")
        store.insert_identity(user_id, "email", _identity_claims(user_id, email=email))
        return user_id

    def _confirm_email(self, store: UserStore, user_id: str) -> None:
        """models/user.go Confirm: sets email_confirmed_at and user_metadata.email_verified."""
        store.update(user_id, confirmation_token="", email_confirmed_at=datetime.now(UTC))
        store.merge_metadata(user_id, "raw_user_meta_data", {"email_verified": True})

    def _ban_until(self, ban_duration: str | None) -> tuple[datetime | None] | None:
        """None when no ban is asked; a 1-tuple with the end of the ban (None lifts it)."""
        if not ban_duration:
            return None
        if ban_duration == "none":
            return (None,)
        try:
            duration = parse_go_duration(ban_duration)
        except ValueError as exc:
            raise bad_request(
                "validation_failed", f"invalid format for ban duration: {exc}"
            ) from exc
        return (datetime.now(UTC) + duration,)

    def _find_by_phone(self, conn: psycopg.Connection[Any], phone: str, aud: str) -> Row | None:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "select * from auth.users where instance_id = %s and phone = %s and aud = %s"
                " and is_sso_user = false limit 1",
                (_NIL_UUID, phone, aud),
            )
            return cur.fetchone()


def _identity_claims(
    user_id: str,
    *,
    email: str = "",
    phone: str = "",
    email_verified: bool = False,
    phone_verified: bool = False,
) -> dict[str, Any]:
    """structs.Map(provider.Claims{...}): sub plus the non-empty fields; the two verified
    flags are always present (their `structs` tags have no omitempty)."""
    claims: dict[str, Any] = {"sub": user_id}
    if email:
        claims["email"] = email
    claims["email_verified"] = email_verified
    if phone:
        claims["phone"] = phone
    claims["phone_verified"] = phone_verified
    return claims


def _parse_uint(raw: str | None, default: int) -> int:
    """api/pagination.go paginate: strconv.ParseUint, its error in Auth's message."""
    if not raw:
        return default
    if not raw.isdigit():
        raise bad_request(
            "validation_failed",
            f'Bad Pagination Parameters: strconv.ParseUint: parsing "{raw}": invalid syntax',
        )
    return int(raw)


def _pagination_headers(
    request: ApiRequest, page: int, per_page: int, total: int
) -> list[tuple[str, str]]:
    """api/pagination.go addPaginationHeaders: the URL as Auth sees it (behind the gateway,
    without `/auth/v1`), query keys sorted as Go's url.Values.Encode does."""
    total_pages = -(-total // per_page)
    query = dict(request.query)

    def url_for(target_page: int) -> str:
        query["page"] = str(target_page)
        return f"/admin/users?{urlencode(sorted(query.items()))}"

    link = ""
    if total_pages > page:
        link += f'<{url_for(page + 1)}>; rel="next", '
    link += f'<{url_for(total_pages)}>; rel="last"'
    return [("Link", link), ("X-Total-Count", str(total))]
