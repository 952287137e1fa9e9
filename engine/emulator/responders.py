"""Per-endpoint responders: what the model "answers" to one request line, with usage.

Bodies follow the real objects (ChatCompletion, Response, CreateEmbeddingResponse) closely
enough that the openai SDK's own models parse them. Tokens are estimated as ~len/4.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from engine.emulator import resume as _resume
from engine.emulator.schema_fill import break_value, fill_schema

__all__ = [
    "LineFault",
    "LineOutcome",
    "estimate_tokens",
    "input_tokens",
    "nested_answer",
    "respond",
    "user_text",
]

LineFault = Literal["error_500", "error_429", "timeout", "schema_break", "length"] | None

_ERROR_500 = {
    "message": "The server had an error while processing your request. Sorry about that!",
    "type": "server_error",
    "param": None,
    "code": None,
}
_ERROR_429 = {
    "message": "Rate limit reached for requests. Please try again later.",
    "type": "requests",
    "param": None,
    "code": "rate_limit_exceeded",
}


@dataclass(frozen=True)
class LineOutcome:
    """One processed line: an HTTP status and body, or a non-HTTP error, with its usage."""

    status_code: int | None  # None for non-HTTP failures (error is set instead)
    body: dict[str, Any] | None
    error: dict[str, str] | None
    input_tokens: int
    output_tokens: int

    @property
    def succeeded(self) -> bool:
        """True for a 200 line (it goes to the output file)."""
        return self.status_code == 200


def estimate_tokens(text: str) -> int:
    """Estimate tokens the way the engine does: about one per four characters."""
    return math.ceil(len(text) / 4) if text else 0


def _content_text(content: Any) -> str:
    """Return the text of a message content: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(str(p) for p in parts if p)
    return ""


