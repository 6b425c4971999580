"""The app's side of Supabase Auth through supabase-py's own auth client: the signed-in user
(`GET`/`PUT /auth/v1/user`), sign-out (`POST /logout`) and the refresh-token grant, with the
sessions and refresh tokens kept in the `auth` schema.

Statuses, codes and messages follow supabase/auth internal/api/user.go, logout.go, auth.go and
internal/tokens/service.go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from supabase import Client, create_client
from supabase_auth.errors import AuthApiError, AuthWeakPasswordError

from supabase_sandbox import Sandbox

TEMPORARY = "Temp-0rary-Pass"
CHOSEN = "my own secret phrase"


def db_rows(sandbox: Sandbox, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        return conn.execute(query.encode(), params).fetchall()


def new_account(service: Client, email: str, **metadata: Any) -> str:
    """A confirmed account with the temporary password, as crm-sync creates one."""
    created = service.auth.admin.create_user(
        {
            "email": email,
            "password": TEMPORARY,
            "email_confirm": True,
            "user_metadata": {"source": "crm", "must_change_password": True, **metadata},
        }
    )
    return created.user.id


def signed_in_as(sandbox: Sandbox, email: str, password: str = TEMPORARY) -> Client:
    client = create_client(sandbox.url, sandbox.anon_key)
    client.auth.sign_in_with_password({"email": email, "password": password})
    return client


def test_get_user_answers_the_signed_in_user_and_the_session_is_in_the_auth_schema(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user_id = new_account(service, email)
    client = signed_in_as(sandbox, email)
    session = client.auth.get_session()
    assert session is not None

    answer = client.auth.get_user()

    assert answer is not None
    assert answer.user.id == user_id
    assert answer.user.user_metadata["must_change_password"] is True
    claims = jwt.decode(session.access_token, options={"verify_signature": False})
    assert claims["amr"][0]["method"] == "password"
    [(stored_user, aal)] = db_rows(
        sandbox, "select user_id, aal::text from auth.sessions where id = %s", claims["session_id"]
    )
    assert (str(stored_user), aal) == (user_id, "aal1")
    [(token, revoked, parent)] = db_rows(
        sandbox,
        "select token, revoked, parent from auth.refresh_tokens where session_id = %s",
        claims["session_id"],
    )
    assert (token, revoked, parent) == (session.refresh_token, False, None)
    assert len(token) == 12


def test_get_user_needs_a_user_token(sandbox: Sandbox) -> None:
    """The anon key is a valid JWT without `sub`; no Authorization gets the key's own."""
    client = create_client(sandbox.url, sandbox.anon_key)

    with pytest.raises(AuthApiError) as caught:
        client.auth.get_user(sandbox.anon_key)

    assert (caught.value.status, caught.value.code) == (403, "bad_jwt")
    assert caught.value.message == "invalid claim: missing sub claim"


