"""Creates, finds and prepares auth accounts through the Supabase Auth admin API.

An existing account (422 `email_exists`) is found by its exact email and linked; its password
is never changed. Accounts crm-sync creates carry `app_metadata.created_by = "crm-sync"` (which
users cannot edit), so a creation cut off before enrolment is resumed as ours, not linked.
"""

from __future__ import annotations

import secrets
import string
from functools import partial
from typing import Any, Protocol

import structlog
from supabase_auth.types import User

from sync_worker.customers import AuthAccount, CrmCustomer
from sync_worker.errors import SupabaseError
from sync_worker.supabase_api import SupabaseApi

log = structlog.get_logger("crm_sync.provision")

CREATED_BY = "crm-sync"
PASSWORD_LENGTH = 20
_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.!@#%+="
# Supabase Auth's admin list has no maximum page size; 1000 keeps each answer small.
LIST_PAGE_SIZE = 1000


class AccountExists(SupabaseError):
    """The email already has an auth account (422 email_exists)."""


class Provisioner(Protocol):
    """What the cycle needs from the Auth admin API."""

    def create_account(self, customer: CrmCustomer, password: str | None) -> AuthAccount: ...

    def find_account(self, email: str) -> AuthAccount | None: ...

    def get_account(self, user_id: str) -> AuthAccount: ...

    def set_temporary_password(self, user_id: str, password: str) -> None: ...

    def setup_link(self, email: str) -> str: ...


def new_temporary_password() -> str:
    """A random password from `secrets` with every character class present."""
    while True:
        candidate = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))
        if (
            any(c.islower() for c in candidate)
            and any(c.isupper() for c in candidate)
            and any(c.isdigit() for c in candidate)
            and any(not c.isalnum() for c in candidate)
        ):
            return candidate


def account_from(user: User | dict[str, Any]) -> AuthAccount:
    """Reads the fields the worker needs from a supabase-py `User` or a raw JSON user."""
    if isinstance(user, User):
        data: dict[str, Any] = {
            "id": user.id,
            "email": user.email,
            "app_metadata": user.app_metadata,
            "last_sign_in_at": user.last_sign_in_at,
        }
    else:
        data = user
    app_metadata = data.get("app_metadata") or {}
    return AuthAccount(
        id=str(data["id"]),
        email=str(data.get("email") or "").strip().lower(),
        created_by_crm_sync=app_metadata.get("created_by") == CREATED_BY,
        has_signed_in=data.get("last_sign_in_at") is not None,
    )


class SupabaseProvisioner:
    """`Provisioner` over supabase-py's admin client (service role, never signed in)."""

    def __init__(self, api: SupabaseApi) -> None:
        self._api = api

    def create_account(self, customer: CrmCustomer, password: str | None) -> AuthAccount:
        """Creates a confirmed account; raises `AccountExists` when the email is taken."""
        user_metadata: dict[str, Any] = {"source": "crm"}
        if customer.name:
            user_metadata["full_name"] = customer.name
        if password is not None:
            user_metadata["must_change_password"] = True
        attributes: dict[str, Any] = {
            "email": customer.email,
            "email_confirm": True,
            "user_metadata": user_metadata,
            "app_metadata": {"created_by": CREATED_BY},
        }
        if password is not None:
            attributes["password"] = password
        admin = self._api.client.auth.admin
        try:
            response = self._api.call("create account", lambda: admin.create_user(attributes))  # type: ignore[arg-type]
        except SupabaseError as exc:
            if exc.code == "email_exists" or (
                exc.status == 422 and "already been registered" in str(exc)
            ):
                raise AccountExists(str(exc), status=exc.status, code="email_exists") from exc
            raise
        return account_from(response.user)

    def find_account(self, email: str) -> AuthAccount | None:
        """Finds the account whose email is `email`, compared case-insensitively.

        The admin list's `filter` is `email LIKE '%text%'`: a substring match, case-sensitive,
        with `_` and `%` as wildcards. So every page of matches is compared exactly, and when
        the lower-case filter finds nothing (an account whose email was written in other
        letter case by SQL) every user is scanned once as a last resort.
        """
        wanted = email.strip().lower()
        found = self._scan(wanted, wanted)
        if found is None:
            found = self._scan(wanted, None)
            if found is not None:
                log.warning("account_found_by_full_scan", email=wanted)
        return found

    def _scan(self, wanted: str, filter_text: str | None) -> AuthAccount | None:
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "per_page": LIST_PAGE_SIZE}
            if filter_text is not None:
                params["filter"] = filter_text
            response = self._api.call(
                "find account", partial(self._api.admin_get, "admin/users", params)
            )
            users = response.json().get("users") or []
            for user in users:
                if str(user.get("email") or "").strip().lower() == wanted:
                    return account_from(user)
            if len(users) < LIST_PAGE_SIZE:
                return None
            page += 1

    def get_account(self, user_id: str) -> AuthAccount:
        admin = self._api.client.auth.admin
        response = self._api.call("get account", lambda: admin.get_user_by_id(user_id))
        return account_from(response.user)

    def set_temporary_password(self, user_id: str, password: str) -> None:
        """Sets the password the welcome email will carry, and asks for a change at sign-in."""
        admin = self._api.client.auth.admin
        self._api.call(
            "set temporary password",
            lambda: admin.update_user_by_id(
                user_id, {"password": password, "user_metadata": {"must_change_password": True}}
            ),
        )

    def setup_link(self, email: str) -> str:
        """A password-setup (recovery) link; Supabase sends nothing itself."""
        admin = self._api.client.auth.admin
        response = self._api.call(
            "generate setup link",
            lambda: admin.generate_link({"type": "recovery", "email": email}),
        )
        return str(response.properties.action_link)
