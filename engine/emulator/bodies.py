"""Per-line request checks, run when a line is processed, as the real Batch API runs them.

A line that passes the file's validation (JSON, custom_id, method, url, model) can still be a
bad request: a chat line without ``messages``, ``temperature: "hot"``, a parameter the endpoint
does not take, a model the emulator does not know. The real API answers such a line like the
synchronous endpoint would, as a 4xx ``response`` in the error file
(``{"status_code": 400, "body": {"error": {message, type, param, code}}}``); ``check_line``
returns that answer, or None for a line that may be answered.

The parameters each endpoint takes are read from the openai SDK's own request TypedDicts (the
SDK is generated from the API's OpenAPI spec), so the list follows the installed SDK. The
messages follow the wording the API uses for the same mistakes on its synchronous endpoints.
"""

from __future__ import annotations

from typing import Any

from openai.types import (
    completion_create_params,
    embedding_create_params,
    image_edit_params,
    image_generate_params,
    moderation_create_params,
    video_create_params,
)
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params

__all__ = [
    "ENDPOINTS",
    "MAX_EMBEDDING_INPUTS",
    "MODEL_OPTIONAL",
    "LineError",
    "check_line",
    "embedding_inputs",
]

# The endpoints of openai.types.batch_create_params.BatchCreateParams["endpoint"].
ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
# BatchCreateParams.endpoint docstring: "/v1/embeddings batches are also restricted to a maximum
# of 50,000 embedding inputs across all requests in the batch."
MAX_EMBEDDING_INPUTS = 50_000
# Endpoints whose ``model`` is optional in the SDK's params (the API picks a default model).
MODEL_OPTIONAL = frozenset(
    {"/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos"}
)

LineError = tuple[int, dict[str, Any]]  # (status_code, {"error": {...}})

_PARAMS: dict[str, type] = {
    "/v1/chat/completions": chat_create_params.CompletionCreateParamsBase,
    "/v1/responses": response_create_params.ResponseCreateParamsBase,
    "/v1/embeddings": embedding_create_params.EmbeddingCreateParams,
    "/v1/completions": completion_create_params.CompletionCreateParamsBase,
    "/v1/moderations": moderation_create_params.ModerationCreateParams,
    "/v1/images/generations": image_generate_params.ImageGenerateParamsBase,
    "/v1/images/edits": image_edit_params.ImageEditParamsBase,
    "/v1/videos": video_create_params.VideoCreateParams,
}
# Required[...] per endpoint, from the same TypedDicts (their __required_keys__ is empty under
# postponed annotations, so it is written out here). ``model`` is checked at file validation.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("messages",),
    "/v1/responses": (),
    "/v1/embeddings": ("input",),
    "/v1/completions": ("prompt",),
    "/v1/moderations": ("input",),
    "/v1/images/generations": ("prompt",),
    "/v1/images/edits": ("image", "prompt"),
    "/v1/videos": ("prompt",),
}
# (JSON type names, minimum, maximum) of the common scalar parameters; ranges as documented.
_NUMBER = ("number",)
_INTEGER = ("integer",)
_TYPES: dict[str, tuple[tuple[str, ...], float | None, float | None]] = {
    "model": (("string",), None, None),
    "messages": (("array",), None, None),
    "temperature": (_NUMBER, 0, 2),
    "top_p": (_NUMBER, 0, 1),
    "presence_penalty": (_NUMBER, -2, 2),
    "frequency_penalty": (_NUMBER, -2, 2),
    "n": (_INTEGER, 1, 128),
    "max_tokens": (_INTEGER, 1, None),
    "max_completion_tokens": (_INTEGER, 1, None),
    "max_output_tokens": (_INTEGER, 16, None),
    "top_logprobs": (_INTEGER, 0, 20),
    "seed": (_INTEGER, None, None),
    "dimensions": (_INTEGER, 1, None),
    "logprobs": (("boolean",), None, None),
    "parallel_tool_calls": (("boolean",), None, None),
    "store": (("boolean",), None, None),
    "stream": (("boolean",), None, None),
    "tools": (("array",), None, None),
    "response_format": (("object",), None, None),
    "metadata": (("object",), None, None),
    "instructions": (("string",), None, None),
    "user": (("string",), None, None),
    "prompt": (("string", "array"), None, None),
    "input": (("string", "array"), None, None),
    "stop": (("string", "array", "null"), None, None),
}
_ENCODINGS = ("float", "base64")
# Names whose type differs on these endpoints (Responses' ``prompt`` is a template object, the
# image endpoints' ``response_format`` is "url" or "b64_json"): not type-checked there.
_UNCHECKED: dict[str, frozenset[str]] = {
    "/v1/responses": frozenset({"prompt"}),
    "/v1/images/generations": frozenset({"response_format"}),
    "/v1/images/edits": frozenset({"response_format"}),
}


