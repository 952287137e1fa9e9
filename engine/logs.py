"""Logging set-up for the command line: human or JSON lines, levels, and secret redaction.

The library never configures logging; only the CLI calls ``setup_logging``. Every handler it
installs carries a ``RedactingFilter`` that masks the API key, DSN passwords (given ones and
any password-like attribute in every form ODBC allows), URL passwords and key-shaped strings
anywhere in a record: its message, its arguments and its formatted traceback. The masking
itself is engine.masking.mask, the one function every printed or logged text goes through.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from engine.masking import MASK, MIN_SECRET, dsn_secrets, mask

__all__ = [
    "MASK", "JsonFormatter", "RedactingFilter", "redact", "secrets_of_dsn", "setup_logging",
]

_NOISY = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiohttp.access")


def secrets_of_dsn(dsn: str | None) -> list[str]:
    """Return the password-like attribute values of an ODBC connection string."""
    return dsn_secrets(dsn)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask the given secrets and anything secret-shaped in ``text`` (engine.masking.mask)."""
    return mask(text, secrets)


class RedactingFilter(logging.Filter):
    """Rewrite each record so that no secret reaches a handler's output."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= MIN_SECRET]

    def add_secret(self, secret: str | None) -> None:
        """Mask one more literal value from now on."""
        if secret and len(secret) >= MIN_SECRET and secret not in self._secrets:
            self._secrets.append(secret)

    def mask(self, text: str) -> str:
        """Mask ``text`` with every secret this filter knows (for text printed, not logged)."""
        return mask(text, self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message (arguments merged in), extras and traceback; keep the record."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call must still be logged, masked
            message = f"{record.msg} {record.args}"
        record.msg = redact(message, self._secrets)
        record.args = None
        for key in ("batch_id", "remote_batch_id"):
            value = getattr(record, key, None)
            if isinstance(value, str):
                setattr(record, key, redact(value, self._secrets))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self._secrets)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the batch ids when a record carries them."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """Render the record's time as ISO 8601 UTC (whatever the process's zone) with a Z."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        data: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("batch_id", "remote_batch_id"):
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        return orjson.dumps(data).decode()


def level_for(verbose: int, quiet: int) -> int:
    """INFO by default, each -v one level down, each -q one up, within DEBUG..CRITICAL."""
    level = logging.INFO + 10 * (quiet - verbose)
    return max(logging.DEBUG, min(logging.CRITICAL, level))


def setup_logging(
    *,
    verbose: int = 0,
    quiet: int = 0,
    log_format: str = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    handler: logging.Handler | None = None,
) -> RedactingFilter:
    """Install one redacting handler on the root logger and return its filter."""
    level = level_for(verbose, quiet)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif not _is_rich(handler):
        text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%SZ")
        text.converter = time.gmtime  # UTC, marked Z: lines from any zone compare as they are
        handler.setFormatter(text)
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The HTTP stack logs every request at INFO; keep ours readable.
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return redactor


def replace_handler(handler: logging.Handler) -> list[logging.Handler]:
    """Swap the root's handlers for ``handler`` (keeping the first one's filters and format).

    Return the handlers replaced, for ``restore_handlers``.
    """
    root = logging.getLogger()
    old = root.handlers[:]
    if old:
        for existing in old[0].filters:
            handler.addFilter(existing)
        if not _is_rich(handler) or isinstance(old[0].formatter, JsonFormatter):
            handler.setFormatter(old[0].formatter or logging.Formatter())
    root.handlers[:] = [handler]
    return old


def restore_handlers(old: list[logging.Handler]) -> None:
    """Put back the handlers ``replace_handler`` returned."""
    logging.getLogger().handlers[:] = old


def _is_rich(handler: logging.Handler) -> bool:
    """Whether the handler formats its own lines (rich's handler adds time and level)."""
    return type(handler).__name__ == "RichHandler"
