"""Output and error lines of a batch: parse, validate, map to columns, and decide.

Every line becomes a ``Success`` (values per output column, ready for the store) or a
``Failure`` with a short reason and a disposition:

==========================================================  ============  ==================
line                                                        disposition   why
==========================================================  ============  ==================
200, content parses, validates, converts                    (Success)
200 with finish_reason "length" / responses "incomplete"    retry         output was cut
200 with a refusal, content_filter, or no content           retry         may differ next time
200 with invalid JSON, a schema violation, or a value       retry         sampling varies;
that cannot be converted to its column's type                             max_attempts bounds it
HTTP 408, 409, 429, 5xx                                     retry         transient
error.code request_timeout / batch_expired / other          retry         the request was fine
error.code batch_cancelled                                  retry_free    operator action: no
                                                                          attempt is burned
any other HTTP 4xx                                          dead          the request itself
                                                                          is bad; resending
                                                                          cannot help
==========================================================  ============  ==================

Reasons are short and human-readable, include the status or code, and never the whole
body (quoted parts are cut at 200 characters).

Column mapping (from the job's ColumnMapping list): ``field`` is a dotted path into the
answer (a numeric segment indexes a list); a missing field or JSON null gives None. Kinds:
``text`` takes strings as they are and stores anything else as JSON text; ``int`` accepts
integers, integral floats and integer strings within the signed 64-bit range (booleans are
refused); ``float`` accepts finite numbers and numeric strings; ``bool`` accepts booleans,
"true"/"false" and 0/1; ``json`` stores any value as JSON text (orjson, keys unsorted).
A text value longer than ``max_length`` is cut to its first ``max_length`` characters
(Unicode code points: a character is never split); a json value over ``max_length`` is a
failure instead, since cut JSON is no longer JSON. Text values are cleaned like prompts
(lone surrogates and control characters become U+FFFD). Embeddings: the vector is stored as
JSON text in ``job.embedding_column``.

Lines that are not JSON objects, carry no custom_id, or whose custom_id is not this job's
raise ``MalformedLineError``; the writer logs and skips them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import fastjsonschema
import jsonschema
import orjson

from engine.errors import ConfigError, ResultError
from engine.job import ColumnMapping, JobSpec
from engine.requests import CustomIdError, clean_text, parse_custom_id

__all__ = [
    "Disposition",
    "Failure",
    "MalformedLineError",
    "Outcome",
    "ResultParser",
    "Success",
    "Usage",
]

Disposition = Literal["retry", "retry_free", "dead"]
_QUOTE_CHARS = 200
_INT64 = (-(2**63), 2**63 - 1)


class MalformedLineError(ResultError):
    """A line that is not ours or not a batch result at all; log it and skip it."""


class _ConversionError(ResultError):
    """One field could not be turned into its column's type."""


