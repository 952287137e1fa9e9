"""The compiled validator is only a fast path: outcomes and reasons stay jsonschema's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.results import Failure, ResultParser, Success

SOURCE = SourceSpec(table="t", key_column="id", text_columns=("body",), processed_column="done")
STRICT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "default": "nobody"},
        "email": {"type": ["string", "null"], "format": "email"},
        "level": {"enum": ["junior", "senior"]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
    },
    "required": ["name", "email", "level", "tags"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "maxLength": 5}},
}


def job(schema: dict[str, Any]) -> JobSpec:
    return JobSpec(
        name="j", source=SOURCE, model="m", user_template="{body}", output_schema=schema,
        columns=(ColumnMapping(field="name", column="name"),
                 ColumnMapping(field="tags", column="tags", kind="json")),
    )


def line(answer: Any) -> bytes:
    body = {"choices": [{"finish_reason": "stop",
                         "message": {"content": orjson.dumps(answer).decode()}}]}
    return orjson.dumps({"custom_id": "j|0|7", "response": {"status_code": 200, "body": body}})


def reference(schema: dict[str, Any]) -> ResultParser:
    """A parser with the fast path switched off: jsonschema alone."""
    parser = ResultParser(job(schema))
    parser._fast = None
    return parser


ANSWERS: list[Any] = [
    {"name": "Ann", "email": "not an email", "level": "junior", "tags": ["a", "b"]},
    {"name": "A", "email": None, "level": "junior", "tags": []},
    {"name": "Ann", "email": None, "level": "boss", "tags": []},
    {"name": "Ann", "email": None, "level": "senior", "tags": ["toolong"]},
    {"name": "Ann", "email": None, "level": "senior"},
    {"name": "Ann", "email": None, "level": "senior", "tags": [], "extra": 1},
    {"email": None, "level": "senior", "tags": []},
    [1, 2],
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_same_outcome_and_reason_as_jsonschema_alone(answer: Any) -> None:
    fast = ResultParser(job(STRICT))
    assert fast._fast is not None  # this schema is compiled
    got, want = fast.parse_line(line(answer)), reference(STRICT).parse_line(line(answer))
    assert type(got) is type(want)
    if isinstance(want, Failure):
        assert isinstance(got, Failure)
        assert got.reason == want.reason
        assert got.reason.startswith("schema violation")
    else:
        assert isinstance(got, Success)
        assert got.values == want.values


def test_defaults_are_never_written_into_the_answer() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "default": "x"},
                                               "tags": {"type": "array"}}}
    outcome = ResultParser(job(schema)).parse_line(line({"tags": []}))
    assert isinstance(outcome, Success)
    assert outcome.values["name"] is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "prefixItems": [{"type": "string"}]},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x", "minLength": 3}},
         "$defs": {"x": {"type": "string"}}},
        {"type": "object", "dependentRequired": {"a": ["b"]}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
         "items": [{"type": "string"}]},
    ],
)
def test_keywords_that_differ_between_drafts_leave_it_to_jsonschema(
    schema: dict[str, Any],
) -> None:
    assert ResultParser(job(schema))._fast is None
