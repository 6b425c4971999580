"""Configures structlog for crm-sync: one call, JSON or console lines, secrets masked.

Every event passes the `SecretMasker` the edge made from the settings (`MaskSecrets`), which
hides values of secret-looking keys, known secret values wherever they appear, and the
passwords of URLs, so a careless log call cannot leak.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from sync_worker.display import printable
from sync_worker.masking import SecretMasker


class MaskSecrets:
    """Processor that passes every event through a `SecretMasker`, recursively."""

    def __init__(self, masker: SecretMasker) -> None:
        self.masker = masker

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        return self.masker.mask_fields(event_dict)


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
    masker: SecretMasker | None = None,
    stream: TextIO | None = None,
) -> None:
    """Sets up structlog for the whole process; call once at the edge.

    Args:
        log_format: `json`, `console`, or `auto` (json unless the stream is a terminal).
        level: minimum level name.
        masker: what every event passes (made at the edge from the settings); by default
            one that knows no secret values (URL passwords and JWTs are still masked).
        stream: where lines go (stderr by default; stdout is for command output).
    """
    out = stream or cast(TextIO, _LiveStderr())
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
        MaskSecrets(masker or SecretMasker()),
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
