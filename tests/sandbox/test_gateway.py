"""The gateway as a browser app meets it: CORS preflights answered before the key check, CORS
headers on every response, and `/auth/v1/verify` open without an API key (Kong's cors plugin
and the routes of supabase/supabase docker/volumes/api/kong.yml)."""

from __future__ import annotations

import httpx
import pytest

from supabase_sandbox import Sandbox

ORIGIN = "http://localhost:5173"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "apikey, authorization, content-type, x-client-info",
}


@pytest.mark.parametrize("path", ["/auth/v1/token?grant_type=password", "/rest/v1/notes"])
def test_a_preflight_is_answered_by_the_gateway_without_an_api_key(
    sandbox: Sandbox, path: str
) -> None:
    answer = httpx.options(f"{sandbox.url}{path}", headers=PREFLIGHT)

    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["access-control-allow-origin"] == "*"
    assert (
        answer.headers["access-control-allow-headers"]
        == PREFLIGHT["Access-Control-Request-Headers"]
    )
    assert answer.headers["access-control-allow-methods"] == (
        "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    )


def test_responses_carry_cors_headers_a_browser_can_read_them_by(sandbox: Sandbox) -> None:
    key = {"apikey": sandbox.anon_key, "Origin": ORIGIN}

    refused = httpx.get(f"{sandbox.url}/rest/v1/notes", headers={"Origin": ORIGIN})
    auth = httpx.get(f"{sandbox.url}/auth/v1/user", headers=key)
    rest = httpx.get(f"{sandbox.url}/rest/v1/vault", headers=key)

    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"
    assert auth.headers["access-control-allow-origin"] == "*"
    assert "X-Supabase-Api-Version" in auth.headers["access-control-expose-headers"]
    assert rest.headers["access-control-allow-origin"] == "*"
    assert "Content-Range" in rest.headers["access-control-expose-headers"]


def test_verify_needs_no_api_key_and_other_auth_routes_do(sandbox: Sandbox) -> None:
    verify = httpx.get(f"{sandbox.url}/auth/v1/verify?type=recovery&token=nope")
    user = httpx.get(f"{sandbox.url}/auth/v1/user")

    assert verify.status_code == 303  # Auth answered: an unknown token, redirected
    assert "error_code=otp_expired" in verify.headers["location"]
    assert user.status_code == 401
    assert user.json()["message"] == "No API key found in request"


def test_a_route_auth_lacks_is_its_plain_text_404(sandbox: Sandbox) -> None:
    answer = httpx.get(
        f"{sandbox.url}/auth/v1/reauthenticate-me", headers={"apikey": sandbox.anon_key}
    )

    assert answer.status_code == 404
    assert answer.text == "404 page not found\n"
