"""The emulator over real HTTP with the official AsyncOpenAI client: lifecycle on each
endpoint, every validation code, cancel, expiry, token limit, pagination, error shapes, record."""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
import jsonschema
import openai
import pytest
from openai.types import Batch, CreateEmbeddingResponse, FileDeleted, FileObject
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.emulator.schema_fill import break_value, fill_schema
from engine.errors import LifecycleError

BATCH_FIELDS = {
    "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "request_counts", "metadata", "usage", "model",
}


def history(emu: Emulator, batch_id: str) -> list[str]:
    return [h.status for h in emu.record.batches[batch_id].history]


def assert_usage_sums(batch: Batch, lines: list[dict[str, Any]], endpoint: str) -> None:
    inp = out = 0
    for line in lines:
        usage = line["response"]["body"]["usage"]
        if endpoint == "/v1/responses":
            inp += usage["input_tokens"]
            out += usage["output_tokens"]
        else:
            inp += usage["prompt_tokens"]
            out += usage.get("completion_tokens", 0)
    assert batch.usage is not None
    assert batch.usage.input_tokens == inp > 0
    assert batch.usage.output_tokens == out
    assert batch.usage.total_tokens == inp + out


# --- lifecycle per endpoint ------------------------------------------------------------------


async def test_chat_lifecycle_objects_parse_and_answers_validate(emu_api: Any, emu: Emulator):
    lines = [emu_api.chat_line(f"row-{i}", f"resume text {i}") for i in range(12)]
    f = await emu_api.client.files.create(file=("in.jsonl", emu_api.jsonl(lines)), purpose="batch")
    assert isinstance(f, FileObject)
    assert (f.purpose, f.filename, f.status, f.object) == ("batch", "in.jsonl", "processed", "file")
    assert f.bytes == len(emu_api.jsonl(lines))
    assert f.id.startswith("file-")
    batch = await emu_api.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"engine_batch": "42"},
    )
    assert batch.status == "validating"
    assert batch.id.startswith("batch_")
    assert batch.metadata == {"engine_batch": "42"}
    assert batch.expires_at == batch.created_at + 86400

    done = await emu_api.wait(batch.id)
    assert done.status == "completed"
    assert history(emu, batch.id) == ["validating", "in_progress", "finalizing", "completed"]
    assert set(done.model_fields_set) >= BATCH_FIELDS
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (12, 12, 0)
    assert done.model == "gpt-4o-mini"
    assert done.in_progress_at is not None
    assert done.finalizing_at is not None
    assert done.completed_at is not None
    assert done.error_file_id is None
    assert done.errors is None

    out_meta = await emu_api.client.files.retrieve(done.output_file_id)
    assert out_meta.purpose == "batch_output"
    out = await emu_api.lines(done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"row-{i}" for i in range(12))
    assert [x["custom_id"] for x in out] != [f"row-{i}" for i in range(12)]  # order shuffled
    for line in out:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].finish_reason == "stop"
        content = completion.choices[0].message.content
        assert content is not None
        jsonschema.validate(json.loads(content), emu_api.SCHEMA)
        assert completion.usage is not None
        assert completion.usage.total_tokens == (
            completion.usage.prompt_tokens + completion.usage.completion_tokens
        )
    assert_usage_sums(done, out, "/v1/chat/completions")


async def test_responses_lifecycle(emu_api: Any):
    lines = [emu_api.responses_line(f"r{i}", f"text {i}") for i in range(5)]
    batch = await emu_api.submit(lines, endpoint="/v1/responses")
    done = await emu_api.wait(batch.id)
    assert done.status == "completed"
    out = await emu_api.lines(done.output_file_id)
    assert len(out) == 5
    for line in out:
        response = Response.model_validate(line["response"]["body"])
        assert response.status == "completed"
        assert response.output[0].type == "message"
        jsonschema.validate(json.loads(response.output_text), emu_api.SCHEMA)
        assert response.usage is not None
    assert_usage_sums(done, out, "/v1/responses")


