"""The Supabase Auth configuration the sandbox runs with, and the redirect rules that follow
from it (which `redirect_to` an emailed link may land on)."""

# Defaults are Supabase Auth's (internal/conf/configuration.go) unless noted; the redirect rules
# follow internal/utilities/url_validator.go IsRedirectURLValid and request.go GetReferrer.

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import urlencode, urlsplit

from supabase_sandbox.wire import ApiRequest

_LOCALHOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})  # noqa: S104
_DECIMAL_IP = re.compile(r"^[0-9]+$")
_REGULAR_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The Supabase Auth configuration the sandbox runs with.

    Args:
        external_url: the public base of the Auth API, e.g. `http://127.0.0.1:5400/auth/v1`.
        site_url: GOTRUE_SITE_URL, the default redirect of emailed links.
        redirect_allow_list: GOTRUE_URI_ALLOW_LIST globs for `redirect_to` (matched with
            fnmatch here, where `*` also crosses `/` and `.`).
        bcrypt_cost: 10 as Supabase Auth; tests may lower it for speed.
        refresh_token_reuse_interval_s: GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL, 10 s on
            a hosted project (and in the Supabase CLI's config).
        otp_expiry_s: GOTRUE_MAILER_OTP_EXP, how long an emailed link or code stays valid.
        email_max_frequency_s: GOTRUE_SMTP_MAX_FREQUENCY, the minimum time between two
            emails of one kind to one user.
        flow_state_expiry_s: how long a PKCE auth code can be exchanged.
    """

    external_url: str
    site_url: str = "http://localhost:3000"
    redirect_allow_list: tuple[str, ...] = ()
    jwt_expiry_s: int = 3600
    bcrypt_cost: int = 10
    password_min_length: int = 6
    admin_roles: tuple[str, ...] = ("service_role", "supabase_admin")
    audience: str = "authenticated"
    otp_length: int = 6
    refresh_token_reuse_interval_s: int = 10
    otp_expiry_s: int = 86400
    email_max_frequency_s: int = 60
    flow_state_expiry_s: int = 300

    def redirect_allowed(self, url: str) -> bool:
        """IsRedirectURLValid: back to the site (scheme, host and port; any port on localhost),
        a loopback address, or a match of the allow list (the fragment left out)."""
        try:
            site, target = urlsplit(self.site_url), urlsplit(url)
            same_port = site.port == target.port
        except ValueError:
            return False
        host = target.hostname or ""
        if not url:
            return False
        if (
            host == (site.hostname or "")
            and target.scheme == site.scheme
            and (same_port or host in _LOCALHOSTS)
        ):
            return True
        loopback = _ip_literal(host)
        if loopback is not None:
            return loopback
        if target.scheme.lower() in ("http", "https") and not _REGULAR_HOSTNAME.match(host):
            return False
        without_fragment = url.split("#", 1)[0]
        return any(fnmatch(without_fragment, pattern) for pattern in self.redirect_allow_list)

    def referrer(self, redirect_to: str | None, request: ApiRequest | None = None) -> str:
        """utilities.GetReferrer: `redirect_to` when allowed, else the Referer header when
        allowed, else the site URL."""
        if redirect_to and self.redirect_allowed(redirect_to):
            return redirect_to
        referer = request.header("referer") if request is not None else None
        if referer and self.redirect_allowed(referer):
            return referer
        return self.site_url

    def request_referrer(self, request: ApiRequest) -> str:
        """GetReferrer for a request: `redirect_to` from its header or its query string."""
        redirect_to = request.header("redirect_to") or request.query_value("redirect_to")
        return self.referrer(redirect_to, request)

    def action_link(self, token_hash: str, link_type: str, redirect_to: str) -> str:
        """templatemailer.go GetEmailActionLink: `<external>/verify?token&type&redirect_to`."""
        query = urlencode({"token": token_hash, "type": link_type, "redirect_to": redirect_to})
        return f"{self.external_url}/verify?{query}"


def _ip_literal(host: str) -> bool | None:
    """For a host that is an IP address: whether it may be redirected to (loopback only, and
    never the decimal form); None for a host name."""
    if _DECIMAL_IP.match(host):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
