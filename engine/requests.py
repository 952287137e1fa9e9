"""Request lines for the Batch API: one JSONL line per claimed row, per endpoint.

custom_id
    ``f"{job}|{attempt}|{key}"`` when that fits in 64 characters (the limit the Batch API
    and its compatible providers enforce) and the key does not start with ``#``; otherwise
    ``f"{job}|{attempt}|#{hex}"``, where ``hex`` is the start of the SHA-256 of the key (as
    many hex digits as fit, 16 to 32). The mapping back never parses the key out of the
    custom_id: each item's custom_id is stored in the items table when it is bound to a batch,
    and the writer looks every answer up there (``Store.batch_items``), so any key, however
    long or whatever it holds, comes back exactly. Two keys whose hashes collide in one batch
    are refused when the batch is bound (``Store.create_draft``), never mixed up. It is
    deterministic, so a resubmitted draft carries the same ids.

Prompt
    The user prompt is the job's ``user_template`` with ``{column}`` placeholders filled from
    the row (None becomes ""). The template is split once into literal text and field names;
    rendering concatenates, so a value holding braces, quotes or "ignore previous
    instructions" is only ever data: it cannot add a placeholder or break the JSON (orjson
    encodes the line). With no template the text columns are joined by blank lines. Lone
    surrogates and C0 control characters (other than tab, newline and carriage return) and
    DEL are replaced by U+FFFD: orjson refuses surrogates, and NUL cannot be stored in
    PostgreSQL text.

Rows that can never succeed raise ``InputRejected``: every text column NULL, empty or
whitespace-only, or a user prompt longer than ``job.max_input_chars`` characters.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from typing import Any

import orjson

from engine.errors import ConfigError, ResultError
from engine.job import JobSpec
from engine.store.models import ClaimedItem
from engine.tokens import estimate_tokens

__all__ = [
    "MAX_CUSTOM_ID_CHARS",
    "CustomIdError",
    "InputRejected",
    "RenderedRequest",
    "RequestRenderer",
    "clean_text",
    "make_custom_id",
    "parse_custom_id",
]

MAX_CUSTOM_ID_CHARS = 64
_HASHED = "#"  # marks a custom_id that carries a hash of the key, not the key
_MIN_HASH_HEX = 16
_MAX_HASH_HEX = 32
_SEP = "|"
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Per-message framing tokens (role, separators) and the reply primer, as OpenAI counts them.
_MESSAGE_OVERHEAD_TOKENS = 4
_REPLY_PRIMER_TOKENS = 3


class CustomIdError(ResultError):
    """A custom_id that is not one of ours, or a key/attempt that cannot make one."""


class InputRejected(ResultError):  # noqa: N818 - the name says what happened to the row
    """A row that can never succeed (empty or oversized input); dead-letter it with reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clean_text(text: str) -> str:
    """Replace lone surrogates and control characters (not tab/newline/CR) by U+FFFD."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub("\ufffd", text)


def make_custom_id(job: str, key: str, attempt: int) -> str:
    """Return ``job|attempt|key``, or ``job|attempt|#hash`` when that would not fit 64 chars."""
    if not job or _SEP in job:
        raise ConfigError(f"job name {job!r}: must be non-empty and must not contain '|'")
    if attempt < 0:
        raise ConfigError(f"attempt: must be >= 0, got {attempt}")
    if _SURROGATE.search(key):
        # Cleaning the key would map the answer to another row; the row cannot be sent.
        raise InputRejected("key holds a lone surrogate and cannot be sent as custom_id")
    prefix = f"{job}{_SEP}{attempt}{_SEP}"
    custom_id = prefix + key
    if len(custom_id) <= MAX_CUSTOM_ID_CHARS and not key.startswith(_HASHED):
        return custom_id
    room = MAX_CUSTOM_ID_CHARS - len(prefix) - len(_HASHED)
    if room < _MIN_HASH_HEX:
        raise ConfigError(
            f"job name {job!r}: too long to leave room for a key in a {MAX_CUSTOM_ID_CHARS}-"
            f"character custom_id (at most {MAX_CUSTOM_ID_CHARS - _MIN_HASH_HEX - 8} characters)"
        )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[: min(room, _MAX_HASH_HEX)]
    return f"{prefix}{_HASHED}{digest}"