async def test_embeddings_lifecycle_deterministic_vectors_and_dimensions(emu_api: Any):
    lines = [
        emu_api.embedding_line("e1", "same text", dimensions=64),
        emu_api.embedding_line("e2", "same text", dimensions=64),
        emu_api.embedding_line("e3", "other text", dimensions=64),
        emu_api.embedding_line("e4", "default dims"),
    ]
    batch = await emu_api.submit(lines, endpoint="/v1/embeddings")
    done = await emu_api.wait(batch.id)
    assert done.status == "completed"
    by_id = {x["custom_id"]: x for x in await emu_api.lines(done.output_file_id)}
    vectors = {}
    for cid, line in by_id.items():
        parsed = CreateEmbeddingResponse.model_validate(line["response"]["body"])
        vectors[cid] = parsed.data[0].embedding
        assert math.isclose(sum(v * v for v in vectors[cid]), 1.0, rel_tol=1e-6)
    assert len(vectors["e1"]) == 64
    assert len(vectors["e4"]) == 1536
    assert vectors["e1"] == vectors["e2"]
    assert vectors["e1"] != vectors["e3"]
    assert_usage_sums(done, list(by_id.values()), "/v1/embeddings")
    assert done.usage is not None
    assert done.usage.output_tokens == 0


async def test_small_max_tokens_gives_length_and_cut_content(emu_api: Any):
    lines = [
        emu_api.chat_line("c1", max_tokens=3),
        emu_api.chat_line("c2", max_completion_tokens=2),
        emu_api.chat_line("c3", max_tokens=4000),
    ]
    done = await emu_api.wait((await emu_api.submit(lines)).id)
    out = {x["custom_id"]: x["response"]["body"] for x in await emu_api.lines(done.output_file_id)}
    for cid, limit in (("c1", 3), ("c2", 2)):
        choice = out[cid]["choices"][0]
        assert choice["finish_reason"] == "length"
        assert out[cid]["usage"]["completion_tokens"] == limit
        with pytest.raises(json.JSONDecodeError):
            json.loads(choice["message"]["content"])
    assert out["c3"]["choices"][0]["finish_reason"] == "stop"

    # The Responses API refuses max_output_tokens below 16 (its 400 integer_below_min_value).
    resp_lines = [emu_api.responses_line("r1", max_output_tokens=16)]
    done = await emu_api.wait((await emu_api.submit(resp_lines, endpoint="/v1/responses")).id)
    body = (await emu_api.lines(done.output_file_id))[0]["response"]["body"]
    response = Response.model_validate(body)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert len(response.output_text) <= 64


async def test_resume_schema_uses_rule_extractor_or_falls_back(
    emu_api: Any, monkeypatch: pytest.MonkeyPatch
):
    from engine.emulator import resume

    schema = {"type": "object", "properties": {"name": {"type": "string"}},
              "required": ["name"], "additionalProperties": False}

    def not_yet(text: str) -> dict[str, Any]:
        raise NotImplementedError

    monkeypatch.setattr(resume, "extract_resume", not_yet)
    line = emu_api.chat_line("r1", "Jane Doe, engineer", schema=schema,
                             name=resume.RESUME_SCHEMA_NAME)
    done = await emu_api.wait((await emu_api.submit([line])).id)
    body = (await emu_api.lines(done.output_file_id))[0]["response"]["body"]
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)

    seen: list[str] = []

    def rules(text: str) -> dict[str, Any]:
        seen.append(text)
        return {"name": "Jane Doe"}

    monkeypatch.setattr(resume, "extract_resume", rules)
    done = await emu_api.wait((await emu_api.submit([line])).id)
    body = (await emu_api.lines(done.output_file_id))[0]["response"]["body"]
    assert json.loads(body["choices"][0]["message"]["content"]) == {"name": "Jane Doe"}
    assert seen == ["Jane Doe, engineer"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "enum": ["a", "b"]},
        {"type": "array", "items": {"type": "integer", "minimum": 5, "maximum": 5},
         "minItems": 3, "maxItems": 3},
        {"type": "object", "properties": {"n": {"type": ["number", "null"], "minimum": -1,
                                                "exclusiveMaximum": 0}},
         "required": ["n"], "additionalProperties": False},
        {"$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "boolean"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "required": ["v", "kids"], "additionalProperties": False}},
         "$ref": "#/$defs/node"},
        {"type": "object", "properties": {"c": {"const": "x"}, "s": {"type": "string",
                                                                     "minLength": 30}},
         "required": ["c", "s"]},
        {"anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]},
    ],
)
def test_generic_responder_fills_any_schema_and_breaks_it(schema: dict[str, Any]):
    import random

    for seed in range(5):
        value = fill_schema(schema, random.Random(seed))
        jsonschema.validate(value, schema)
        broken = break_value(schema, value, random.Random(seed))
        assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


