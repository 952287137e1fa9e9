"""The secret masker: every form ODBC allows for a password, proven over random passwords."""

from __future__ import annotations

import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.logs import redact, secrets_of_dsn
from engine.masking import MASK, dsn_secrets, mask, mask_dsn
from engine.settings import StoreSettings, redact_dsn

HEAD = "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;"
TAIL = ";Uid=postgres;Database=test;"
KEY = "sk-proj-SECRETKEY0123456789abcdefXYZ"

# Passwords built from the characters ODBC reserves, and from anything else.
_specials = st.text(st.sampled_from(list(";{}= =;}}{{ab9Z\"'\\\t")), min_size=1, max_size=24)
_any = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24)
passwords = st.one_of(_specials, _any, st.builds(lambda a, b: a + b, _specials, _any))
keys = st.sampled_from(["Pwd", "PWD", "pwd", "pWd", "Password", "PASSWORD", "password", "PassWord"])
spaces = st.sampled_from(["", " ", "  ", "\t"])


def quote(value: str) -> str:
    """Quote a value the ODBC way: braces when it holds reserved characters, `}` doubled."""
    if any(ch in value for ch in ";{}= \t\r\n") or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


def build(password: str, key: str, before: str, after: str) -> tuple[str, str]:
    """A DSN holding the password, and the DSN that mask_dsn must return for it."""
    dsn = f"{HEAD}{key}{before}={after}{quote(password)}{TAIL}"
    return dsn, f"{HEAD}{key}{before}={MASK}{TAIL}"


@settings(max_examples=400, deadline=None)
@given(passwords, keys, spaces, spaces)
def test_mask_dsn_replaces_the_whole_password_and_nothing_else(
    password: str, key: str, before: str, after: str
) -> None:
    dsn, expected = build(password, key, before, after)
    assert mask_dsn(dsn) == expected
    assert redact_dsn(dsn) == expected
    assert dsn_secrets(dsn) == [password]  # as the driver receives it, braces taken off
    assert repr(StoreSettings(dsn=dsn)).count(MASK) == 1


@settings(max_examples=400, deadline=None)
@given(passwords, keys, spaces, spaces)
def test_password_text_never_survives_in_logged_or_printed_text(
    password: str, key: str, before: str, after: str
) -> None:
    assume("\n" not in password and "\r" not in password)
    dsn, _expected = build(password, key, before, after)
    assume(len(password) >= 4 and password not in f"{HEAD}{key}{TAIL}")
    line = f"database: {dsn} failed: connection refused"
    # Found by its shape alone (a DSN the masker was never told about) ...
    shaped = mask(line)
    assert password not in shaped
    assert "failed: connection refused" in shaped
    # ... and as a literal, raw or brace-escaped, inside JSON and reprs as well.
    known = dsn_secrets(dsn)
    for text in (line, json.dumps({"error": line}), repr(line), f"pw is {password}!"):
        assert password not in mask(text, known), text
    assert password not in json.loads(json.dumps(mask(json.dumps({"e": line}), known)))


def test_brace_quoted_passwords_from_the_issue() -> None:
    for dsn, secret in (
        ("Driver={X};Uid=u;Pwd={Hb;Secret pw9};Database=d", "Secret pw9"),
        ("Driver={X};Pwd={a;b}}c};Uid=u", "b}c"),
        ("Driver={X};Pwd={a;b}}c};Uid=u", "b}}c"),
        ("Driver={X}; PASSWORD = {x;y z};Uid=u", "y z"),
        ("Driver={X};password=plain-secret;Uid=u", "plain-secret"),
    ):
        for out in (mask_dsn(dsn), mask(dsn), redact(f"at -vv: {dsn!r}")):
            assert secret not in out, out
            assert "Uid=u" in out
    assert dsn_secrets("Driver={X};Pwd={a;b}}c};Uid=u") == ["a;b}c"]
    assert secrets_of_dsn("Driver={X};Pwd={Hb;Secret pw9}") == ["Hb;Secret pw9"]


def test_api_key_and_ordinary_words_in_text() -> None:
    assert KEY not in mask(f"calling with {KEY} and {json.dumps(KEY)}", [KEY])
    assert "sk-proj-SECRETKEY" not in mask(f"key {KEY}")  # key-shaped, even when not given
    assert mask("api_key = abcdefgh12345678") == "api_key = ***"
    # Words that merely end like a secret key are left alone.
    assert mask("claim_token=abc token_limit_exceeded") == "claim_token=abc token_limit_exceeded"
    assert mask("tokens in=5 out=7") == "tokens in=5 out=7"
