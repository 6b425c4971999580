"""Rendering of the welcome email: both kinds, both credentials, names, escaping, no leaks."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from email.message import EmailMessage

import pytest

from sync_worker.welcome_email import (
    WelcomeEmail,
    render,
    render_bodies,
    render_subject,
)

SENDER = "CareerCast <noreply@careercast.example>"
LOGIN_URL = "https://app.careercast.example/login"
PASSWORD = "Tmp-9f2K&x<Q>7zLw3pR"  # characters that need escaping in HTML
SETUP_LINK = "https://ref.supabase.co/auth/v1/verify?token=abc123&type=recovery"


def new_account(
    *, name: str | None = "Jane Doe", password: str | None = PASSWORD, link: str | None = None
) -> WelcomeEmail:
    return WelcomeEmail(
        to="jane@example.com",
        name=name,
        kind="new_account",
        login_url=LOGIN_URL,
        credits=4,
        temporary_password=password,
        setup_link=link,
    )


def credits_added(
    *, name: str | None = "Bob", credits: int = 6, granted: int | None = 4
) -> WelcomeEmail:
    return WelcomeEmail(
        to="bob@example.com",
        name=name,
        kind="credits_added",
        login_url=LOGIN_URL,
        credits=credits,
        credits_granted=granted,
    )


def rendered(welcome: WelcomeEmail, *, smtputf8: bool = False) -> EmailMessage:
    """The message as the mail server receives it: rendered to bytes and parsed back."""
    raw = render(welcome, SENDER, smtputf8=smtputf8)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # SMTP's line ends, every one
    # Stored with Python's line ends, as a mailbox would keep it.
    parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def utf8(header_text: str) -> str:
    """A header read back from raw UTF-8 (RFC 6532): the parser keeps its bytes escaped."""
    return header_text.encode("utf-8", "surrogateescape").decode("utf-8")


def parts(message: EmailMessage) -> tuple[str, str]:
    """The decoded text and HTML parts of a parsed message."""
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    return str(text_part.get_content()), str(html_part.get_content())


def test_new_account_with_password_has_everything_the_customer_needs() -> None:
    message = rendered(new_account())

    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Your CareerCast Digital Resume account is ready"
    assert message["From"] == SENDER
    assert message["To"].addresses[0].addr_spec == "jane@example.com"
    assert message["Message-ID"].endswith("@careercast.example>")
    assert message["Date"]
    text, html = parts(message)
    for body in (text, html):
        assert "Hello Jane Doe," in body
        assert LOGIN_URL in body
        assert "jane@example.com" in body
        assert "change this temporary password when you first sign in" in body
        assert "4 free credits" in body
        assert "3 more credits for $9.99" in body
        assert "Billing" in body
    assert f"Temporary password:\n\n    {PASSWORD}\n" in text
    assert "Tmp-9f2K&amp;x&lt;Q&gt;7zLw3pR" in html
    assert PASSWORD not in html  # only its escaped form
    assert "Set your password" not in text


def test_new_account_with_setup_link_shows_the_link_and_no_password() -> None:
    message = rendered(new_account(password=None, link=SETUP_LINK))

    text, html = parts(message)
    assert f"Set your password here: {SETUP_LINK}" in text
    assert 'href="https://ref.supabase.co/auth/v1/verify?token=abc123&amp;type=recovery"' in html
    assert "Temporary password" not in text
    assert "Temporary password" not in html


def test_without_a_name_the_greeting_is_neutral() -> None:
    text, html = render_bodies(new_account(name=None))
    assert text.startswith("Hello,\n")
    assert "<p>Hello,</p>" in html

    blank_text, _ = render_bodies(new_account(name="  \t "))
    assert blank_text.startswith("Hello,\n")


def test_credits_added_says_so_and_carries_no_credentials() -> None:
    message = rendered(credits_added())

    assert message["Subject"] == "4 free credits were added to your CareerCast account"
    text, html = parts(message)
    for body in (text, html):
        assert "Hello Bob," in body
        assert "4 free credits" in body
        assert "existing CareerCast account" in body
        assert "6 credits" in body  # their balance, which may include paid credits
        assert "Sign in as usual" in body
        assert LOGIN_URL in body
        assert "3 more credits for $9.99" in body
        assert "password:" not in body.lower()
        assert "Set your password" not in body


def test_subject_uses_the_real_number_of_credits() -> None:
    assert render_subject(credits_added(granted=7)) == (
        "7 free credits were added to your CareerCast account"
    )
    assert render_subject(credits_added(granted=1)) == (
        "1 free credit was added to your CareerCast account"
    )


def test_credits_added_without_the_granted_number_stays_truthful() -> None:
    email = credits_added(granted=None, credits=9)
    assert render_subject(email) == "Free credits were added to your CareerCast account"
    text, _ = render_bodies(email)
    assert "We added free credits to your existing CareerCast account" in text
    assert "You now have 9 credits." in text


def test_every_interpolated_value_is_html_escaped() -> None:
    hostile = WelcomeEmail(
        to="x@example.com",
        name='<script>alert("x")</script>',
        kind="new_account",
        login_url='https://app.example/login?a=1&b="2"',
        credits=4,
        temporary_password="<b>pw</b>&'",
    )
    text, html = render_bodies(hostile)

    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "<b>pw</b>" not in html
    assert "&lt;b&gt;pw&lt;/b&gt;&amp;&#x27;" in html
    assert 'href="https://app.example/login?a=1&amp;b=&quot;2&quot;"' in html
    # The text part is plain text: shown as typed.
    assert '<script>alert("x")</script>' in text


def test_a_name_cannot_inject_headers() -> None:
    raw = render(new_account(name="Eve\r\nBcc: victim@example.com"), SENDER)
    message = email.message_from_bytes(raw, policy=email.policy.default)

    assert b"\nBcc:" not in raw
    assert message["Bcc"] is None
    assert message["To"].addresses[0].display_name == "Eve Bcc: victim@example.com"


def test_repr_never_shows_the_password_or_the_link() -> None:
    with_password = new_account()
    with_link = new_account(password=None, link=SETUP_LINK)

    assert PASSWORD not in repr(with_password)
    assert "temporary_password" not in repr(with_password)
    assert SETUP_LINK not in repr(with_link)
    assert "token=abc123" not in str(with_link)


def test_redacted_masks_the_credentials() -> None:
    shown = new_account().redacted()
    text, _ = render_bodies(shown)
    assert PASSWORD not in text
    assert "Temporary password:\n\n    ********\n" in text

    link_text, _ = render_bodies(new_account(password=None, link=SETUP_LINK).redacted())
    assert SETUP_LINK not in link_text


def test_idempotency_key_is_deterministic_and_valid_for_resend() -> None:
    key = new_account().idempotency_key

    assert key == new_account().idempotency_key
    assert key.startswith("crm-welcome-")
    assert 1 <= len(key) <= 256
    assert PASSWORD not in key
    # Another kind or another recipient is another email.
    assert credits_added().idempotency_key != key
    assert (
        WelcomeEmail(
            to="other@example.com",
            name="Jane Doe",
            kind="new_account",
            login_url=LOGIN_URL,
            credits=4,
            temporary_password=PASSWORD,
        ).idempotency_key
        != key
    )
    # A later cycle that had to set a new password sends a new email, not a conflicting one.
    assert new_account(password="another-password-123").idempotency_key != key
    # The name does not matter: the customer does.
    assert new_account(name="J. Doe").idempotency_key == key


def test_a_resent_email_has_the_message_id_of_the_one_it_may_duplicate() -> None:
    """The same email (recipient, kind, credential, credits) sent again has
    the same Message-ID, so mail systems that fold duplicates do; any other email another."""
    first = rendered(new_account())
    assert rendered(new_account())["Message-ID"] == first["Message-ID"]
    assert PASSWORD not in first["Message-ID"]
    others = [
        new_account(password="another-password-123"),
        new_account(password=None, link=SETUP_LINK),
        credits_added(),
        credits_added(credits=9),
    ]
    ids = {rendered(other)["Message-ID"] for other in others}
    assert len(ids) == len(others)
    assert first["Message-ID"] not in ids


@pytest.mark.parametrize(
    ("kind", "password", "link"),
    [
        ("new_account", None, None),
        ("new_account", PASSWORD, SETUP_LINK),
        ("credits_added", PASSWORD, None),
        ("credits_added", None, SETUP_LINK),
        ("password_reset", PASSWORD, None),
    ],
)
def test_inconsistent_credentials_are_a_programming_error(
    kind: str, password: str | None, link: str | None
) -> None:
    with pytest.raises(ValueError, match=r"exactly one|no password|kind must be"):
        WelcomeEmail(
            to="jane@example.com",
            name=None,
            kind=kind,  # type: ignore[arg-type]
            login_url=LOGIN_URL,
            credits=4,
            temporary_password=password,
            setup_link=link,
        )


def test_the_error_never_carries_the_password() -> None:
    with pytest.raises(ValueError, match="exactly one") as caught:
        new_account(password=PASSWORD, link=SETUP_LINK)
    assert PASSWORD not in str(caught.value)


HEADERS = {"Subject", "From", "To", "Date", "Message-ID", "MIME-Version", "Content-Type"}


def _encoded_word(text: str, encoding: str = "b") -> str:
    import base64
    import quopri

    if encoding == "b":
        return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="
    return f"=?utf-8?q?{quopri.encodestring(text.encode(), header=True).decode()}?="


@pytest.mark.parametrize(
    "name",
    [
        _encoded_word("Ann\r\nBcc: thief@evil.example\r\nReply-To: thief@evil.example"),
        _encoded_word("Ann\nBcc: thief@evil.example", "q"),
        "Ann " + _encoded_word("x\r\nX-Injected: 1") + " Lee",
        "Ann\u2028Bcc: thief@evil.example",  # Unicode line separator
        "Ann\x1b[31m\x00\x7f\u200e Lee",
        "A" * 10_000,
    ],
)
def test_a_crm_name_never_adds_a_header_whatever_the_python(name: str) -> None:
    """CVE-2024-6923: before 3.11.10/3.12.5 the email package decoded encoded words in a display
    name and wrote their CR/LF out as is. Rendered, sent as bytes and parsed back, the message
    has exactly its own headers."""
    for smtputf8 in (False, True):
        parsed = rendered(new_account(name=name), smtputf8=smtputf8)
        assert set(parsed.keys()) == HEADERS, parsed.keys()
        assert len(parsed.get_all("To") or []) == 1
        [address] = parsed["To"].addresses
        assert address.addr_spec == "jane@example.com"
        shown = address.display_name
        assert "=?" not in shown
        assert all(c.isprintable() for c in shown)
        assert len(shown) <= 64


def test_a_long_name_is_capped_in_the_greeting_too() -> None:
    text, _html = parts(rendered(new_account(name="Ann " + "B" * 5000)))
    greeting = text.splitlines()[0]
    assert greeting.startswith("Hello Ann B")
    assert len(greeting) <= len("Hello ,") + 64


def test_the_password_stands_on_a_line_of_its_own_and_in_a_monospace_block() -> None:
    password = "Ab3d5-Fg7h9-Jk2m4-Np6q8"
    text, html = parts(rendered(new_account(password=password)))
    lines = text.splitlines()
    [line] = [line for line in lines if password in line]
    assert line.strip() == password
    index = lines.index(line)
    assert lines[index - 1].strip() == ""
    assert lines[index + 1].strip() == ""
    assert re.search(rf"<pre[^>]*monospace[^>]*>{re.escape(password)}</pre>", html)


@pytest.mark.parametrize("smtputf8", [False, True])
def test_names_round_trip_exactly_in_both_header_forms(smtputf8: bool) -> None:
    name = 'Zoë "Zee" O\'Brien, Jr. (CEO) <boss>'
    sender = "Café Ünited <no-reply@careercast.example>"
    message = email.message_from_bytes(
        render(new_account(name=name), sender, smtputf8=smtputf8), policy=email.policy.default
    )
    [to] = message["To"].addresses
    assert (utf8(to.display_name), to.addr_spec) == (name, "jane@example.com")
    [sender] = message["From"].addresses
    assert (utf8(sender.display_name), sender.addr_spec) == (
        "Café Ünited",
        "no-reply@careercast.example",
    )
    raw = render(new_account(name=name), SENDER, smtputf8=smtputf8)
    assert raw.isascii() is not smtputf8  # UTF-8 as is only in the SMTPUTF8 form


def test_an_address_that_is_not_ascii_needs_the_smtputf8_form() -> None:
    international = dataclasses.replace(new_account(), to="jose@exämple.com")
    with pytest.raises(ValueError, match="needs the SMTPUTF8 form"):
        render(international, SENDER)
    message = rendered(international, smtputf8=True)
    assert utf8(message["To"].addresses[0].addr_spec) == "jose@exämple.com"


def test_the_multipart_boundary_is_fresh_and_only_the_top_carries_mime_version() -> None:
    raw = [render(new_account(), SENDER) for _ in range(2)]
    message = rendered(new_account())
    boundary = message.get_boundary()
    assert boundary
    assert boundary not in b"".join(raw).decode()  # a new one per message
    text, html = (part for part in message.iter_parts())
    for part in (text, html):
        assert part.get("MIME-Version") is None  # RFC 2045: required at the top level only
        assert boundary not in str(part.get_payload())
    assert message["MIME-Version"] == "1.0"
    assert len(list(message.iter_parts())) == 2


@pytest.mark.parametrize(
    "name",
    [
        'attacker@evil.example, """""""""""""""""""""""""""""" é',
        "attacker@evil.example, " + "\\" * 38 + " é",
        "Help: attacker@evil.example; ((((((((((((((((((((((((((((( é",
    ],
)
def test_a_long_hostile_name_stays_one_recipient_in_the_smtputf8_form(name: str) -> None:
    # Folding a long To line used to drop the quotes around the display name, so a Reply-All
    # would reach the address the name carries.
    message = email.message_from_bytes(
        render(new_account(name=name), SENDER, smtputf8=True), policy=email.policy.default
    )
    [to] = message["To"].addresses
    assert to.addr_spec == "jane@example.com"
    assert utf8(to.display_name) == name


@pytest.mark.parametrize(
    "name",
    [
        "Your account is locked: visit http://evil.test/unlock",
        "Go to evil.test/unlock now",
        "www.evil.test",
        "Write to help@evil.test",
        "Call +1 (555) 010-0100",
        "Text 555.010.0100",
    ],
)
def test_a_name_that_carries_a_link_an_address_or_a_phone_number_is_no_greeting(
    name: str,
) -> None:
    """An email from the company's own domain never carries a CRM name's
    call to action; the greeting is a plain "Hello,"."""
    for message in (new_account(name=name), credits_added(name=name)):
        text, html = render_bodies(message)
        assert text.startswith("Hello,\n")
        assert "<p>Hello,</p>" in html
        for fragment in ("evil.test", "555", "unlock"):
            assert fragment not in text
            assert fragment not in html


@pytest.mark.parametrize(
    "name", ["Jane O'Neil", "José María Núñez-Ruiz", "Li Wei 3rd", "A.J. Smith"]
)
def test_ordinary_names_still_greet(name: str) -> None:
    text, _ = render_bodies(new_account(name=name))
    assert text.startswith(f"Hello {name},\n")


def test_the_credential_digests_are_keyed_so_they_give_nothing_away() -> None:
    """A setup link's token is the hash of a 6-digit code: an unkeyed digest of the link in a
    Message-ID or an idempotency key (logged by mail servers, quoted in replies) would be
    reversed by trying every code. Both digests are keyed by CREDENTIALS_SECRET's key."""
    import dataclasses
    import hashlib

    with_link = dataclasses.replace(new_account(password=None, link=SETUP_LINK), digest_key=b"k1")
    material = f"new_account:{with_link.to}:{SETUP_LINK}"
    assert hashlib.sha256(material.encode()).hexdigest()[:32] not in with_link.idempotency_key
    other_key = dataclasses.replace(with_link, digest_key=b"k2")
    assert other_key.idempotency_key != with_link.idempotency_key
    assert dataclasses.replace(with_link).idempotency_key == with_link.idempotency_key
