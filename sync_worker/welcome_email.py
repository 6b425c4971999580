"""The welcome email a CRM customer receives, and how it is rendered (pure: no I/O).

`WelcomeEmail` says what to tell one customer; `render` turns it into a multipart text/HTML
message for SMTP, `render_subject` and `render_bodies` give the parts the Resend API takes.

`render` builds with the email package's `email.mime` classes and its compat32 policy: the
`EmailMessage` API parses every header it is given and refolds it on the way out, which cost
the worker more CPU per customer than anything else on a first run. Every header value is
ours or formatted by the package (`formataddr`); none can carry a line break.
"""

from __future__ import annotations

import dataclasses
import email.policy
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from email import charset
from email.headerregistry import Address
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formataddr, formatdate, parseaddr
from html import escape
from string import Template
from typing import NamedTuple

from sync_worker.crm_text import clean_name
from sync_worker.customers import Credentials, EmailKind
from sync_worker.masking import MASK

__all__ = [
    "MORE_CREDITS",
    "MORE_CREDITS_PRICE",
    "EmailKind",
    "WelcomeEmail",
    "render",
    "render_bodies",
    "render_subject",
]

# The seed's pricing for CRM customers: every pack is 3 credits for $9.99.
MORE_CREDITS = 3
MORE_CREDITS_PRICE = "$9.99"
_IDEMPOTENCY_PREFIX = "crm-welcome-"
# Keys the credential digests of an email built without a key of its own (tests, previews).
_PROCESS_KEY = secrets.token_bytes(32)
# A name longer than this is cut (with an ellipsis) in the To header and the greeting; the name
# stored may be longer (`crm_text.MAX_STORED_NAME_LENGTH`).
MAX_SHOWN_NAME_LENGTH = 64


@dataclass(frozen=True, slots=True)
class WelcomeEmail:
    """What one customer is told: their login details and their credits.

    Attributes:
        to: the customer's (normalised) email address.
        name: their name from the CRM, if known.
        kind: `new_account` (an account was created for them) or `credits_added` (they
            already had one and keep their password).
        login_url: where they sign in (`APP_LOGIN_URL`).
        credits: the credits they have now (`credits_remaining`).
        credits_granted: the free credits this enrolment added (`INITIAL_CREDITS`); the
            `credits_added` subject and text name the number when it is given.
        temporary_password: for `new_account` in `temporary_password` mode.
        setup_link: for `new_account` in `setup_link` mode.
        password_reset_url: for `credits_added`: where to choose a new password (the app's
            "forgot password" page); without it, the sign-in page's "Forgot password?".
        digest_key: keys the digests of the credential in the idempotency key and the
            Message-ID (`CREDENTIALS_SECRET`'s key), so that neither gives the credential away
            (a setup link's token is the hash of a 6-digit code: an unkeyed digest of it is
            reversed in seconds). Without one, a key of this process alone is used.
    """

    to: str
    name: str | None
    kind: EmailKind
    login_url: str
    credits: int
    temporary_password: str | None = field(default=None, repr=False)
    setup_link: str | None = field(default=None, repr=False)
    credits_granted: int | None = None
    password_reset_url: str | None = None
    digest_key: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in tuple(EmailKind):
            raise ValueError(
                f"WelcomeEmail.kind must be new_account or credits_added, not {self.kind!r}"
            )
        if not self.to or "@" not in self.to:
            raise ValueError("WelcomeEmail.to must be an email address")
        if self.credits < 0 or (self.credits_granted or 0) < 0:
            raise ValueError("WelcomeEmail credits must not be negative")
        given = (self.temporary_password is not None) + (self.setup_link is not None)
        if self.kind == EmailKind.NEW_ACCOUNT and given != 1:
            raise ValueError(
                "a new_account email needs exactly one of temporary_password and setup_link"
            )
        if self.kind == EmailKind.CREDITS_ADDED and given:
            raise ValueError("a credits_added email carries no password and no setup link")

    @property
    def idempotency_key(self) -> str:
        """A key that is the same whenever the same email is sent again (Resend, 1-256 chars).

        It covers the recipient, the kind and the credential. Retries of one send share it,
        so the API sends once; a later cycle that had to set a *new* password gets a new
        key, because Resend rejects a reused key with another payload (409
        `invalid_idempotent_request`) and the customer must get the password that works.
        Only a digest of the credential is used, never the credential itself.
        """
        credential = self.temporary_password or self.setup_link or ""
        material = f"{self.kind}:{self.to.strip().lower()}:{credential}"
        digest = hmac.digest(self.digest_key or _PROCESS_KEY, material.encode(), "sha256")
        return _IDEMPOTENCY_PREFIX + digest.hex()[:32]

    def redacted(self) -> WelcomeEmail:
        """This email with the password and the setup link replaced by a mask, for display."""
        return dataclasses.replace(
            self,
            temporary_password=None if self.temporary_password is None else MASK,
            setup_link=None if self.setup_link is None else MASK,
        )


