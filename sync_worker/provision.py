"""Provisions auth accounts and issues the credentials a welcome email carries, through the
Supabase Auth admin API.

An existing, confirmed account (422 `email_exists`) is found by its exact email and linked; its
password is never changed. An unconfirmed one is taken over: anyone can sign up with another
person's email, so its password is replaced and the customer gets credentials of their own.
Accounts crm-sync creates carry `app_metadata.created_by = "crm-sync"` (which users cannot
edit), so a creation cut off before enrolment is resumed as ours, not linked.
A temporary password is set right before the email that carries it, never on an account its
owner already signed in to.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from sync_worker.customers import (
    AccountOrigin,
    AuthAccount,
    Credentials,
    CredentialsMode,
    CrmCustomer,
)
from sync_worker.errors import SupabaseError
from sync_worker.supabase_api import SupabaseApi

log = structlog.get_logger("crm_sync.provision")

CREATED_BY = "crm-sync"
# Typed by hand at first sign-in: no look-alikes (0/O, 1/l/I, o) and letters and digits only,
# so nothing reads as punctuation at either end; groups of five joined by hyphens.
PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105
PASSWORD_SYMBOLS = 20  # 20 x log2(56) = 116 bits
PASSWORD_GROUP = 5
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

    def take_over(self, user_id: str, password: str, full_name: str | None) -> AuthAccount: ...

    def setup_link(self, email: str, redirect_to: str) -> str: ...


def new_temporary_password() -> str:
    """A random password from `secrets`: `PASSWORD_SYMBOLS` symbols of `PASSWORD_ALPHABET`
    with lower case, upper case and a digit, in hyphenated groups (the hyphens satisfy a
    project that also asks for a symbol)."""
    while True:
        symbols = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_SYMBOLS))
        if (
            any(c.islower() for c in symbols)
            and any(c.isupper() for c in symbols)
            and any(c.isdigit() for c in symbols)
        ):
            return "-".join(
                symbols[i : i + PASSWORD_GROUP] for i in range(0, PASSWORD_SYMBOLS, PASSWORD_GROUP)
            )


def account_from(data: dict[str, Any]) -> AuthAccount:
    """Reads the fields the worker needs from a user as the Auth admin API returns it."""
    app_metadata = data.get("app_metadata") or {}
    return AuthAccount(
        id=str(data["id"]),
        email=str(data.get("email") or "").strip().lower(),
        created_by_crm_sync=app_metadata.get("created_by") == CREATED_BY,
        has_signed_in=data.get("last_sign_in_at") is not None,
        email_confirmed=data.get("email_confirmed_at") is not None,
        taken_over_by_crm_sync=app_metadata.get("taken_over_by") == CREATED_BY,
    )


@dataclass(frozen=True, slots=True)
class ProvisionedAccount:
    """A customer's account, ready to enrol; `password` is set when this cycle created it."""

    customer: CrmCustomer
    account: AuthAccount
    origin: AccountOrigin
    password: str | None = field(default=None, repr=False)


def provision_account(
    provisioner: Provisioner, customer: CrmCustomer, mode: CredentialsMode
) -> ProvisionedAccount:
    """Creates the customer's account, or finds the one they have and links it.

    Raises:
        SupabaseError: the Auth API failed (after retries).
    """
    password = new_temporary_password() if mode is CredentialsMode.TEMPORARY_PASSWORD else None
    try:
        account = provisioner.create_account(customer, password)
        return ProvisionedAccount(customer, account, AccountOrigin.CREATED, password)
    except AccountExists:
        pass
    found = provisioner.find_account(customer.email)
    if found is None:
        # Taken a moment ago and gone now, or the list is behind: try again next cycle.
        raise SupabaseError(
            "the email is registered but its account was not found", status=422, retriable=True
        )
    if found.resumable:
        # Ours, from a cycle cut off before enrolment: resume it; its credentials are set
        # right before the email.
        origin = AccountOrigin.TAKEN_OVER if found.taken_over_by_crm_sync else AccountOrigin.CREATED
        return ProvisionedAccount(customer, found, origin)
    if not found.email_confirmed:
        # Anyone can sign up with someone else's email and wait (pre-hijacking): an unconfirmed
        # account is never linked as it is. Its password is replaced (a setup link's account
        # gets one nobody knows), its email confirmed, and the customer gets new credentials.
        password = new_temporary_password()
        account = provisioner.take_over(found.id, password, customer.name)
        log.warning("unconfirmed_account_taken_over", email=customer.email)
        fresh = password if mode is CredentialsMode.TEMPORARY_PASSWORD else None
        return ProvisionedAccount(customer, account, AccountOrigin.TAKEN_OVER, fresh)
    return ProvisionedAccount(customer, found, AccountOrigin.LINKED)