# --- validation ---------------------------------------------------------------------------


def _validation_cases(api: Any) -> list[tuple[str, list[Any], str, int | None, str | None]]:
    ok = api.chat_line
    return [
        ("invalid_json", [ok("a"), "{not json"], "invalid_json_line", 2, None),
        ("duplicate", [ok("a"), ok("b"), ok("a")], "duplicate_custom_id", 3, "custom_id"),
        ("url", [ok("a"), {**ok("b"), "url": "/v1/embeddings"}], "url_mismatch", 2, "url"),
        ("model", [ok("a"), ok("b", model="gpt-4o")], "model_mismatch", 2, "body.model"),
        ("empty", [], "empty_file", None, None),
        ("stream", [ok("a", stream=True)], "streaming_unsupported", 1, "body.stream"),
        ("missing", [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}],
         "missing_required_parameter", 1, "body"),
    ]


@pytest.mark.parametrize(
    "case", range(7),
    ids=["invalid_json", "duplicate", "url", "model", "empty", "stream", "missing"],
)
async def test_each_validation_code_fails_the_batch(emu_api: Any, emu: Emulator, case: int):
    name, lines, code, line_no, param = _validation_cases(emu_api)[case]
    batch = await emu_api.submit(lines)
    done = await emu_api.wait(batch.id)
    assert done.status == "failed", name
    assert history(emu, batch.id) == ["validating", "failed"]
    assert done.failed_at is not None
    assert done.errors is not None
    assert done.errors.object == "list"
    first = done.errors.data[0]
    assert (first.code, first.line, first.param) == (code, line_no, param)
    assert first.message
    assert done.output_file_id is None
    assert done.error_file_id is None
    assert done.request_counts is not None
    assert done.request_counts.total == 0


async def test_too_many_tasks(emu_api: Any):
    tiny = ('{"custom_id":"%d","method":"POST","url":"/v1/embeddings",'
            '"body":{"model":"m","input":"x"}}')
    data = "\n".join(tiny % i for i in range(50_001)).encode()
    f = await emu_api.client.files.create(file=("big.jsonl", data), purpose="batch")
    batch = await emu_api.client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    done = await emu_api.wait(batch.id)
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data[0].code == "too_many_tasks"


@pytest.mark.parametrize("emu_config", [EmulatorConfig(faults=FaultConfig(fail_validation=True))])
async def test_injected_validation_failure(emu_api: Any):
    done = await emu_api.wait((await emu_api.submit([emu_api.chat_line("a")])).id)
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data[0].code == "invalid_json_line"


# --- token limit ----------------------------------------------------------------------------


@pytest.mark.parametrize("emu_config", [
    EmulatorConfig(latency_s=60.0, faults=FaultConfig(enqueued_token_limit=150))])
