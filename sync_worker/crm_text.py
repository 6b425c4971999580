"""What the CRM's free text becomes before anything stores or sends it: an email in the one
form Supabase Auth accepts (or the reason there is none), a name fit for the tracking row, the
account's metadata and an email. Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254  # RFC 5321's path limit, within Auth's 255
# A name as stored (tracking row, profile, the account's metadata); an email shows less of it
# (`welcome_email.MAX_SHOWN_NAME_LENGTH`).
MAX_STORED_NAME_LENGTH = 200
# Control, format, surrogate, private use, unassigned, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# badoux/checkmail ValidateFormat, which Supabase Auth's validateEmail calls (api/mail.go).
_AUTH_EMAIL_FORMAT = re.compile(
    r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)


def clean_name(raw: str | None) -> str | None:
    """A CRM name fit for the tracking row, the account's metadata and an email: NFC, control,
    format and separator characters as spaces, whitespace collapsed, at most
    `MAX_STORED_NAME_LENGTH` characters; None when nothing is left."""
    if raw is None:
        return None
    text = unicodedata.normalize("NFC", raw[: MAX_STORED_NAME_LENGTH * 4])
    text = "".join(" " if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)
    text = " ".join(text.split())[:MAX_STORED_NAME_LENGTH].rstrip()
    return text or None


def normalise_email(raw: str | None) -> tuple[str | None, str | None]:
    """The one form of an email that Supabase Auth will accept, or why there is none.

    NFC first (one person typed in two normal forms is one customer), then trimmed, lower-cased
    and validated (syntax only, no DNS); an internationalised domain becomes its ASCII (IDNA)
    form. Supabase Auth's format check (badoux/checkmail, called by api/mail.go validateEmail)
    takes only ASCII, so any other address is invalid up front rather than refused by Auth on
    every cycle.

    Returns:
        (email, None) when valid, or (None, reason) when not.
    """
    if raw is None or not raw.strip():
        return None, "no email"
    text = unicodedata.normalize("NFC", raw).strip().lower()
    if len(text) > MAX_EMAIL_LENGTH:
        return None, f"longer than {MAX_EMAIL_LENGTH} characters"
    try:
        valid = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, str(exc)
    email = f"{valid.local_part}@{valid.ascii_domain}".lower()
    if not _AUTH_EMAIL_FORMAT.match(email):
        return None, (
            "Supabase Auth accepts only ASCII letters, digits and .!#$%&'*+/=?^_`{|}~- before the @"
        )
    return email, None
