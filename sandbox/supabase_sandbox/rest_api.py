"""The PostgREST subset under `/rest/v1` that supabase-py's query builder uses, run the way
PostgREST runs it so that grants and row-level security decide what each caller may do."""

# Every request is one transaction on a connection logged in as `authenticator`, which first sets
# `search_path`, `role` and `request.jwt.claims` with set_config(..., true) (PostgREST
# src/library/PostgREST/Query/PreQuery.hs txVarQuery), then runs one statement shaped like
# PostgREST's (Query/QueryBuilder.hs, Query/Statements.hs, Query/SqlFragment.hs). Identifiers are
# always composed with psycopg.sql; request values are always bound parameters.

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from supabase_sandbox.keys import InvalidToken, SandboxKeys
from supabase_sandbox.rest_catalog import SCHEMA, Catalog, Routine, Table, closest
from supabase_sandbox.rest_errors import (
    database_error,
    error_response,
    jwt_error,
    sqlstate_status,
)
from supabase_sandbox.rest_query import (
    COMPARISONS,
    IS_VALUES,
    Filter,
    Preferences,
    QueryError,
    ReadParams,
    Window,
    array_literal,
    parse_prefer,
    parse_read_params,
)
from supabase_sandbox.wire import ApiRequest, ApiResponse

log = logging.getLogger(__name__)

ANON_ROLE = "anon"
SINGLE_OBJECT = "application/vnd.pgrst.object+json"
EXPOSED_SCHEMAS = ("public", "graphql_public")