def _json_type(value: Any) -> str:
    """Return the JSON type name of a decoded value, as the API's messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _article(word: str) -> str:
    """Prefix a type name with its article: 'an integer', 'a string'."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _error(status: int, message: str, param: str | None, code: str | None) -> LineError:
    """One line's HTTP error answer, in the API's error body shape."""
    return status, {"error": {"message": message, "type": "invalid_request_error",
                              "param": param, "code": code}}


def _check_type(name: str, value: Any) -> LineError | None:
    """Type and range of one known scalar parameter."""
    spec = _TYPES.get(name)
    if spec is None:
        return None
    kinds, low, high = spec
    actual = _json_type(value)
    accepted = set(kinds) | ({"integer"} if "number" in kinds else set())
    if actual not in accepted:
        return _error(400, f"Invalid type for '{name}': expected {_article(kinds[0])}, but got "
                      f"{_article(actual)} instead.", name, "invalid_type")
    if actual in ("integer", "number"):
        kind = "integer" if kinds == _INTEGER else "decimal"
        if low is not None and value < low:
            return _error(400, f"Invalid '{name}': {kind} below minimum value. Expected a value "
                          f">= {low:g}, but got {value} instead.", name,
                          f"{kind}_below_min_value")
        if high is not None and value > high:
            return _error(400, f"Invalid '{name}': {kind} above maximum value. Expected a value "
                          f"<= {high:g}, but got {value} instead.", name,
                          f"{kind}_above_max_value")
    return None


def embedding_inputs(body: dict[str, Any]) -> int:
    """How many inputs one embeddings request carries (what the 50,000 cap counts)."""
    given = body.get("input")
    if isinstance(given, list):
        if given and all(isinstance(t, int) and not isinstance(t, bool) for t in given):
            return 1  # one input given as a token array
        return len(given)
    return 1 if given is not None else 0


def check_line(
    endpoint: str, line: dict[str, Any], models: tuple[str, ...] | None
) -> LineError | None:
    """Return the 4xx answer the real API gives this request line, or None if it is valid."""
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str):
        return _error(400, "Invalid type for 'custom_id': expected a string, but got "
                      f"{_article(_json_type(custom_id))} instead.", "custom_id", "invalid_type")
    body = line["body"]
    known = _PARAMS[endpoint].__annotations__
    for name in body:
        if name == "stream":
            continue  # refused at file validation already
        if name not in known:
            if endpoint == "/v1/chat/completions":
                # Chat Completions words it so, with no param; the newer endpoints name it.
                return _error(400, f"Unrecognized request argument supplied: {name}", None, None)
            return _error(400, f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    for name in _REQUIRED[endpoint]:
        if name not in body:
            return _error(400, f"Missing required parameter: '{name}'.", name,
                          "missing_required_parameter")
    unchecked = _UNCHECKED.get(endpoint, frozenset())
    required = _REQUIRED[endpoint]
    for name, value in body.items():
        if name in unchecked or (value is None and name not in required and name != "model"):
            continue  # an optional parameter given as null is the same as leaving it out
        found = _check_type(name, value)
        if found is not None:
            return found
    if endpoint == "/v1/chat/completions" and not body["messages"]:
        return _error(400, "Invalid 'messages': empty array. Expected an array with minimum "
                      "length 1, but got an empty array instead.", "messages",
                      "empty_array")
    if endpoint == "/v1/responses" and "input" not in body and "prompt" not in body:
        return _error(400, "Missing required parameter: 'input'.", "input",
                      "missing_required_parameter")
    encoding = body.get("encoding_format")
    if endpoint == "/v1/embeddings" and encoding is not None and encoding not in _ENCODINGS:
        return _error(400, f"Invalid value: '{encoding}'. Supported values are: 'float' and "
                      "'base64'.", "encoding_format", "invalid_value")
    model = body.get("model")
    if models is not None and model is not None and model not in models:
        return _error(404, f"The model `{model}` does not exist or you do not have access to "
                      "it.", None, "model_not_found")
    return None
