"""The one service-role Supabase client of a process, and the edge where its errors are ours.

supabase-py is given one `httpx.Client` with explicit timeouts (its auth client would
otherwise use httpx's 5 s default) and never signs in, so its Authorization header stays the
service role's. Every call goes through `SupabaseApi.call`, which retries what is worth
retrying (one policy) and turns supabase-py, postgrest and httpx exceptions into
`SupabaseError` carrying the HTTP status, error code and Retry-After.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from postgrest.exceptions import APIError
from supabase import Client, ClientOptions, create_client
from supabase_auth.errors import AuthApiError, AuthError, AuthRetryableError

from sync_worker.errors import SupabaseError
from sync_worker.retrying import RetryPolicy

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=30.0)
_RETRIABLE_STATUS = frozenset({0, 408, 429, 502, 503, 504})
# PostgREST's own "cannot reach the database" errors (PGRST000-PGRST003) answer 503/504.
_RETRIABLE_POSTGREST_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def is_retriable_status(status: int | None, message: str = "", code: str | None = None) -> bool:
    """Whether a failed call is worth another attempt now.

    Connection errors (status 0), timeouts, 429, 502-504 are; so is Supabase Auth's 500
    "Database error ..." (two concurrent creates of one email, a busy database). Other 4xx
    are not: the request itself is wrong.
    """
    if code in _RETRIABLE_POSTGREST_CODES:
        return True
    if status is None:
        return False
    if status == 500:
        return "database error" in message.lower()
    return status in _RETRIABLE_STATUS


class SupabaseApi:
    """Holds the service-role client and its HTTP client for the life of the process."""

    def __init__(
        self,
        url: str,
        service_role_key: str,
        *,
        policy: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 16,
    ) -> None:
        self.url = url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self._key = service_role_key
        self._local = threading.local()
        self.http = httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            event_hooks={"response": [self._remember]},
        )
        self.client: Client = create_client(
            self.url,
            service_role_key,
            options=ClientOptions(
                httpx_client=self.http,
                postgrest_client_retry=False,  # retries are ours, in one place
                auto_refresh_token=False,
                persist_session=False,
            ),
        )

    def __repr__(self) -> str:
        return f"SupabaseApi(url={self.url!r})"

    def _remember(self, response: httpx.Response) -> None:
        self._local.response = response

    def call(self, operation: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
        """Runs `fn` (one request) under the retry policy, translating its errors."""

        def attempt() -> T:
            self._local.response = None
            try:
                return fn()
            except (AuthError, APIError, httpx.HTTPError) as exc:
                raise self.translate(exc, operation) from exc

        return (policy or self.policy).call(operation, attempt)

    def admin_get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        """A GET on the Auth admin API that supabase-py does not offer (the list `filter`)."""
        response = self.http.get(
            f"{self.url}/auth/v1/{path.lstrip('/')}",
            params=params,
            headers={"apikey": self._key, "Authorization": f"Bearer {self._key}"},
        )
        response.raise_for_status()
        return response

    def translate(self, exc: BaseException, operation: str) -> SupabaseError:
        """Turns a library exception into a `SupabaseError` (never with a secret in it)."""
        response: httpx.Response | None = getattr(self._local, "response", None)
        status: int | None = response.status_code if response is not None else None
        code: str | None = None
        message = str(exc) or type(exc).__name__
        if isinstance(exc, AuthApiError):
            status = exc.status
            code = exc.code
            message = exc.message
        elif isinstance(exc, AuthRetryableError):
            status = exc.status or status or 0
            message = exc.message
        elif isinstance(exc, AuthError):
            message = exc.message
        elif isinstance(exc, APIError):
            code = exc.code
            message = exc.message or message
        elif isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            response = exc.response
            message = f"HTTP {status}"
            try:
                body = exc.response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                code = body.get("code") if isinstance(body.get("code"), str) else None
                code = code or body.get("error_code")
                message = str(body.get("message") or body.get("msg") or message)
        elif isinstance(exc, httpx.HTTPError):
            status = 0
            message = f"{type(exc).__name__}: {exc}"
        if response is None and status is None:
            status = 0
        return SupabaseError(
            f"{operation}: {message}",
            status=status,
            code=code,
            retriable=is_retriable_status(status, message, code),
            retry_after=_retry_after(response),
        )

    def close(self) -> None:
        self.http.close()