class _Refusal(Exception):
    """Ends the request with `response`, rolling its transaction back."""

    def __init__(self, response: ApiResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _Values:
    """Bound parameters with names, so one SQL fragment can appear twice."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> sql.Placeholder:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)


@dataclass(frozen=True, slots=True)
class _Caller:
    role: str
    claims: dict[str, Any]

    @property
    def authenticated(self) -> bool:
        """Error.hs PgError's flag: the role is not the anonymous role."""
        return self.role != ANON_ROLE


@dataclass(frozen=True, slots=True)
class _Outcome:
    """The row PostgREST's main statement returns."""

    total: int | None
    page_total: int
    body: str
    inserted: int | None = None


class RestApi:
    """Answers `/rest/v1/...` requests (the path given here has the prefix removed)."""

    def __init__(self, pool: ConnectionPool[Any], keys: SandboxKeys) -> None:
        self._pool = pool
        self._keys = keys

    def handle(self, request: ApiRequest, path: str) -> ApiResponse:
        caller = self._authenticate(request)
        if isinstance(caller, ApiResponse):
            return caller
        profile = request.header(
            "accept-profile" if request.method in ("GET", "HEAD") else "content-profile"
        )
        if profile and profile != SCHEMA:
            return error_response(
                406,
                "PGRST106",
                f"Invalid schema: {profile}",
                hint=f"Only the following schemas are exposed: {', '.join(EXPOSED_SCHEMAS)}",
            )
        segments = [part for part in path.split("/") if part]
        try:
            api_path = "/" + "/".join(segments)
            if len(segments) == 1:
                return self._in_transaction(
                    request, caller, api_path, segments[0], self._table_request
                )
            if len(segments) == 2 and segments[0] == "rpc":
                return self._in_transaction(
                    request, caller, api_path, segments[1], self._rpc_request
                )
        except QueryError as exc:
            return error_response(400, exc.code, exc.message, exc.details)
        return error_response(404, "PGRST125", "Invalid path specified in request URL")

    # -- authentication (Auth.hs, Auth/Jwt.hs) --------------------------------------------------

    def _authenticate(self, request: ApiRequest) -> _Caller | ApiResponse:
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if not authorization or scheme.lower() != "bearer":
            return _Caller(ANON_ROLE, {"role": ANON_ROLE})
        token = token.strip()
        if not token:
            return jwt_error("PGRST301", "Empty JWT is sent in Authorization header")
        try:
            claims = self._keys.verify(token)
        except InvalidToken as exc:
            if exc.expired:
                return jwt_error("PGRST303", "JWT expired")
            if exc.reason.startswith("Expected 3 parts"):
                return jwt_error("PGRST301", exc.reason)
            return jwt_error("PGRST301", "JWT cryptographic operation failed")
        role = claims.get("role")
        if not isinstance(role, str) or not role:
            role = ANON_ROLE
        return _Caller(role, claims)

    # -- the transaction (App.hs, Query.hs) -----------------------------------------------------

    def _in_transaction(
        self,
        request: ApiRequest,
        caller: _Caller,
        api_path: str,
        name: str,
        action: Callable[[psycopg.Connection[Any], ApiRequest, str], ApiResponse],
    ) -> ApiResponse:
        read_only = request.method in ("GET", "HEAD")
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(
                    "set transaction isolation level read committed"
                    + (", read only" if read_only else "")
                )
                claims = dict(caller.claims)
                claims["role"] = caller.role  # PreQuery.hs inserts the role into the claims
                conn.execute(
                    "select set_config('search_path', %s, true), set_config('role', %s, true),"
                    " set_config('request.jwt.claims', %s, true),"
                    " set_config('request.method', %s, true),"
                    " set_config('request.path', %s, true),"
                    " set_config('request.headers', %s, true)",
                    (
                        f'"{SCHEMA}"',
                        caller.role,
                        json.dumps(claims),
                        request.method,
                        api_path,
                        json.dumps(dict(request.headers)),
                    ),
                )
                return action(conn, request, name)
        except _Refusal as refusal:
            return refusal.response
        except psycopg.Error as exc:
            return database_error(exc, authenticated=caller.authenticated)

    # -- tables -----------------------------------------------------------------------------------

    def _table_request(
        self, conn: psycopg.Connection[Any], request: ApiRequest, name: str
    ) -> ApiResponse:
        catalog = Catalog(conn)
        table = catalog.table(name)
        if table is None:
            hint_name = closest(name, catalog.table_names(), 0.75)
            raise _Refusal(
                error_response(
                    404,
                    "PGRST205",
                    f"Could not find the table '{SCHEMA}.{name}' in the schema cache",
                    hint=f"Perhaps you meant the table '{SCHEMA}.{hint_name}'"
                    if hint_name
                    else None,
                )
            )
        method = request.method
        range_header = request.header("range") if method in ("GET", "HEAD") else None
        params = parse_read_params(request.query, range_header)
        prefs = parse_prefer(_header_values(request, "prefer"))
        if method in ("GET", "HEAD"):
            return self._read(conn, request, table, params, prefs)
        if method == "POST":
            return self._insert(conn, request, table, params, prefs)
        if method == "PATCH":
            return self._update(conn, request, table, params, prefs)
        if method == "DELETE":
            return self._delete(conn, request, table, params, prefs)
        raise _Refusal(error_response(405, "PGRST117", f"Unsupported HTTP method: {method}"))

    def _read(
        self,
        conn: psycopg.Connection[Any],
        request: ApiRequest,
        table: Table,
        params: ReadParams,
        prefs: Preferences,
    ) -> ApiResponse:
        """Statements.hs mainRead."""
        values = _Values()
        relation = sql.Identifier(SCHEMA, table.name)
        qualifier = (SCHEMA, table.name)
        source = _select_from(relation, qualifier, params, values)
        count_source = None
        if prefs.count:
            count_source = _where_from(relation, qualifier, params.filters, values)
        single = _wants_single(request)
        outcome = self._main_read(conn, source, count_source, values, single=single)
        return self._read_response(
            request, table.name, params.window, prefs, outcome, single=single
        )

    def _main_read(
        self,
        conn: psycopg.Connection[Any],
        source: sql.Composable,
        count_source: sql.Composable | None,
        values: _Values,
        *,
        single: bool,
        body: sql.Composable | None = None,
    ) -> _Outcome:
        total = sql.SQL("null::bigint")
        ctes = [sql.SQL("pgrst_source AS ({})").format(source)]
        if count_source is not None:
            ctes.append(sql.SQL("pgrst_source_count AS ({})").format(count_source))
            total = sql.SQL("(SELECT pg_catalog.count(*) FROM pgrst_source_count)")
        if body is None:
            body = sql.SQL(
                "coalesce(json_agg(_postgrest_t)->0, 'null')"
                if single
                else "coalesce(json_agg(_postgrest_t), '[]')"
            )
        query = sql.SQL(
            "WITH {ctes} SELECT {total} AS total_result_set,"
            " pg_catalog.count(_postgrest_t) AS page_total, ({body})::text AS body"
            " FROM (SELECT * FROM pgrst_source) _postgrest_t"
        ).format(ctes=sql.SQL(", ").join(ctes), total=total, body=body)
        row = conn.execute(query, values.params).fetchone()
        assert row is not None
        return _Outcome(total=row[0], page_total=int(row[1]), body=row[2] or "")

    def _read_response(
        self,
        request: ApiRequest,
        name: str,
        window: Window,
        prefs: Preferences,
        outcome: _Outcome,
        *,
        single: bool,
    ) -> ApiResponse:
        """Response.hs (read) with RangeQuery.hs rangeStatusHeader."""
        if single and outcome.page_total != 1:
            raise _Refusal(_singularity_error(outcome.page_total))
        lower = window.offset
        upper = lower + outcome.page_total - 1
        total = outcome.total
        status = 200
        if total is not None:
            if lower > total:
                return error_response(
                    416,
                    "PGRST103",
                    "Requested range not satisfiable",
                    f"An offset of {lower} was requested, but there are only {total} rows.",
                    headers=[("Content-Range", _content_range(lower, upper, total))],
                )
            if 1 + upper - lower < total:
                status = 206
        headers = [
            ("Content-Range", _content_range(lower, upper, total)),
            (
                "Content-Location",
                f"/{name}" + (f"?{request.query_string}" if request.query_string else ""),
            ),
        ]
        applied = prefs.applied(mutation=None)
        if applied:
            headers.append(("Preference-Applied", applied))
        content_type = SINGLE_OBJECT if single else "application/json"
        headers.insert(0, ("Content-Type", f"{content_type}; charset=utf-8"))
        body = b"" if request.method == "HEAD" else outcome.body.encode()
        return ApiResponse(status, body, headers)

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        request: ApiRequest,
        table: Table,
        params: ReadParams,
        prefs: Preferences,
    ) -> ApiResponse:
        """QueryBuilder.hs mutatePlanToQuery (Insert) with Statements.hs mainWrite."""
        payload = _payload(request)
        is_object = isinstance(payload, dict)
        rows = [payload] if is_object else payload
        if params.columns is not None:
            columns = list(params.columns)
        elif rows:
            keys = [tuple(row.keys()) for row in rows]
            if any(set(k) != set(keys[0]) for k in keys):
                raise _Refusal(error_response(400, "PGRST102", "All object keys must match"))
            columns = list(keys[0])
        else:
            columns = []
        _check_columns(table, columns)

        on_conflict: tuple[str, ...] | None = None
        if prefs.resolution:
            on_conflict = params.on_conflict or table.primary_key or None
            if on_conflict:
                _check_columns(table, on_conflict)
        merge = prefs.resolution == "merge-duplicates" and on_conflict is not None

        values = _Values()
        target = sql.Identifier(SCHEMA, table.name)
        body_source = _json_body_source(
            table, columns, payload, is_object=is_object, prefs=prefs, values=values
        )
        column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        counted_insert = sql.SQL(
            "set_config('pgrst.inserted',"
            " (coalesce(nullif(current_setting('pgrst.inserted', true), '')::int, 0) + 1)::text,"
            " true) <> '0'"
        )
        counted_update = sql.SQL(
            "set_config('pgrst.inserted',"
            " (coalesce(nullif(current_setting('pgrst.inserted', true), '')::int, 0) - 1)::text,"
            " true) <> '-1'"
        )
        parts: list[sql.Composable] = [sql.SQL("INSERT INTO {}").format(target)]
        if columns:
            parts.append(sql.SQL("({})").format(column_list))
        parts.append(
            sql.SQL("SELECT {} {}").format(
                sql.SQL(", ").join(sql.Identifier("pgrst_body", c) for c in columns),
                body_source,
            )
        )
        if merge:
            parts.append(sql.SQL("WHERE {}").format(counted_insert))
        if on_conflict:
            conflict = sql.SQL(", ").join(sql.Identifier(c) for c in on_conflict)
            if prefs.resolution == "ignore-duplicates" or not columns:
                parts.append(sql.SQL("ON CONFLICT({}) DO NOTHING").format(conflict))
            else:
                updates = sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                    for c in columns
                )
                parts.append(
                    sql.SQL("ON CONFLICT({}) DO UPDATE SET {} WHERE {}").format(
                        conflict, updates, counted_update
                    )
                )
        parts.append(_returning(table, prefs))
        mutation = sql.SQL(" ").join(parts)
        outcome = self._main_write(
            conn, mutation, params=params, values=values, prefs=prefs, request=request
        )
        status = (200 if (outcome.inserted or 0) <= 0 else 201) if merge else 201
        return self._write_response(
            request,
            status,
            prefs=prefs,
            outcome=outcome,
            mutation="create",
            content_range=_content_range(1, 0, outcome.total),
        )

    def _update(
        self,
        conn: psycopg.Connection[Any],
        request: ApiRequest,
        table: Table,
        params: ReadParams,
        prefs: Preferences,
    ) -> ApiResponse:
        """QueryBuilder.hs mutatePlanToQuery (Update)."""
        payload = _payload(request)
        if not isinstance(payload, dict):
            raise _Refusal(error_response(400, "PGRST102", "Empty or invalid json"))
        columns = list(params.columns) if params.columns is not None else list(payload.keys())
        _check_columns(table, columns)
        values = _Values()
        target = sql.Identifier(SCHEMA, table.name)
        if not columns:
            mutation: sql.Composable = sql.SQL("SELECT NULL WHERE false")
        else:
            _require_where("UPDATE", params)
            body_source = _json_body_source(
                table, columns, payload, is_object=True, prefs=prefs, values=values
            )
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("pgrst_body", c))
                for c in columns
            )
            mutation = sql.SQL("UPDATE {} SET {} {} {} {}").format(
                target,
                assignments,
                body_source,
                _where(params.filters, values, (SCHEMA, table.name)),
                _returning(table, prefs),
            )
        outcome = self._main_write(
            conn, mutation, params=params, values=values, prefs=prefs, request=request
        )
        upper = outcome.page_total - 1
        return self._write_response(
            request,
            200,
            prefs=prefs,
            outcome=outcome,
            mutation="update",
            content_range=_content_range(0, upper, outcome.total),
        )

    def _delete(
        self,
        conn: psycopg.Connection[Any],
        request: ApiRequest,
        table: Table,
        params: ReadParams,
        prefs: Preferences,
    ) -> ApiResponse:
        """QueryBuilder.hs mutatePlanToQuery (Delete)."""
        _require_where("DELETE", params)
        values = _Values()
        mutation = sql.SQL("DELETE FROM {} {} {}").format(
            sql.Identifier(SCHEMA, table.name),
            _where(params.filters, values, (SCHEMA, table.name)),
            _returning(table, prefs),
        )
        outcome = self._main_write(
            conn, mutation, params=params, values=values, prefs=prefs, request=request
        )
        return self._write_response(
            request,
            200,
            prefs=prefs,
            outcome=outcome,
            mutation="delete",
            content_range=_content_range(1, 0, outcome.total),
        )

    def _main_write(
        self,
        conn: psycopg.Connection[Any],
        mutation: sql.Composable,
        *,
        params: ReadParams,
        values: _Values,
        prefs: Preferences,
        request: ApiRequest,
    ) -> _Outcome:
        """Statements.hs mainWrite: the mutation in a CTE, the response built from its rows."""
        representation = prefs.representation == "representation"
        single = _wants_single(request)
        if representation:
            select_items = _select_list(params)
            body: sql.Composable = sql.SQL(
                "coalesce(json_agg(_postgrest_t)->0, 'null')"
                if single
                else "coalesce(json_agg(_postgrest_t), '[]')"
            )
            inner: sql.Composable = sql.SQL("SELECT {} FROM pgrst_source").format(select_items)
        else:
            body = sql.SQL("''")
            inner = sql.SQL("SELECT * FROM pgrst_source")
        query = sql.SQL(
            "WITH pgrst_source AS ({mutation}) SELECT '' AS total_result_set,"
            " pg_catalog.count(_postgrest_t) AS page_total, ({body})::text AS body,"
            " nullif(current_setting('pgrst.inserted', true), '')::int AS response_inserted"
            " FROM ({inner}) _postgrest_t"
        ).format(mutation=mutation, body=body, inner=inner)
        row = conn.execute(query, values.params).fetchone()
        assert row is not None
        page_total = int(row[1])
        if single and page_total != 1:
            raise _Refusal(_singularity_error(page_total))
        total = page_total if prefs.count else None
        return _Outcome(total=total, page_total=page_total, body=row[2] or "", inserted=row[3])

    def _write_response(
        self,
        request: ApiRequest,
        status: int,
        *,
        prefs: Preferences,
        outcome: _Outcome,
        mutation: str,
        content_range: str,
    ) -> ApiResponse:
        """Response.hs for MutationCreate, MutationUpdate and MutationDelete."""
        headers = [("Content-Range", content_range)]
        applied = prefs.applied(mutation=mutation)
        if applied:
            headers.append(("Preference-Applied", applied))
        if prefs.representation == "representation":
            content_type = SINGLE_OBJECT if _wants_single(request) else "application/json"
            headers.insert(0, ("Content-Type", f"{content_type}; charset=utf-8"))
            return ApiResponse(status, outcome.body.encode(), headers)
        return ApiResponse(status if mutation == "create" else 204, b"", headers)

    # -- functions ------------------------------------------------------------------------------

    def _rpc_request(
        self, conn: psycopg.Connection[Any], request: ApiRequest, name: str
    ) -> ApiResponse:
        """Plan.hs callReadPlan + QueryBuilder.hs callPlanToQuery + Statements.hs mainCall."""
        if request.method not in ("GET", "HEAD", "POST"):
            raise _Refusal(
                error_response(405, "PGRST101", f"Cannot use the {request.method} method on RPC")
            )
        catalog = Catalog(conn)
        routines = catalog.routines(name)
        is_post = request.method == "POST"
        args, whole_body, params = _rpc_arguments(request, routines)
        routine = self._choose_routine(catalog, name, routines, frozenset(args), is_post=is_post)
        values = _Values()
        call = _call_source(routine, args, whole_body, values)
        rows = sql.SQL("({}) AS pgrst_call_rows").format(call)
        source = _select_from(rows, ("pgrst_call_rows",), params, values)
        prefs = parse_prefer(_header_values(request, "prefer"))
        count_source = (
            _where_from(rows, ("pgrst_call_rows",), params.filters, values) if prefs.count else None
        )
        single = _wants_single(request)
        body = _rpc_body(routine, single=single)
        outcome = self._main_read(conn, source, count_source, values, single=single, body=body)
        if routine.returns_void:
            return ApiResponse(204, b"", [("Content-Range", _content_range(0, -1, outcome.total))])
        if single and routine.returns_set and outcome.page_total != 1:
            raise _Refusal(_singularity_error(outcome.page_total))
        response = self._read_response(
            request, f"rpc/{name}", params.window, prefs, outcome, single=False
        )
        if single:
            response.headers[0] = ("Content-Type", f"{SINGLE_OBJECT}; charset=utf-8")
        return response

    def _choose_routine(
        self,
        catalog: Catalog,
        name: str,
        routines: list[Routine],
        keys: frozenset[str],
        *,
        is_post: bool,
    ) -> Routine:
        """Plan.hs findProc: the one overload whose parameter names fit the arguments."""
        matches = [r for r in routines if r.accepts(keys)]
        if not matches and is_post:
            matches = [r for r in routines if r.single_unnamed_json]
        if not matches:
            raise _Refusal(self._no_routine(catalog, name, routines, sorted(keys), is_post=is_post))
        if len(matches) > 1:
            described = ", ".join(
                f"{SCHEMA}.{r.name}({', '.join(f'{p.name} => {p.type_sql}' for p in r.params)})"
                for r in matches
            )
            raise _Refusal(
                error_response(
                    300,
                    "PGRST203",
                    f"Could not choose the best candidate function between: {described}",
                    hint="Try renaming the parameters or the function itself in the database "
                    "so function overloading can be resolved",
                )
            )
        return matches[0]

    def _no_routine(
        self,
        catalog: Catalog,
        name: str,
        routines: list[Routine],
        keys: list[str],
        *,
        is_post: bool,
    ) -> ApiResponse:
        """Error.hs NoRpc: PGRST202 with PostgREST's message, details and fuzzy hint."""
        func = f"{SCHEMA}.{name}"
        listed = ", ".join(keys)
        message = (
            f"Could not find the function {func}"
            + (f"({listed})" if keys else " without parameters")
            + " in the schema cache"
        )
        searched = (
            f" with parameter{'s' if len(keys) > 1 else ''} {listed}"
            if keys
            else " without parameters"
        )
        if is_post:
            searched += " or with a single unnamed json/jsonb parameter"
        details = (
            f"Searched for the function {func}{searched}, "
            "but no matches were found in the schema cache."
        )
        hint = None
        if routines:
            signatures = {
                "(" + ", ".join(sorted(p.name for p in r.params)) + ")": r for r in routines
            }
            best = closest("(" + ", ".join(keys) + ")", list(signatures), 0.33)
            if best:
                hint = f"Perhaps you meant to call the function {func}{best}"
        else:
            other = closest(name, catalog.routine_names(), 0.75)
            if other:
                hint = f"Perhaps you meant to call the function {SCHEMA}.{other}"
        return error_response(404, "PGRST202", message, details, hint=hint)