async def test_token_limit_counts_live_batches_per_model(emu_api: Any, emu: Emulator):
    lines = [emu_api.chat_line(f"a{i}", "x" * 100) for i in range(4)]  # ~4 * 31 tokens
    first = await emu_api.submit(lines)
    await emu_api.wait(first.id, {"in_progress"})
    second = await emu_api.submit([emu_api.chat_line(f"b{i}", "x" * 100) for i in range(4)])
    failed = await emu_api.wait(second.id)
    assert failed.status == "failed"
    assert failed.errors is not None
    error = failed.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert error.line is None
    assert "gpt-4o-mini" in (error.message or "")

    other_model = await emu_api.submit([emu_api.chat_line("c0", "x" * 100, model="gpt-4o")])
    assert (await emu_api.wait(other_model.id, {"in_progress", "failed"})).status == "in_progress"

    await emu_api.client.batches.cancel(first.id)
    assert (await emu_api.wait(first.id)).status == "cancelled"
    third = await emu_api.submit([emu_api.chat_line(f"d{i}", "x" * 100) for i in range(4)])
    assert (await emu_api.wait(third.id, {"in_progress", "failed"})).status == "in_progress"


# --- cancel and expiry -------------------------------------------------------------------------


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=2.0)])
async def test_cancel_keeps_partial_output(emu_api: Any, emu: Emulator):
    lines = [emu_api.chat_line(f"k{i}") for i in range(4)]
    batch = await emu_api.submit(lines)
    await emu_api.wait_for(batch.id, lambda b: b.request_counts and b.request_counts.completed)
    cancelling = await emu_api.client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    done = await emu_api.wait(batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    assert history(emu, batch.id)[-2:] == ["cancelling", "cancelled"]
    counts = done.request_counts
    assert 1 <= counts.completed < 4
    assert counts.completed + counts.failed == counts.total == 4
    out = await emu_api.lines(done.output_file_id)
    err = await emu_api.lines(done.error_file_id)
    assert len(out) == counts.completed
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert all(x["response"] is None for x in err)
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"k{i}" for i in range(4))
    again = await emu_api.client.batches.cancel(batch.id)  # cancelling a cancelled one is allowed
    assert again.status == "cancelled"


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0)])
async def test_cancel_while_validating_or_queued_gives_no_output(emu_api: Any):
    batch = await emu_api.submit([emu_api.chat_line("a"), emu_api.chat_line("b")])
    await emu_api.client.batches.cancel(batch.id)
    done = await emu_api.wait(batch.id)
    assert done.status == "cancelled"
    assert done.output_file_id is None
    assert done.request_counts.completed == 0


@pytest.mark.parametrize("emu_config", [EmulatorConfig(faults=FaultConfig(expire_fraction=0.5))])
async def test_expiry_at_a_fraction_keeps_finished_lines(emu_api: Any, emu: Emulator):
    batch = await emu_api.submit([emu_api.chat_line(f"x{i}") for i in range(6)])
    done = await emu_api.wait(batch.id)
    assert done.status == "expired"
    assert done.expired_at is not None
    assert history(emu, batch.id) == ["validating", "in_progress", "expired"]
    # Lines the window cut off count neither as completed nor as failed: the real API showed
    # an expired batch as {total: 10, completed: 1, failed: 0} (warmbly/warmbly PR 333).
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (6, 3, 0)
    out = await emu_api.lines(done.output_file_id)
    err = await emu_api.lines(done.error_file_id)
    assert len(out) == 3
    assert [x["error"]["code"] for x in err] == ["batch_expired"] * 3
    assert_usage_sums(done, out, "/v1/chat/completions")


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0)])
async def test_force_expire(emu_api: Any, emu: Emulator):
    batch = await emu_api.submit([emu_api.chat_line(f"x{i}") for i in range(3)])
    await emu_api.wait(batch.id, {"in_progress"})
    emu.force_expire(batch.id)
    done = await emu_api.wait(batch.id)
    assert done.status == "expired"
    assert done.output_file_id is None  # nothing finished
    assert len(await emu_api.lines(done.error_file_id)) == 3


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0, completion_window_s=0.2)])
async def test_completion_window_expiry(emu_api: Any):
    batch = await emu_api.submit([emu_api.chat_line("x")])
    assert batch.expires_at is not None
    done = await emu_api.wait(batch.id)
    assert done.status == "expired"
    with pytest.raises(openai.ConflictError):
        await emu_api.client.batches.cancel(batch.id)


