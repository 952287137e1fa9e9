"""One way to hide secrets in anything the engine prints or logs.

ODBC lets a value be brace-quoted so that it may hold ``;`` (``Pwd={a;b}``), escapes a ``}``
inside braces by doubling it (``Pwd={a}}b}``), and takes keys in any case with spaces around
``=``. ``mask_dsn`` parses a connection string by those rules and masks every password-like
attribute whole; ``mask`` does the same for attributes found anywhere in free text, and also
hides given literal secrets (the API key, passwords from the DSNs in use) in the forms they take
when quoted, escaped or JSON-encoded, URL passwords and key-shaped strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import orjson

__all__ = ["MASK", "dsn_secrets", "mask", "mask_dsn"]

MASK = "***"
# Attribute names whose value is a secret (compared lower-case, spaces stripped).
SECRET_KEYS = frozenset({"pwd", "password", "passwd", "pass", "secret", "token", "apikey",
                         "api_key", "api-key"})
# A secret key where an attribute may start in free text; "claim_token=" is not one.
_KEY_AT = re.compile(
    r"(?i)(?<![\w.\-])(pwd|password|passwd|pass|secret|token|api[_\-]?key)[ \t]*=[ \t]*"
)
# An unquoted value in free text ends where an attribute or a line does: quotes and
# backslashes may be part of it (text is masked before it is JSON-encoded, never after).
_UNQUOTED_END = re.compile(r"[;\r\n]")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]+:)([^@/\s]+)(@)")
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9]{0,4})[A-Za-z0-9_\-]{8,}")
# The shortest literal secret worth masking: masking "a" would destroy every message.
MIN_SECRET = 4


def _brace_end(text: str, start: int) -> int:
    """Index just past the ``}`` closing the brace at ``start`` (``}}`` is an escaped ``}``).

    An unclosed brace runs to the end of the text.
    """
    at = start + 1
    while True:
        close = text.find("}", at)
        if close < 0:
            return len(text)
        if text.startswith("}}", close):
            at = close + 2
            continue
        return close + 1


def _attributes(dsn: str) -> Iterator[tuple[str, int, int]]:
    """Yield (key, value start, value end) of each ``key=value`` of a connection string."""
    at, size = 0, len(dsn)
    while at < size:
        equals = dsn.find("=", at)
        semicolon = dsn.find(";", at)
        if equals < 0:
            return
        if 0 <= semicolon < equals:  # a part without "=": not an attribute
            at = semicolon + 1
            continue
        key = dsn[at:equals]
        start = equals + 1
        first = start
        while first < size and dsn[first] in " \t":
            first += 1
        end = _brace_end(dsn, first) if first < size and dsn[first] == "{" else first
        stop = dsn.find(";", end)
        end = size if stop < 0 else stop
        yield key, start, end
        at = end + 1


def _is_secret_key(key: str) -> bool:
    """Whether an attribute name holds a secret."""
    return key.strip().lower() in SECRET_KEYS


def _unquote(value: str) -> str:
    """Return the value an ODBC driver sees: braces removed, ``}}`` back to ``}``."""
    value = value.strip()
    if len(value) >= 2 and value[0] == "{" and value[-1] == "}":
        return value[1:-1].replace("}}", "}")
    return value


def mask_dsn(dsn: str) -> str:
    """Return the connection string with each password-like value replaced whole by ***."""
    parts: list[str] = []
    at = 0
    for key, start, end in _attributes(dsn):
        if _is_secret_key(key):
            parts.append(dsn[at:start])
            parts.append(MASK)
            at = end
    parts.append(dsn[at:])
    return "".join(parts)


def dsn_secrets(dsn: str | None) -> list[str]:
    """Return the password-like values of a connection string, as the driver receives them."""
    if not dsn:
        return []
    found: list[str] = []
    for key, start, end in _attributes(dsn):
        value = _unquote(dsn[start:end])
        if _is_secret_key(key) and value and value not in found:
            found.append(value)
    return found


def _forms(secret: str) -> set[str]:
    """Return a secret as it may appear in text: raw, brace-escaped, JSON-encoded, repr()."""
    return {
        secret,
        secret.replace("}", "}}"),
        orjson.dumps(secret).decode()[1:-1],
        repr(secret)[1:-1],
    }


def _mask_attributes(text: str) -> str:
    """Mask the value of every password-like ``key=value`` found anywhere in ``text``."""
    parts: list[str] = []
    at = pos = 0
    while True:
        match = _KEY_AT.search(text, pos)
        if match is None:
            break
        start = match.end()
        if text.startswith(MASK, start):  # masked already (and maybe followed by prose)
            pos = start + len(MASK)
            continue
        if text.startswith("{", start):
            end = _brace_end(text, start)
        else:
            stop = _UNQUOTED_END.search(text, start)
            end = len(text) if stop is None else stop.start()
        parts.append(text[at:start])
        parts.append(MASK)
        at = pos = end
    parts.append(text[at:])
    return "".join(parts)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide the given secrets and anything secret-shaped in ``text``; the one masker."""
    literal = {form for s in secrets if s and len(s) >= MIN_SECRET for form in _forms(s)}
    for secret in sorted(literal, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    text = _mask_attributes(text)
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    return _KEY_LIKE.sub(rf"\1{MASK}", text)