# Both bodies: UTF-8, quoted-printable (readable where it is ASCII, lines kept short).
_BODY_CHARSET = charset.Charset("utf-8")
_BODY_CHARSET.body_encoding = charset.QP
# The wire form: compat32 writes the headers as given; SMTPUTF8 (RFC 6532) is needed only when
# an address is not ASCII. That form too writes them as built, unfolded: refolding a long To
# line dropped the quotes around a display name, and a CRM name became a second recipient.
_ASCII_POLICY = email.policy.compat32.clone(linesep="\r\n")
_UTF8_POLICY = email.policy.SMTPUTF8.clone(max_line_length=None)


# --- templates -------------------------------------------------------------------------
# Every value substituted into an HTML template is escaped first (see `_html_values`).

_TEXT_NEW_ACCOUNT = Template("""\
$greeting

Your CareerCast Digital Resume account is ready.

Sign in at: $login_url
Email: $email
$credential_text

You have $credits_phrase to start with. Need more? Buy $more_credits more credits for \
$price from the Billing page once you are signed in.

The CareerCast team
""")

# The password stands alone on its line, so nothing around it can be taken for part of it.
_TEXT_PASSWORD = Template("""\
Temporary password:

    $password

You must change this temporary password when you first sign in.""")

_TEXT_SETUP_LINK = Template("""\
Set your password here: $setup_link

Then sign in with your email address and the password you chose.""")

_TEXT_CREDITS_ADDED = Template("""\
$greeting

We added $granted_phrase to your existing CareerCast account ($email). You now have \
$balance_phrase.

Sign in as usual with your current password at: $login_url

Did not create this account yourself, or forgot its password? $reset_text Only someone \
who can read this inbox can do that.

Need more? Buy $more_credits more credits for $price from the Billing page once you are \
signed in.

The CareerCast team
""")

_HTML_PAGE = Template("""\
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>$subject</title></head>
<body style="font-family: Arial, Helvetica, sans-serif; line-height: 1.5; color: #1f2933;">
$content
<p>The CareerCast team</p>
</body>
</html>
""")

_HTML_NEW_ACCOUNT = Template("""\
<p>$greeting</p>
<p>Your CareerCast Digital Resume account is ready.</p>
<p>Sign in at: <a href="$login_url">$login_url</a><br>
Email: <strong>$email</strong></p>
$credential_html
<p>You have <strong>$credits_phrase</strong> to start with. Need more? Buy $more_credits \
more credits for $price from the <strong>Billing</strong> page once you are signed in.</p>""")

_HTML_PASSWORD = Template("""\
<p>Temporary password:</p>
<pre style="font-family: Menlo, Consolas, monospace; font-size: 1.2em; padding: 8px 12px; \
background: #f3f4f6; display: inline-block;">$password</pre>
<p>You must change this temporary password when you first sign in.</p>""")

_HTML_SETUP_LINK = Template("""\
<p><a href="$setup_link">Set your password</a></p>
<p>Then sign in with your email address and the password you chose.</p>""")

_HTML_CREDITS_ADDED = Template("""\
<p>$greeting</p>
<p>We added <strong>$granted_phrase</strong> to your existing CareerCast account \
(<strong>$email</strong>). You now have <strong>$balance_phrase</strong>.</p>
<p>Sign in as usual with your current password at: <a href="$login_url">$login_url</a></p>
<p>Did not create this account yourself, or forgot its password? $reset_html Only someone \
who can read this inbox can do that.</p>
<p>Need more? Buy $more_credits more credits for $price from the <strong>Billing</strong> \
page once you are signed in.</p>""")


def compose(
    *,
    to: str,
    name: str | None,
    credentials: Credentials,
    credits: int,
    login_url: str,
    password_reset_url: str,
    initial_credits: int,
    digest_key: bytes = b"",
) -> WelcomeEmail:
    """The welcome email of one customer (pure): their credentials, or the credits added to
    an account they already use, with the reset path for such an account."""
    added = credentials.kind == EmailKind.CREDITS_ADDED
    return WelcomeEmail(
        to=to,
        name=name,
        kind=credentials.kind,
        login_url=login_url,
        credits=credits,
        temporary_password=credentials.temporary_password,
        setup_link=credentials.setup_link,
        credits_granted=initial_credits if added else None,
        password_reset_url=password_reset_url if added else None,
        digest_key=digest_key,
    )


