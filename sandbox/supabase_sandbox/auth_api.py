"""The subset of Supabase Auth (GoTrue) under `/auth/v1` that supabase-py's admin client and
password sign-in use, answering as the real server does, error for error."""

# Each handler cites the file of supabase/auth (v2.196) whose behaviour it follows.

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import smtplib
import string
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatch
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from supabase_sandbox.auth_errors import (
    AuthError,
    bad_request,
    render_auth_error,
    unexpected_failure,
)
from supabase_sandbox.auth_mail import AuthMailer
from supabase_sandbox.auth_users import (
    BCRYPT_MAX_BYTES,
    Row,
    UserStore,
    hash_password,
    password_matches,
)
from supabase_sandbox.keys import InvalidToken, SandboxKeys, new_session_id
from supabase_sandbox.wire import ApiRequest, ApiResponse

log = logging.getLogger(__name__)

DUPLICATE_EMAIL_MSG = "A user with this email address has already been registered"
INVALID_LOGIN_MSG = "Invalid login credentials"
_NIL_UUID = "00000000-0000-0000-0000-000000000000"

# badoux/checkmail ValidateFormat, which Supabase Auth's validateEmail calls (api/mail.go).
_EMAIL_FORMAT = re.compile(
    r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
# api/phone.go: "+" and spaces removed, then E.164 digits.
_E164 = re.compile(r"^[1-9][0-9]{1,14}$")
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


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The Supabase Auth configuration the sandbox runs with (GoTrue's defaults unless noted).

    Args:
        external_url: the public base of the Auth API, e.g. `http://127.0.0.1:5400/auth/v1`.
        site_url: GOTRUE_SITE_URL, the default redirect of emailed links.
        redirect_allow_list: GOTRUE_URI_ALLOW_LIST globs for `redirect_to`.
        bcrypt_cost: 10 as Supabase Auth; tests may lower it for speed.
    """

    external_url: str
    site_url: str = "http://localhost:3000"
    redirect_allow_list: tuple[str, ...] = ()
    jwt_expiry_s: int = 3600
    bcrypt_cost: int = 10
    password_min_length: int = 6
    admin_roles: tuple[str, ...] = ("service_role", "supabase_admin")
    audience: str = "authenticated"
    otp_length: int = 6


@dataclass(frozen=True, slots=True)
class _Session:
    user_id: str
    session_id: str


class _Sessions:
    """Sessions and refresh tokens issued by the password grant (kept in memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: set[str] = set()
        self._refresh: dict[str, _Session] = {}

    def open(self, user_id: str) -> tuple[str, str]:
        session_id = new_session_id()
        refresh_token = secrets.token_urlsafe(9)
        with self._lock:
            self._sessions.add(session_id)
            self._refresh[refresh_token] = _Session(user_id, session_id)
        return session_id, refresh_token

    def exists(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def rotate(self, refresh_token: str) -> tuple[_Session, str] | None:
        new_token = secrets.token_urlsafe(9)
        with self._lock:
            session = self._refresh.pop(refresh_token, None)
            if session is None:
                return None
            self._refresh[new_token] = session
        return session, new_token


def validate_email(raw: str) -> str:
    """api/mail.go validateEmail: required, at most 255 chars, checkmail format, lower-cased."""
    if raw == "":
        raise bad_request("validation_failed", "An email address is required")
    if len(raw) > 255:
        raise bad_request("validation_failed", "An email address is too long")
    if not _EMAIL_FORMAT.match(raw):
        raise bad_request("validation_failed", "Unable to validate email address: invalid format")
    return raw.lower()


def validate_phone(raw: str) -> str:
    """api/phone.go validatePhone."""
    phone = raw.removeprefix("+").replace(" ", "")
    if not _E164.match(phone):
        raise bad_request("validation_failed", "Invalid phone number format (E.164 required)")
    return phone


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


def random_password() -> str:
    """password.Generate(64, 10, 0, false, true): 64 letters and digits, used when none given."""
    alphabet = string.ascii_letters + string.digits
    digits = [secrets.choice(string.digits) for _ in range(10)]
    rest = [secrets.choice(alphabet) for _ in range(54)]
    chars = digits + rest
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _field(params: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A typed JSON field as Go's json.Unmarshal into a struct: null is the zero value, a value
    of the wrong type fails the whole decode."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind in (int, float):
        raise TypeError(name)
    if not isinstance(value, kind):
        raise TypeError(name)
    return value


def _decode_params(request: ApiRequest) -> dict[str, Any]:
    """api/helpers.go retrieveRequestParams: the body must be a JSON object."""
    try:
        params = request.json()
    except ValueError as exc:
        message = "unexpected end of JSON input" if not request.body else str(exc)
        raise bad_request("bad_json", f"Could not parse request body as JSON: {message}") from exc
    if not isinstance(params, dict):
        raise bad_request(
            "bad_json",
            "Could not parse request body as JSON: json: cannot unmarshal "
            f"{type(params).__name__} into Go value of type object",
        )
    return params


def _typed(
    params: Mapping[str, Any], spec: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind in spec.items():
        try:
            out[name] = _field(params, name, kind)
        except TypeError as exc:
            raise bad_request(
                "bad_json",
                f"Could not parse request body as JSON: json: cannot unmarshal "
                f"{type(params[name]).__name__} into Go struct field .{name}",
            ) from exc
    return out


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
        fields = _typed(
            _decode_params(request),
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
        fields = _typed(
            _decode_params(request),
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
        self._sessions = _Sessions()

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
        authorization = request.header("authorization") or ""
        match = re.match(r"(?i)^bearer (\S+)$", authorization)
        if match is None:
            raise AuthError(401, "no_authorization", "This endpoint requires a valid Bearer token")
        try:
            claims = self._keys.verify(match.group(1))
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
        session_id = claims.get("session_id") or ""
        if session_id and session_id != _NIL_UUID:
            self._check_session(claims, str(session_id))
        if claims.get("role") not in self._settings.admin_roles:
            raise AuthError(403, "not_admin", "User not allowed")
        return claims

    def _check_session(self, claims: Mapping[str, Any], session_id: str) -> None:
        """api/auth.go maybeLoadUserOrSession, for tokens that name a session."""
        subject = claims.get("sub") or ""
        if not subject:
            raise AuthError(403, "bad_jwt", "invalid claim: missing sub claim")
        try:
            uuid.UUID(str(subject))
        except ValueError as exc:
            raise AuthError(400, "bad_jwt", "invalid claim: sub claim must be a UUID") from exc
        with self._pool.connection() as conn:
            if UserStore(conn).find_by_id(str(subject)) is None:
                raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
        if not self._sessions.exists(session_id):
            raise AuthError(
                403, "session_not_found", "Session from session_id claim in JWT does not exist"
            )

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
            self._check_password_strength(params.password)
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
            store.update(user_id, encrypted_password=encrypted)

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
            params = _typed(_decode_params(request), {"should_soft_delete": bool})
            soft = bool(params["should_soft_delete"])
        with self._pool.connection() as conn, conn.transaction():
            store = UserStore(conn)
            row = self._load_user(store, user_id, for_update=True)
            try:
                if not soft:
                    store.delete(user_id)
                elif row["deleted_at"] is None:
                    store.soft_delete(user_id)
            except psycopg.Error as exc:
                message = "Error soft deleting user" if soft else "Database error deleting user"
                raise unexpected_failure(message, exc) from exc
        return ApiResponse.json(200, {})

    def _invite(self, request: ApiRequest) -> ApiResponse:
        """api/invite.go Invite: creates the user if needed and emails the invite link."""
        params = _typed(_decode_params(request), {"email": str, "data": dict})
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
            otp = _otp(self._settings.otp_length)
            token_hash = _token_hash(email, otp)
            link = self._action_link(token_hash, "invite", self._settings.site_url)
            if self._mailer is not None:
                try:
                    self._mailer.send_invite(email, link)
                except (OSError, smtplib.SMTPException) as exc:
                    log.warning("invite email failed: %s", type(exc).__name__)
                    raise unexpected_failure("Error sending invite email") from exc
            now = datetime.now(UTC)
            store.update(
                user_id, confirmation_token=token_hash, confirmation_sent_at=now, invited_at=now
            )
            body = self._user_body(store, user_id)
        return ApiResponse.json(200, body)

    def _generate_link(self, request: ApiRequest) -> ApiResponse:
        """api/mail.go adminGenerateLink: returns the link and its tokens, sends nothing."""
        params = _LinkParams.parse(request)
        email = validate_email(params.email)
        referrer = self._referrer(request.query_value("redirect_to"))
        if params.redirect_to and self._redirect_allowed(params.redirect_to):
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
                self._check_password_strength(password, required=True)
        writers = {
            "magiclink": self._link_recovery,
            "recovery": self._link_recovery,
            "invite": self._link_invite,
            "signup": self._link_signup,
            "email_change_current": self._link_email_change,
            "email_change_new": self._link_email_change,
        }
        writer = writers.get(link_type)
        otp = _otp(self._settings.otp_length)
        link = _Link(link_type, email, otp, _token_hash(email, otp), password, params)
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
                "action_link": self._action_link(link.token_hash, url_type, referrer),
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
            tokens = {"email_change_token_new": _token_hash(new_email, link.otp)}
        store.update(
            user_id,
            email_change=new_email,
            email_change_sent_at=datetime.now(UTC),
            email_change_confirm_status=0,
            **tokens,
        )
        return user_id

    def _token(self, request: ApiRequest) -> ApiResponse:
        """api/token.go Token: the password grant (and refresh_token, for supabase-py's timer)."""
        grant_type = request.query_value("grant_type") or ""
        if grant_type == "password":
            return self._password_grant(request)
        if grant_type == "refresh_token":
            return self._refresh_grant(request)
        raise bad_request("invalid_credentials", "unsupported_grant_type")

    def _password_grant(self, request: ApiRequest) -> ApiResponse:
        """api/token.go ResourceOwnerPasswordGrant."""
        params = _typed(_decode_params(request), {"email": str, "phone": str, "password": str})
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
        session_id, refresh_token = self._sessions.open(str(row["id"]))
        return self._issue(str(row["id"]), session_id, refresh_token, weak)

    def _refresh_grant(self, request: ApiRequest) -> ApiResponse:
        """api/token_refresh.go, reduced to rotating the refresh token of a known session."""
        params = _typed(_decode_params(request), {"refresh_token": str})
        rotated = self._sessions.rotate(params["refresh_token"] or "")
        if rotated is None:
            raise bad_request(
                "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"
            )
        session, refresh_token = rotated
        return self._issue(session.user_id, session.session_id, refresh_token, None)

    def _issue(
        self, user_id: str, session_id: str, refresh_token: str, weak: dict[str, Any] | None
    ) -> ApiResponse:
        """tokens/service.go IssueRefreshToken: updates last_sign_in_at, returns the session."""
        with self._pool.connection() as conn, conn.transaction():
            store = UserStore(conn)
            store.update(user_id, last_sign_in_at=datetime.now(UTC))
            row = store.find_by_id(user_id)
            if row is None:
                raise bad_request("invalid_credentials", INVALID_LOGIN_MSG)
            user = store.as_json(row)
        access_token, expires_at = self._keys.access_token(
            user=user,
            session_id=session_id,
            issuer=self._settings.external_url,
            lifetime_s=self._settings.jwt_expiry_s,
        )
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self._settings.jwt_expiry_s,
            "expires_at": expires_at,
            "refresh_token": refresh_token,
            "user": user,
        }
        if weak is not None:
            body["weak_password"] = weak
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

    def _check_password_strength(self, password: str, *, required: bool = False) -> None:
        """api/password.go checkPasswordStrength (no character classes, no HIBP)."""
        if required and password == "":
            raise AuthError(422, "validation_failed", "Signup requires a valid password")
        if len(password.encode()) > BCRYPT_MAX_BYTES:
            raise bad_request(
                "validation_failed",
                f"Password cannot be longer than {BCRYPT_MAX_BYTES} characters",
            )
        minimum = self._settings.password_min_length
        if len(password) < minimum:
            raise AuthError(
                422,
                "weak_password",
                f"Password should be at least {minimum} characters.",
                weak_password_reasons=["length"],
            )

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

    def _redirect_allowed(self, url: str) -> bool:
        """utilities.IsRedirectURLValid: the site URL's host, or a URI allow-list glob."""
        if not url:
            return False
        site = urlsplit(self._settings.site_url)
        target = urlsplit(url)
        if target.scheme in ("http", "https") and target.netloc == site.netloc:
            return True
        return any(fnmatch(url, pattern) for pattern in self._settings.redirect_allow_list)

    def _referrer(self, redirect_to: str | None) -> str:
        """utilities.GetReferrer: `redirect_to` when allowed, else the site URL."""
        if redirect_to and self._redirect_allowed(redirect_to):
            return redirect_to
        return self._settings.site_url

    def _action_link(self, token_hash: str, link_type: str, redirect_to: str) -> str:
        """templatemailer.go GetEmailActionLink: `<external>/verify?token&type&redirect_to`."""
        query = urlencode({"token": token_hash, "type": link_type, "redirect_to": redirect_to})
        return f"{self._settings.external_url}/verify?{query}"


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


def _otp(digits: int) -> str:
    """crypto.GenerateOtp: a zero-padded random number."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def _token_hash(email: str, otp: str) -> str:
    """crypto.GenerateTokenHash: hex SHA-224 of email + otp."""
    return hashlib.sha224((email + otp).encode()).hexdigest()


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
