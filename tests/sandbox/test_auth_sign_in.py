"""Password sign-in (`POST /auth/v1/token?grant_type=password`), as supabase/auth
internal/api/token.go ResourceOwnerPasswordGrant answers it."""

from __future__ import annotations

from collections.abc import Callable

import jwt
import pytest
from supabase import Client, create_client
from supabase_auth.errors import AuthApiError

from supabase_sandbox import Sandbox


def test_sign_in_with_password_returns_a_session_with_user_claims(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user = service.auth.admin.create_user(
        {"email": email, "password": "correct horse", "email_confirm": True}
    ).user
    client = create_client(sandbox.url, sandbox.anon_key)

    result = client.auth.sign_in_with_password(
        {"email": email.upper(), "password": "correct horse"}
    )

    assert result.session is not None
    assert result.user is not None
    assert result.user.id == user.id
    assert result.user.last_sign_in_at is not None
    assert result.session.token_type == "bearer"
    assert result.session.expires_in == 3600
    claims = jwt.decode(
        result.session.access_token,
        sandbox.keys.secret,
        algorithms=["HS256"],
        audience="authenticated",
    )
    assert claims["sub"] == user.id
    assert claims["email"] == email
    assert claims["role"] == "authenticated"
    assert claims["aud"] == "authenticated"
    assert claims["session_id"]
    assert claims["exp"] > claims["iat"]


@pytest.mark.parametrize(
    "case",
    [
        ("wrong horse", True, "invalid_credentials", "Invalid login credentials"),
        ("correct horse", False, "email_not_confirmed", "Email not confirmed"),
    ],
    ids=["wrong-password", "unconfirmed"],
)
def test_sign_in_refusals_are_400(
    sandbox: Sandbox,
    service: Client,
    new_email: Callable[[], str],
    case: tuple[str, bool, str, str],
) -> None:
    password, confirmed, code, message = case
    email = new_email()
    service.auth.admin.create_user(
        {"email": email, "password": "correct horse", "email_confirm": confirmed}
    )
    client = create_client(sandbox.url, sandbox.anon_key)

    with pytest.raises(AuthApiError) as caught:
        client.auth.sign_in_with_password({"email": email, "password": password})

    assert caught.value.status == 400
    assert caught.value.code == code
    assert caught.value.message == message


def test_unknown_email_is_the_same_invalid_credentials(
    sandbox: Sandbox, new_email: Callable[[], str]
) -> None:
    client = create_client(sandbox.url, sandbox.anon_key)

    with pytest.raises(AuthApiError) as caught:
        client.auth.sign_in_with_password({"email": new_email(), "password": "whatever"})

    assert (caught.value.status, caught.value.code) == (400, "invalid_credentials")


def test_a_password_set_by_update_works_for_sign_in(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user = service.auth.admin.create_user({"email": email, "email_confirm": True}).user
    service.auth.admin.update_user_by_id(user.id, {"password": "a new secret"})
    client = create_client(sandbox.url, sandbox.anon_key)

    result = client.auth.sign_in_with_password({"email": email, "password": "a new secret"})

    assert result.user is not None
    assert result.user.id == user.id
