"""Configures structlog for crm-sync: one call, JSON or console lines, secrets masked.

Every event passes `mask_secrets`, which hides values of secret-looking keys, known secret
values wherever they appear, and the passwords of URLs, so a careless log call cannot leak.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO, cast
from urllib.parse import quote

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from sync_worker.display import printable
from sync_worker.masking import MASK

_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|api_?key|authorization|credential|private_?key|cookie",
    re.IGNORECASE,
)
# scheme://user:password@host -> keep the user, hide the password.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)
_MIN_SECRET_LENGTH = 4
# A bare JWT anywhere in a string (three base64url segments, the first a JSON header).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")


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


class MaskSecrets:
    """Processor that replaces secrets in an event with a fixed mask, recursively."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Registers more secret values (e.g. once settings are loaded), in every form."""
        known = set(self._secrets)
        for secret in secrets:
            if secret:
                known |= _forms(secret)
        self._secrets = sorted(known, key=len, reverse=True)

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        return {key: self._clean(key, value) for key, value in event_dict.items()}

    def mask_text(self, text: str) -> str:
        """Masks known secrets, URL passwords and JWTs inside free text."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
        return _JWT.sub(MASK, text)

    def _clean(self, key: object, value: Any) -> Any:
        if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, "", False):
            return MASK
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, Mapping):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(None, v) for v in value]
        if isinstance(value, BaseException):
            return self.mask_text(f"{type(value).__name__}: {value}")
        return value


mask_secrets = MaskSecrets()


class ForwardToStructlog(logging.Handler):
    """Sends the records of other libraries' stdlib loggers (APScheduler reports a crashed job
    with its traceback) through structlog, so they are masked and carry the run id too."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = structlog.get_logger(record.name)
        logger.log(record.levelno, record.getMessage(), exc_info=record.exc_info or None)


class _LiveStderr:
    """Writes to whatever `sys.stderr` is at the time of writing (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def add_exception_text(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Renders `exc_info` to text before masking, so tracebacks get masked too."""
    if event_dict.get("exc_info"):
        event_dict = structlog.processors.format_exc_info(_logger, _method, event_dict)
    return event_dict


def escape_control_characters(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Escapes control characters in the text values of a console line (a traceback keeps its
    line breaks); JSON lines escape them by themselves."""
    return {
        key: printable(value, keep="\n" if key == "exception" else "")
        if isinstance(value, str)
        else value
        for key, value in event_dict.items()
    }


def configure_logging(
    log_format: str = "auto",
    level: str = "INFO",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Sets up structlog for the whole process; call once at the edge.

    Args:
        log_format: `json`, `console`, or `auto` (json unless the stream is a terminal).
        level: minimum level name.
        secrets: values to mask wherever they appear.
        stream: where lines go (stderr by default; stdout is for command output).
    """
    out = stream or cast(TextIO, _LiveStderr())
    mask_secrets.add(secrets)
    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_exception_text,
        mask_secrets,
    ]
    if not use_json:
        processors.append(escape_control_characters)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Nothing reaches stderr around the masker: other libraries' warnings and errors too.
    logging.basicConfig(handlers=[ForwardToStructlog()], level=logging.WARNING, force=True)