# -- SQL fragments (Query/SqlFragment.hs) ------------------------------------------------------


def _rpc_arguments(
    request: ApiRequest, routines: Sequence[Routine]
) -> tuple[dict[str, Any], Any, ReadParams]:
    """The call's arguments: the JSON body for POST, matching query parameters for GET."""
    if request.method == "POST":
        body = _payload(request, allow_empty=True)
        params = parse_read_params(request.query, None)
        return (dict(body) if isinstance(body, dict) else {}), body, params
    names = frozenset(p.name for r in routines for p in r.params)
    params = parse_read_params(request.query, request.header("range"), rpc_arg_names=names)
    return dict(params.rpc_args), None, params


def _rpc_body(routine: Routine, *, single: bool) -> sql.Composable:
    """SqlFragment.hs asJsonF / asJsonSingleF for a function's result."""
    if routine.returns_void:
        return sql.SQL("''")
    scalar = routine.returns_scalar or routine.returns_set_of_scalar
    column = "_postgrest_t.pgrst_scalar" if scalar else "_postgrest_t"
    if single or not routine.returns_set:
        return sql.SQL(f"coalesce(json_agg({column})->0, 'null')")
    return sql.SQL(f"coalesce(json_agg({column}), '[]')")


def _require_where(command: str, params: ReadParams) -> None:
    """pg-safeupdate, which Supabase loads for PostgREST's connections (`authenticator`'s
    session_preload_libraries): an UPDATE or DELETE without a WHERE clause fails with 21000,
    which PostgREST answers 400. Filters are what becomes the WHERE clause. (safeupdate also
    checks the statements inside functions a request calls; the sandbox does not.)"""
    if not params.filters:
        message = f"{command} requires a WHERE clause"
        status = sqlstate_status("21000", message, authenticated=True)
        raise _Refusal(error_response(status, "21000", message))