def render_subject(email: WelcomeEmail) -> str:
    """The subject line for `email`."""
    if email.kind == EmailKind.NEW_ACCOUNT:
        return "Your CareerCast Digital Resume account is ready"
    granted = email.credits_granted
    if granted is None:
        return "Free credits were added to your CareerCast account"
    verb = "was" if granted == 1 else "were"
    return f"{_credits_phrase(granted)} {verb} added to your CareerCast account"


def render_bodies(email: WelcomeEmail) -> tuple[str, str]:
    """The (text, html) bodies of `email`, as the Resend API takes them."""
    values = _values(email)
    html_values = _html_values(values)
    if email.kind == EmailKind.CREDITS_ADDED:
        reset_text, reset_html = _reset_texts(email)
        text = _TEXT_CREDITS_ADDED.substitute(values, reset_text=reset_text)
        content = _HTML_CREDITS_ADDED.substitute(html_values, reset_html=reset_html)
    else:
        if email.temporary_password is not None:
            credential_text = _TEXT_PASSWORD.substitute(values)
            credential_html = _HTML_PASSWORD.substitute(html_values)
        else:
            credential_text = _TEXT_SETUP_LINK.substitute(values)
            credential_html = _HTML_SETUP_LINK.substitute(html_values)
        text = _TEXT_NEW_ACCOUNT.substitute(values, credential_text=credential_text)
        content = _HTML_NEW_ACCOUNT.substitute(html_values, credential_html=credential_html)
    html = _HTML_PAGE.substitute(subject=escape(render_subject(email)), content=content)
    return text, html


def _reset_texts(email: WelcomeEmail) -> tuple[str, str]:
    """How the owner of a linked account takes it over from their inbox (text, HTML)."""
    if email.password_reset_url:
        url = escape(email.password_reset_url, quote=True)
        return (
            f"Choose a new password at {email.password_reset_url}",
            f'<a href="{url}">Choose a new password</a>.',
        )
    login = escape(email.login_url, quote=True)
    return (
        f'Use "Forgot password?" on the sign-in page ({email.login_url}) to choose a new one.',
        f'Use <strong>Forgot password?</strong> on <a href="{login}">the sign-in page</a> to '
        "choose a new one.",
    )


def render(email: WelcomeEmail, sender: str, *, smtputf8: bool = False) -> bytes:
    """The complete multipart/alternative message (text and HTML), as SMTP's DATA carries it
    before dot-stuffing (CRLF line ends).

    Args:
        email: what to tell the customer.
        sender: the From header, e.g. `CareerCast <noreply@careercast.example>`.
        smtputf8: headers in UTF-8 as is (RFC 6532), for a server that offers SMTPUTF8; needed
            when the sender's or the recipient's address is not ASCII.
    """
    text, html = render_bodies(email)
    sender_name, sender_address = parseaddr(sender)
    parts = [_text_part(text, "plain"), _text_part(html, "html")]
    message = MIMEMultipart("alternative", boundary=_boundary(parts))
    message["Subject"] = render_subject(email)
    message["From"] = _address(sender_name, sender_address or sender, smtputf8=smtputf8)
    message["To"] = _address(_shown_name(email.name) or "", email.to, smtputf8=smtputf8)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(email, sender_domain(sender))
    for part in parts:
        message.attach(part)
    for name, value in message.items():
        if len(value.splitlines()) > 1:  # never: every value is ours or formatted, one line
            raise ValueError(f"the {name} header would break its line")
    return message.as_bytes(policy=_UTF8_POLICY if smtputf8 else _ASCII_POLICY)


def message_id(email: WelcomeEmail, domain: str) -> str:
    """The same for every sending of the same email (recipient, kind, credential, credits), so
    that mail systems which fold duplicates by Message-ID fold a re-sent one; another email
    gets another. Only digests, never a credential. `domain` is the sender's, as receivers
    expect (make_msgid's default, socket.getfqdn(), is a DNS lookup that can stall)."""
    material = f"{email.idempotency_key}:{email.credits}:{email.credits_granted}"
    digest = hashlib.sha256(material.encode()).hexdigest()[:32]  # of a keyed digest
    return f"<crm-welcome.{digest}@{domain}>"


