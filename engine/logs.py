"""Logging set-up for the command line: human or JSON lines, levels, and secret redaction.

The library never configures logging; only the CLI calls ``setup_logging``. Every handler it
installs carries a ``RedactingFilter`` that masks the API key, DSN passwords (given ones and
any ``Pwd=`` / ``Password=`` attribute), URL passwords and key-shaped strings anywhere in a
record: its message, its arguments and its formatted traceback.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

__all__ = ["JsonFormatter", "RedactingFilter", "redact", "secrets_of_dsn", "setup_logging"]

MASK = "***"
_DSN_SECRET = re.compile(
    r"(?i)\b(pwd|password|pass|secret|token)(\s*=\s*)(\{[^}]*\}|[^;\s\"']*)"
)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]+:)([^@/\s]+)(@)")
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9]{0,4})[A-Za-z0-9_\-]{8,}")
_NOISY = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiohttp.access")
# The shortest literal secret worth masking: masking "a" would destroy every message.
_MIN_SECRET = 4


def secrets_of_dsn(dsn: str | None) -> list[str]:
    """Return the password-like attribute values of an ODBC connection string."""
    if not dsn:
        return []
    found = []
    for match in _DSN_SECRET.finditer(dsn):
        value = match.group(3).strip()
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1]
        if value:
            found.append(value)
    return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask the given secrets and anything secret-shaped in ``text``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET and secret in text:
            text = text.replace(secret, MASK)
    text = _DSN_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    return _KEY_LIKE.sub(rf"\1{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrite each record so that no secret reaches a handler's output."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= _MIN_SECRET]

    def add_secret(self, secret: str | None) -> None:
        """Mask one more literal value from now on."""
        if secret and len(secret) >= _MIN_SECRET and secret not in self._secrets:
            self._secrets.append(secret)

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