def _header_values(request: ApiRequest, name: str) -> list[str]:
    value = request.header(name)
    return [value] if value else []


def _wants_single(request: ApiRequest) -> bool:
    accept = request.header("accept") or ""
    return SINGLE_OBJECT in accept


def _singularity_error(rows: int) -> ApiResponse:
    return error_response(
        406,
        "PGRST116",
        "Cannot coerce the result to a single JSON object",
        f"The result contains {rows} rows",
    )


def _content_range(lower: int, upper: int, total: int | None) -> str:
    """RangeQuery.hs contentRangeH."""
    total_text = "*" if total is None else str(total)
    if total != 0 and lower <= upper:
        return f"{lower}-{upper}/{total_text}"
    return f"*/{total_text}"


def _payload(request: ApiRequest, *, allow_empty: bool = False) -> Any:
    """ApiRequest/Payload.hs: JSON object or array of objects, else PGRST102."""
    if not request.body.strip():
        if allow_empty:
            return {}
        raise _Refusal(error_response(400, "PGRST102", "Empty or invalid json"))
    try:
        payload = json.loads(request.body)
    except ValueError as exc:
        raise _Refusal(error_response(400, "PGRST102", "Empty or invalid json")) from exc
    if allow_empty:
        return payload
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, list) and all(isinstance(item, dict) for item in payload):
        return payload
    raise _Refusal(error_response(400, "PGRST102", "Empty or invalid json"))