class SentEmail(NamedTuple):
    """A welcome email the mail server accepted: to whom, which kind, in which run, and its
    Message-ID (kept in the history, `crm_sync_welcome_emails`)."""

    email: str
    kind: EmailKind
    run_id: str | None = None
    message_id: str | None = None


def accepted(message: WelcomeEmail, run_id: str | None, domain: str) -> SentEmail:
    """How an email the server accepted is recorded: its kind, run and Message-ID (`domain`:
    the sender's, as in the message itself)."""
    return SentEmail(message.to, message.kind, run_id, message_id(message, domain))


def _text_part(body: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(body, _BODY_CHARSET)  # sets the charset and the transfer encoding
    del part["MIME-Version"]  # RFC 2045 asks for it at the top level only
    return part


def _boundary(parts: list[MIMENonMultipart]) -> str:
    """A multipart boundary that occurs in none of the encoded parts.

    Left to itself, the email package checks its random boundary with a regular expression
    compiled for every message (a quarter of the time a message took to build); a substring
    test is cheaper and stricter. Quoted-printable never writes "=_", so the first one
    drawn is always taken.
    """
    while True:
        boundary = f"=_{secrets.token_hex(16)}"
        if not any(boundary in str(part.get_payload()) for part in parts):
            return boundary


def _address(name: str, address: str, *, smtputf8: bool) -> str:
    """`Name <address>` for a header: the name quoted as needed, and encoded (RFC 2047) when
    it is not ASCII and the message is not SMTPUTF8."""
    if smtputf8:
        return str(Address(display_name=name, addr_spec=address))
    if not address.isascii():
        raise ValueError("an address that is not ASCII needs the SMTPUTF8 form")
    return formataddr((name, address), charset="utf-8")


def _values(email: WelcomeEmail) -> dict[str, str]:
    name = _shown_name(email.name)
    if name is not None and looks_like_contact(name):
        # Written into an email from the company's own domain, a link, an address or a phone
        # number would read as the company's own call to action: a plain "Hello," instead.
        name = None
    return {
        "greeting": f"Hello {name}," if name else "Hello,",
        "login_url": email.login_url,
        "email": email.to,
        "password": email.temporary_password or "",
        "setup_link": email.setup_link or "",
        "credits_phrase": _credits_phrase(email.credits),
        "granted_phrase": (
            "free credits"
            if email.credits_granted is None
            else _credits_phrase(email.credits_granted)
        ),
        # An existing account's balance may include credits they paid for.
        "balance_phrase": f"{email.credits} credit" + ("" if email.credits == 1 else "s"),
        "more_credits": str(MORE_CREDITS),
        "price": MORE_CREDITS_PRICE,
    }


def _html_values(values: dict[str, str]) -> dict[str, str]:
    return {key: escape(value, quote=True) for key, value in values.items()}


def _credits_phrase(credits: int) -> str:
    return f"{credits} free credit" + ("" if credits == 1 else "s")


# What no person's name contains, and what would make an email from the company's own domain
# carry an attacker's call to action: a link or a bare domain ("visit evil.test/unlock"), an
# email address, a phone number (seven digits or more, however separated).
_LINK = re.compile(r"(?i)(?:[a-z][a-z0-9+.-]*:/?/|www\.|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b)")
_PHONE = re.compile(r"\d(?:[\s().\-/+]*\d){6,}")


def looks_like_contact(name: str) -> bool:
    """Whether a name holds a link, a domain, an email address or a phone number."""
    return "@" in name or _LINK.search(name) is not None or _PHONE.search(name) is not None


def _shown_name(name: str | None) -> str | None:
    """The CRM name as it may appear in a header and a greeting, whatever the interpreter.

    NFC; control, format, private-use and line/paragraph-separator characters become spaces;
    whitespace collapses; the `=?` that opens an RFC 2047 encoded word is broken up, so that
    no version of the email package decodes CR/LF out of it (CVE-2024-6923); at most
    `MAX_SHOWN_NAME_LENGTH` characters.
    """
    text = (clean_name(name) or "").replace("=?", "= ?")
    if len(text) > MAX_SHOWN_NAME_LENGTH:
        text = text[: MAX_SHOWN_NAME_LENGTH - 3].rstrip() + "..."
    return text or None


def sender_domain(sender: str) -> str:
    """The domain of the From header's address (`EMAIL_FROM`), for Message-IDs: the one the
    rendered message carries and the one the history records are the same."""
    return parseaddr(sender)[1].rpartition("@")[2] or "crm-sync.localhost"