def test_first_sign_in_password_change_clears_the_mark_and_replaces_the_password(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    """What the app does when `user_metadata.must_change_password` is true: one update_user
    with the new password and the mark cleared (Auth applies both in one transaction)."""
    email = new_email()
    user_id = new_account(service, email)
    client = signed_in_as(sandbox, email)

    updated = client.auth.update_user(
        {"password": CHOSEN, "data": {"must_change_password": False}}
    ).user

    assert updated.id == user_id
    assert updated.user_metadata["must_change_password"] is False
    assert updated.user_metadata["source"] == "crm"  # `data` merges, it does not replace
    with pytest.raises(AuthApiError) as old:
        signed_in_as(sandbox, email, TEMPORARY)
    assert (old.value.status, old.value.code) == (400, "invalid_credentials")
    again = signed_in_as(sandbox, email, CHOSEN).auth.get_user()
    assert again is not None
    assert again.user.user_metadata["must_change_password"] is False


def test_a_password_change_alone_leaves_user_metadata_as_it_was(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    """Supabase Auth never edits user_metadata on a password change: clearing the mark is the
    app's part of the request."""
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)

    updated = client.auth.update_user({"password": CHOSEN}).user

    assert updated.user_metadata["must_change_password"] is True


def test_the_same_password_is_422_same_password(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)

    with pytest.raises(AuthApiError) as caught:
        client.auth.update_user({"password": TEMPORARY})

    assert (caught.value.status, caught.value.code) == (422, "same_password")
    assert caught.value.message == "New password should be different from the old password."


def test_a_short_password_is_422_weak_password(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)

    with pytest.raises(AuthWeakPasswordError) as caught:
        client.auth.update_user({"password": "abc"})

    assert (caught.value.status, caught.value.code) == (422, "weak_password")
    assert caught.value.reasons == ["length"]
    assert caught.value.message == "Password should be at least 6 characters."


def test_a_user_cannot_write_app_metadata(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)

    with pytest.raises(AuthApiError) as caught:
        client.auth.update_user({"app_metadata": {"created_by": "me"}})  # type: ignore[typeddict-unknown-key]

    assert (caught.value.status, caught.value.code) == (403, "not_admin")
    assert caught.value.message == "Updating app_metadata requires admin privileges"


def test_data_merges_and_null_removes_a_key(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email, full_name="Ada")
    client = signed_in_as(sandbox, email)

    updated = client.auth.update_user(
        {"data": {"must_change_password": None, "theme": "dark"}}
    ).user

    assert "must_change_password" not in updated.user_metadata
    assert updated.user_metadata["theme"] == "dark"
    assert updated.user_metadata["full_name"] == "Ada"


def test_a_password_change_ends_every_other_session_of_the_user(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    laptop = signed_in_as(sandbox, email)
    phone = signed_in_as(sandbox, email)
    phone_session = phone.auth.get_session()
    assert phone_session is not None

    laptop.auth.update_user({"password": CHOSEN})

    with pytest.raises(AuthApiError) as revoked:
        phone.auth.get_user(phone_session.access_token)
    assert (revoked.value.status, revoked.value.code) == (403, "session_not_found")
    with pytest.raises(AuthApiError) as refresh:
        phone.auth.refresh_session(phone_session.refresh_token)
    assert refresh.value.code == "refresh_token_not_found"
    assert laptop.auth.get_user() is not None
    assert laptop.auth.refresh_session().session is not None


def test_an_admin_password_change_ends_every_session(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    user_id = new_account(service, email)
    client = signed_in_as(sandbox, email)
    session = client.auth.get_session()
    assert session is not None

    service.auth.admin.update_user_by_id(user_id, {"password": CHOSEN})

    with pytest.raises(AuthApiError) as caught:
        client.auth.get_user(session.access_token)
    assert caught.value.code == "session_not_found"


# -- sign-out ---------------------------------------------------------------------------------


def two_devices(sandbox: Sandbox, service: Client, email: str) -> tuple[Client, Client]:
    new_account(service, email)
    return signed_in_as(sandbox, email), signed_in_as(sandbox, email)


def session_of(client: Client) -> tuple[str, str]:
    session = client.auth.get_session()
    assert session is not None
    return session.access_token, session.refresh_token


def is_alive(client: Client, tokens: tuple[str, str]) -> bool:
    """Whether the session behind an access token still exists (GET /user answers)."""
    try:
        client.auth.get_user(tokens[0])
    except AuthApiError as error:
        if error.code == "session_not_found":
            return False
        raise
    return True


def test_sign_out_is_global_by_default_and_revokes_the_refresh_tokens(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    laptop, phone = two_devices(sandbox, service, new_email())
    laptop_tokens, phone_tokens = session_of(laptop), session_of(phone)

    laptop.auth.sign_out()

    assert laptop.auth.get_session() is None
    assert not is_alive(phone, laptop_tokens)
    assert not is_alive(phone, phone_tokens)
    with pytest.raises(AuthApiError) as caught:
        phone.auth.refresh_session(laptop_tokens[1])
    assert (caught.value.status, caught.value.code) == (400, "refresh_token_not_found")
    assert caught.value.message == "Invalid Refresh Token: Refresh Token Not Found"


def test_sign_out_local_ends_only_this_session(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    laptop, phone = two_devices(sandbox, service, new_email())
    laptop_tokens, phone_tokens = session_of(laptop), session_of(phone)

    laptop.auth.sign_out({"scope": "local"})

    assert not is_alive(phone, laptop_tokens)
    assert is_alive(phone, phone_tokens)


def test_sign_out_others_keeps_only_this_session(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    laptop, phone = two_devices(sandbox, service, new_email())
    laptop_tokens, phone_tokens = session_of(laptop), session_of(phone)

    laptop.auth.sign_out({"scope": "others"})

    assert laptop.auth.get_session() is not None
    assert is_alive(laptop, laptop_tokens)
    assert not is_alive(laptop, phone_tokens)


def test_logout_answers_204_and_refuses_an_unknown_scope(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    access_token, _ = session_of(signed_in_as(sandbox, email))
    headers = {"apikey": sandbox.anon_key, "Authorization": f"Bearer {access_token}"}

    unknown = httpx.post(f"{sandbox.url}/auth/v1/logout?scope=everywhere", headers=headers)
    done = httpx.post(f"{sandbox.url}/auth/v1/logout", headers=headers)
    after = httpx.post(f"{sandbox.url}/auth/v1/logout", headers=headers)

    assert unknown.status_code == 400
    assert unknown.json() == {
        "code": 400,
        "error_code": "validation_failed",
        "msg": 'Unsupported logout scope "everywhere"',
    }
    assert (done.status_code, done.content) == (204, b"")
    assert after.status_code == 403
    assert after.json()["error_code"] == "session_not_found"


# -- refresh tokens ---------------------------------------------------------------------------


def refresh_via_http(sandbox: Sandbox, refresh_token: str) -> httpx.Response:
    return httpx.post(
        f"{sandbox.url}/auth/v1/token?grant_type=refresh_token",
        headers={"apikey": sandbox.anon_key},
        json={"refresh_token": refresh_token},
    )


def backdate(sandbox: Sandbox, refresh_token: str, seconds: int) -> None:
    """Moves a token's last change into the past, beyond the reuse interval."""
    db_rows(
        sandbox,
        "update auth.refresh_tokens set updated_at = now() - make_interval(secs => %s)"
        " where token = %s returning id",
        seconds,
        refresh_token,
    )


def test_refresh_session_rotates_the_refresh_token_in_the_same_session(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)
    first_access, first_refresh = session_of(client)

    refreshed = client.auth.refresh_session()

    assert refreshed.session is not None
    assert refreshed.session.refresh_token != first_refresh
    old_claims = jwt.decode(first_access, options={"verify_signature": False})
    new_claims = jwt.decode(refreshed.session.access_token, options={"verify_signature": False})
    assert new_claims["session_id"] == old_claims["session_id"]
    assert new_claims["amr"] == old_claims["amr"]  # the session's sign-in, not the refresh
    [(parent, revoked)] = db_rows(
        sandbox,
        "select parent, revoked from auth.refresh_tokens where token = %s",
        refreshed.session.refresh_token,
    )
    assert (parent, revoked) == (first_refresh, False)


def test_the_previous_refresh_token_returns_the_current_one(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    """A client that lost the last refresh response may send its token again."""
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)
    _, first = session_of(client)
    second = client.auth.refresh_session().session
    assert second is not None
    backdate(sandbox, first, 3600)

    again = refresh_via_http(sandbox, first)

    assert again.status_code == 200
    assert again.json()["refresh_token"] == second.refresh_token


def test_an_older_refresh_token_is_honoured_within_the_reuse_interval(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)
    _, first = session_of(client)
    client.auth.refresh_session()
    client.auth.refresh_session()

    reused = refresh_via_http(sandbox, first)

    assert reused.status_code == 200
    assert reused.json()["refresh_token"] not in (first, session_of(client)[1])


def test_reuse_after_the_interval_is_refresh_token_already_used_and_revokes_the_session(
    sandbox: Sandbox, service: Client, new_email: Callable[[], str]
) -> None:
    email = new_email()
    new_account(service, email)
    client = signed_in_as(sandbox, email)
    access_token, first = session_of(client)
    client.auth.refresh_session()
    current = client.auth.refresh_session().session
    assert current is not None
    backdate(sandbox, first, 11)

    with pytest.raises(AuthApiError) as caught:
        client.auth.refresh_session(first)

    assert (caught.value.status, caught.value.code) == (400, "refresh_token_already_used")
    assert caught.value.message == "Invalid Refresh Token: Already Used"
    session_id = jwt.decode(access_token, options={"verify_signature": False})["session_id"]
    [(all_revoked,)] = db_rows(
        sandbox,
        "select bool_and(revoked) from auth.refresh_tokens where session_id = %s",
        session_id,
    )
    assert all_revoked is True
    backdate(sandbox, current.refresh_token, 11)
    later = refresh_via_http(sandbox, current.refresh_token)
    assert later.status_code == 400
    assert later.json()["error_code"] == "refresh_token_already_used"


def test_an_unknown_refresh_token_is_refresh_token_not_found(sandbox: Sandbox) -> None:
    answers = [refresh_via_http(sandbox, token) for token in ("abcdefghijkl", "short", "x" * 40)]

    assert [a.status_code for a in answers] == [400, 400, 400]
    assert {a.json()["error_code"] for a in answers} == {"refresh_token_not_found"}