def _check_columns(table: Table, columns: Sequence[str]) -> None:
    """A payload key that is not a column: SchemaCacheError ColumnNotFound (PGRST204)."""
    for column in columns:
        if column not in table.columns:
            raise _Refusal(
                error_response(
                    400,
                    "PGRST204",
                    f"Could not find the '{column}' column of '{table.name}' in the schema cache",
                )
            )


def _returning(table: Table, prefs: Preferences) -> sql.Composable:
    """SqlFragment.hs returningF: all columns for a representation, else `RETURNING 1`."""
    if prefs.representation == "representation":
        return sql.SQL("RETURNING {}.*").format(sql.Identifier(SCHEMA, table.name))
    return sql.SQL("RETURNING 1")


def _json_body_source(
    table: Table,
    columns: Sequence[str],
    payload: Any,
    *,
    is_object: bool,
    prefs: Preferences,
    values: _Values,
) -> sql.Composable:
    """SqlFragment.hs fromJsonBodyF: the payload as typed rows named `pgrst_body`.

    Column types and, with `missing=default`, default expressions come from pg_catalog
    (format_type and pg_get_expr), never from the request.
    """
    body = values.bind(json.dumps(payload))
    typed = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(table.columns[c].type_sql))
        for c in columns
    )
    with_defaults = prefs.missing == "default"
    defaults_clause: sql.Composable
    if with_defaults:
        defaults = [
            sql.SQL("{}, {}").format(sql.Literal(c), sql.SQL(table.columns[c].default_sql or ""))
            for c in columns
            if table.columns[c].default_sql and not table.columns[c].generated
        ]
        defaults_obj = sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(defaults))
        if is_object:
            defaults_clause = sql.SQL(
                "LATERAL (SELECT {} || pgrst_payload.json_data AS val) pgrst_json_defs, "
            ).format(defaults_obj)
        else:
            defaults_clause = sql.SQL(
                "LATERAL (SELECT jsonb_agg({} || elem) AS val"
                " FROM jsonb_array_elements(pgrst_payload.json_data) elem) pgrst_json_defs, "
            ).format(defaults_obj)
        final_body = sql.SQL("pgrst_json_defs.val")
        elements, to_record = (
            "jsonb_array_elements",
            "jsonb_to_record" if is_object else "jsonb_to_recordset",
        )
        placeholder: sql.Composable = sql.SQL("{}::jsonb").format(body)
    else:
        defaults_clause = sql.SQL("")
        final_body = sql.SQL("pgrst_payload.json_data")
        elements, to_record = (
            "json_array_elements",
            "json_to_record" if is_object else "json_to_recordset",
        )
        placeholder = sql.SQL("{}::json").format(body)
    fields: sql.Composable
    if columns:
        fields = sql.SQL("{}({}) AS _({})").format(sql.SQL(to_record), final_body, typed)
    elif is_object:
        fields = sql.SQL("(values(1)) _")
    else:
        fields = sql.SQL("{}({}) _").format(sql.SQL(elements), final_body)
    return sql.SQL(
        "FROM (SELECT {} AS json_data) pgrst_payload, {}LATERAL (SELECT {} FROM {}) pgrst_body"
    ).format(
        placeholder,
        defaults_clause,
        sql.SQL(", ").join(sql.Identifier(c) for c in columns) if columns else sql.SQL(""),
        fields,
    )


