"""`Provisioner` over the Supabase Auth admin API: the service role's calls that create,
find, update and delete auth accounts and issue recovery tokens, and how a user as that API
returns it is read."""

from __future__ import annotations

from typing import Any

from sync_worker.customers import AuthAccount, CrmCustomer, IdentityHolder
from sync_worker.errors import SupabaseError
from sync_worker.provision import CREATED_BY, AccountExists
from sync_worker.supabase_api import SupabaseApi


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
        credential_nonce=str(app_metadata.get("credential_nonce") or ""),
    )


class SupabaseProvisioner:
    """`Provisioner` over the Auth admin API (service role, never signed in)."""

    def __init__(self, api: SupabaseApi) -> None:
        self._api = api

    def create_account(
        self,
        customer: CrmCustomer,
        password: str | None,
        *,
        taken_over: bool = False,
        nonce: str = "",
    ) -> AuthAccount:
        """Creates a confirmed account; raises `AccountExists` when the email is taken.
        `taken_over`: it replaces an unconfirmed account someone else created; `nonce`: what
        its temporary password was derived from, with the email."""
        user_metadata: dict[str, Any] = {"source": "crm"}
        if customer.name:
            user_metadata["full_name"] = customer.name
        if password is not None:
            user_metadata["must_change_password"] = True
        app_metadata: dict[str, Any] = {"created_by": CREATED_BY, "credential_nonce": nonce}
        if taken_over:
            app_metadata["taken_over_by"] = CREATED_BY
        attributes: dict[str, Any] = {
            "email": customer.email,
            "email_confirm": True,
            "user_metadata": user_metadata,
            "app_metadata": app_metadata,
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

    def find_account(self, email: str) -> AuthAccount | IdentityHolder | None:
        """Who holds `email` (normalised), exactly: the account whose email it is, else the
        account one of whose identities carries it, else None. One RPC over Auth's own indexes
        (migration 0015), never a scan of the users."""
        rows = self._api.rpc(
            "crm_sync_find_auth_account",
            {"p_email": email.strip().lower()},
            operation="find account",
        )
        holders: list[dict[str, Any]] = list(rows or [])
        identity = next((row for row in holders if row.get("via") == "identity"), None)
        for row in holders:
            if row.get("via") == "user":
                account = account_from({**row, "id": row["user_id"]})
                if identity is not None and not account.email_confirmed:
                    # Replacing this account would not free the address: Auth also counts
                    # the identity of the other account.
                    return IdentityHolder(str(identity["user_id"]), str(identity["provider"]))
                return account
        for row in holders:
            return IdentityHolder(str(row["user_id"]), str(row.get("provider") or "unknown"))
        return None

    def get_account(self, user_id: str) -> AuthAccount:
        return account_from(self._api.get_user(user_id))

    def set_temporary_password(self, user_id: str, password: str) -> None:
        """Sets the password the welcome email will carry, and asks for a change at sign-in."""
        self._api.update_user(
            user_id,
            {"password": password, "user_metadata": {"must_change_password": True}},
            operation="set temporary password",
        )

    def delete_account(self, user_id: str) -> None:
        """Deletes an account for good; one already gone is not an error."""
        try:
            self._api.delete_user(user_id, operation="delete unconfirmed account")
        except SupabaseError as exc:
            if exc.status != 404:
                raise

    def recovery_token_hash(self, email: str, user_id: str, *, reuse_seconds: int) -> str:
        """The account's recovery token: the one issued within `reuse_seconds` if there is
        one (so a re-sent link is the same link, and one that may have arrived still works;
        Auth keeps only a user's newest token), else a fresh one (Supabase sends nothing)."""
        if reuse_seconds > 0:
            issued = self._api.rpc(
                "crm_sync_recent_recovery_token",
                {"p_user_id": user_id, "p_max_age_seconds": reuse_seconds},
                operation="read setup link",
            )
            if isinstance(issued, str) and issued:
                return issued
        return self._api.recovery_token_hash(email)
