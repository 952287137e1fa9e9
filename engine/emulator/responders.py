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

LineFault = Literal[
    "error_500", "error_429", "error_400", "timeout", "schema_break", "length"
] | None

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
_ERROR_400 = {
    "message": "Injected invalid request (emulator fault line_invalid_rate).",
    "type": "invalid_request_error",
    "param": None,
    "code": None,
}
# A 1x1 transparent PNG: the image endpoints' answers carry a real, tiny image.
_PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg=="
)
_MODERATION_CATEGORIES = (
    ("harassment", ("text",)), ("harassment/threatening", ("text",)), ("hate", ("text",)),
    ("hate/threatening", ("text",)), ("illicit", ("text",)), ("illicit/violent", ("text",)),
    ("self-harm", ("text", "image")), ("self-harm/instructions", ("text", "image")),
    ("self-harm/intent", ("text", "image")), ("sexual", ("text", "image")),
    ("sexual/minors", ("text",)), ("violence", ("text", "image")),
    ("violence/graphic", ("text", "image")),
)


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
    if endpoint in ("/v1/embeddings", "/v1/moderations"):
        return sum(estimate_tokens(t) for t in _embedding_inputs(body))
    if endpoint in ("/v1/completions", "/v1/images/generations", "/v1/images/edits",
                    "/v1/videos"):
        return estimate_tokens(_prompt_text(body))
    return sum(estimate_tokens(text) + 4 for _, text in _messages(endpoint, body))


def _prompt_text(body: dict[str, Any]) -> str:
    """Return the ``prompt`` of a completions, image or video request, as one string."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return "\n".join(p if isinstance(p, str) else json.dumps(p) for p in prompt)
    return prompt if isinstance(prompt, str) else ""


def user_text(endpoint: str, body: dict[str, Any]) -> str:
    """Return the user's text of a request (what a rule-based extractor reads)."""
    if endpoint == "/v1/completions":
        return _prompt_text(body)
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
    if fault == "error_400":
        return LineOutcome(400, {"error": dict(_ERROR_400)}, None, 0, 0)
    if fault == "timeout":
        error = {"code": "request_timeout", "message": "The request timed out."}
        return LineOutcome(None, None, error, 0, 0)
    prompt = input_tokens(endpoint, body)
    if endpoint == "/v1/embeddings":
        return LineOutcome(200, _embeddings(body, prompt), None, prompt, 0)
    other = _OTHER_ENDPOINTS.get(endpoint)
    if other is not None:
        answer, output = other(body, prompt, rng, created)
        return LineOutcome(200, answer, None, prompt, output)
    if endpoint == "/v1/chat/completions" and _wants_tool_call(body):
        return LineOutcome(200, _chat_tool_call(body, prompt, rng, created), None, prompt, 20)
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
    chat = _chat(body, text, prompt, wanted, cut, created)
    choices = _n(body)
    if choices > 1:  # n answers, each drawn afresh; usage counts every choice's tokens
        for index in range(1, choices):
            extra = _answer(endpoint, body, rng, broken=fault == "schema_break")
            if limit is not None and estimate_tokens(extra) > limit:
                extra = _cut(extra, limit)
            wanted += estimate_tokens(extra)
            chat["choices"].append({**chat["choices"][0], "index": index, "message": {
                **chat["choices"][0]["message"], "content": extra}})
        chat["usage"]["completion_tokens"] = wanted
        chat["usage"]["total_tokens"] = prompt + wanted
    return LineOutcome(200, chat, None, prompt, wanted)


