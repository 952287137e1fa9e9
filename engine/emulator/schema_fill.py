"""The generic responder: a value that validates against any JSON schema, and one that does not.

Supports objects, arrays, enums, const, strings (with common formats and length bounds),
numbers, integers, booleans, null, nullable unions (type lists, anyOf/oneOf) and local
``$ref`` into ``$defs``/``definitions``. ``pattern`` and ``multipleOf`` are not honoured.
"""

from __future__ import annotations

import math
import random
from typing import Any

import jsonschema

__all__ = ["break_value", "fill_schema"]

_MAX_DEPTH = 6
_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo")


def fill_schema(schema: dict[str, Any], rng: random.Random) -> Any:
    """Return a value that validates against ``schema``, drawn from ``rng``."""
    return _fill(schema, rng, schema, "value", 0)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref`` pointers ("#/$defs/X", "#/definitions/X", "#")."""
    seen = 0
    while "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        target: Any = root
        if ref != "#":
            for part in ref.removeprefix("#/").split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        schema = target if isinstance(target, dict) else {}
        seen += 1
    return schema


def _fill(schema: Any, rng: random.Random, root: dict[str, Any], name: str, depth: int) -> Any:
    """Fill one (sub)schema; ``name`` is the property name, used to make strings readable."""
    if not isinstance(schema, dict):
        return None  # `true` or an empty schema accepts anything
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(list(schema["enum"]))
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [_resolve(o, root) if isinstance(o, dict) else o for o in schema[key]]
            non_null = [o for o in options if not _is_null(o)]
            # Prefer a real value (more useful to a reader), but null once nesting is deep.
            choice = options[0] if depth >= _MAX_DEPTH or not non_null else non_null[0]
            return _fill(choice, rng, root, name, depth)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root) if isinstance(part, dict) else {})
        return _fill(merged, rng, root, name, depth)
    kind = _pick_type(schema, depth)
    if kind == "object":
        return _fill_object(schema, rng, root, depth)
    if kind == "array":
        return _fill_array(schema, rng, root, name, depth)
    if kind == "string":
        return _fill_string(schema, rng, name)
    if kind == "integer":
        return int(_number_in(schema, rng, integer=True))
    if kind == "number":
        return _number_in(schema, rng, integer=False)
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _is_null(schema: Any) -> bool:
    """Tell whether a schema only admits null."""
    return isinstance(schema, dict) and schema.get("type") == "null"


def _pick_type(schema: dict[str, Any], depth: int) -> str:
    """Choose the JSON type to produce, preferring non-null members of a type list."""
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        if not non_null or (depth >= _MAX_DEPTH and "null" in kind):
            return "null"
        return str(non_null[0])
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _fill_object(
    schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int
) -> dict[str, Any]:
    """Every declared property (strict mode makes them all required)."""
    props = schema.get("properties") or {}
    return {key: _fill(sub, rng, root, key, depth + 1) for key, sub in props.items()}


def _fill_array(
    schema: dict[str, Any], rng: random.Random, root: dict[str, Any], name: str, depth: int
) -> list[Any]:
    """Between minItems and maxItems items, two when unbounded (none when nested deep)."""
    low = int(schema.get("minItems", 0))
    high = schema.get("maxItems")
    count = low if depth >= _MAX_DEPTH else max(low, 2)
    if high is not None:
        count = min(count, int(high))
    items = schema.get("items", {})
    prefix = schema.get("prefixItems") or []
    out = [_fill(prefix[i], rng, root, name, depth + 1) for i in range(min(count, len(prefix)))]
    out += [_fill(items, rng, root, name, depth + 1) for _ in range(count - len(out))]
    if schema.get("uniqueItems"):
        out = _unique(out, schema, rng, root, name, depth)
    return out


def _unique(
    out: list[Any],
    schema: dict[str, Any],
    rng: random.Random,
    root: dict[str, Any],
    name: str,
    depth: int,
) -> list[Any]:
    """Drop duplicates, redrawing a few times so minItems still holds when it can."""
    seen: list[Any] = []
    for value in out:
        tries = 0
        while value in seen and tries < 8:
            value = _fill(schema.get("items", {}), rng, root, name, depth + 1)
            tries += 1
        if value not in seen:
            seen.append(value)
    return seen


def _fill_string(schema: dict[str, Any], rng: random.Random, name: str) -> str:
    """Return a readable string for the property, honouring format and length bounds."""
    fmt = schema.get("format")
    if fmt == "date":
        text = f"20{rng.randint(10, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif fmt == "date-time":
        day = f"20{rng.randint(10, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        text = f"{day}T12:00:00Z"
    elif fmt == "time":
        text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
    elif fmt == "email":
        text = f"{rng.choice(_WORDS)}.{rng.randint(1, 999)}@example.com"
    elif fmt in ("uri", "url"):
        text = f"https://example.com/{rng.choice(_WORDS)}/{rng.randint(1, 999)}"
    elif fmt == "uuid":
        text = "%08x-%04x-4%03x-8%03x-%012x" % (  # noqa: UP031 - fixed-width hex fields
            rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12),
            rng.getrandbits(12), rng.getrandbits(48),
        )
    else:
        text = f"{name} {rng.choice(_WORDS)} {rng.randint(1, 999)}"
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if high is not None:
        text = text[: int(high)]
    return text


def _number_in(schema: dict[str, Any], rng: random.Random, *, integer: bool) -> float:
    """Return a number inside minimum/maximum (exclusive too), 0..100 when unbounded."""
    step = 1.0 if integer else 0.01
    low = _bound(schema.get("minimum"))
    high = _bound(schema.get("maximum"))
    ex_low = _bound(schema.get("exclusiveMinimum"))
    ex_high = _bound(schema.get("exclusiveMaximum"))
    if ex_low is not None:
        low = ex_low + step if low is None else max(low, ex_low + step)
    if ex_high is not None:
        high = ex_high - step if high is None else min(high, ex_high - step)
    if low is None:
        low = 0.0 if high is None else high - 100.0
    if high is None:
        high = low + 100.0
    if integer:
        lo_i, hi_i = math.ceil(low), math.floor(high)
        return rng.randint(lo_i, max(lo_i, hi_i))
    value = round(rng.uniform(low, high), 2)
    return min(max(value, low), high)


def _bound(value: Any) -> float | None:
    """Return a numeric schema bound as a float, or None when absent (or a boolean)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def break_value(schema: dict[str, Any], valid: Any, rng: random.Random) -> Any:
    """Return a value that does NOT validate against ``schema``, close to ``valid``.

    A missing required property first (the usual real-world failure), then a wrong type.
    Falls back to the wrong-type value even for a schema that admits anything.
    """
    candidates: list[Any] = []
    resolved = _resolve(schema, schema)
    if isinstance(valid, dict):
        required = [k for k in resolved.get("required", []) if k in valid]
        if required:
            key = rng.choice(required)
            candidates.append({k: v for k, v in valid.items() if k != key})
        for key, value in valid.items():
            candidates += [{**valid, key: other} for other in _wrong_types(value)]
    candidates += _wrong_types(valid)
    for candidate in candidates:
        if not _valid(schema, candidate):
            return candidate
    return candidates[-1]


def _wrong_types(value: Any) -> list[Any]:
    """Return values of JSON types other than ``value``'s, most plausible first."""
    others: list[Any] = [12345, "not-a-number", ["unexpected"], {"unexpected": True}, None]
    kind = type(value)
    return [o for o in others if not (type(o) is kind or (value is None and o is None))]


def _valid(schema: dict[str, Any], value: Any) -> bool:
    """Tell whether ``value`` validates against ``schema`` (a broken schema: yes)."""
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        return bool(validator.is_valid(value))
    except jsonschema.exceptions.SchemaError:
        return True