def issue_credentials(
    provisioner: Provisioner,
    *,
    email: str,
    user_id: str,
    origin: AccountOrigin,
    mode: CredentialsMode,
    fresh_password: str | None,
    redirect_to: str,
) -> Credentials:
    """The credentials a welcome email carries, set on the account right before it is sent.

    Args:
        provisioner: the Auth admin API.
        email: the customer's email.
        user_id: their account.
        origin: created or taken over by crm-sync, or linked (they keep their password).
        mode: a temporary password or a setup link.
        fresh_password: the password this cycle set on the account, if it did.
        redirect_to: where a setup link lands once used (the app's sign-in page).

    Raises:
        SupabaseError: the Auth API failed (after retries).
    """
    if origin is AccountOrigin.LINKED:
        return Credentials("credits_added")
    if mode is CredentialsMode.SETUP_LINK:
        return Credentials("new_account", setup_link=provisioner.setup_link(email, redirect_to))
    if fresh_password is not None:
        return Credentials("new_account", temporary_password=fresh_password)
    if provisioner.get_account(user_id).has_signed_in:
        # They already have working credentials: never reset a used account's password.
        return Credentials("credits_added")
    # A retried email carries a password that works: set a new one right before.
    password = new_temporary_password()
    provisioner.set_temporary_password(user_id, password)
    return Credentials("new_account", temporary_password=password)


class SupabaseProvisioner:
    """`Provisioner` over the Auth admin API (service role, never signed in)."""

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
        try:
            user = self._api.create_user(attributes)
        except SupabaseError as exc:
            if exc.code == "email_exists" or (
                exc.status == 422 and "already been registered" in str(exc)
            ):
                raise AccountExists(str(exc), status=exc.status, code="email_exists") from exc
            raise
        return account_from(user)

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
            users = self._api.list_users(
                page=page, per_page=LIST_PAGE_SIZE, filter_text=filter_text
            )
            for user in users:
                if str(user.get("email") or "").strip().lower() == wanted:
                    return account_from(user)
            if len(users) < LIST_PAGE_SIZE:
                return None
            page += 1

    def get_account(self, user_id: str) -> AuthAccount:
        return account_from(self._api.get_user(user_id))

    def set_temporary_password(self, user_id: str, password: str) -> None:
        """Sets the password the welcome email will carry, and asks for a change at sign-in."""
        self._api.update_user(
            user_id,
            {"password": password, "user_metadata": {"must_change_password": True}},
            operation="set temporary password",
        )

    def take_over(self, user_id: str, password: str, full_name: str | None) -> AuthAccount:
        """Replaces an unconfirmed account's password, confirms its email and marks it, so
        that whoever created it can no longer sign in with what they chose; the name they
        chose gives way to the CRM's (the profile's follows at enrolment, migration 0014)."""
        user = self._api.update_user(
            user_id,
            {
                "password": password,
                "email_confirm": True,
                "user_metadata": {
                    "source": "crm",
                    "must_change_password": True,
                    "full_name": full_name,
                },
                "app_metadata": {"taken_over_by": CREATED_BY},
            },
            operation="take over unconfirmed account",
        )
        return account_from(user)

    def setup_link(self, email: str, redirect_to: str) -> str:
        """A password-setup (recovery) link that lands on `redirect_to` once used; Supabase
        sends nothing itself. `redirect_to` must be in Auth's redirect allow list (else Auth
        falls back to the project's Site URL)."""
        return self._api.generate_link("recovery", email, redirect_to=redirect_to or None)
