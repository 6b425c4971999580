"""The Supabase client on an `httpx.MockTransport`: the requests each kind of call sends, and
how every answer Supabase (or a proxy in front of it) can give becomes a result or a
`SupabaseError`, whichever way the request went (plain JSON or supabase-py's builder)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from sync_worker.errors import KeyRefused, SupabaseError
from sync_worker.retrying import RetryPolicy
from sync_worker.supabase_api import SupabaseApi

KEY = "service-role-key-for-tests-only"
URL = "http://supabase.test"
USER_ID = "6f1c1f39-2c4e-4c0e-9d2a-8b7f3c1d2e4f"
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, deadline=5, max_retry_after=0.05)


class Server:
    """Answers each request with the next of `answers` (the last one again once they run
    out); keeps every request it was sent."""

    def __init__(self) -> None:
        self.answers: list[httpx.Response | Exception] = [httpx.Response(200, json=[])]
        self.received: list[httpx.Request] = []

    def answer(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.received.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def refusal(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    if body is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def api(server: Server) -> Iterator[SupabaseApi]:
    client = SupabaseApi(
        URL, KEY, policy=RetryPolicy(attempts=1), transport=httpx.MockTransport(server)
    )
    try:
        yield client
    finally:
        client.close()


def failure(call: Callable[[], object]) -> SupabaseError:
    """The `SupabaseError` that `call` raises."""
    with pytest.raises(SupabaseError) as raised:
        call()
    return raised.value


# -- the requests ------------------------------------------------------------------------------


def test_an_account_is_created_with_the_service_key_and_auths_api_version(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(httpx.Response(200, json={"id": "u-1", "email": "ann@example.com"}))
    user = api.create_user({"email": "ann@example.com", "email_confirm": True})
    assert user == {"id": "u-1", "email": "ann@example.com"}
    [request] = server.received
    assert (request.method, request.url.path) == ("POST", "/auth/v1/admin/users")
    assert request.headers["apikey"] == KEY
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["X-Supabase-Api-Version"] == "2024-01-01"
    assert json.loads(request.content) == {"email": "ann@example.com", "email_confirm": True}


def test_every_auth_admin_call_sends_the_service_key_and_auths_api_version(
    server: Server, api: SupabaseApi
) -> None:
    user = {"id": USER_ID, "email": "ann@example.com", "app_metadata": {}}
    server.answer(
        httpx.Response(200, json=user),
        httpx.Response(200, json={**user, "user_metadata": {"must_change_password": True}}),
        httpx.Response(200, json={}),
        httpx.Response(200, json={**user, "hashed_token": "abc123", "action_link": "x"}),
    )
    assert api.get_user(USER_ID) == user
    changed = api.update_user(USER_ID, {"password": "Temp-Pass-1"}, operation="set password")
    assert changed["user_metadata"] == {"must_change_password": True}
    api.delete_user(USER_ID, operation="delete account")
    assert api.recovery_token_hash("ann@example.com") == "abc123"
    sent = [
        (r.method, r.url.path, json.loads(r.content) if r.content else None)
        for r in server.received
    ]
    assert sent == [
        ("GET", f"/auth/v1/admin/users/{USER_ID}", None),
        ("PUT", f"/auth/v1/admin/users/{USER_ID}", {"password": "Temp-Pass-1"}),
        ("DELETE", f"/auth/v1/admin/users/{USER_ID}", {"should_soft_delete": False}),
        ("POST", "/auth/v1/admin/generate_link", {"type": "recovery", "email": "ann@example.com"}),
    ]
    for request in server.received:
        assert request.headers["apikey"] == KEY
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert request.headers["X-Supabase-Api-Version"] == "2024-01-01"


def test_a_user_id_that_is_not_one_never_reaches_the_path(server: Server, api: SupabaseApi) -> None:
    with pytest.raises(ValueError, match="not a valid uuid"):
        api.get_user("../../rest/v1/customers")
    assert server.received == []


def test_an_rpc_posts_its_arguments_and_returns_the_json_answer(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(httpx.Response(200, json=["ann@example.com"]), httpx.Response(204))
    assert api.rpc("record_welcome_emails", {"p_sent": [{"email": "ann@example.com"}]}) == [
        "ann@example.com"
    ]
    assert api.rpc("release_sync_lease", {"p_holder": "w-1"}) is None
    first = server.received[0]
    assert (first.method, first.url.path) == ("POST", "/rest/v1/rpc/record_welcome_emails")
    assert first.headers["apikey"] == KEY
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(first.content) == {"p_sent": [{"email": "ann@example.com"}]}


def test_rows_of_a_function_are_read_with_get_in_explicit_pages(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(httpx.Response(200, json=[{"email": "a@x.com"}]))
    assert api.read_rows("crm_sync_tracking_page", {"p_after": "", "p_limit": 500}) == [
        {"email": "a@x.com"}
    ]
    [request] = server.received
    assert request.method == "GET"
    assert request.url.path == "/rest/v1/rpc/crm_sync_tracking_page"
    assert dict(request.url.params) == {"p_after": "", "p_limit": "500"}

    server.received.clear()
    server.answer(
        httpx.Response(200, json=[{"check": "a"}, {"check": "b"}]),
        httpx.Response(200, json=[{"check": "c"}]),
    )
    rows = list(api.rpc_rows("crm_sync_verify", order=("check", "email.desc"), page_size=2))
    assert rows == [{"check": "a"}, {"check": "b"}, {"check": "c"}]
    assert [(r.method, r.url.path) for r in server.received] == [
        ("GET", "/rest/v1/rpc/crm_sync_verify")
    ] * 2
    assert [dict(r.url.params) for r in server.received] == [
        {"order": "check.asc,email.desc", "offset": "0", "limit": "2"},
        {"order": "check.asc,email.desc", "offset": "2", "limit": "2"},
    ]


def test_a_table_is_read_through_supabase_py_in_explicit_pages(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(
        httpx.Response(200, json=[{"email": "a@x.com"}, {"email": "b@x.com"}]),
        httpx.Response(200, json=[]),
    )
    rows = list(api.select("crm_sync_failures", "email", order=["email"], page_size=2))
    assert rows == [{"email": "a@x.com"}, {"email": "b@x.com"}]
    assert [r.url.params.get("offset") for r in server.received] == ["0", "2"]
    for request in server.received:
        assert request.url.path == "/rest/v1/crm_sync_failures"
        assert request.url.params["order"] == "email.asc"
        assert request.url.params["limit"] == "2"
        assert request.headers["Authorization"] == f"Bearer {KEY}"


# -- the answers that are failures -------------------------------------------------------------


def test_an_answer_that_is_not_json_is_a_retriable_failure_without_the_body(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(
        httpx.Response(
            200, content=b"<html>proxy login page</html>", headers={"Content-Type": "text/html"}
        )
    )
    error = failure(lambda: api.create_user({"email": "ann@example.com"}))
    assert (error.status, error.retriable) == (0, True)
    assert "create account" in str(error)
    assert "proxy login page" not in str(error)
    with pytest.raises(SupabaseError):
        api.rpc("record_welcome_emails", {"p_sent": []})


def test_a_postgrest_refusal_keeps_its_code_and_message_and_is_permanent(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(
        refusal(
            400, {"code": "23514", "message": "new row violates check constraint", "details": None}
        )
    )
    error = failure(
        lambda: api.rpc("record_welcome_emails", {"p_sent": []}, operation="record welcome emails")
    )
    assert (error.status, error.code, error.retriable, error.permanent) == (
        400,
        "23514",
        False,
        True,
    )
    assert str(error) == "record welcome emails: new row violates check constraint"


def test_a_refusal_through_supabase_py_is_translated_as_a_plain_request_is(
    server: Server, api: SupabaseApi
) -> None:
    body = {"code": "23514", "message": "new row violates check constraint", "details": None}
    server.answer(refusal(400, body))
    error = failure(lambda: api.upsert("crm_sync_failures", [{"email": "a"}], on_conflict="email"))
    assert (error.status, error.code, error.retriable, error.permanent) == (
        400,
        "23514",
        False,
        True,
    )
    assert str(error) == "write crm_sync_failures: new row violates check constraint"
    server.answer(refusal(503, {"code": "PGRST002", "message": "Could not query the database"}))
    error = failure(lambda: list(api.select("crm_sync_runs", "*", order=["id"])))
    assert (error.status, error.code, error.retriable) == (503, "PGRST002", True)
    assert str(error) == "read crm_sync_runs: Could not query the database"


def test_a_head_refusal_has_its_code_in_proxy_status(server: Server, api: SupabaseApi) -> None:
    server.answer(refusal(503, headers={"Proxy-Status": 'PostgREST; error="PGRST001"'}))
    error = failure(lambda: api.count("crm_sync_runs"))
    assert (error.status, error.code, error.retriable) == (503, "PGRST001", True)
    assert str(error) == "count crm_sync_runs: HTTP 503"


def test_auths_refusals_keep_their_code_in_either_error_format(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(
        refusal(422, {"code": "email_exists", "message": "A user with this email address has"}),
        refusal(422, {"code": 422, "error_code": "email_exists", "msg": "already registered"}),
        refusal(400, {"code": "validation_failed", "message": "Unable to validate email"}),
    )
    current = failure(lambda: api.create_user({"email": "ann@example.com"}))
    assert (current.status, current.code, current.permanent) == (422, "email_exists", False)
    legacy = failure(lambda: api.create_user({"email": "ann@example.com"}))
    assert (legacy.status, legacy.code, legacy.permanent) == (422, "email_exists", False)
    assert str(legacy) == "create account: already registered"
    invalid = failure(lambda: api.create_user({"email": "ann@"}))
    assert (invalid.code, invalid.retriable, invalid.permanent) == (
        "validation_failed",
        False,
        True,
    )


def test_auths_database_error_is_retriable_and_other_500s_are_not(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(
        refusal(500, {"code": "unexpected_failure", "message": "Database error creating new user"}),
        refusal(500, {"code": "unexpected_failure", "message": "Unexpected failure"}),
    )
    assert failure(lambda: api.create_user({"email": "a@x.com"})).retriable
    assert not failure(lambda: api.create_user({"email": "a@x.com"})).retriable


def test_a_missing_account_is_a_404_whichever_admin_call_meets_it(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(refusal(404, {"code": "user_not_found", "message": "User not found"}))
    for call in (
        lambda: api.get_user(USER_ID),
        lambda: api.delete_user(USER_ID, operation="delete account"),
        lambda: api.recovery_token_hash("ann@example.com"),
    ):
        error = failure(call)
        assert (error.status, error.code, error.retriable, error.permanent) == (
            404,
            "user_not_found",
            False,
            False,
        )


def test_a_rate_limit_carries_its_retry_after_and_is_retried_after_it(
    server: Server, api: SupabaseApi
) -> None:
    limited = refusal(
        429,
        {"code": "over_request_rate_limit", "message": "Request rate limit reached"},
        {"Retry-After": "7"},
    )
    server.answer(limited)
    error = failure(lambda: api.create_user({"email": "a@x.com"}))
    assert (error.status, error.retriable, error.retry_after) == (429, True, 7.0)
    server.answer(limited, httpx.Response(200, json={"p": 1}))
    assert api.rpc("crm_sync_shard_figures", policy=FAST) == {"p": 1}
    assert len(server.received) == 3
    server.answer(refusal(503, {"message": "busy"}, {"Retry-After": "3"}))
    error = failure(lambda: list(api.select("crm_sync_runs", "*", order=["id"])))
    assert (error.status, error.retriable, error.retry_after) == (503, True, 3.0)


def test_no_answer_is_status_zero_and_retriable(server: Server, api: SupabaseApi) -> None:
    server.answer(httpx.ConnectError("connection refused"))
    error = failure(lambda: api.create_user({"email": "a@x.com"}))
    assert (error.status, error.code, error.retriable) == (0, None, True)
    assert str(error) == "create account: ConnectError: connection refused"
    server.answer(httpx.ReadTimeout("timed out"))
    error = failure(lambda: api.ping("crm_sync_runs"))
    assert (error.status, error.retriable) == (0, True)
    assert str(error) == "ping crm_sync_runs: ReadTimeout: timed out"


def test_a_refused_key_is_a_configuration_error_that_never_shows_the_key(
    server: Server, api: SupabaseApi
) -> None:
    server.answer(refusal(401, {"message": "Invalid API key"}))
    for call in (
        lambda: api.create_user({"email": "a@x.com"}),
        lambda: api.rpc("acquire_sync_lease"),
        lambda: api.count("crm_sync_runs"),
    ):
        with pytest.raises(KeyRefused) as raised:
            call()
        error = raised.value
        assert error.status == 401
        assert "Invalid API key" in str(error)
        for shown in (str(error), repr(error), error.problem, repr(error.__cause__)):
            assert KEY not in shown
    assert KEY not in repr(api)
