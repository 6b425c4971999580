"""The raw requests of the Supabase client (account creation, RPCs) against a real HTTP server
that answers what Supabase would not: their errors become `SupabaseError`s like any other."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sync_worker.errors import SupabaseError
from sync_worker.retrying import RetryPolicy
from sync_worker.supabase_api import SupabaseApi

KEY = "service-role-key-for-tests-only"


class Answer(BaseHTTPRequestHandler):
    """Answers every POST with the server's `status` and `body`; keeps what it was sent."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        server = self.server
        assert isinstance(server, FixedServer)
        server.received.append((self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(server.status)
        self.send_header("Content-Type", server.content_type)
        self.send_header("Content-Length", str(len(server.body)))
        self.end_headers()
        self.wfile.write(server.body)

    def log_message(self, *_args: object) -> None:
        pass


class FixedServer(ThreadingHTTPServer):
    status = 200
    body = b""
    content_type = "application/json"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Answer)
        self.received: list[tuple[str, dict[str, str], bytes]] = []


@pytest.fixture
def server() -> Iterator[FixedServer]:
    httpd = FixedServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def api(server: FixedServer) -> Iterator[SupabaseApi]:
    host, port = server.server_address[:2]
    client = SupabaseApi(f"http://{host!s}:{port}", KEY, policy=RetryPolicy(attempts=1))
    try:
        yield client
    finally:
        client.close()


def test_an_account_is_created_with_the_service_key_and_auths_api_version(
    server: FixedServer, api: SupabaseApi
) -> None:
    server.body = json.dumps({"id": "u-1", "email": "ann@example.com"}).encode()
    user = api.create_user({"email": "ann@example.com", "email_confirm": True})
    assert user == {"id": "u-1", "email": "ann@example.com"}
    [(path, headers, sent)] = server.received
    assert path == "/auth/v1/admin/users"
    assert headers["apikey"] == KEY
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-Supabase-Api-Version"] == "2024-01-01"
    assert json.loads(sent) == {"email": "ann@example.com", "email_confirm": True}


def test_an_answer_that_is_not_json_is_a_retriable_failure_without_the_body(
    server: FixedServer, api: SupabaseApi
) -> None:
    server.body, server.content_type = b"<html>proxy login page</html>", "text/html"
    with pytest.raises(SupabaseError) as raised:
        api.create_user({"email": "ann@example.com"})
    assert (raised.value.status, raised.value.retriable) == (0, True)
    assert "create account" in str(raised.value)
    assert "proxy login page" not in str(raised.value)
    with pytest.raises(SupabaseError):
        api.rpc("record_welcome_emails", {"p_sent": []})


def test_a_postgrest_refusal_keeps_its_code_and_message_and_is_permanent(
    server: FixedServer, api: SupabaseApi
) -> None:
    server.status = 400
    server.body = json.dumps(
        {"code": "23514", "message": "new row violates check constraint", "details": None}
    ).encode()
    with pytest.raises(SupabaseError) as raised:
        api.rpc("record_welcome_emails", {"p_sent": []}, operation="record welcome emails")
    error = raised.value
    assert (error.status, error.code, error.retriable, error.permanent) == (
        400,
        "23514",
        False,
        True,
    )
    assert str(error) == "record welcome emails: new row violates check constraint"
