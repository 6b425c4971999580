"""Emailed links and codes through supabase-py's auth client and a browser's plain GET:
`GET /auth/v1/verify` (a 303 to `redirect_to` with the session in the fragment, or a PKCE code),
`POST /verify` (verify_otp), `POST /recover` (reset_password_for_email) and the PKCE exchange.

Statuses, codes and messages follow supabase/auth internal/api/verify.go, recover.go, mail.go,
pkce.go and token.go.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from supabase import Client, ClientOptions, create_client
from supabase_auth.errors import AuthApiError

from supabase_sandbox import Sandbox

LOGIN_URL = "http://localhost:3000/login"  # on the site URL's host: an allowed redirect
CHOSEN = "my own secret phrase"


def app_client(sandbox: Sandbox, flow: str = "implicit") -> Client:
    """A client as a browser app makes it (supabase-js's default flow is implicit)."""
    return create_client(
        sandbox.url,
        sandbox.anon_key,
        options=ClientOptions(flow_type=flow),  # type: ignore[arg-type]
    )


def confirmed_user(service: Client, email: str) -> str:
    return service.auth.admin.create_user({"email": email, "email_confirm": True}).user.id


def follow(link: str) -> httpx.Response:
    """What a browser does with the emailed link: a plain GET, no API key."""
    return httpx.get(link, follow_redirects=False)


def fragment_of(response: httpx.Response) -> dict[str, str]:
    location = response.headers["location"]
    return {key: values[0] for key, values in parse_qs(urlsplit(location).fragment).items()}


def link_in(sandbox: Sandbox, to: str) -> str:
    [message] = [m for m in sandbox.mail if m["To"] == to]
    text = message.get_body(("plain",)).get_content()
    match = re.search(r"(http://\S+/auth/v1/verify\?\S+)", text)
    assert match, text
    return match.group(1)


def test_a_setup_link_redirects_with_a_session_and_the_password_can_then_be_set(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    """crm-sync's setup link (a recovery link with redirect_to = APP_LOGIN_URL), end to end."""
    email = new_email()
    user_id = confirmed_user(service, email)
    link = service.auth.admin.generate_link(
        {"type": "recovery", "email": email, "options": {"redirect_to": LOGIN_URL}}
    ).properties.action_link

    landed = follow(link)

    assert landed.status_code == 303
    assert landed.headers["location"].startswith(f"{LOGIN_URL}#")
    assert landed.headers["content-type"] == "text/html; charset=utf-8"
    assert landed.text.startswith('<a href="http://localhost:3000/login#access_token=')
    params = fragment_of(landed)
    assert params["type"] == "recovery"
    assert params["token_type"] == "bearer"
    assert params["expires_in"] == "3600"
    app = app_client(sandbox)
    session = app.auth.set_session(params["access_token"], params["refresh_token"]).session
    assert session is not None
    assert session.user.id == user_id
    claims = jwt.decode(params["access_token"], options={"verify_signature": False})
    assert [entry["method"] for entry in claims["amr"]] == ["otp"]
    app.auth.update_user({"password": CHOSEN})
    signed_in = app_client(sandbox).auth.sign_in_with_password({"email": email, "password": CHOSEN})
    assert signed_in.user is not None
    assert signed_in.user.id == user_id


def test_a_used_link_redirects_with_otp_expired_in_the_fragment(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    confirmed_user(service, email)
    link = service.auth.admin.generate_link(
        {"type": "recovery", "email": email, "options": {"redirect_to": LOGIN_URL}}
    ).properties.action_link
    assert follow(link).status_code == 303

    again = follow(link)

    assert again.status_code == 303
    assert again.headers["location"] == (
        f"{LOGIN_URL}#error=access_denied&error_code=otp_expired"
        "&error_description=Email+link+is+invalid+or+has+expired&sb="
    )


def test_a_redirect_outside_the_allow_list_falls_back_to_the_site_url(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    confirmed_user(service, email)
    hashed = service.auth.admin.generate_link(
        {"type": "recovery", "email": email}
    ).properties.hashed_token

    landed = follow(
        f"{sandbox.url}/auth/v1/verify?token={hashed}&type=recovery"
        "&redirect_to=https://attacker.example/steal"
    )

    assert landed.headers["location"].startswith("http://localhost:3000#access_token=")


def test_verify_without_a_type_or_token_is_400_json(sandbox: Sandbox) -> None:
    no_type = httpx.get(f"{sandbox.url}/auth/v1/verify?token=abc")
    no_token = httpx.get(f"{sandbox.url}/auth/v1/verify?type=recovery")

    assert no_type.status_code == no_token.status_code == 400
    assert no_type.json()["msg"] == "Verify requires a verification type"
    assert no_token.json()["msg"] == "Verify requires a token or a token hash"


def test_an_invite_link_confirms_the_user_and_signs_them_in(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    service.auth.admin.invite_user_by_email(email, {"redirect_to": LOGIN_URL})

    landed = follow(link_in(sandbox, email))

    params = fragment_of(landed)
    assert params["type"] == "invite"
    user = app_client(sandbox).auth.get_user(params["access_token"])
    assert user is not None
    assert user.user.email_confirmed_at is not None
    assert user.user.user_metadata["email_verified"] is True


def test_verify_otp_with_the_token_hash_answers_a_session_once(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user_id = confirmed_user(service, email)
    hashed = service.auth.admin.generate_link(
        {"type": "recovery", "email": email}
    ).properties.hashed_token
    app = app_client(sandbox)

    verified = app.auth.verify_otp({"type": "recovery", "token_hash": hashed})

    assert verified.session is not None
    assert verified.user is not None
    assert verified.user.id == user_id
    assert verified.user.recovery_sent_at is not None
    with pytest.raises(AuthApiError) as caught:
        app.auth.verify_otp({"type": "recovery", "token_hash": hashed})
    assert (caught.value.status, caught.value.code) == (403, "otp_expired")
    assert caught.value.message == "Email link is invalid or has expired"


def test_verify_otp_with_the_emailed_code(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    confirmed_user(service, email)
    code = service.auth.admin.generate_link(
        {"type": "recovery", "email": email}
    ).properties.email_otp
    app = app_client(sandbox)
    wrong = "000000" if code != "000000" else "111111"

    with pytest.raises(AuthApiError) as caught:
        app.auth.verify_otp({"email": email, "token": wrong, "type": "recovery"})
    verified = app.auth.verify_otp({"email": email.upper(), "token": code, "type": "recovery"})

    assert (caught.value.status, caught.value.code) == (403, "otp_expired")
    assert caught.value.message == "Token has expired or is invalid"
    assert verified.session is not None


def test_verify_otp_refuses_extra_fields_with_a_token_hash(sandbox: Sandbox) -> None:
    answer = httpx.post(
        f"{sandbox.url}/auth/v1/verify",
        headers={"apikey": sandbox.anon_key},
        json={"type": "recovery", "token_hash": "abc", "email": "a@example.com"},
    )

    assert answer.status_code == 400
    assert answer.json()["msg"] == "Only the token_hash and type should be provided"


def test_a_recovery_link_confirms_an_unconfirmed_email(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    service.auth.admin.create_user({"email": email, "password": "some password"})
    with pytest.raises(AuthApiError) as unconfirmed:
        app_client(sandbox).auth.sign_in_with_password(
            {"email": email, "password": "some password"}
        )
    assert unconfirmed.value.code == "email_not_confirmed"
    hashed = service.auth.admin.generate_link(
        {"type": "recovery", "email": email}
    ).properties.hashed_token

    verified = app_client(sandbox).auth.verify_otp({"type": "recovery", "token_hash": hashed})

    assert verified.user is not None
    assert verified.user.email_confirmed_at is not None


# -- password recovery ------------------------------------------------------------------------


def test_reset_password_for_email_sends_a_link_that_lets_the_user_choose_a_password(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user_id = confirmed_user(service, email)
    app = app_client(sandbox)

    app.auth.reset_password_for_email(email, {"redirect_to": LOGIN_URL})

    [message] = sandbox.mail
    assert message["Subject"] == "Reset your password"
    link = link_in(sandbox, email)
    assert "type=recovery" in link
    params = fragment_of(follow(link))
    assert params["type"] == "recovery"
    app.auth.set_session(params["access_token"], params["refresh_token"])
    assert app.auth.update_user({"password": CHOSEN}).user.id == user_id
    assert app_client(sandbox).auth.sign_in_with_password({"email": email, "password": CHOSEN})


def test_reset_password_for_an_unknown_email_answers_the_same_and_sends_nothing(
    sandbox: Sandbox, new_email: Callable[[], str]
) -> None:
    answer = httpx.post(
        f"{sandbox.url}/auth/v1/recover",
        headers={"apikey": sandbox.anon_key},
        json={"email": new_email()},
    )
    app_client(sandbox).auth.reset_password_for_email(new_email())

    assert (answer.status_code, answer.json()) == (200, {})
    assert sandbox.mail == []


def test_a_second_recovery_email_within_a_minute_is_429(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    confirmed_user(service, email)
    app = app_client(sandbox)
    app.auth.reset_password_for_email(email)

    with pytest.raises(AuthApiError) as caught:
        app.auth.reset_password_for_email(email)

    assert (caught.value.status, caught.value.code) == (429, "over_email_send_rate_limit")
    assert re.fullmatch(
        r"For security purposes, you can only request this after \d+ seconds\.",
        caught.value.message,
    )
    assert len(sandbox.mail) == 1


def test_reset_password_with_pkce_ends_in_a_code_exchanged_for_a_recovery_session(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    """supabase-py's default flow is PKCE: the link carries a `pkce_` token and lands with a
    `code` the same client exchanges with its stored verifier."""
    email = new_email()
    user_id = confirmed_user(service, email)
    app = app_client(sandbox, flow="pkce")

    app.auth.reset_password_for_email(email, {"redirect_to": LOGIN_URL})
    landed = follow(link_in(sandbox, email))

    assert "token=pkce_" in link_in(sandbox, email)
    location = urlsplit(landed.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == LOGIN_URL
    [code] = parse_qs(location.query)["code"]
    exchanged = app.auth.exchange_code_for_session({"auth_code": code})
    assert exchanged.session is not None
    assert exchanged.user is not None
    assert exchanged.user.id == user_id
    claims = jwt.decode(exchanged.session.access_token, options={"verify_signature": False})
    assert [entry["method"] for entry in claims["amr"]] == ["recovery"]
    with pytest.raises(AuthApiError) as reused:
        app.auth.exchange_code_for_session({"auth_code": code, "code_verifier": "x" * 43})
    assert (reused.value.status, reused.value.code) == (404, "flow_state_not_found")


def test_a_pkce_code_with_the_wrong_verifier_is_400_bad_code_verifier(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    confirmed_user(service, email)
    app_client(sandbox, flow="pkce").auth.reset_password_for_email(email)
    landed = follow(link_in(sandbox, email))
    [code] = parse_qs(urlsplit(landed.headers["location"]).query)["code"]

    with pytest.raises(AuthApiError) as caught:
        app_client(sandbox, flow="pkce").auth.exchange_code_for_session(
            {"auth_code": code, "code_verifier": "not-the-verifier-" + "x" * 30}
        )

    assert (caught.value.status, caught.value.code) == (400, "bad_code_verifier")
    assert caught.value.message == "code challenge does not match previously saved code verifier"