def _filter_sql(item: Filter, values: _Values, qualifier: Sequence[str]) -> sql.Composable:
    """SqlFragment.hs pgFmtFilter; values are unknown-typed parameters, as PostgREST sends."""
    column = sql.Identifier(*qualifier, item.column)
    if item.operator == "is":
        assert isinstance(item.value, str)
        expr: sql.Composable = sql.SQL("{} IS {}").format(column, sql.SQL(IS_VALUES[item.value]))
    elif item.operator == "in":
        listed = tuple(item.value)
        if listed in ((), ("",)):
            expr = sql.SQL("{} = ANY('{{}}')").format(column)
        else:
            expr = sql.SQL("{} = ANY({})").format(column, values.bind(array_literal(listed)))
    elif item.operator == "isdistinct":
        expr = sql.SQL("{} IS DISTINCT FROM {}").format(column, values.bind(item.value))
    else:
        value = str(item.value)
        if item.operator in ("like", "ilike"):
            value = value.replace("*", "%")
        expr = sql.SQL("{} {} {}").format(
            column, sql.SQL(COMPARISONS[item.operator]), values.bind(value)
        )
    if item.negate:
        return sql.SQL("NOT {}").format(expr)
    return expr


def _where(filters: Sequence[Filter], values: _Values, qualifier: Sequence[str]) -> sql.Composable:
    if not filters:
        return sql.SQL("")
    return sql.SQL("WHERE {}").format(
        sql.SQL(" AND ").join(_filter_sql(item, values, qualifier) for item in filters)
    )


