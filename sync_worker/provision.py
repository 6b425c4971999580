"""Provisions auth accounts and issues the credentials a welcome email carries: the rules,
over a `ports.Provisioner` (the Auth admin API; `auth_admin` is the real one).

Who holds a customer's email is looked up exactly (the `crm_sync_find_auth_account` RPC, no
scan of the users). A confirmed account is linked: its password is never changed. An
unconfirmed one was made by someone who signed up with the customer's email and may carry
their other ways in (an OAuth identity, a confirmed phone, sessions, metadata): it is deleted
and a fresh account created in its place. An address held only by an identity of another
account is a conflict for a person to resolve. Accounts crm-sync creates carry
`app_metadata.created_by = "crm-sync"` (which users cannot edit), so a creation cut off before
enrolment is resumed as ours, not linked. A temporary password is set right before the email
that carries it, never on an account its owner already signed in to.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from sync_worker.customers import (
    AccountOrigin,
    AuthAccount,
    Credentials,
    CredentialsMode,
    CrmCustomer,
    EmailKind,
    IdentityHolder,
)
from sync_worker.errors import SupabaseError
from sync_worker.ports import Provisioner

log = structlog.get_logger("crm_sync.provision")

CREATED_BY = "crm-sync"
# Typed by hand at first sign-in: no look-alikes (0/O, 1/l/I, o) and letters and digits only,
# so nothing reads as punctuation at either end; groups of five joined by hyphens.
PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105
PASSWORD_SYMBOLS = 20  # 20 x log2(56) = 116 bits
PASSWORD_GROUP = 5


class AccountExists(SupabaseError):
    """The email already has an auth account (422 email_exists)."""


def temporary_password(key: bytes, email: str, nonce: str = "") -> str:
    """The customer's temporary password: derived, not drawn, so that every welcome email
    that carries one carries the same, and a re-sent email never kills the password of one
    that may have arrived (SMTP is at-least-once). `PASSWORD_SYMBOLS` symbols of
    `PASSWORD_ALPHABET`, with lower case, upper case and a digit, in hyphenated groups (the
    hyphens satisfy a project that also asks for a symbol), drawn without bias from an
    HMAC-SHA256 stream keyed by `key` (`CREDENTIALS_SECRET`) over the normalised email and the
    account's credential nonce (random, kept in its app metadata: an account created again for
    the email gets another). Nothing secret is stored; whoever holds the key can work a
    password out, as whoever holds the service-role key can already set one.
    """
    if not key:
        raise ValueError("temporary passwords need a key (CREDENTIALS_SECRET)")
    label = f"crm-sync temporary password\x00{email.strip().lower()}\x00{nonce}".encode()
    for attempt in itertools.count():
        symbols = "".join(_draw(key, label, attempt, PASSWORD_SYMBOLS))
        if (
            any(c.islower() for c in symbols)
            and any(c.isupper() for c in symbols)
            and any(c.isdigit() for c in symbols)
        ):
            return "-".join(
                symbols[i : i + PASSWORD_GROUP] for i in range(0, PASSWORD_SYMBOLS, PASSWORD_GROUP)
            )
    raise AssertionError("unreachable")


def _draw(key: bytes, label: bytes, attempt: int, count: int) -> Iterator[str]:
    """`count` symbols of the alphabet from HMAC blocks, by rejection sampling (a byte above
    the largest multiple of the alphabet's size is skipped, so every symbol is equally likely)."""
    size = len(PASSWORD_ALPHABET)
    bound = 256 - 256 % size
    drawn = 0
    for block in itertools.count():
        digest = hmac.digest(key, label + f"\x00{attempt}\x00{block}".encode(), "sha256")
        for byte in digest:
            if byte < bound:
                yield PASSWORD_ALPHABET[byte % size]
                drawn += 1
                if drawn == count:
                    return


def new_credential_nonce() -> str:
    """A random value an account keeps (`app_metadata.credential_nonce`), so that an account
    created again for the same email (deleted, replaced) gets another password."""
    return secrets.token_hex(16)


def setup_link_url(page: str, token_hash: str) -> str:
    """The app's set-password page with the recovery token as query parameters, the pattern
    Supabase documents for server-side and prefetch-safe flows: opening the link consumes
    nothing; the page redeems it with `verifyOtp({ token_hash, type: "recovery" })` when the
    person presses its button. The page's own query parameters are kept."""
    parts = urlsplit(page)
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key not in ("token_hash", "type")
    ]
    query += [("token_hash", token_hash), ("type", "recovery")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def identity_conflict(email: str, holder: IdentityHolder) -> SupabaseError:
    """The permanent failure of a customer whose address only an identity holds."""
    return SupabaseError(
        f"create account: the email is held by a {holder.provider!r} identity of another"
        f" account, {holder.user_id}, whose own email is another one, so Supabase Auth refuses"
        " a new account for it; remove that identity (or that account) in Supabase Auth, then"
        f" delete the crm_sync_failures row of {email} to provision the customer",
        status=422,
        code="email_held_by_identity",
        permanent=True,
    )


@dataclass(frozen=True, slots=True)
class ProvisionedAccount:
    """A customer's account, ready to enrol; `password` is set when this cycle created it."""

    customer: CrmCustomer
    account: AuthAccount
    origin: AccountOrigin
    password: str | None = field(default=None, repr=False)


def provision_account(
    provisioner: Provisioner, customer: CrmCustomer, mode: CredentialsMode, key: bytes
) -> ProvisionedAccount:
    """Creates the customer's account, or finds the one they have and links it; `key`
    derives its temporary password (`temporary_password`).

    Raises:
        SupabaseError: the Auth API failed (after retries).
    """
    nonce = new_credential_nonce()
    password = (
        temporary_password(key, customer.email, nonce)
        if mode is CredentialsMode.TEMPORARY_PASSWORD
        else None
    )
    try:
        account = provisioner.create_account(customer, password, nonce=nonce)
        return ProvisionedAccount(customer, account, AccountOrigin.CREATED, password)
    except AccountExists:
        pass
    found = provisioner.find_account(customer.email)
    if isinstance(found, IdentityHolder):
        raise identity_conflict(customer.email, found)
    if found is None:
        # Taken a moment ago and gone now: try again next cycle.
        raise SupabaseError(
            "the email is registered but its account was not found", status=422, retriable=True
        )
    if found.resumable:
        # Ours, from a cycle cut off before enrolment: resume it; its credentials are set
        # right before the email.
        origin = AccountOrigin.TAKEN_OVER if found.taken_over_by_crm_sync else AccountOrigin.CREATED
        return ProvisionedAccount(customer, found, origin)
    if not found.email_confirmed:
        if found.has_signed_in:
            raise signed_in_unconfirmed_conflict(customer.email, found)
        return _replace_unconfirmed(provisioner, customer, found, password, nonce)
    return ProvisionedAccount(customer, found, AccountOrigin.LINKED)


def signed_in_unconfirmed_conflict(email: str, found: AuthAccount) -> SupabaseError:
    """An unconfirmed account that was signed in to (by phone, by OAuth) may hold its owner's
    data: crm-sync neither deletes it nor confirms it (that would hand the address to whoever
    signs in to it). A person decides."""
    return SupabaseError(
        f"create account: the email belongs to an unconfirmed account, {found.id}, that has"
        " been signed in to (by phone or another provider): crm-sync neither deletes it (it"
        " may hold its owner's data) nor confirms it (whoever signs in to it would hold the"
        " customer's address); confirm or delete it in Supabase Auth, then delete the"
        f" crm_sync_failures row of {email}",
        status=422,
        code="email_held_by_unconfirmed_account",
        permanent=True,
    )


def _replace_unconfirmed(
    provisioner: Provisioner,
    customer: CrmCustomer,
    found: AuthAccount,
    password: str | None,
    nonce: str,
) -> ProvisionedAccount:
    """Anyone can sign up with someone else's email and wait (pre-hijacking), and such an
    account can carry its creator's other ways in: an OAuth identity (Auth writes it before it
    refuses a sign-in whose provider did not vouch for the address), a confirmed phone,
    sessions, metadata. Confirming its email would hand those the customer's account, so it is
    deleted (the database deletes its identities, sessions and tokens with it) and a fresh
    account is created in its place."""
    provisioner.delete_account(found.id)
    log.warning("unconfirmed_account_replaced", email=customer.email)
    try:
        account = provisioner.create_account(customer, password, taken_over=True, nonce=nonce)
    except AccountExists as exc:
        raise SupabaseError(
            "create account: the unconfirmed account was deleted and the email registered"
            " again before its replacement was created",
            status=422,
            retriable=True,
        ) from exc
    return ProvisionedAccount(customer, account, AccountOrigin.TAKEN_OVER, password)


def issue_credentials(
    provisioner: Provisioner,
    *,
    email: str,
    user_id: str,
    origin: AccountOrigin,
    mode: CredentialsMode,
    fresh_password: str | None,
    setup_url: str,
    key: bytes,
    setup_link_reuse_seconds: int = 0,
    just_created: bool = False,
) -> Credentials:
    """The credentials a welcome email carries, set on the account right before it is sent.

    Args:
        provisioner: the Auth admin API.
        email: the customer's email.
        user_id: their account.
        origin: created or taken over by crm-sync, or linked (they keep their password).
        mode: a temporary password or a setup link.
        fresh_password: the password this cycle set on the account, if it did.
        setup_url: the app's page that redeems a setup link (`APP_SETUP_URL`).
        key: derives the temporary password (`CREDENTIALS_SECRET`).
        setup_link_reuse_seconds: a recovery token issued this recently is sent again rather
            than replaced (a new one would void a link that may have arrived).
        just_created: this cycle created the account (nobody can have signed in to it).

    Raises:
        SupabaseError: the Auth API failed (after retries).
    """
    if origin is AccountOrigin.LINKED:
        return Credentials(EmailKind.CREDITS_ADDED)
    if mode is CredentialsMode.SETUP_LINK:
        if not just_created and provisioner.get_account(user_id).owner_signed_in:
            # They chose a password already: a new link would only reset it.
            return Credentials(EmailKind.CREDITS_ADDED)
        token_hash = provisioner.recovery_token_hash(
            email, user_id, reuse_seconds=setup_link_reuse_seconds
        )
        return Credentials(EmailKind.NEW_ACCOUNT, setup_link=setup_link_url(setup_url, token_hash))
    if fresh_password is not None:
        return Credentials(EmailKind.NEW_ACCOUNT, temporary_password=fresh_password)
    account = provisioner.get_account(user_id)
    if account.owner_signed_in:
        # They already have working credentials: never reset a used account's password.
        return Credentials(EmailKind.CREDITS_ADDED)
    # A retried email carries the password an earlier one may have delivered: the same one,
    # set again right before (an account of an earlier version had a random one).
    password = temporary_password(key, email, account.credential_nonce)
    provisioner.set_temporary_password(user_id, password)
    return Credentials(EmailKind.NEW_ACCOUNT, temporary_password=password)