# --- list, files, errors -------------------------------------------------------------------------


async def test_list_pagination(emu_api: Any):
    file_id = await emu_api.upload([emu_api.chat_line("a")])
    ids = []
    for _ in range(5):
        b = await emu_api.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        ids.append(b.id)
    newest_first = ids[::-1]
    page = await emu_api.client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more is True
    raw = await emu_api.client.batches.with_raw_response.list(limit=2, after=newest_first[1])
    body = json.loads(raw.http_response.text)
    assert body["object"] == "list"
    assert (body["first_id"], body["last_id"], body["has_more"]) == (
        newest_first[2], newest_first[3], True)
    last = await emu_api.client.batches.list(limit=2, after=newest_first[3])
    assert [b.id for b in last.data] == newest_first[4:]
    assert last.has_more is False
    assert [b.id async for b in emu_api.client.batches.list(limit=2)] == newest_first
    default = await emu_api.client.batches.list()
    assert len(default.data) == 5
    for bad in (0, 101):
        with pytest.raises(openai.BadRequestError) as info:
            await emu_api.client.batches.list(limit=bad)
        assert info.value.body["param"] == "limit"


async def test_file_retrieve_content_delete(emu_api: Any):
    lines = [emu_api.chat_line("a")]
    file_id = await emu_api.upload(lines)
    assert (await emu_api.client.files.retrieve(file_id)).id == file_id
    assert (await emu_api.client.files.content(file_id)).content == emu_api.jsonl(lines)
    deleted = await emu_api.client.files.delete(file_id)
    assert isinstance(deleted, FileDeleted)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError) as info:
        await emu_api.client.files.retrieve(file_id)
    assert info.value.body == {"message": f"No such File object: {file_id}",
                               "type": "invalid_request_error", "param": "id", "code": None}


async def test_error_shapes_and_codes(emu_api: Any, emu: Emulator):
    c = emu_api.client
    with pytest.raises(openai.NotFoundError) as nf:
        await c.batches.retrieve("batch_missing")
    assert nf.value.status_code == 404
    assert set(nf.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        await c.batches.cancel("batch_missing")
    file_id = await emu_api.upload([emu_api.chat_line("a")])
    with pytest.raises(openai.BadRequestError) as bad:
        await c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="48h")
    assert bad.value.body["param"] == "completion_window"
    with pytest.raises(openai.BadRequestError) as bad:
        await c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={f"k{i}": "v" for i in range(17)})
    assert bad.value.body["param"] == "metadata"
    with pytest.raises(openai.BadRequestError) as bad:
        await c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"k": "v" * 513})
    assert bad.value.body["code"] == "string_above_max_length"
    with pytest.raises(openai.NotFoundError):
        await c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                               completion_window="24h")
    with pytest.raises(openai.BadRequestError) as bad:
        await c.files.create(file=("notes.txt", b"{}\n"), purpose="batch")
    # The real API's answer, as seen through a proxy (BerriAI/litellm PR 37527): param null.
    assert bad.value.body == {"message": "Invalid file format for Batch API. Must be .jsonl",
                              "type": "invalid_request_error", "param": None, "code": None}
    done = await emu_api.wait((await emu_api.submit([emu_api.chat_line("a")])).id)
    with pytest.raises(openai.ConflictError) as conflict:
        await c.batches.cancel(done.id)
    assert conflict.value.body["message"] == "Cannot cancel a batch with status 'completed'."
    with pytest.raises(openai.BadRequestError):
        await c.batches.create(input_file_id=done.output_file_id,  # purpose batch_output
                               endpoint="/v1/chat/completions", completion_window="24h")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emu.base_url}/batches") as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with http.get(f"{emu.base_url}/nothing-here",
                            headers={"Authorization": "Bearer t"}) as r:
            assert r.status == 404
            assert "error" in await r.json()


