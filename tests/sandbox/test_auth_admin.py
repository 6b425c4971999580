"""Supabase Auth's admin API on the sandbox, through supabase-py and raw HTTP.

Expected answers are those of supabase/auth internal/api/admin.go, mail.go, invite.go and
errors.go (see sandbox/supabase_sandbox/auth_api.py for the line-by-line references).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import psycopg
import pytest
from supabase import Client
from supabase_auth.errors import AuthApiError, AuthWeakPasswordError

from supabase_sandbox import Sandbox

DUPLICATE = "A user with this email address has already been registered"


def admin_headers(sandbox: Sandbox, *, api_version: bool = True) -> dict[str, str]:
    headers = {
        "apikey": sandbox.service_role_key,
        "Authorization": f"Bearer {sandbox.service_role_key}",
    }
    if api_version:
        headers["X-Supabase-Api-Version"] = "2024-01-01"
    return headers


def test_create_user_returns_the_bare_user_with_lower_cased_email(
    sandbox: Sandbox, new_email: Callable[[], str]
) -> None:
    email = new_email().replace("user", "Mixed.Case")
    response = httpx.post(
        f"{sandbox.url}/auth/v1/admin/users",
        headers=admin_headers(sandbox),
        json={"email": email, "password": "long enough", "user_metadata": {"full_name": "Ada"}},
    )

    assert response.status_code == 200
    user = response.json()
    assert user["email"] == email.lower()
    assert user["aud"] == "authenticated"
    assert user["role"] == "authenticated"
    assert user["phone"] == ""
    assert "email_confirmed_at" not in user  # omitempty until confirmed
    assert user["app_metadata"] == {"provider": "email", "providers": ["email"]}
    assert user["user_metadata"] == {"full_name": "Ada"}
    assert user["is_anonymous"] is False
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", user["created_at"])
    [identity] = user["identities"]
    assert identity["provider"] == "email"
    assert identity["id"] == user["id"]  # the provider id of the email identity
    assert identity["identity_data"] == {
        "sub": user["id"],
        "email": email.lower(),
        "email_verified": False,
        "phone_verified": False,
    }


def test_user_rows_are_written_like_supabase_auth(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user = service.auth.admin.create_user(
        {"email": email, "password": "long enough", "email_confirm": True}
    ).user

    with psycopg.connect(sandbox.db_url) as conn:
        row = conn.execute(
            "select instance_id::text, encrypted_password, email_confirmed_at is not null,"
            " raw_user_meta_data from auth.users where id = %s",
            (user.id,),
        ).fetchone()
        identities = conn.execute(
            "select provider, email from auth.identities where user_id = %s", (user.id,)
        ).fetchall()
    assert row is not None
    assert row[0] == "00000000-0000-0000-0000-000000000000"
    assert row[1].startswith("$2")  # bcrypt
    assert row[2] is True
    assert row[3] == {"email_verified": True}
    assert identities == [("email", email)]


def test_duplicate_email_in_other_letter_case_is_422_email_exists(
    service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    service.auth.admin.create_user({"email": email, "password": "long enough"})

    with pytest.raises(AuthApiError) as caught:
        service.auth.admin.create_user({"email": email.upper(), "password": "long enough"})

    assert caught.value.status == 422
    assert caught.value.code == "email_exists"
    assert caught.value.message == DUPLICATE


def test_error_bodies_follow_the_requested_api_version(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    service.auth.admin.create_user({"email": email})
    url = f"{sandbox.url}/auth/v1/admin/users"

    modern = httpx.post(url, headers=admin_headers(sandbox), json={"email": email})
    legacy = httpx.post(
        url, headers=admin_headers(sandbox, api_version=False), json={"email": email}
    )

    assert modern.status_code == legacy.status_code == 422
    assert modern.json() == {"code": "email_exists", "message": DUPLICATE}
    assert modern.headers["X-Supabase-Api-Version"] == "2024-01-01"
    assert modern.headers["x-sb-error-code"] == "email_exists"
    assert legacy.json() == {"code": 422, "error_code": "email_exists", "msg": DUPLICATE}
    assert "X-Supabase-Api-Version" not in legacy.headers
    assert legacy.headers["x-sb-error-code"] == "email_exists"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            {"email": "not an email"},
            "validation_failed",
            "Unable to validate email address: invalid format",
        ),
        (
            {"email": " padded@example.com"},
            "validation_failed",
            "Unable to validate email address: invalid format",
        ),
        ({}, "validation_failed", "Cannot create a user without either an email or phone"),
        (
            {"email": "long@example.com", "password": "x" * 73},
            "validation_failed",
            "bcrypt: password length exceeds 72 bytes",
        ),
        (
            {"email": "multibyte@example.com", "password": "é" * 37},
            "validation_failed",
            "bcrypt: password length exceeds 72 bytes",
        ),
        ({"email": 5}, "bad_json", None),
    ],
)
def test_create_user_refuses_bad_input_with_400(
    sandbox: Sandbox, body: dict[str, object], code: str, message: str | None
) -> None:
    response = httpx.post(
        f"{sandbox.url}/auth/v1/admin/users", headers=admin_headers(sandbox), json=body
    )

    assert response.status_code == 400
    assert response.json()["code"] == code
    if message is not None:
        assert response.json()["message"] == message


def test_short_password_is_accepted_on_create_but_not_on_update(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    user = service.auth.admin.create_user({"email": new_email(), "password": "abc"}).user

    with pytest.raises(AuthWeakPasswordError) as caught:
        service.auth.admin.update_user_by_id(user.id, {"password": "abc"})

    assert caught.value.status == 422
    assert caught.value.reasons == ["length"]


def test_get_update_and_delete_a_user(service: Client, new_email: Callable[[], str]) -> None:
    user = service.auth.admin.create_user({"email": new_email(), "password": "long enough"}).user

    fetched = service.auth.admin.get_user_by_id(user.id).user
    updated = service.auth.admin.update_user_by_id(
        user.id,
        {"email_confirm": True, "user_metadata": {"plan": "crm"}, "app_metadata": {"crm": True}},
    ).user
    service.auth.admin.delete_user(user.id)

    assert fetched.email == user.email
    assert updated.email_confirmed_at is not None
    assert updated.user_metadata == {"plan": "crm", "email_verified": True}
    assert updated.app_metadata == {"provider": "email", "providers": ["email"], "crm": True}
    with pytest.raises(AuthApiError) as caught:
        service.auth.admin.get_user_by_id(user.id)
    assert caught.value.status == 404
    assert caught.value.code == "user_not_found"


def test_list_users_across_pages_with_total_and_link_headers(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    marker = new_email().split("@")[0]
    created = {
        service.auth.admin.create_user({"email": f"{marker}-{n}@example.com"}).user.id
        for n in range(5)
    }

    seen: list[str] = []
    page = 1
    while users := service.auth.admin.list_users(page=page, per_page=2):
        seen += [user.id for user in users]
        page += 1
    everyone = httpx.get(
        f"{sandbox.url}/auth/v1/admin/users", headers=admin_headers(sandbox), params={"per_page": 1}
    )
    filtered = httpx.get(
        f"{sandbox.url}/auth/v1/admin/users",
        headers=admin_headers(sandbox),
        params={"page": 1, "per_page": 2, "filter": marker},
    )

    assert len(seen) == len(set(seen))  # no user on two pages
    assert created <= set(seen)
    assert everyone.headers["X-Total-Count"] == str(len(seen))
    assert filtered.status_code == 200
    assert filtered.headers["X-Total-Count"] == "5"
    assert filtered.headers["Link"] == (
        f'</admin/users?filter={marker}&page=2&per_page=2>; rel="next", '
        f'</admin/users?filter={marker}&page=3&per_page=2>; rel="last"'
    )
    body = filtered.json()
    assert body["aud"] == "authenticated"
    assert len(body["users"]) == 2
    assert {user["id"] for user in body["users"]} <= created


def test_generate_link_for_recovery_invite_and_magiclink(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    existing = new_email()
    service.auth.admin.create_user({"email": existing, "email_confirm": True})

    recovery = service.auth.admin.generate_link({"type": "recovery", "email": existing})
    invite = service.auth.admin.generate_link({"type": "invite", "email": new_email()})
    magic_new = service.auth.admin.generate_link({"type": "magiclink", "email": new_email()})

    props = recovery.properties
    assert props.verification_type == "recovery"
    assert props.action_link.startswith(f"{sandbox.url}/auth/v1/verify?token={props.hashed_token}")
    assert "type=recovery" in props.action_link
    assert re.fullmatch(r"\d{6}", props.email_otp)
    assert props.redirect_to == "http://localhost:3000"
    assert recovery.user.email == existing
    assert recovery.user.recovery_sent_at is not None
    assert invite.properties.verification_type == "invite"
    assert invite.user.invited_at is not None
    # A magic link for an unknown address signs them up (mail.go adminGenerateLink).
    assert magic_new.properties.verification_type == "signup"
    assert sandbox.mail == []  # generate_link sends nothing


def test_recovery_link_for_unknown_user_is_404(
    service: Client, new_email: Callable[[], str]
) -> None:
    with pytest.raises(AuthApiError) as caught:
        service.auth.admin.generate_link({"type": "recovery", "email": new_email()})

    assert caught.value.status == 404
    assert caught.value.code == "user_not_found"


def test_invite_creates_the_user_and_emails_the_link(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()

    invited = service.auth.admin.invite_user_by_email(email).user

    assert invited.email == email
    assert invited.invited_at is not None
    [message] = sandbox.mail
    assert message["To"] == email
    assert message["Subject"] == "You've been invited"
    assert "/auth/v1/verify?token=" in message.get_body(("plain",)).get_content()


def test_a_failing_trigger_on_auth_users_is_500_and_leaves_nothing(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email("blocked.example")

    with pytest.raises(AuthApiError) as caught:
        service.auth.admin.create_user({"email": email, "password": "long enough"})
    legacy = httpx.post(
        f"{sandbox.url}/auth/v1/admin/users",
        headers=admin_headers(sandbox, api_version=False),
        json={"email": email},
    )

    assert caught.value.status == 500
    assert caught.value.code == "unexpected_failure"
    assert caught.value.message == "Database error creating new user"
    # Legacy clients see the database error itself (utilities/postgres.go).
    assert legacy.status_code == 500
    assert legacy.json()["code"] == "P0001"
    with psycopg.connect(sandbox.db_url) as conn:
        found = conn.execute("select count(*) from auth.users where email = %s", (email,))
        assert found.fetchone() == (0,)


@pytest.mark.parametrize(
    ("key", "status", "body"),
    [
        (None, 401, {"message": "No API key found in request"}),
        ("nonsense", 401, {"message": "Invalid API key"}),
    ],
)
def test_gateway_refuses_requests_without_a_project_key(
    sandbox: Sandbox, key: str | None, status: int, body: dict[str, str]
) -> None:
    headers = {"apikey": key} if key else {}

    response = httpx.get(f"{sandbox.url}/auth/v1/admin/users", headers=headers)

    assert response.status_code == status
    assert response.json()["message"] == body["message"]


def test_admin_endpoints_refuse_the_anon_key_with_403_not_admin(
    sandbox: Sandbox, anon: Client
) -> None:
    with pytest.raises(AuthApiError) as caught:
        anon.auth.admin.list_users()

    assert caught.value.status == 403
    assert caught.value.code == "not_admin"


def test_admin_endpoints_refuse_a_signed_in_user(
    sandbox: Sandbox, signed_in: Callable[[], tuple[Client, str]]
) -> None:
    client, _user_id = signed_in()
    session = client.auth.get_session()
    assert session is not None

    response = httpx.get(
        f"{sandbox.url}/auth/v1/admin/users",
        headers={
            "apikey": sandbox.anon_key,
            "Authorization": f"Bearer {session.access_token}",
            "X-Supabase-Api-Version": "2024-01-01",
        },
    )

    assert response.status_code == 403
    assert response.json() == {"code": "not_admin", "message": "User not allowed"}


def test_invalid_user_id_is_404(sandbox: Sandbox) -> None:
    response = httpx.get(
        f"{sandbox.url}/auth/v1/admin/users/not-a-uuid", headers=admin_headers(sandbox)
    )

    assert response.status_code == 404
    assert response.json() == {"code": "validation_failed", "message": "user_id must be an UUID"}
