"""The welcome email a CRM customer receives, and how it is rendered (pure: no I/O).

`WelcomeEmail` says what to tell one customer; `render` turns it into a multipart text/HTML
message for SMTP, `render_subject` and `render_bodies` give the parts the Resend API takes.
"""

from __future__ import annotations

import dataclasses
import email.policy
import hashlib
from dataclasses import dataclass, field
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from html import escape
from string import Template
from typing import Literal

from sync_worker.config import MASK
from sync_worker.customers import clean_name

__all__ = [
    "MORE_CREDITS",
    "MORE_CREDITS_PRICE",
    "EmailKind",
    "WelcomeEmail",
    "render",
    "render_bodies",
    "render_subject",
]

EmailKind = Literal["new_account", "credits_added"]

# The seed's pricing for CRM customers: every pack is 3 credits for $9.99.
MORE_CREDITS = 3
MORE_CREDITS_PRICE = "$9.99"
_IDEMPOTENCY_PREFIX = "crm-welcome-"
# A name longer than this is cut (with an ellipsis) in the To header and the greeting.
MAX_NAME_LENGTH = 64


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

    def __post_init__(self) -> None:
        if self.kind not in ("new_account", "credits_added"):
            raise ValueError(
                f"WelcomeEmail.kind must be new_account or credits_added, not {self.kind!r}"
            )
        if not self.to or "@" not in self.to:
            raise ValueError("WelcomeEmail.to must be an email address")
        if self.credits < 0 or (self.credits_granted or 0) < 0:
            raise ValueError("WelcomeEmail credits must not be negative")
        given = (self.temporary_password is not None) + (self.setup_link is not None)
        if self.kind == "new_account" and given != 1:
            raise ValueError(
                "a new_account email needs exactly one of temporary_password and setup_link"
            )
        if self.kind == "credits_added" and given:
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
        return _IDEMPOTENCY_PREFIX + hashlib.sha256(material.encode()).hexdigest()[:32]

    def redacted(self) -> WelcomeEmail:
        """This email with the password and the setup link replaced by a mask, for display."""
        return dataclasses.replace(
            self,
            temporary_password=None if self.temporary_password is None else MASK,
            setup_link=None if self.setup_link is None else MASK,
        )


class _HeaderClasses(HeaderRegistry):
    """The email package's header registry, each header's class made once: the stock one
    makes a new class for every header of every message, a sixth of the cost of a render."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# The default policy (what `EmailMessage()` uses) with that registry.
_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())


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


def render_subject(email: WelcomeEmail) -> str:
    """The subject line for `email`."""
    if email.kind == "new_account":
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
    if email.kind == "credits_added":
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


def render(email: WelcomeEmail, sender: str) -> EmailMessage:
    """The complete multipart/alternative message (text and HTML) for SMTP.

    Args:
        email: what to tell the customer.
        sender: the From header, e.g. `CareerCast <noreply@careercast.example>`.
    """
    text, html = render_bodies(email)
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = render_subject(email)
    message["From"] = sender
    message["To"] = Address(display_name=_clean_name(email.name) or "", addr_spec=email.to)
    message["Date"] = formatdate(usegmt=True)
    # make_msgid's default domain is socket.getfqdn(), a DNS lookup that can stall in a
    # container; the sender's domain is what receivers expect anyway.
    message["Message-ID"] = make_msgid(domain=_domain_of(sender))
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _values(email: WelcomeEmail) -> dict[str, str]:
    name = _clean_name(email.name)
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


def _clean_name(name: str | None) -> str | None:
    """The CRM name as it may appear in a header and a greeting, whatever the interpreter.

    NFC; control, format, private-use and line/paragraph-separator characters become spaces;
    whitespace collapses; the `=?` that opens an RFC 2047 encoded word is broken up, so that
    no version of the email package decodes CR/LF out of it (CVE-2024-6923); at most
    `MAX_NAME_LENGTH` characters.
    """
    text = (clean_name(name) or "").replace("=?", "= ?")
    if len(text) > MAX_NAME_LENGTH:
        text = text[: MAX_NAME_LENGTH - 3].rstrip() + "..."
    return text or None


def _domain_of(sender: str) -> str:
    address = parseaddr(sender)[1]
    domain = address.rpartition("@")[2]
    return domain or "crm-sync.localhost"