def _select_list(params: ReadParams, qualifier: Sequence[str] = ()) -> sql.Composable:
    items: list[sql.Composable] = []
    for item in params.select:
        if item.column == "*":
            items.append(
                sql.SQL("{}.*").format(sql.Identifier(*qualifier)) if qualifier else sql.SQL("*")
            )
        elif item.alias:
            items.append(
                sql.SQL("{} AS {}").format(
                    sql.Identifier(*qualifier, item.column), sql.Identifier(item.alias)
                )
            )
        else:
            items.append(sql.Identifier(*qualifier, item.column))
    return sql.SQL(", ").join(items)


def _order(params: ReadParams, qualifier: Sequence[str]) -> sql.Composable:
    if not params.order:
        return sql.SQL("")
    terms = []
    for term in params.order:
        piece = sql.SQL("{} {}").format(
            sql.Identifier(*qualifier, term.column), sql.SQL("DESC" if term.descending else "ASC")
        )
        if term.nulls:
            piece = sql.SQL("{} {}").format(
                piece, sql.SQL("NULLS FIRST" if term.nulls == "first" else "NULLS LAST")
            )
        terms.append(piece)
    return sql.SQL("ORDER BY {}").format(sql.SQL(", ").join(terms))


def _limit(window: Window, values: _Values) -> sql.Composable:
    """SqlFragment.hs limitOffsetF."""
    if window.offset == 0 and window.limit is None:
        return sql.SQL("")
    limit: sql.Composable = sql.SQL("ALL") if window.limit is None else values.bind(window.limit)
    return sql.SQL("LIMIT {} OFFSET {}").format(limit, values.bind(window.offset))