def _n(body: dict[str, Any]) -> int:
    """Return how many choices a request asks for (``n``, default 1)."""
    value = body.get("n")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _wants_tool_call(body: dict[str, Any]) -> bool:
    """Tell whether a chat request must call a function (tools + forcing tool_choice)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)
             and t.get("type") == "function"]
    choice = body.get("tool_choice")
    return bool(tools) and (choice == "required" or isinstance(choice, dict))


def _chat_tool_call(
    body: dict[str, Any], prompt: int, rng: random.Random, created: int
) -> dict[str, Any]:
    """Build a chat.completion calling one function, arguments filling its schema."""
    tools = [t["function"] for t in body["tools"] if isinstance(t, dict)
             and t.get("type") == "function" and isinstance(t.get("function"), dict)]
    choice = body.get("tool_choice")
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    function = next((f for f in tools if f.get("name") == wanted), tools[0] if tools else {})
    arguments = fill_schema(dict(function.get("parameters") or {"type": "object"}), rng)
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
        "name": str(function.get("name", "")), "arguments": json.dumps(arguments)}}]
    chat = _chat(body, "", prompt, 20, False, created)
    choice_0 = chat["choices"][0]
    choice_0["message"].update(content=None, tool_calls=calls)
    choice_0["finish_reason"] = "tool_calls"
    for index in range(1, _n(body)):
        chat["choices"].append({**choice_0, "index": index})
    return chat


def _completion(
    body: dict[str, Any], prompt: int, rng: random.Random, created: int
) -> tuple[dict[str, Any], int]:
    """Build a legacy ``text_completion`` (Completion) with ``n`` choices."""
    first = _prompt_text(body)[:60].replace("\n", " ")
    limit = _limit("/v1/completions", body)
    choices = []
    output = 0
    for index in range(_n(body)):
        text = f" Emulated completion ({rng.choice(('one', 'two', 'three'))}) of: {first}"
        cut = limit is not None and estimate_tokens(text) > limit
        if cut:
            text = _cut(text, limit or 0)
        output += estimate_tokens(text)
        choices.append({"index": index, "text": text, "logprobs": None,
                        "finish_reason": "length" if cut else "stop"})
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:29]}",
        "object": "text_completion",
        "created": created,
        "model": body.get("model", ""),
        "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": output,
                  "total_tokens": prompt + output},
        "system_fingerprint": "fp_emulator",
    }, output


def _moderation(
    body: dict[str, Any], prompt: int, rng: random.Random, created: int
) -> tuple[dict[str, Any], int]:
    """Build a ModerationCreateResponse: one result per input, never flagged, low scores."""
    results = []
    for _text in _embedding_inputs(body) or [""]:
        results.append({
            "flagged": False,
            "categories": {name: False for name, _ in _MODERATION_CATEGORIES},
            "category_scores": {name: round(rng.random() * 1e-4, 8)
                                for name, _ in _MODERATION_CATEGORIES},
            "category_applied_input_types": {name: ["text"] for name, _ in
                                             _MODERATION_CATEGORIES},
        })
    model = body.get("model") or "omni-moderation-latest"
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}, 0


def _images(
    body: dict[str, Any], prompt: int, rng: random.Random, created: int
) -> tuple[dict[str, Any], int]:
    """Build an ImagesResponse carrying ``n`` tiny PNGs as b64_json."""
    count = _n(body)
    output = 272 * count  # a low-quality square image's output tokens, roughly
    return {
        "created": created,
        "data": [{"b64_json": _PNG_1X1, "revised_prompt": None} for _ in range(count)],
        "background": "opaque",
        "output_format": "png",
        "quality": "low",
        "size": "1024x1024",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt},
            "output_tokens": output,
            "total_tokens": prompt + output,
        },
    }, output


def _video(
    body: dict[str, Any], prompt: int, rng: random.Random, created: int
) -> tuple[dict[str, Any], int]:
    """Build a Video job object, already completed (its content is not served)."""
    return {
        "id": f"video_{uuid.uuid4().hex}",
        "object": "video",
        "created_at": created,
        "completed_at": created,
        "expires_at": None,
        "error": None,
        "model": body.get("model", "sora-2"),
        "progress": 100,
        "prompt": _prompt_text(body),
        "remixed_from_video_id": None,
        "seconds": str(body.get("seconds", "4")),
        "size": str(body.get("size", "720x1280")),
        "status": "completed",
    }, 0


_OTHER_ENDPOINTS = {
    "/v1/completions": _completion,
    "/v1/moderations": _moderation,
    "/v1/images/generations": _images,
    "/v1/images/edits": _images,
    "/v1/videos": _video,
}


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