async def test_wrong_key_is_401_and_never_echoed():
    async with Emulator(EmulatorConfig(api_key="right-key")) as emu:
        bad = openai.AsyncOpenAI(api_key="sk-wrong-SECRET", base_url=emu.base_url, max_retries=0)
        good = openai.AsyncOpenAI(api_key="right-key", base_url=emu.base_url, max_retries=0)
        try:
            with pytest.raises(openai.AuthenticationError) as info:
                await bad.batches.list()
            assert info.value.body["code"] == "invalid_api_key"
            assert "SECRET" not in str(info.value)
            assert (await good.batches.list()).data == []
        finally:
            await bad.close()
            await good.close()


# --- record -----------------------------------------------------------------------------------


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0)])
async def test_record_finds_custom_ids_in_two_live_batches(emu_api: Any, emu: Emulator):
    first = await emu_api.submit([emu_api.chat_line("a"), emu_api.chat_line("b")])
    await emu_api.wait(first.id, {"in_progress"})
    assert emu.duplicate_live_custom_ids() == set()
    await emu_api.client.batches.cancel(first.id)
    await emu_api.wait(first.id)
    second = await emu_api.submit([emu_api.chat_line("a"), emu_api.chat_line("c")])
    await emu_api.wait(second.id, {"in_progress"})
    assert emu.duplicate_live_custom_ids() == set()  # first was over before second began
    third = await emu_api.submit([emu_api.chat_line("c"), emu_api.chat_line("d")])
    await emu_api.wait(third.id, {"in_progress"})
    assert emu.duplicate_live_custom_ids() == {"c"}

    async with aiohttp.ClientSession() as http:
        root = emu.base_url.removesuffix("/v1")
        async with http.get(f"{root}/_emulator/record") as r:
            record = await r.json()
        async with http.get(f"{root}/_emulator/stats") as r:
            stats = await r.json()
    assert record["duplicate_live_custom_ids"] == ["c"]
    entry = next(b for b in record["batches"] if b["id"] == first.id)
    assert entry["custom_ids"] == ["a", "b"]
    assert [h["status"] for h in entry["history"]] == [
        "validating", "in_progress", "cancelling", "cancelled"]
    assert entry["input_file_id"] == first.input_file_id
    assert stats["batches"] == {"cancelled": 1, "in_progress": 2}
    assert stats["rss_kb"] > 0


# --- clock, storage, lifecycle ---------------------------------------------------------------


@pytest.mark.parametrize("emu_config", [EmulatorConfig(rate_rps=200.0)])
async def test_rate_paces_lines(emu_api: Any, emu: Emulator):
    batch = await emu_api.submit([emu_api.chat_line(f"p{i}") for i in range(10)])
    assert (await emu_api.wait(batch.id)).status == "completed"
    times = {h.status: h.mono for h in emu.record.batches[batch.id].history}
    assert times["finalizing"] - times["in_progress"] >= 10 / 200


async def test_storage_dir_holds_files_and_survives_close(tmp_path: Any):
    async with Emulator(EmulatorConfig(storage_dir=str(tmp_path))) as emu:
        client = openai.AsyncOpenAI(api_key="t", base_url=emu.base_url, max_retries=0)
        try:
            f = await client.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch")
            other = await client.files.create(file=("x.jsonl", b"{}\n"), purpose="user_data")
            listed = await client.files.list(purpose="batch")
            assert [x.id for x in listed.data] == [f.id]
            assert len((await client.files.list()).data) == 2
            assert other.purpose == "user_data"
        finally:
            await client.close()
        with pytest.raises(LifecycleError):
            await emu.start()
    assert (tmp_path / f"{f.id}.jsonl").read_bytes() == b'{"a": 1}\n'


async def test_temp_storage_is_removed_on_close():
    emu = Emulator()
    await emu.start()
    storage = emu.storage_dir
    assert storage.is_dir()
    await emu.close()
    assert not storage.exists()