def parse_custom_id(custom_id: str) -> tuple[str, str, int]:
    """Return (job, key, attempt) from a custom_id made by make_custom_id.

    For a hashed custom_id the "key" is ``#hash``: the row is found through the items table.
    """
    parts = custom_id.split(_SEP, 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[1].isascii():
        raise CustomIdError(f"custom_id {custom_id[:80]!r} is not job|attempt|key")
    return parts[0], parts[2], int(parts[1])


@dataclass(frozen=True, slots=True)
class RenderedRequest:
    """One request line, ready for the spool file."""

    custom_id: str
    line: bytes  # one JSONL line ending in b"\n"
    estimated_tokens: int  # input tokens, conservative (engine.tokens)


def _as_text(value: Any) -> str:
    """Turn a column value into prompt text (None is empty)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _split_template(template: str, columns: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Split a template into (literal, field or None) parts, checking every placeholder."""
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"user_template: {exc}") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None))
            continue
        if not field or spec or conversion or not field.isidentifier():
            raise ConfigError(
                f"user_template: placeholder {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} must be a plain column name like {{resume_text}}"
            )
        if field not in columns:
            raise ConfigError(
                f"user_template: placeholder {{{field}}} is not a source text column "
                f"(have: {', '.join(columns)})"
            )
        parts.append((literal, field))
    return parts


class RequestRenderer:
    """Renders claimed rows into request lines for one job; build once per job."""

    def __init__(self, job: JobSpec) -> None:
        self._job = job
        self._columns = job.source.text_columns
        self._endpoint = job.endpoint
        self._url = job.endpoint
        self._parts = (
            _split_template(clean_text(job.user_template), self._columns)
            if job.user_template
            else None
        )
        self._system = clean_text(job.system_prompt)
        self._fixed_tokens = _REPLY_PRIMER_TOKENS
        self._format: orjson.Fragment | None = None
        if job.endpoint != "/v1/embeddings":
            schema = job.output_schema or {}
            schema_json = orjson.dumps(schema)
            if job.endpoint == "/v1/chat/completions":
                fmt: dict[str, Any] = {
                    "type": "json_schema",
                    "json_schema": {"name": job.schema_name, "strict": True, "schema": schema},
                }
            else:
                fmt = {
                    "format": {
                        "type": "json_schema",
                        "name": job.schema_name,
                        "strict": True,
                        "schema": schema,
                    }
                }
            # Encoded once: the schema is the same on every line.
            self._format = orjson.Fragment(orjson.dumps(fmt))
            # The API feeds the schema to the model, so it counts as input.
            self._fixed_tokens += estimate_tokens(schema_json) + _MESSAGE_OVERHEAD_TOKENS
            if self._system:
                self._fixed_tokens += estimate_tokens(self._system) + _MESSAGE_OVERHEAD_TOKENS

    @property
    def job(self) -> JobSpec:
        """The job this renderer was built for."""
        return self._job

    def prompt(self, row: dict[str, Any]) -> str:
        """Return the user prompt (or embedding input) for a row; InputRejected if unusable."""
        values = {c: _as_text(row.get(c)) for c in self._columns}
        if all(not v.strip() for v in values.values()):
            raise InputRejected("empty input: every text column is NULL, empty or blank")
        if self._parts is None:
            text = "\n\n".join(v for v in values.values() if v.strip())
        else:
            text = "".join(
                literal + (values[field] if field is not None else "")
                for literal, field in self._parts
            )
        if len(text) > self._job.max_input_chars:
            raise InputRejected(
                f"input too long: {len(text)} chars > max_input_chars {self._job.max_input_chars}"
            )
        return clean_text(text)

    def _body(self, text: str) -> dict[str, Any]:
        """Build the request body for this job's endpoint."""
        job = self._job
        body: dict[str, Any] = {"model": job.model}
        if self._endpoint == "/v1/embeddings":
            body["input"] = text
            if job.embedding_dimensions is not None:
                body["dimensions"] = job.embedding_dimensions
            return body
        messages = []
        if self._system:
            messages.append({"role": "system", "content": self._system})
        messages.append({"role": "user", "content": text})
        if self._endpoint == "/v1/chat/completions":
            body["messages"] = messages
            body["response_format"] = self._format
            if job.max_output_tokens is not None:
                body["max_completion_tokens"] = job.max_output_tokens
        else:
            body["input"] = messages
            body["text"] = self._format
            if job.max_output_tokens is not None:
                body["max_output_tokens"] = job.max_output_tokens
        if job.temperature is not None:
            body["temperature"] = job.temperature
        return body

    def render(self, item: ClaimedItem, attempt: int) -> RenderedRequest:
        """Render one claimed row as a JSONL request line; InputRejected if it cannot be sent."""
        custom_id = make_custom_id(self._job.name, item.key, attempt)
        text = self.prompt(item.row)
        line = orjson.dumps(
            {"custom_id": custom_id, "method": "POST", "url": self._url, "body": self._body(text)},
            option=orjson.OPT_APPEND_NEWLINE,
        )
        if self._endpoint == "/v1/embeddings":
            tokens = estimate_tokens(text)
        else:
            tokens = self._fixed_tokens + estimate_tokens(text) + _MESSAGE_OVERHEAD_TOKENS
        return RenderedRequest(custom_id=custom_id, line=line, estimated_tokens=tokens)
