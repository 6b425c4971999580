"""Supabase Auth's error responses, in both API versions its clients may ask for."""

# Follows supabase/auth internal/api/errors.go (HandleResponseError), apiversions.go,
# apierrors/apierrors.go and utilities/postgres.go: with request header `X-Supabase-Api-Version:
# 2024-01-01` or later the body is {"code", "message"} and the version is echoed; otherwise the
# legacy {"code": <status>, "error_code", "msg"}. Both carry `x-sb-error-code`, except weak-
# password errors in the 2024 form.

from __future__ import annotations

import uuid
from datetime import date

import psycopg

from supabase_sandbox.wire import ApiRequest, ApiResponse

API_VERSION_HEADER = "X-Supabase-Api-Version"
API_VERSION_2024 = date(2024, 1, 1)

# The SQLSTATEs utilities/postgres.go lets through to legacy clients, all as 500.
_PUBLIC_PG_CODES = frozenset(
    {"P0001", "23000", "23001", "23502", "23503", "23505", "23514", "23P01"}
)


class AuthError(Exception):
    """An error Supabase Auth reports to the client.

    Args:
        status: HTTP status.
        code: the `error_code` (apierrors/errorcode.go), e.g. "email_exists".
        message: the human message, exactly as Supabase Auth words it.
        cause: the database error behind a 500, shown to legacy clients as Auth does.
        weak_password_reasons: set for the weak-password error, which has its own body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        cause: psycopg.Error | None = None,
        weak_password_reasons: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.cause = cause
        self.weak_password_reasons = weak_password_reasons


def bad_request(code: str, message: str) -> AuthError:
    return AuthError(400, code, message)


def unexpected_failure(message: str, cause: psycopg.Error | None = None) -> AuthError:
    return AuthError(500, "unexpected_failure", message, cause=cause)


def wants_2024_api(request: ApiRequest) -> bool:
    """True when the request asks for the 2024-01-01 API (DetermineClosestAPIVersion)."""
    raw = request.header(API_VERSION_HEADER)
    if not raw:
        return False
    try:
        asked = date.fromisoformat(raw)
    except ValueError:
        return False
    return asked >= API_VERSION_2024


def render_auth_error(error: AuthError, request: ApiRequest) -> ApiResponse:
    """The response Supabase Auth sends for `error`."""
    modern = wants_2024_api(request)
    headers: list[tuple[str, str]] = []
    if modern:
        headers.append((API_VERSION_HEADER, API_VERSION_2024.isoformat()))

    if error.weak_password_reasons is not None:
        reasons = {"reasons": error.weak_password_reasons}
        if modern:
            weak = {"code": "weak_password", "message": error.message, "weak_password": reasons}
            return ApiResponse.json(422, weak, headers)
        headers.append(("x-sb-error-code", "weak_password"))
        legacy = {
            "code": 422,
            "error_code": "weak_password",
            "msg": error.message,
            "weak_password": reasons,
        }
        return ApiResponse.json(422, legacy, headers)

    code = error.code or ("unexpected_failure" if error.status == 500 else "unknown")
    headers.append(("x-sb-error-code", code))
    if modern:
        return ApiResponse.json(error.status, {"code": code, "message": error.message}, headers)

    if error.cause is not None and error.cause.sqlstate in _PUBLIC_PG_CODES:
        diag = error.cause.diag
        pg_body: dict[str, object] = {
            "code": error.cause.sqlstate,
            "message": diag.message_primary or str(error.cause),
        }
        if diag.message_hint:
            pg_body["hint"] = diag.message_hint
        if diag.message_detail:
            pg_body["detail"] = diag.message_detail
        return ApiResponse.json(500, pg_body, headers)

    body: dict[str, object] = {"code": error.status, "error_code": code, "msg": error.message}
    if error.status >= 500:
        body["error_id"] = str(uuid.uuid4())
    return ApiResponse.json(error.status, body, headers)