def _messages(endpoint: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of every input message of a chat or responses request."""
    out: list[tuple[str, str]] = []
    if endpoint == "/v1/chat/completions":
        for msg in body.get("messages") or []:
            if isinstance(msg, dict):
                out.append((str(msg.get("role", "user")), _content_text(msg.get("content"))))
    elif endpoint == "/v1/responses":
        if body.get("instructions"):
            out.append(("developer", str(body["instructions"])))
        given = body.get("input")
        if isinstance(given, str):
            out.append(("user", given))
        elif isinstance(given, list):
            for item in given:
                if isinstance(item, dict):
                    out.append((str(item.get("role", "user")), _content_text(item.get("content"))))
    return out


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    """Return the inputs of an embeddings request, as strings (token arrays are stringified)."""
    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list):
        if given and all(isinstance(t, int) for t in given):
            return [json.dumps(given)]
        return [x if isinstance(x, str) else json.dumps(x) for x in given]
    return []


def input_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """Estimated input tokens of one request (what usage and the enqueued limit count)."""
    if endpoint == "/v1/embeddings":
        return sum(estimate_tokens(t) for t in _embedding_inputs(body))
    return sum(estimate_tokens(text) + 4 for _, text in _messages(endpoint, body))


def user_text(endpoint: str, body: dict[str, Any]) -> str:
    """Return the user's text of a request (what a rule-based extractor reads)."""
    texts = [text for role, text in _messages(endpoint, body) if role == "user"]
    return "\n".join(texts)


def _schema_of(endpoint: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, schema) of a strict json_schema response format, if the request has one."""
    if endpoint == "/v1/chat/completions":
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema") or {}
            return str(spec.get("name", "")), dict(spec.get("schema") or {})
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            return "", {"type": "object", "properties": {"answer": {"type": "string"}}}
    elif endpoint == "/v1/responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return str(fmt.get("name", "")), dict(fmt.get("schema") or {})
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            return "", {"type": "object", "properties": {"answer": {"type": "string"}}}
    return None


def _answer(endpoint: str, body: dict[str, Any], rng: random.Random, broken: bool) -> str:
    """Return the answer text: JSON for a schema (resume rules or generic), else plain prose."""
    found = _schema_of(endpoint, body)
    if found is None:
        first = user_text(endpoint, body)[:60].replace("\n", " ")
        return f"Emulated answer ({rng.choice(('one', 'two', 'three'))}) to: {first}"
    name, schema = found
    value: Any = None
    if name == _resume.RESUME_SCHEMA_NAME:
        try:
            value = _resume.extract_resume(user_text(endpoint, body))
        except NotImplementedError:
            value = None  # the rule-based extractor is not written yet: generic answer
    if value is None:
        value = fill_schema(schema, rng)
    if broken:
        value = break_value(schema, value, rng)
    return json.dumps(value, ensure_ascii=False)


def _limit(endpoint: str, body: dict[str, Any]) -> int | None:
    """Return the request's output token limit, if any."""
    keys = ("max_output_tokens",) if endpoint == "/v1/responses" else (
        "max_completion_tokens", "max_tokens",
    )
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _cut(text: str, tokens: int) -> str:
    """Cut ``text`` to roughly ``tokens`` tokens (never the whole text)."""
    return text[: max(0, min(tokens * 4, len(text) - 1))]


def respond(
    endpoint: str, body: dict[str, Any], *, rng: random.Random, fault: LineFault, created: int
) -> LineOutcome:
    """Answer one request line of ``endpoint``, injecting ``fault`` when given."""
    if fault == "error_500":
        return LineOutcome(500, {"error": dict(_ERROR_500)}, None, 0, 0)
    if fault == "error_429":
        return LineOutcome(429, {"error": dict(_ERROR_429)}, None, 0, 0)
    if fault == "timeout":
        error = {"code": "request_timeout", "message": "The request timed out."}
        return LineOutcome(None, None, error, 0, 0)
    prompt = input_tokens(endpoint, body)
    if endpoint == "/v1/embeddings":
        return LineOutcome(200, _embeddings(body, prompt), None, prompt, 0)
    text = _answer(endpoint, body, rng, broken=fault == "schema_break")
    wanted = estimate_tokens(text)
    limit = _limit(endpoint, body)
    cut = False
    if fault == "length":
        limit = max(1, wanted // 2) if limit is None else min(limit, max(1, wanted // 2))
    if limit is not None and wanted > limit:
        text, wanted, cut = _cut(text, limit), limit, True
    if endpoint == "/v1/responses":
        return LineOutcome(200, _response(body, text, prompt, wanted, cut, created), None, prompt,
                           wanted)
    return LineOutcome(200, _chat(body, text, prompt, wanted, cut, created), None, prompt, wanted)


def _chat(
    body: dict[str, Any], text: str, prompt: int, completion: int, cut: bool, created: int
) -> dict[str, Any]:
    """Build a chat.completion object."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:29]}",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None,
                            "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }


def _response(
    body: dict[str, Any], text: str, prompt: int, output: int, cut: bool, created: int
) -> dict[str, Any]:
    """Build a Responses API ``response``: one assistant message of output_text."""
    status = "incomplete" if cut else "completed"
    text_config = body.get("text") if isinstance(body.get("text"), dict) else None
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": None if cut else created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", ""),
        "output": [
            {
                "id": f"msg_{uuid.uuid4().hex}",
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": text_config or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output,
        },
        "user": None,
        "metadata": {},
    }


def _vector(text: str, dims: int) -> list[float]:
    """Return a deterministic unit vector from a hash of the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _embeddings(body: dict[str, Any], prompt: int) -> dict[str, Any]:
    """Build a CreateEmbeddingResponse: one vector per input, ``dimensions`` long."""
    model = str(body.get("model", ""))
    dims = body.get("dimensions")
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        dims = 3072 if "large" in model else 1536
    as_base64 = body.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    for index, text in enumerate(_embedding_inputs(body)):
        vector = _vector(text, dims)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def nested_answer(
    endpoint: str, body: dict[str, Any], *, depth: int, created: int
) -> LineOutcome:
    """Answer 200 with content that is valid JSON nested ``depth`` deep: a poison line.

    The line itself parses; only its content recurses, as a model's output could.
    """
    text = "[" * depth + "]" * depth
    prompt = input_tokens(endpoint, body)
    output = estimate_tokens(text)
    if endpoint == "/v1/responses":
        return LineOutcome(200, _response(body, text, prompt, output, False, created), None,
                           prompt, output)
    return LineOutcome(200, _chat(body, text, prompt, output, False, created), None, prompt,
                       output)
