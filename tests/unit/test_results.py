"""Output and error lines: outcomes, dispositions, usage and column conversion."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.errors import ConfigError, ResultError
from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.results import Failure, MalformedLineError, ResultParser, Success, Usage

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "years": {"type": ["integer", "string", "null"]},
        "score": {"type": ["number", "string"]},
        "remote": {"type": ["boolean", "string", "integer"]},
        "skills": {"type": "array", "items": {"type": "string"}},
        "contact": {
            "type": "object",
            "properties": {"email": {"type": ["string", "null"]}},
            "required": ["email"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "years", "score", "remote", "skills", "contact"],
    "additionalProperties": False,
}
COLUMNS = (
    ColumnMapping(field="name", column="full_name", max_length=5),
    ColumnMapping(field="years", column="years", kind="int"),
    ColumnMapping(field="score", column="score", kind="float"),
    ColumnMapping(field="remote", column="remote", kind="bool"),
    ColumnMapping(field="skills", column="skills", kind="text"),
    ColumnMapping(field="skills", column="skills_json", kind="json"),
    ColumnMapping(field="skills.1", column="second_skill"),
    ColumnMapping(field="contact.email", column="email"),
    ColumnMapping(field="contact.phone", column="phone"),
)
SOURCE = SourceSpec(
    table="candidates", key_column="id", text_columns=("resume",), processed_column="done"
)


def make_job(endpoint: str = "/v1/chat/completions", **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "name": "cv",
        "source": SOURCE,
        "model": "gpt-4o-mini",
        "endpoint": endpoint,
        "user_template": "{resume}",
        "output_schema": SCHEMA,
        "columns": COLUMNS,
    }
    fields.update(overrides)
    return JobSpec(**fields)


ANSWER: dict[str, Any] = {
    "name": "Ada Lovelace",
    "years": 12,
    "score": 4.5,
    "remote": True,
    "skills": ["math", "engines"],
    "contact": {"email": "ada@example.org"},
}
CHAT_USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "prompt_tokens_details": {"cached_tokens": 64},
    "completion_tokens_details": {"reasoning_tokens": 5},
}


def chat_line(
    content: Any = None,
    *,
    custom_id: str = "cv|1|row-7",
    finish: str = "stop",
    refusal: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    text = orjson.dumps(ANSWER).decode() if content is None else content
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": text, "refusal": refusal},
            }
        ],
        "usage": usage or CHAT_USAGE,
    }
    return orjson.dumps(
        {
            "id": "batch_req_1",
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": "req_1", "body": body},
            "error": None,
        }
    )


def error_status_line(status: int, code: str | None = "x", message: str = "bad") -> bytes:
    return orjson.dumps(
        {
            "id": "batch_req_2",
            "custom_id": "cv|0|k",
            "response": {
                "status_code": status,
                "request_id": "req_2",
                "body": {"error": {"message": message, "type": "t", "param": None, "code": code}},
            },
            "error": None,
        }
    )


def error_code_line(code: str, message: str = "msg") -> bytes:
    return orjson.dumps(
        {
            "id": "batch_req_3",
            "custom_id": "cv|0|k",
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


@pytest.fixture
def parser() -> ResultParser:
    return ResultParser(make_job())


def test_chat_success_maps_and_converts_every_column(parser: ResultParser) -> None:
    outcome = parser.parse_output_line(chat_line())
    assert isinstance(outcome, Success)
    assert (outcome.custom_id, outcome.key, outcome.attempt) == ("cv|1|row-7", "row-7", 1)
    assert outcome.values == {
        "full_name": "Ada L",  # cut to max_length characters
        "years": 12,
        "score": 4.5,
        "remote": True,
        "skills": '["math","engines"]',
        "skills_json": '["math","engines"]',
        "second_skill": "engines",
        "email": "ada@example.org",
        "phone": None,  # missing optional field
    }
    assert outcome.usage == Usage(100, 64, 20, 5)


def test_string_forms_convert(parser: ResultParser) -> None:
    answer = dict(ANSWER, years=" 7 ", score="3.25", remote="FALSE", name="Zoë🙂xyz")
    outcome = parser.parse_line(chat_line(orjson.dumps(answer).decode()))
    assert isinstance(outcome, Success)
    assert outcome.values["years"] == 7
    assert outcome.values["score"] == 3.25
    assert outcome.values["remote"] is False
    assert outcome.values["full_name"] == "Zoë🙂x"
    answer = dict(ANSWER, years=None, remote=1, score=2)
    outcome = parser.parse_line(chat_line(orjson.dumps(answer).decode()))
    assert isinstance(outcome, Success)
    assert outcome.values["years"] is None
    assert outcome.values["remote"] is True
    assert outcome.values["score"] == 2.0


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"years": "seven"}, "column years: 'seven' is not an integer"),
        ({"years": 2**63}, "out of the 64-bit range"),
        ({"score": "NaN"}, "column score"),
        ({"remote": "maybe"}, "column remote: 'maybe' is not a boolean"),
        ({"remote": 2}, "is not a boolean"),
    ],
)
def test_unconvertible_values_retry(
    parser: ResultParser, patch: dict[str, Any], reason: str
) -> None:
    outcome = parser.parse_line(chat_line(orjson.dumps(dict(ANSWER, **patch)).decode()))
    assert isinstance(outcome, Failure)
    assert outcome.disposition == "retry"
    assert reason in outcome.reason
    assert outcome.usage.input_tokens == 100  # a 200 line is billed even when useless


def test_json_over_max_length_is_a_failure() -> None:
    job = make_job(columns=(ColumnMapping(field="skills", column="s", kind="json", max_length=5),))
    outcome = ResultParser(job).parse_line(chat_line())
    assert isinstance(outcome, Failure)
    assert "max_length 5" in outcome.reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"finish": "length"}, "finish_reason length"),
        ({"refusal": "I can't help with that."}, "refusal: I can't help with that."),
        ({"content": "not json {"}, "invalid JSON in content"),
        ({"content": '{"name": "x"}'}, "schema violation"),
        ({"content": orjson.dumps(dict(ANSWER, extra=1)).decode()}, "schema violation"),
        ({"content": orjson.dumps(dict(ANSWER, years=[1])).decode()}, "schema violation at years"),
        ({"content": ""}, "empty content"),
        ({"finish": "content_filter", "content": ""}, "content_filter"),
    ],
)
def test_useless_200_lines_retry_with_reason(
    parser: ResultParser, kwargs: dict[str, Any], reason: str
) -> None:
    outcome = parser.parse_line(chat_line(**kwargs))
    assert isinstance(outcome, Failure)
    assert outcome.disposition == "retry"
    assert reason in outcome.reason
    assert len(outcome.reason) < 300


@pytest.mark.parametrize(
    ("status", "disposition"),
    [(429, "retry"), (500, "retry"), (503, "retry"), (408, "retry"), (400, "dead"),
     (404, "dead"), (401, "dead"), (413, "dead")],
)
def test_http_error_lines(parser: ResultParser, status: int, disposition: str) -> None:
    outcome = parser.parse_error_line(error_status_line(status, "some_code", "x" * 5000))
    assert isinstance(outcome, Failure)
    assert outcome.disposition == disposition
    assert outcome.reason.startswith(f"HTTP {status} some_code: xxx")
    assert len(outcome.reason) < 300
    assert outcome.usage == Usage()


@pytest.mark.parametrize(
    ("code", "disposition"),
    [("batch_expired", "retry"), ("request_timeout", "retry"),
     ("batch_cancelled", "retry_free"), ("something_new", "retry")],
)
def test_non_http_error_lines(parser: ResultParser, code: str, disposition: str) -> None:
    outcome = parser.parse_error_line(error_code_line(code, "This request could not run."))
    assert isinstance(outcome, Failure)
    assert outcome.disposition == disposition
    assert outcome.reason == f"{code}: This request could not run."
    assert (outcome.key, outcome.attempt) == ("k", 0)


@pytest.mark.parametrize(
    "line",
    [
        b"not json at all",
        b"[1, 2]",
        b'{"response": null}',
        b'{"custom_id": 17}',
        b'{"custom_id": "someone-else-42"}',
        b'{"custom_id": "other|0|k", "response": null, "error": {"code": "x"}}',
        b"",
    ],
)
def test_malformed_lines_raise_a_specific_error(parser: ResultParser, line: bytes) -> None:
    with pytest.raises(MalformedLineError):
        parser.parse_line(line)
    assert issubclass(MalformedLineError, ResultError)


def test_lone_surrogate_escapes_in_output_are_cleaned(parser: ResultParser) -> None:
    content = orjson.dumps(dict(ANSWER, name="ab")).decode().replace("ab", "a\\ud800b")
    outcome = parser.parse_line(chat_line(content))
    assert isinstance(outcome, Success)
    assert outcome.values["full_name"] == "a\ufffdb"
    raw = chat_line().replace(b'"cv|1|row-7"', b'"cv|1|row-\\ud800"')
    outcome = parser.parse_line(raw)
    assert outcome.key == "row-\ud800"


def test_nul_in_output_text_is_replaced(parser: ResultParser) -> None:
    outcome = parser.parse_line(chat_line(orjson.dumps(dict(ANSWER, name="a\u0000b")).decode()))
    assert isinstance(outcome, Success)
    assert outcome.values["full_name"] == "a\ufffdb"


def responses_line(
    text: str | None = None, *, status: str = "completed", refusal: str | None = None
) -> bytes:
    content: list[dict[str, Any]] = []
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    else:
        answer = text or orjson.dumps(ANSWER).decode()
        content.append({"type": "output_text", "text": answer, "annotations": []})
    body = {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_1", "role": "assistant", "content": content},
        ],
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 12},
            "total_tokens": 80,
        },
    }
    return orjson.dumps(
        {"id": "b", "custom_id": "cv|0|9", "response": {"status_code": 200, "body": body}}
    )


def test_responses_success_and_failures() -> None:
    parser = ResultParser(make_job("/v1/responses"))
    outcome = parser.parse_line(responses_line())
    assert isinstance(outcome, Success)
    assert outcome.values["years"] == 12
    assert outcome.usage == Usage(50, 10, 30, 12)
    cut = parser.parse_line(responses_line(status="incomplete"))
    assert isinstance(cut, Failure)
    assert cut.reason == "response incomplete: max_output_tokens"
    assert cut.disposition == "retry"
    refused = parser.parse_line(responses_line(refusal="No."))
    assert isinstance(refused, Failure)
    assert refused.reason == "refusal: No."


def test_embeddings_vector_becomes_json_text() -> None:
    job = make_job(
        "/v1/embeddings", output_schema=None, columns=(), embedding_column="vec",
        model="text-embedding-3-small",
    )
    parser = ResultParser(job)
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -1.0, 3]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    line = orjson.dumps({"custom_id": "cv|0|1", "response": {"status_code": 200, "body": body}})
    outcome = parser.parse_line(line)
    assert isinstance(outcome, Success)
    assert outcome.values == {"vec": "[0.25,-1.0,3]"}
    assert outcome.usage == Usage(8, 0, 0, 0)
    body["data"] = []
    bad = parser.parse_line(orjson.dumps({"custom_id": "cv|0|1", "response": {
        "status_code": 200, "body": body}}))
    assert isinstance(bad, Failure)
    assert bad.disposition == "retry"


def test_usage_sums_and_reads_batch_usage() -> None:
    assert Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40) == Usage(11, 22, 33, 44)
    batch_usage = {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 12,
    }
    assert Usage.from_batch(batch_usage) == Usage(5, 1, 7, 2)
    assert Usage.from_batch(None) == Usage()


def test_invalid_schema_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="output_schema"):
        ResultParser(make_job(output_schema={"type": "no-such-type"}))


def test_many_lines_all_parse(parser: ResultParser) -> None:
    # The speed of this is scripts/bench_parts.py's "parse" figure, against a baseline.
    lines = [chat_line(custom_id=f"cv|0|{i}") for i in range(5000)]
    outcomes = [parser.parse_line(line) for line in lines]
    assert all(isinstance(o, Success) for o in outcomes)