def _get(obj: Any, *names: str) -> Any:
    """Walk nested dicts by key, None as soon as a step is missing."""
    for name in names:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def _int(value: Any) -> int:
    """Read a token count, 0 when absent or not a number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one line or one batch; cached and reasoning are parts of input and output."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        """Sum two usages (a batch's total from its lines)."""
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @classmethod
    def from_body(cls, body: Any) -> Usage:
        """Read a response body's usage (chat, responses or embeddings naming)."""
        usage = _get(body, "usage")
        if not isinstance(usage, dict):
            return cls()
        if "prompt_tokens" in usage:  # chat completions and embeddings
            return cls(
                _int(usage.get("prompt_tokens")),
                _int(_get(usage, "prompt_tokens_details", "cached_tokens")),
                _int(usage.get("completion_tokens")),
                _int(_get(usage, "completion_tokens_details", "reasoning_tokens")),
            )
        return cls(
            _int(usage.get("input_tokens")),
            _int(_get(usage, "input_tokens_details", "cached_tokens")),
            _int(usage.get("output_tokens")),
            _int(_get(usage, "output_tokens_details", "reasoning_tokens")),
        )

    @classmethod
    def from_batch(cls, usage: Any) -> Usage:
        """Read a Batch object's ``usage`` (an SDK model, a dict, or None)."""
        if usage is None:
            return cls()
        if not isinstance(usage, dict):
            usage = usage.model_dump() if hasattr(usage, "model_dump") else {}
        return cls.from_body({"usage": usage})


@dataclass(frozen=True, slots=True)
class Success:
    """A usable answer: values by output column, already converted."""

    custom_id: str
    key: str
    attempt: int
    values: dict[str, Any]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class Failure:
    """An unusable line, why, and what to do with its row."""

    custom_id: str
    key: str
    attempt: int
    reason: str
    disposition: Disposition
    usage: Usage = field(default_factory=Usage)


Outcome = Success | Failure


def _quote(text: Any) -> str:
    """Cut a server or model text for a reason string."""
    cut = clean_text(str(text)).replace("\n", " ")
    return cut if len(cut) <= _QUOTE_CHARS else cut[:_QUOTE_CHARS] + "..."


def _loads(data: bytes | str) -> Any:
    """Parse JSON with orjson, falling back to the stdlib for lone surrogate escapes."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        # Raises json.JSONDecodeError (a ValueError) when it really is not JSON.
        try:
            return json.loads(text)
        except RecursionError:
            # orjson stops at depth 1024; the stdlib recurses until the interpreter's limit.
            raise ValueError("JSON nested too deep") from None


def _dumps(value: Any) -> str:
    """Encode a value as JSON text for a column."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # lone surrogates from the stdlib fallback
        return clean_text(json.dumps(value, ensure_ascii=False))


def _resolve(answer: Any, path: tuple[str, ...]) -> Any:
    """Follow a dotted path into the answer; None when any step is missing."""
    node = answer
    for step in path:
        if isinstance(node, dict):
            node = node.get(step)
        elif isinstance(node, list) and step.isdigit():
            index = int(step)
            node = node[index] if index < len(node) else None
        else:
            return None
        if node is None:
            return None
    return node


def _to_text(value: Any, mapping: ColumnMapping) -> str:
    """Convert to text, cut to max_length characters."""
    text = clean_text(value) if isinstance(value, str) else _dumps(value)
    if mapping.max_length is not None and len(text) > mapping.max_length:
        text = text[: mapping.max_length]
    return text


def _to_int(value: Any, mapping: ColumnMapping) -> int:
    """Convert to a signed 64-bit integer."""
    result: int
    if isinstance(value, bool):
        raise _ConversionError(f"column {mapping.column}: boolean where an integer was expected")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        result = int(value.strip())
    else:
        raise _ConversionError(f"column {mapping.column}: {_quote(value)!r} is not an integer")
    if not _INT64[0] <= result <= _INT64[1]:
        raise _ConversionError(f"column {mapping.column}: {result} is out of the 64-bit range")
    return result


def _to_float(value: Any, mapping: ColumnMapping) -> float:
    """Convert to a finite float."""
    if isinstance(value, bool):
        raise _ConversionError(f"column {mapping.column}: boolean where a number was expected")
    try:
        result = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        result = math.nan
    if not math.isfinite(result):
        raise _ConversionError(f"column {mapping.column}: {_quote(value)!r} is not a number")
    return result


def _to_bool(value: Any, mapping: ColumnMapping) -> bool:
    """Convert to a boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _ConversionError(f"column {mapping.column}: {_quote(value)!r} is not a boolean")


def _to_json(value: Any, mapping: ColumnMapping) -> str:
    """Convert to JSON text; over max_length is a failure (cut JSON is invalid)."""
    text = _dumps(value)
    if mapping.max_length is not None and len(text) > mapping.max_length:
        raise _ConversionError(
            f"column {mapping.column}: JSON is {len(text)} chars > max_length {mapping.max_length}"
        )
    return text


_CONVERTERS: dict[str, Callable[[Any, ColumnMapping], Any]] = {
    "text": _to_text,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "json": _to_json,
}


# Keywords whose meaning is the same in drafts 6, 7, 2019-09 and 2020-12 (jsonschema picks the
# draft from $schema, 2020-12 without one; fastjsonschema implements drafts 4 to 7). A schema
# made only of these gets the compiled fast path; anything else is validated by jsonschema alone.
_SAME_IN_EVERY_DRAFT = frozenset({
    "$schema", "$id", "$comment", "$ref", "$defs", "definitions", "title", "description",
    "default", "examples", "type", "enum", "const", "properties", "required",
    "additionalProperties", "patternProperties", "propertyNames", "minProperties",
    "maxProperties", "items", "minItems", "maxItems", "uniqueItems", "contains", "anyOf",
    "oneOf", "allOf", "not", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minLength", "maxLength", "pattern", "format",
})
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf")
_OLD_DRAFTS = ("draft-04", "draft-03")


def _same_in_every_draft(schema: Any) -> bool:
    """Whether a (sub)schema uses only keywords that mean the same in every draft we meet."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    if not set(schema) <= _SAME_IN_EVERY_DRAFT:
        return False
    if "$ref" in schema and len(set(schema) - {"$ref", "title", "description", "$comment"}):
        return False  # siblings of $ref are ignored before 2019-09, applied after
    if any(d in str(schema.get("$schema", "")) for d in _OLD_DRAFTS):
        return False
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(schema.get(key), bool):
            return False  # draft 4's boolean form
    subschemas: list[Any] = []
    for key in _SCHEMA_MAPS:
        value = schema.get(key, {})
        if not isinstance(value, dict):
            return False
        subschemas.extend(value.values())
    for key in _SCHEMA_LISTS:
        value = schema.get(key, [])
        if not isinstance(value, list):
            return False
        subschemas.extend(value)
    for key in ("additionalProperties", "propertyNames", "contains", "not", "items"):
        if key in schema:
            subschemas.append(schema[key])
    if isinstance(schema.get("items"), list):
        return False  # tuple form: prefixItems since 2020-12
    return all(_same_in_every_draft(sub) for sub in subschemas)


def _compile_fast(schema: dict[str, Any]) -> Callable[[Any], Any] | None:
    """Compile the schema to Python once (fastjsonschema), or None when it cannot be trusted.

    Defaults are never filled in (fastjsonschema would write them into the answer) and formats
    are not checked (jsonschema, the authority, does not check them either).
    """
    if not _same_in_every_draft(schema):
        return None
    try:
        compiled: Callable[[Any], Any] = fastjsonschema.compile(
            schema, use_default=False, use_formats=False
        )
    except (fastjsonschema.JsonSchemaDefinitionException, RecursionError, ValueError):
        return None
    return compiled


class ResultParser:
    """Parses a job's output and error lines; build once per job (the validator is compiled).

    Answers are checked by a compiled validator first (about twenty times faster); only an
    answer it refuses goes through jsonschema, which decides and words the reason, so the
    outcome and every message are jsonschema's.
    """

    def __init__(self, job: JobSpec) -> None:
        self._job = job
        self._validator: Any = None
        self._fast: Callable[[Any], Any] | None = None
        if job.endpoint != "/v1/embeddings":
            schema = job.output_schema or {}
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"output_schema: invalid JSON schema: {exc.message}") from None
            self._validator = cls(schema)
            self._fast = _compile_fast(schema)
            if not job.columns:
                raise ConfigError("columns: at least one mapping is needed for structured output")
        self._paths = [(m, tuple(m.field.split(".")), _CONVERTERS[m.kind]) for m in job.columns]

    def parse_output_line(self, line: bytes) -> Outcome:
        """Parse a line of the output file."""
        return self.parse_line(line)

    def parse_error_line(self, line: bytes) -> Outcome:
        """Parse a line of the error file."""
        return self.parse_line(line)

    def parse_line(self, line: bytes) -> Outcome:
        """Parse one output or error line; MalformedLineError when it is not ours."""
        try:
            obj = _loads(line)
        except ValueError:
            raise MalformedLineError(f"not JSON: {_quote(line[:80])!r}") from None
        custom_id = _get(obj, "custom_id")
        if not isinstance(custom_id, str):
            raise MalformedLineError("line has no custom_id")
        try:
            job, key, attempt = parse_custom_id(custom_id)
        except CustomIdError as exc:
            raise MalformedLineError(str(exc)) from None
        if job != self._job.name:
            raise MalformedLineError(f"custom_id of job {job!r}, not {self._job.name!r}")

        def fail(reason: str, disposition: Disposition, usage: Usage | None = None) -> Failure:
            return Failure(custom_id, key, attempt, reason, disposition, usage or Usage())

        response = obj.get("response")
        if not isinstance(response, dict):
            error = obj.get("error")
            code = _get(error, "code") or "unknown_error"
            message = _get(error, "message") or ""
            reason = f"{code}: {_quote(message)}" if message else str(code)
            return fail(reason, "retry_free" if code == "batch_cancelled" else "retry")
        status = response.get("status_code")
        body = response.get("body")
        if status != 200:
            return self._http_failure(status, body, fail)
        usage = Usage.from_body(body)
        try:
            values = self._values(body)
        except ResultError as exc:
            return fail(str(exc), "retry", usage)
        except (RecursionError, ValueError, TypeError, OverflowError) as exc:
            # However the answer is built, it fails its own row only (sampling may differ).
            return fail(f"unreadable answer: {type(exc).__name__}: {_quote(exc)}", "retry", usage)
        return Success(custom_id, key, attempt, values, usage)

    @staticmethod
    def _http_failure(
        status: Any, body: Any, fail: Callable[[str, Disposition], Failure]
    ) -> Failure:
        """Classify a non-200 line by its status code."""
        error = _get(body, "error")
        code = _get(error, "code") or _get(error, "type") or ""
        message = _get(error, "message") or ""
        reason = f"HTTP {status}" + (f" {code}" if code else "")
        if message:
            reason += f": {_quote(message)}"
        transient = not isinstance(status, int) or status in (408, 409, 429) or status >= 500
        return fail(reason, "retry" if transient else "dead")

    def _values(self, body: Any) -> dict[str, Any]:
        """Turn a 200 body into column values, or raise ResultError with the reason."""
        if self._job.endpoint == "/v1/embeddings":
            vector = _get(body, "data")
            vector = vector[0].get("embedding") if isinstance(vector, list) and vector else None
            if (
                not isinstance(vector, list)
                or not vector
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
            ):
                raise ResultError("embedding: no vector of numbers in the response")
            column = self._job.embedding_column
            assert column is not None  # JobSpec guarantees it for embeddings
            return {column: orjson.dumps(vector).decode()}
        if self._job.endpoint == "/v1/chat/completions":
            content = self._chat_content(body)
        else:
            content = self._responses_content(body)
        try:
            answer = _loads(content)
        except ValueError as exc:
            raise ResultError(f"invalid JSON in content: {_quote(exc)}") from None
        if not self._fast_valid(answer):
            self._check_schema(answer)
        return {m.column: None if (v := _resolve(answer, p)) is None else conv(v, m)
                for m, p, conv in self._paths}

    def _fast_valid(self, answer: Any) -> bool:
        """Whether the compiled validator accepts the answer (False: ask jsonschema)."""
        if self._fast is None:
            return False
        try:
            self._fast(answer)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def _check_schema(self, answer: Any) -> None:
        """Validate with jsonschema; ResultError naming the best-matching violation."""
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(answer))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise ResultError(f"schema violation at {where}: {_quote(error.message)}")

    @staticmethod
    def _chat_content(body: Any) -> str:
        """Return the message content of a chat completion, or raise ResultError."""
        choices = _get(body, "choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            raise ResultError("no choices in the response")
        finish = choice.get("finish_reason")
        if finish == "length":
            raise ResultError("finish_reason length: output cut at the token limit")
        refusal = _get(choice, "message", "refusal")
        if refusal:
            raise ResultError(f"refusal: {_quote(refusal)}")
        if finish == "content_filter":
            raise ResultError("finish_reason content_filter")
        content = _get(choice, "message", "content")
        if not isinstance(content, str) or not content.strip():
            raise ResultError(f"empty content (finish_reason {finish})")
        return content

    @staticmethod
    def _responses_content(body: Any) -> str:
        """Return the output_text of a Responses API object, or raise ResultError."""
        status = _get(body, "status")
        if status == "incomplete":
            why = _get(body, "incomplete_details", "reason") or "unknown"
            raise ResultError(f"response incomplete: {why}")
        if status not in (None, "completed"):
            message = _get(body, "error", "message")
            raise ResultError(f"response {status}" + (f": {_quote(message)}" if message else ""))
        texts: list[str] = []
        for item in _get(body, "output") or []:
            if _get(item, "type") != "message":
                continue
            for part in _get(item, "content") or []:
                if _get(part, "type") == "refusal":
                    raise ResultError(f"refusal: {_quote(_get(part, 'refusal') or '')}")
                if _get(part, "type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        content = "".join(texts)
        if not content.strip():
            raise ResultError("empty content: no output_text in the response")
        return content
