"""The one service-role Supabase client of a process, and the edge where its errors are ours.

Every request goes over one `httpx.Client` with explicit timeouts (a test gives it an
`httpx.MockTransport`) and the service role's key; nothing ever signs in. `SupabaseApi` offers
typed methods, and each kind of call is made one way:

- table reads and writes (paged selects, counts, upserts, updates, deletes) through
  supabase-py's query builder (postgrest-py); no other module touches supabase-py;
- the RPCs and the Auth admin calls, made per customer or per batch, as plain JSON requests,
  as supabase-py would send them: its request builders and Auth response models cost a third
  to a half more CPU per call.

A non-2xx answer, whichever way the request went, is raised as one exception of ours by the
HTTP client's response hook, carrying its status, error code, message and Retry-After: there
is no side channel. supabase-py and postgrest-py catch httpx's exceptions, never this one, so
it reaches `SupabaseApi.call` unchanged; there every call runs under one retry policy, and one
short function turns it, or an httpx error (no answer, or one that is not JSON), into a
`SupabaseError`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import httpx
from postgrest.types import CountMethod, ReturnMethod
from supabase import Client, ClientOptions, create_client

from sync_worker.errors import KeyRefused, SupabaseError
from sync_worker.retrying import RetryPolicy, retry_after_seconds

T = TypeVar("T")
Row = dict[str, Any]

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=30.0)
# Every read names its page explicitly, so no server default (PostgREST's db-max-rows, a
# proxy's 1000-row cap) can cut a list short without us noticing.
PAGE_SIZE = 1000
_RETRIABLE_STATUS = frozenset({0, 408, 429, 502, 503, 504})
# Refusals of a request's content (Auth: validation_failed 400, email_address_invalid 422;
# PostgREST: a check constraint 400): the same request will be refused every time.
_PERMANENT_STATUS = frozenset({400, 413, 414, 422})
# PostgREST's own "cannot reach the database" errors (PGRST000-PGRST003) answer 503/504.
_RETRIABLE_POSTGREST_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
# Auth answers errors as {"code", "message"} to clients that ask for this API version (as
# supabase-py does), and as the legacy {"code": <status>, "error_code", "msg"} to others.
_AUTH_API = {"X-Supabase-Api-Version": "2024-01-01"}
# Where Auth, PostgREST and a gateway put an error's text, in the order they are read.
_MESSAGE_KEYS = ("message", "msg", "error_description", "error")


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


class _Refusal(Exception):
    """A non-2xx answer as the response hook read it. Not an httpx error on purpose:
    supabase-py and postgrest-py turn httpx's errors into theirs, and let this one pass."""

    def __init__(
        self, status: int, code: str | None, message: str, retry_after: str | None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(status, code, message)


def _raise_refusal(response: httpx.Response) -> None:
    """The HTTP client's response hook: raises a `_Refusal` for a non-2xx answer (httpx
    closes the response on the way out). Its code is the body's (Auth's current `code` or
    legacy `error_code`, PostgREST's `code`), else the one PostgREST names in Proxy-Status
    (a HEAD answer has no body)."""
    if response.is_success:
        return
    status = response.status_code
    try:
        body = json.loads(response.read())
    except ValueError:
        body = None
    code = message = None
    if isinstance(body, dict):
        code = next((body[k] for k in ("code", "error_code") if isinstance(body.get(k), str)), None)
        message = next((str(body[k]) for k in _MESSAGE_KEYS if body.get(k)), None)
    raise _Refusal(
        status,
        code or _proxy_status_code(response.headers.get("proxy-status")),
        message or f"HTTP {status}",
        response.headers.get("retry-after"),
    )


def _translate(exc: _Refusal | httpx.HTTPError, operation: str) -> SupabaseError:
    """The one translation into a `SupabaseError` (never with a secret in it): a refusal
    keeps its status, code, message and Retry-After; an httpx error (no answer, a timeout, an
    answer that is not JSON) is status 0."""
    if isinstance(exc, _Refusal):
        status, code, message = exc.status, exc.code, exc.message
        retry_after = retry_after_seconds(exc.retry_after)
    else:
        status, code, message, retry_after = 0, None, f"{type(exc).__name__}: {exc}", None
    if status in (401, 403):
        return KeyRefused(f"{operation}: {message}", status=status, code=code)
    return SupabaseError(
        f"{operation}: {message}",
        status=status,
        code=code,
        retriable=is_retriable_status(status, message, code),
        permanent=status in _PERMANENT_STATUS and code != "email_exists",
        retry_after=retry_after,
    )


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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`transport` replaces httpx's own (and with it `max_connections`): tests give an
        `httpx.MockTransport`."""
        self.url = url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self._key_headers = {
            "apikey": service_role_key,
            "Authorization": f"Bearer {service_role_key}",
        }
        self._http = httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
            event_hooks={"response": [_raise_refusal]},
        )
        self._client: Client = create_client(
            self.url,
            service_role_key,
            options=ClientOptions(
                httpx_client=self._http,
                postgrest_client_retry=False,  # retries are ours, in one place
                auto_refresh_token=False,
                persist_session=False,
            ),
        )

    def __repr__(self) -> str:
        return f"SupabaseApi(url={self.url!r})"

    # -- RPCs (PostgREST's /rpc/<function>) ------------------------------------------------

    def rpc(
        self,
        function: str,
        args: Mapping[str, Any] | None = None,
        *,
        operation: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> Any:
        """Calls a SQL function (POST /rpc/<function>) and returns its JSON result (None for
        an empty answer)."""
        request = partial(self._send_json, "POST", f"rest/v1/rpc/{function}", body=dict(args or {}))
        return self.call(operation or function, request, policy)

    def read_rows(
        self, function: str, args: Mapping[str, Any], *, operation: str | None = None
    ) -> list[Row]:
        """GET /rest/v1/rpc/<function>: the rows of a stable function, for large pages.

        The body is parsed straight from its bytes (no response model per page), after the
        response is closed and released.
        """
        params = {key: str(value) for key, value in args.items()}
        rows: list[Row] = self.call(
            operation or function,
            partial(self._send_json, "GET", f"rest/v1/rpc/{function}", params=params),
        )
        return rows

    def rpc_rows(
        self,
        function: str,
        *,
        order: Sequence[str],
        operation: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Row]:
        """The rows of a set-returning SQL function (GET, no arguments), page by page."""
        path = f"rest/v1/rpc/{function}"
        ordering = ",".join(_order_term(term) for term in order)

        def page(first: int, last: int) -> list[Row]:
            params = {"order": ordering, "offset": str(first), "limit": str(last - first + 1)}
            rows: list[Row] = self._send_json("GET", path, params=params) or []
            return rows

        return self._pages(operation or function, page, limit=None, page_size=page_size)

    # -- tables (supabase-py's query builder) ----------------------------------------------

    def select(
        self,
        table: str,
        columns: str,
        *,
        order: Sequence[str],
        where: Mapping[str, Any] | None = None,
        where_in: tuple[str, Sequence[Any]] | None = None,
        limit: int | None = None,
        page_size: int | None = None,
        operation: str | None = None,
    ) -> Iterator[Row]:
        """The rows of `table` matching `where` (column = value), one explicit page at a time.

        Args:
            table: table or view.
            columns: PostgREST's select list.
            order: a total order, as columns (`"email"`) or `"column.desc"`.
            where: equality filters.
            where_in: (column, values): the column is one of the values.
            limit: stop after this many rows.
            page_size: rows per request (`PAGE_SIZE` when None).
            operation: names the read in errors and retries (`read <table>` when None).
        """
        filters = dict(where or {})

        def page(first: int, last: int) -> list[Row]:
            builder = self._client.table(table).select(columns)
            for column, value in filters.items():
                builder = builder.eq(column, value)
            if where_in is not None:
                builder = builder.in_(where_in[0], list(where_in[1]))
            rows: list[Row] = _ordered(builder, order).range(first, last).execute().data or []
            return rows

        return self._pages(operation or f"read {table}", page, limit=limit, page_size=page_size)

    def count(
        self,
        table: str,
        *,
        where: Mapping[str, Any] | None = None,
        at_least: tuple[str, str] | None = None,
    ) -> int:
        """The exact number of rows in `table` (a HEAD request) matching `where` (column =
        value) and `at_least` (column, value: column >= value)."""
        filters = dict(where or {})

        def query() -> Any:
            builder = self._client.table(table).select("*", count=CountMethod.exact, head=True)
            for column, value in filters.items():
                builder = builder.eq(column, value)
            if at_least is not None:
                builder = builder.gte(at_least[0], at_least[1])
            return builder.execute()

        return int(self.call(f"count {table}", query).count or 0)

    def upsert(
        self,
        table: str,
        rows: Sequence[Row] | Row,
        *,
        on_conflict: str,
        ignore_duplicates: bool = False,
        operation: str | None = None,
    ) -> None:
        """Inserts `rows`, merging (or ignoring) those whose `on_conflict` key exists."""
        payload: Any = list(rows) if isinstance(rows, Sequence) else rows
        self.call(
            operation or f"write {table}",
            lambda: (
                self._client.table(table)
                .upsert(
                    payload,
                    on_conflict=on_conflict,
                    ignore_duplicates=ignore_duplicates,
                    returning=ReturnMethod.minimal,
                )
                .execute()
            ),
        )

    def update(
        self,
        table: str,
        values: Row,
        *,
        where: Mapping[str, Any],
        operation: str | None = None,
    ) -> None:
        """Updates the rows of `table` matching `where` (column = value; never empty)."""
        if not where:
            raise ValueError("an update needs a filter")
        filters = dict(where)

        def request() -> Any:
            builder = self._client.table(table).update(values, returning=ReturnMethod.minimal)
            for column, value in filters.items():
                builder = builder.eq(column, value)
            return builder.execute()

        self.call(operation or f"update {table}", request)

    def delete_in(
        self,
        table: str,
        column: str,
        values: Sequence[str],
        *,
        batch_size: int = 200,
        operation: str | None = None,
    ) -> None:
        """Deletes the rows of `table` whose `column` is one of `values`, in batches."""
        for start in range(0, len(values), batch_size):
            chunk = list(values[start : start + batch_size])
            self.call(
                operation or f"clear {table}",
                lambda chunk=chunk: (
                    self._client.table(table)  # type: ignore[misc]
                    .delete(returning=ReturnMethod.minimal)
                    .in_(column, chunk)
                    .execute()
                ),
            )

    def ping(self, table: str, policy: RetryPolicy | None = None) -> None:
        """One small read that proves REST and the database answer."""
        self.call(
            f"ping {table}",
            lambda: self._client.table(table).select("*").limit(1).execute(),
            policy,
        )

    # -- Auth admin API --------------------------------------------------------------------

    def create_user(self, attributes: Row) -> Row:
        """POST /admin/users; the created user (as Auth sent it)."""
        user: Row = self._auth("create account", "POST", "admin/users", dict(attributes))
        return user

    def get_user(self, user_id: str) -> Row:
        """GET /admin/users/<id>; the user (as Auth sent it)."""
        user: Row = self._auth("get account", "GET", _user_path(user_id))
        return user

    def update_user(self, user_id: str, attributes: Row, *, operation: str) -> Row:
        """PUT /admin/users/<id>; the updated user (as Auth sent it)."""
        user: Row = self._auth(operation, "PUT", _user_path(user_id), dict(attributes))
        return user

    def delete_user(self, user_id: str, *, operation: str) -> None:
        """DELETE /admin/users/<id>: the user and, by the database's cascade, their identities,
        sessions and refresh tokens (a hard delete)."""
        self._auth(operation, "DELETE", _user_path(user_id), {"should_soft_delete": False})

    def recovery_token_hash(self, email: str) -> str:
        """POST /admin/generate_link (type recovery): the link's `hashed_token`, which the app
        redeems with `verifyOtp({ token_hash, type: "recovery" })`. Auth sends nothing itself,
        and only the newest recovery token of a user is valid."""
        link = self._auth(
            "generate setup link",
            "POST",
            "admin/generate_link",
            {"type": "recovery", "email": email},
        )
        return str(link["hashed_token"])

    def _auth(self, operation: str, method: str, path: str, body: Row | None = None) -> Any:
        """One Auth admin call, in the API version whose error bodies carry `code`."""
        request = partial(self._send_json, method, f"auth/v1/{path}", body=body, headers=_AUTH_API)
        return self.call(operation, request)

    def _send_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request with the service key, straight over the HTTP client (the response hook
        has raised for a non-2xx answer). The answer is parsed once the response is closed
        and released (freed after the parsed objects, a large body left holes that the heap
        kept growing around); an empty answer is None."""
        sent = {**self._key_headers, **(headers or {})}
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            sent["Content-Type"] = "application/json"
        response = self._http.request(
            method,
            f"{self.url}/{path}",
            params=dict(params) if params is not None else None,
            content=content,
            headers=sent,
        )
        try:
            answer = response.content
        finally:
            response.close()
        del response
        try:
            return json.loads(answer) if answer else None
        except ValueError as exc:
            # Not what Supabase sends (a proxy's page, a cut body): like a lost connection.
            raise httpx.DecodingError(f"the answer is not JSON ({exc})") from exc

    # -- the edge --------------------------------------------------------------------------

    def call(self, operation: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
        """Runs `fn` (one request) under the retry policy, translating its errors."""

        def attempt() -> T:
            try:
                return fn()
            except (_Refusal, httpx.HTTPError) as exc:
                raise _translate(exc, operation) from exc

        return (policy or self.policy).call(operation, attempt)

    def _pages(
        self,
        operation: str,
        page: Callable[[int, int], list[Row]],
        *,
        limit: int | None,
        page_size: int | None,
    ) -> Iterator[Row]:
        """The one pager: explicit ranges (first and last row) over a query with a total
        order."""
        page_size = page_size or PAGE_SIZE
        start = 0
        while limit is None or start < limit:
            end = start + page_size - 1 if limit is None else min(start + page_size, limit) - 1
            rows = self.call(operation, partial(page, start, end))
            yield from rows
            if len(rows) < end - start + 1:
                return
            start = end + 1

    def close(self) -> None:
        self._http.close()


def _order_term(term: str) -> str:
    """`"column"` or `"column.desc"` as PostgREST's order term (`column.asc`)."""
    column, _, direction = term.partition(".")
    return f"{column}.{'desc' if direction == 'desc' else 'asc'}"


def _user_path(user_id: str) -> str:
    """admin/users/<id>, for a user id only (it goes into the path)."""
    try:
        uuid.UUID(user_id)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Invalid id, {user_id!r} is not a valid uuid") from exc
    return f"admin/users/{user_id}"


def _proxy_status_code(header: str | None) -> str | None:
    """The error PostgREST names in a Proxy-Status header (`PostgREST; error=PGRST002`)."""
    for member in (header or "").split(","):
        name, *params = member.split(";")
        if name.strip().strip('"').lower() != "postgrest":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "error":
                return value.strip().strip('"') or None
    return None


def _ordered(builder: Any, order: Sequence[str]) -> Any:
    for term in order:
        column, _, direction = term.partition(".")
        builder = builder.order(column, desc=direction == "desc")
    return builder
