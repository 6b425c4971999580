"""Hides secrets wherever crm-sync shows or stores text: log lines, error lines, crash messages,
stored failure reasons and run errors, `crm-sync config`.

`mask_url` and `url_passwords` read the passwords of a connection URL as libpq does.
`SecretMasker` hides the secrets it was made with (in every form a line may show them),
passwords of URLs and JWTs anywhere in a text, and the values of secret-looking keys; the
edge makes one from the settings and gives it to everything that masks. No I/O, and no
configuration: the configuration, the logs, the welcome email and the local stack import it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

MASK = "********"

# As libpq reads a URL: the userinfo ends at the first "@" or "/" (a "?", "#" or ":" before it
# belongs to the password), and the user name at its first ":".
_USERINFO_PASSWORD = re.compile(r"(?P<head>://[^:@/]*:)(?P<pw>[^@/]*)(?=@)")
# libpq's parameters that hold a secret: `password` and `sslpassword` (the client key's).
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<pw>[^&#]*)", re.IGNORECASE)

_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|api_?key|authorization|credential|private_?key|cookie",
    re.IGNORECASE,
)
# scheme://user:password@host -> keep the user, hide the password.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)
_MIN_SECRET_LENGTH = 4
# A bare JWT anywhere in a string (three base64url segments, the first a JSON header).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")


def url_passwords(url: str) -> list[str]:
    """The passwords written in a connection URL (userinfo and `password=`), as written and
    percent-decoded."""
    found = [m["pw"] for m in _USERINFO_PASSWORD.finditer(url)]
    found += [m["pw"] for m in _QUERY_PASSWORD.finditer(url)]
    return [p for raw in found if raw for p in {raw, unquote(raw)}]


def mask_url(url: str) -> str:
    """Hides the passwords of a URL (userinfo and `password=`), keeping what an operator needs
    to recognise it; any libpq form, several hosts included."""
    url = _USERINFO_PASSWORD.sub(lambda m: m["head"] + MASK if m["pw"] else m[0], url)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, url)


def _forms(secret: str) -> set[str]:
    """A secret as it may appear in a line: as is, stripped, escaped by JSON or repr, or
    percent-encoded."""
    forms = {secret, secret.strip()}
    for form in (secret, secret.strip()):
        forms |= {
            json.dumps(form)[1:-1],
            json.dumps(form, ensure_ascii=False)[1:-1],
            repr(form)[1:-1],
            quote(form, safe=""),
        }
    return {f for f in forms if len(f) >= _MIN_SECRET_LENGTH}


class SecretMasker:
    """Replaces secrets with `MASK`: the values it was made with, in every form, and URL
    passwords and JWTs whatever it was made with. Immutable: what it hides is fixed when it
    is made (at the edge, from the settings: `Settings.secret_values()`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known: set[str] = set()
        for secret in secrets:
            if secret:
                known |= _forms(secret)
        # Longest first: a secret that contains another is replaced whole.
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def mask_text(self, text: str) -> str:
        """Masks known secrets, URL passwords and JWTs inside free text."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
        return _JWT.sub(MASK, text)

    def mask_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `fields` (a log event) with every value masked, recursively; the value of
        a secret-looking key is replaced whole."""
        return {key: self.mask_value(value, key) for key, value in fields.items()}

    def mask_value(self, value: Any, key: object = None) -> Any:
        """`value` masked: text, mappings, sequences and exceptions (as `Type: message`);
        under a secret-looking `key`, any value that is set."""
        if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, "", False):
            return MASK
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, Mapping):
            return {k: self.mask_value(v, k) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.mask_value(v) for v in value]
        if isinstance(value, BaseException):
            return self.mask_text(f"{type(value).__name__}: {value}")
        return value
