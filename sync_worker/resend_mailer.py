"""Delivers a `WelcomeEmail` through the Resend HTTP API (`mailer.Mailer`).

Every request carries the email's idempotency key, so a retry never sends twice. Errors become
`MailError` / `MailUnavailable` here, at the edge, by status and error name; the retriable ones
are retried under one `RetryPolicy`. requests is imported only when this mailer is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from pydantic import SecretStr

from sync_worker import __version__
from sync_worker.errors import MailError, MailUnavailable
from sync_worker.mailer import scrubbed
from sync_worker.masking import MASK
from sync_worker.retrying import RetryPolicy, retry_after_seconds
from sync_worker.welcome_email import WelcomeEmail, render_bodies, render_subject

if TYPE_CHECKING:
    import requests

__all__ = ["ResendMailer"]

log = structlog.get_logger("crm_sync.mail")


class ResendMailer:
    """The Resend HTTP API (`POST /emails`) through one `requests.Session`.

    Each request carries the email's `Idempotency-Key`, so retrying a request whose answer
    was lost never sends twice (Resend remembers a key for 24 hours). Error names and
    statuses follow https://resend.com/docs/api-reference/errors.
    """

    ENDPOINT: ClassVar[str] = "https://api.resend.com/emails"
    # The one place this adapter's retries are configured.
    DEFAULT_RETRY: ClassVar[RetryPolicy] = RetryPolicy(
        attempts=4, initial_wait=0.5, max_wait=8.0, deadline=60.0, max_retry_after=30.0
    )
    DEFAULT_TIMEOUT: ClassVar[tuple[float, float]] = (5.0, 30.0)

    def __init__(
        self,
        api_key: SecretStr | str,
        sender: str,
        *,
        endpoint: str = ENDPOINT,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Prepares the mailer.

        Args:
            api_key: the Resend API key (`RESEND_API_KEY`).
            sender: the `from` of every email.
            endpoint: the send endpoint (tests may point elsewhere).
            timeout: (connect, read) seconds.
            retry: overrides `DEFAULT_RETRY`.
            session: a session to use instead of a new one (it is closed by `close`).
        """
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._sender = sender
        self._endpoint = endpoint
        self._timeout = timeout
        self._retry = retry or self.DEFAULT_RETRY
        # Imported here: only this backend needs requests, and an SMTP run starts without it.
        import requests  # noqa: PLC0415

        self._session = session or requests.Session()
        self._user_agent = f"crm-sync/{__version__} python-requests/{requests.__version__}"

    def __repr__(self) -> str:
        return f"ResendMailer(endpoint={self._endpoint!r}, api_key={MASK!r})"

    def send(self, message: WelcomeEmail) -> None:
        """Sends `message` and returns once Resend accepted it (see `Mailer.send`)."""
        text, html = render_bodies(message)
        payload = {
            "from": self._sender,
            "to": [message.to],
            "subject": render_subject(message),
            "html": html,
            "text": text,
        }
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Idempotency-Key": message.idempotency_key,
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }
        secrets = (message.temporary_password, message.setup_link)
        email_id = self._retry.call("resend_send", self._post, payload, headers, secrets)
        log.info(
            "email_sent", to=message.to, kind=message.kind, backend="resend", resend_id=email_id
        )

    def close(self) -> None:
        """Closes the HTTP session's connections."""
        self._session.close()

    def _post(
        self, payload: dict[str, Any], headers: dict[str, str], secrets: Iterable[str | None]
    ) -> str | None:
        import requests  # noqa: PLC0415 (loaded by __init__)

        hide = [*secrets, self._api_key.get_secret_value()]
        try:
            response = self._session.post(
                self._endpoint, json=payload, headers=headers, timeout=self._timeout
            )
        except requests.ConnectionError as exc:  # includes ConnectTimeout
            raise MailUnavailable(
                f"cannot reach the Resend API: {scrubbed(f'{type(exc).__name__}: {exc}', hide)}",
                retriable=True,
            ) from exc
        except requests.Timeout as exc:
            # The request may have arrived: the idempotency key makes the retry safe.
            raise MailError("the Resend API did not answer in time", retriable=True) from exc
        except requests.RequestException as exc:
            raise MailError(
                f"the Resend API request failed: {scrubbed(f'{type(exc).__name__}: {exc}', hide)}",
                retriable=True,
            ) from exc
        if response.ok:
            return _json_field(response, "id")
        if response.status_code == 409 and _json_field(response, "name") == _KEY_REUSED:
            # An email under this key was accepted within the last 24 hours (sent, but its
            # record was lost); the key covers recipient, kind and credential, so it carried
            # the same login details. Sending it again is what the key exists to prevent.
            log.warning("email_already_sent_under_key", key=headers["Idempotency-Key"])
            return None
        raise _translate_resend(response, hide)


_QUOTA_EXCEEDED = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
_KEY_REUSED = "invalid_idempotent_request"
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def _translate_resend(response: requests.Response, hide: Iterable[str | None]) -> MailError:
    """Maps a Resend error response (`{"statusCode", "name", "message"}`) to the error tree."""
    status = response.status_code
    name = _json_field(response, "name") or ""
    detail = _json_field(response, "message") or response.reason or ""
    message = scrubbed(f"Resend answered {status} {name}: {detail}".replace(" :", ":"), hide)
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    kind: type[MailError] = MailError
    if status == 429:
        retriable = True
        if name in _QUOTA_EXCEEDED:
            # Hours away: retrying this cycle only burns attempts, and so would every
            # other email.
            kind, retriable = MailUnavailable, False
    elif status == 409:
        # Same key still in flight: retry. (Same key, other payload: handled as sent.)
        retriable = name == "concurrent_idempotent_requests"
    elif status in (401, 403) or name == "invalid_from_address":
        # A bad or restricted key, an unverified sender domain or a malformed EMAIL_FROM:
        # every send would fail alike, and no customer is to blame.
        kind, retriable = MailUnavailable, False
    elif status in _GATEWAY_STATUSES:
        kind, retriable = MailUnavailable, True
    else:
        retriable = status >= 500
    # validation_error (400/422): this message is refused as it stands, on every attempt.
    permanent = kind is MailError and status in (400, 422)
    return kind(message, retriable=retriable, retry_after=retry_after, permanent=permanent)


def _json_field(response: requests.Response, key: str) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get(key) if isinstance(body, dict) else None
    return str(value) if value is not None else None
