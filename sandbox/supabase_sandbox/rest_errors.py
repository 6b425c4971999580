"""PostgREST's error responses: the body {code, message, details, hint} and the HTTP status of
each database error."""

# Follows PostgREST src/library/PostgREST/Error.hs (mapSQLtoHTTP, the PGRST codes of
# SchemaCacheError, JwtError and ApiRequestError, `WWW-Authenticate` on 401, `Proxy-Status`).

from __future__ import annotations

from typing import Any

import psycopg

from supabase_sandbox.wire import ApiResponse

_EXACT_STATUS = {
    "23503": 409,  # foreign_key_violation
    "23505": 409,  # unique_violation
    "25006": 405,  # read_only_sql_transaction
    "53400": 500,  # config limit exceeded
    "57P01": 503,  # terminating connection due to administrator command
    "P0001": 400,  # default code for "raise"
    "42P01": 404,  # undefined table
    "42P17": 500,  # infinite recursion
}
_CLASS_STATUS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def sqlstate_status(sqlstate: str, message: str, *, authenticated: bool) -> int:
    """Error.hs mapSQLtoHTTP: the HTTP status of a PostgreSQL error.

    Args:
        sqlstate: the five-character SQLSTATE.
        message: the primary message (a few mappings look at it).
        authenticated: the request's role is not the anonymous role (42501 is then 403).
    """
    special = {
        "21000": 400 if message.endswith("requires a WHERE clause") else 500,
        "22023": 401 if message.startswith("role") and message.endswith("does not exist") else 400,
        "42883": 406 if message.startswith("function xmlagg(") else 404,
        "42501": 403 if authenticated else 401,
    }
    status = special.get(sqlstate) or _EXACT_STATUS.get(sqlstate)
    if status is None and sqlstate.startswith("PT"):
        digits = sqlstate[2:]
        status = int(digits) if digits.isdigit() else 500
    return status or _CLASS_STATUS.get(sqlstate[:2], 400)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    *,
    hint: Any = None,
    headers: list[tuple[str, str]] | None = None,
) -> ApiResponse:
    """Error.hs errorResponseFor with verbose client errors (PostgREST's default)."""
    all_headers = [("Proxy-Status", f"PostgREST; error={code}")]
    if status == 401:
        all_headers.append(("WWW-Authenticate", "Bearer"))
    all_headers.extend(headers or [])
    body = {"code": code, "details": details, "hint": hint, "message": message}
    return ApiResponse.json(status, body, all_headers)


def database_error(exc: psycopg.Error, *, authenticated: bool) -> ApiResponse:
    """The response to an error PostgreSQL raised while serving the request."""
    diag = exc.diag
    sqlstate = exc.sqlstate or "XX000"
    message = diag.message_primary or str(exc).strip()
    status = sqlstate_status(sqlstate, message, authenticated=authenticated)
    return error_response(status, sqlstate, message, diag.message_detail, hint=diag.message_hint)


def jwt_error(code: str, message: str) -> ApiResponse:
    """Error.hs JwtError: 401 with a `WWW-Authenticate: Bearer error="invalid_token"` header."""
    body = {"code": code, "details": None, "hint": None, "message": message}
    headers = [
        ("Proxy-Status", f"PostgREST; error={code}"),
        ("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{message}"'),
    ]
    return ApiResponse.json(401, body, headers)
