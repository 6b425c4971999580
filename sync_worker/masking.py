"""Hides secrets wherever crm-sync shows text: `MASK`, and the passwords of connection URLs.

`mask_url` and `url_passwords` read the passwords of a connection URL as libpq does. No I/O,
and no configuration: the configuration, the logs, the welcome email and the local stack
import it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "********"

# As libpq reads a URL: the userinfo ends at the first "@" or "/" (a "?", "#" or ":" before it
# belongs to the password), and the user name at its first ":".
_USERINFO_PASSWORD = re.compile(r"(?P<head>://[^:@/]*:)(?P<pw>[^@/]*)(?=@)")
# libpq's parameters that hold a secret: `password` and `sslpassword` (the client key's).
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<pw>[^&#]*)", re.IGNORECASE)


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