def _select_from(
    source: sql.Composable, qualifier: Sequence[str], params: ReadParams, values: _Values
) -> sql.Composable:
    """QueryBuilder.hs readPlanToQuery for one relation, columns qualified by it."""
    return sql.SQL("SELECT {} FROM {} {} {} {}").format(
        _select_list(params, qualifier),
        source,
        _where(params.filters, values, qualifier),
        _order(params, qualifier),
        _limit(params.window, values),
    )


def _where_from(
    source: sql.Composable, qualifier: Sequence[str], filters: Sequence[Filter], values: _Values
) -> sql.Composable:
    """QueryBuilder.hs readPlanToCountQuery."""
    return sql.SQL("SELECT 1 FROM {} {}").format(source, _where(filters, values, qualifier))


def _call_source(
    routine: Routine, args: Mapping[str, Any], whole_body: Any, values: _Values
) -> sql.Composable:
    """QueryBuilder.hs callPlanToQuery: arguments typed by json_to_record, passed by name."""
    function = sql.Identifier(SCHEMA, routine.name)
    scalar = not routine.returns_composite
    if routine.single_unnamed_json and set(args) - {p.name for p in routine.params}:
        argument: sql.Composable = sql.SQL("{}::{}").format(
            values.bind(json.dumps(whole_body)), sql.SQL(routine.params[0].type_sql)
        )
        call = sql.SQL("{}({})").format(function, argument)
        from_clause: sql.Composable = sql.SQL("")
    else:
        given = [p for p in routine.params if p.name in args]
        if given:
            typed = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.type_sql)) for p in given
            )
            body = values.bind(json.dumps({p.name: args[p.name] for p in given}))
            from_clause = sql.SQL("json_to_record({}::json) AS pgrst_body({}), ").format(
                body, typed
            )
            arguments: sql.Composable = sql.SQL(", ").join(
                sql.SQL("{}{} := pgrst_body.{}").format(
                    sql.SQL("VARIADIC " if p.variadic else ""),
                    sql.Identifier(p.name),
                    sql.Identifier(p.name),
                )
                for p in given
            )
        else:
            from_clause = sql.SQL("")
            arguments = sql.SQL("")
        call = sql.SQL("{}({})").format(function, arguments)
    if scalar:
        return sql.SQL(
            "SELECT pgrst_call.pgrst_scalar FROM {}LATERAL (SELECT {} pgrst_scalar) pgrst_call"
        ).format(from_clause, call)
    return sql.SQL("SELECT pgrst_call.* FROM {}LATERAL {} pgrst_call").format(from_clause, call)
