"""The emulator as a twin of the real API (issue 13), driven by the official AsyncOpenAI client.

Each test names where the real behaviour it reproduces is documented: the openai SDK's own
types (generated from the API's OpenAPI spec) or a public report of the real API's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from typing import Any

import jsonschema
import openai
import pydantic
import pytest
from openai.types import (
    Batch,
    Completion,
    FileObject,
    ImagesResponse,
    ModerationCreateResponse,
    Video,
)
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from engine.emulator import EmulatorConfig, FaultConfig
from engine.emulator import server as emulator_server
from engine.emulator.cli import add_arguments, config_from_args

THIRTY_DAYS = 2_592_000
ERROR_KEYS = {"message", "type", "param", "code"}
# Fields the real API sends that the SDK's models do not declare: the Responses API reference
# shows "store" in every response object.
KNOWN_EXTRAS = {"Response": {"store"}}


def no_extra_fields(model: Any) -> None:
    """The SDK model parsed the object, nested ones too, with nothing it does not know about."""
    if isinstance(model, list):
        for item in model:
            no_extra_fields(item)
        return
    if not isinstance(model, pydantic.BaseModel):
        return
    extra = set(model.model_extra or {}) - KNOWN_EXTRAS.get(type(model).__name__, set())
    assert not extra, (type(model).__name__, extra)
    for name in type(model).model_fields:
        no_extra_fields(getattr(model, name))


# --- uploads ------------------------------------------------------------------------------


async def test_raw_byte_uploads_are_accepted_as_the_sdk_sends_them(emu_api: Any):
    # What bespokelabs-curator, instructor's in-memory BatchProcessor, openai-batch and litellm
    # do: hand the SDK bytes or an unnamed BytesIO. The SDK then sends filename="upload" (no
    # extension), or no filename at all for a (None, bytes) tuple; the real API accepts both.
    data = emu_api.jsonl([emu_api.chat_line("a"), emu_api.chat_line("b")])
    uploads = [
        await emu_api.client.files.create(file=io.BytesIO(data), purpose="batch"),
        await emu_api.client.files.create(file=(None, data), purpose="batch"),
        await emu_api.client.files.create(file=data, purpose="batch"),
    ]
    for f in uploads:
        assert isinstance(f, FileObject)
        no_extra_fields(f)
        assert (f.purpose, f.bytes, f.filename) == ("batch", len(data), "upload")
        # FileCreateParams.expires_after: "files with purpose=batch expire after 30 days".
        assert f.expires_at == f.created_at + THIRTY_DAYS
        assert (await emu_api.client.files.content(f.id)).content == data
    batch = await emu_api.client.batches.create(
        input_file_id=uploads[1].id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await emu_api.wait(batch.id)
    assert done.status == "completed"
    assert done.request_counts.completed == 2


async def test_non_utf8_batch_files_are_refused(emu_api: Any):
    text = emu_api.jsonl([emu_api.chat_line("a", "Zoë")]).decode().replace("\\u00eb", "ë")
    assert "ë" in text
    expected = {"message": "Invalid file for Batch API. Must be utf-8 encoded",
                "type": "invalid_request_error", "param": None, "code": None}
    for data in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("latin-1")):
        with pytest.raises(openai.BadRequestError) as bad:
            await emu_api.client.files.create(file=("in.jsonl", data), purpose="batch")
        assert bad.value.status_code == 400
        assert bad.value.body == expected
    # The check is the Batch API's: other purposes take any bytes.
    other = await emu_api.client.files.create(file=("x.bin", text.encode("utf-16")),
                                              purpose="user_data")
    assert other.expires_at is None  # "all other files are persisted until ... deleted"
    ok = await emu_api.client.files.create(file=("in.jsonl", text.encode()), purpose="batch")
    assert ok.bytes == len(text.encode())


async def test_size_cap_is_per_purpose(emu_api: Any, monkeypatch: pytest.MonkeyPatch):
    # BatchCreateParams.input_file_id: batch input "can be up to 200 MB"; other files 512 MB.
    # The caps are scaled down so the test does not move hundreds of megabytes.
    monkeypatch.setattr(emulator_server, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(emulator_server, "MAX_OTHER_FILE_BYTES", 3000)
    line = emu_api.jsonl([emu_api.chat_line("a", "x" * 1500)])
    assert 1000 < len(line) < 3000
    with pytest.raises(openai.BadRequestError) as bad:
        await emu_api.client.files.create(file=("in.jsonl", line), purpose="batch")
    assert bad.value.body["code"] == "file_too_large"
    assert (await emu_api.client.files.create(file=("in.jsonl", line), purpose="user_data")).bytes
    with pytest.raises(openai.BadRequestError) as bad:
        await emu_api.client.files.create(file=("in.jsonl", line * 3), purpose="user_data")
    assert bad.value.body["code"] == "file_too_large"


# --- per-line request validation ---------------------------------------------------------


async def error_lines(api: Any, lines: list[Any], endpoint: str = "/v1/chat/completions"
                      ) -> tuple[Batch, dict[str, dict[str, Any]]]:
    """Run a batch; return it and its error-file lines by custom_id."""
    done = await api.wait((await api.submit(lines, endpoint=endpoint)).id)
    assert done.status == "completed"
    return done, {str(x["custom_id"]): x for x in await api.lines(done.error_file_id)}


async def test_bad_request_bodies_come_back_as_4xx_lines(emu_api: Any):
    ok = emu_api.chat_line
    no_messages = ok("no-messages")
    del no_messages["body"]["messages"]
    lines = [
        ok("fine", temperature=None, max_tokens=None, stop=None),  # null: as if left out
        no_messages,
        ok("hot", temperature="hot"),
        ok("too-hot", temperature=5),
        ok("n-text", n="3"),
        ok("unknown", frobnicate=True),
        ok("empty", messages=[]),
        {**ok("x"), "custom_id": 1234},
    ]
    done, err = await error_lines(emu_api, lines)
    # The real API writes a bad request as the synchronous endpoint's 4xx answer in the error
    # file (BatchRequestOutput.response.status_code + body; openai-openapi issue 302 shows one).
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 7)
    assert len(await emu_api.lines(done.output_file_id)) == 1
    expected = {
        "no-messages": ("Missing required parameter: 'messages'.", "messages",
                        "missing_required_parameter"),
        "hot": ("Invalid type for 'temperature': expected a number, but got a string instead.",
                "temperature", "invalid_type"),
        "too-hot": ("Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                    "but got 5 instead.", "temperature", "decimal_above_max_value"),
        "n-text": ("Invalid type for 'n': expected an integer, but got a string instead.", "n",
                   "invalid_type"),
        "unknown": ("Unrecognized request argument supplied: frobnicate", None, None),
        "empty": ("Invalid 'messages': empty array. Expected an array with minimum length 1, "
                  "but got an empty array instead.", "messages", "empty_array"),
        "1234": ("Invalid type for 'custom_id': expected a string, but got an integer instead.",
                 "custom_id", "invalid_type"),
    }
    assert set(err) == set(expected)
    for custom_id, (message, param, code) in expected.items():
        line = err[custom_id]
        assert line["error"] is None
        assert line["id"].startswith("batch_req_")
        response = line["response"]
        assert response["status_code"] == 400
        assert response["request_id"].startswith("req_")
        assert response["body"] == {"error": {"message": message, "type": "invalid_request_error",
                                              "param": param, "code": code}}


async def test_responses_lines_are_checked_too(emu_api: Any):
    lines = [
        emu_api.responses_line("fine"),
        emu_api.responses_line("template", prompt={"id": "pmpt_abc"}),  # an object here
        emu_api.responses_line("short", max_output_tokens=10),
        emu_api.responses_line("unknown", frobnicate=1),
    ]
    done, err = await error_lines(emu_api, lines, "/v1/responses")
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    # The 16-token floor as the real API words it (vectorize-io/hindsight issue 58 quotes it).
    assert err["short"]["response"]["body"]["error"] == {
        "message": "Invalid 'max_output_tokens': integer below minimum value. Expected a value "
                   ">= 16, but got 10 instead.",
        "type": "invalid_request_error", "param": "max_output_tokens",
        "code": "integer_below_min_value"}
    assert err["unknown"]["response"]["body"]["error"]["code"] == "unknown_parameter"


@pytest.mark.parametrize("emu_config", [EmulatorConfig(models=("gpt-4o-mini",))])
async def test_unknown_model_is_a_404_line(emu_api: Any):
    done, err = await error_lines(emu_api, [emu_api.chat_line("a", model="gpt-nope")])
    assert done.request_counts.failed == 1
    assert err["a"]["response"]["status_code"] == 404
    assert err["a"]["response"]["body"]["error"]["code"] == "model_not_found"
    done, _ = await error_lines(emu_api, [emu_api.chat_line("b")])
    assert done.request_counts.completed == 1


async def test_injected_4xx_lines_are_seeded(make_emu_api: Any):
    faults = FaultConfig(line_invalid_rate=0.3)
    lines = [f"row-{i}" for i in range(40)]
    seen = []
    for seed in (5, 5, 6):
        api = await make_emu_api(EmulatorConfig(seed=seed, faults=faults))
        done, err = await error_lines(api, [api.chat_line(c) for c in lines])
        assert {x["response"]["status_code"] for x in err.values()} == {400}
        assert all(set(x["response"]["body"]["error"]) == ERROR_KEYS for x in err.values())
        assert done.request_counts.failed == len(err) > 0
        seen.append(set(err))
    assert seen[0] == seen[1]
    assert seen[0] != seen[2]


# --- endpoints ------------------------------------------------------------------------------


def _line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


ENDPOINT_CASES: list[tuple[str, dict[str, Any], type]] = [
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "n": 2},
     Completion),
    ("/v1/moderations", {"model": "omni-moderation-latest", "input": ["a", "b"]},
     ModerationCreateResponse),
    ("/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat", "n": 2,
                                "response_format": "b64_json"}, ImagesResponse),
    ("/v1/images/edits", {"model": "gpt-image-1", "prompt": "hat", "image": "file-abc"},
     ImagesResponse),
    ("/v1/videos", {"model": "sora-2", "prompt": "waves", "seconds": "4"}, Video),
]


@pytest.mark.parametrize("case", ENDPOINT_CASES, ids=[c[0] for c in ENDPOINT_CASES])
async def test_every_sdk_endpoint_is_accepted_and_answered(emu_api: Any, case: Any):
    # BatchCreateParams.endpoint lists these beside chat, responses and embeddings.
    url, body, model = case
    done = await emu_api.wait((await emu_api.submit([_line("a", url, body)], endpoint=url)).id)
    assert done.status == "completed", done.errors
    no_extra_fields(done)
    (line,) = await emu_api.lines(done.output_file_id)
    parsed = model.model_validate(line["response"]["body"])
    no_extra_fields(parsed)
    if isinstance(parsed, Completion):
        assert len(parsed.choices) == 2
    if isinstance(parsed, ModerationCreateResponse):
        assert len(parsed.results) == 2
    if isinstance(parsed, ImagesResponse):
        assert parsed.data
        assert parsed.data[0].b64_json
    if isinstance(parsed, Video):
        assert parsed.status == "completed"


async def test_chat_and_responses_objects_carry_no_unknown_fields(emu_api: Any):
    chat = await emu_api.wait((await emu_api.submit([emu_api.chat_line("c")])).id)
    no_extra_fields(chat)
    body = (await emu_api.lines(chat.output_file_id))[0]["response"]["body"]
    no_extra_fields(ChatCompletion.model_validate(body))
    resp = await emu_api.wait(
        (await emu_api.submit([emu_api.responses_line("r")], endpoint="/v1/responses")).id)
    body = (await emu_api.lines(resp.output_file_id))[0]["response"]["body"]
    no_extra_fields(Response.model_validate(body))
    no_extra_fields(await emu_api.client.files.retrieve(resp.output_file_id))
    no_extra_fields((await emu_api.client.batches.list()).data)


async def test_model_is_optional_where_the_endpoint_has_a_default(emu_api: Any):
    # ModerationCreateParams.model is optional ("omni-moderation-latest" by default).
    url = "/v1/moderations"
    done = await emu_api.wait(
        (await emu_api.submit([_line("m", url, {"input": "hello"})], endpoint=url)).id)
    assert done.status == "completed", done.errors
    (line,) = await emu_api.lines(done.output_file_id)
    assert ModerationCreateResponse.model_validate(line["response"]["body"]).model
    chat = emu_api.chat_line("c")
    del chat["body"]["model"]
    failed = await emu_api.wait((await emu_api.submit([chat])).id)
    assert failed.status == "failed"


async def test_unlisted_endpoint_is_refused(emu_api: Any):
    file_id = await emu_api.upload([emu_api.chat_line("a")])
    with pytest.raises(openai.BadRequestError) as bad:
        await emu_api.client.batches.create(input_file_id=file_id, endpoint="/v1/audio/speech",
                                            completion_window="24h")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "endpoint"


async def test_embedding_inputs_are_capped_at_50000_per_batch(emu_api: Any):
    # BatchCreateParams.endpoint: "/v1/embeddings batches are also restricted to a maximum of
    # 50,000 embedding inputs across all requests in the batch."
    def lines(count: int) -> list[Any]:
        return [emu_api.embedding_line(f"e{i}", "", input=["x"] * 1000, dimensions=1)
                for i in range(count)]

    over = await emu_api.wait((await emu_api.submit(lines(51), endpoint="/v1/embeddings")).id)
    assert over.status == "failed"
    assert over.errors is not None
    assert over.errors.data[0].code == "too_many_tasks"
    assert "50,000" in (over.errors.data[0].message or "")
    at = await emu_api.wait((await emu_api.submit(lines(50), endpoint="/v1/embeddings")).id)
    assert at.status == "completed"


async def test_tool_calls_and_n_choices_parse(emu_api: Any):
    params = {"type": "object", "properties": {"city": {"type": "string"},
                                               "days": {"type": "integer", "minimum": 1}},
              "required": ["city", "days"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    lines = [
        emu_api.chat_line("tool", schema=None, tools=tools, tool_choice="required"),
        emu_api.chat_line("three", n=3),
    ]
    done = await emu_api.wait((await emu_api.submit(lines)).id)
    out = {x["custom_id"]: ChatCompletion.model_validate(x["response"]["body"])
           for x in await emu_api.lines(done.output_file_id)}
    for completion in out.values():
        no_extra_fields(completion)
    choice = out["tool"].choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), params)
    three = out["three"]
    assert [c.index for c in three.choices] == [0, 1, 2]
    for c in three.choices:
        jsonschema.validate(json.loads(c.message.content or ""), emu_api.SCHEMA)


# --- expiry, clock, limits ------------------------------------------------------------------


async def test_file_expiry_is_validated_and_honoured(emu_api: Any, emu: Any):
    c = emu_api.client
    data = emu_api.jsonl([emu_api.chat_line("a")])
    short = await c.files.create(file=("in.jsonl", data), purpose="batch",
                                 expires_after={"anchor": "created_at", "seconds": 3600})
    assert short.expires_at == short.created_at + 3600
    kept = await c.files.create(file=("in.jsonl", data), purpose="batch")
    # FileCreateParams.ExpiresAfter.seconds: "Must be between 3600 (1 hour) and 2592000".
    for seconds, code in ((3599, "integer_below_min_value"),
                          (THIRTY_DAYS + 1, "integer_above_max_value")):
        with pytest.raises(openai.BadRequestError) as bad:
            await c.files.create(file=("in.jsonl", data), purpose="batch",
                                 expires_after={"anchor": "created_at", "seconds": seconds})
        assert (bad.value.body["param"], bad.value.body["code"]) == (
            "expires_after.seconds", code)
    with pytest.raises(openai.BadRequestError) as bad:
        await c.files.create(file=("in.jsonl", data), purpose="batch",
                             expires_after={"anchor": "last_used_at",  # type: ignore[typeddict-item]
                                            "seconds": 3600})
    assert bad.value.body["param"] == "expires_after.anchor"

    emu.advance_clock(3600)
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(short.id)
    with pytest.raises(openai.NotFoundError):
        await c.files.content(short.id)
    with pytest.raises(openai.NotFoundError):
        await c.batches.create(input_file_id=short.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    assert [f.id for f in (await c.files.list()).data] == [kept.id]
    emu.advance_clock(THIRTY_DAYS)
    assert (await c.files.list()).data == []


async def test_output_expires_after(emu_api: Any, emu: Any):
    file_id = await emu_api.upload([emu_api.chat_line("a")])
    for seconds in (60, THIRTY_DAYS + 1):
        with pytest.raises(openai.BadRequestError) as bad:
            await emu_api.client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                output_expires_after={"anchor": "created_at", "seconds": seconds})
        assert bad.value.body["param"] == "output_expires_after.seconds"
    batch = await emu_api.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200})
    done = await emu_api.wait(batch.id)
    output = await emu_api.client.files.retrieve(done.output_file_id)
    # BatchCreateParams.OutputExpiresAfter: anchored at the output file's creation time.
    assert output.expires_at == output.created_at + 7200
    plain = await emu_api.wait((await emu_api.submit([emu_api.chat_line("b")])).id)
    assert (await emu_api.client.files.retrieve(plain.output_file_id)).expires_at is None
    emu.advance_clock(7200)
    with pytest.raises(openai.NotFoundError):
        await emu_api.client.files.content(done.output_file_id)
    assert (await emu_api.client.files.retrieve(plain.output_file_id)).id


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0)])
async def test_advancing_the_clock_expires_a_batch_after_24h(emu_api: Any, emu: Any):
    batch = await emu_api.submit([emu_api.chat_line("a")])
    await emu_api.wait(batch.id, {"in_progress"})
    emu.advance_clock(86_399)
    assert (await emu_api.client.batches.retrieve(batch.id)).status == "in_progress"
    emu.advance_clock(1)
    done = await emu_api.wait(batch.id)
    assert done.status == "expired"
    assert done.expired_at >= done.created_at + 86_400
    assert done.expired_at == done.expires_at or done.expired_at - done.expires_at <= 1


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0, time_scale=200_000.0)])
async def test_time_scale_runs_the_24h_window_in_under_a_second(emu_api: Any):
    batch = await emu_api.submit([emu_api.chat_line("a")])
    done = await emu_api.wait(batch.id, timeout=10.0)
    assert done.status == "expired"
    assert done.expires_at - done.created_at == 86_400


@pytest.mark.parametrize("emu_config", [EmulatorConfig(latency_s=60.0, cancelling_s=600.0)])
async def test_cancelling_lasts_until_the_clock_has_moved_on(emu_api: Any, emu: Any):
    batch = await emu_api.submit([emu_api.chat_line("a"), emu_api.chat_line("b")])
    await emu_api.wait(batch.id, {"in_progress"})
    cancelling = await emu_api.client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    emu.advance_clock(599)
    for _ in range(20):  # polls see it still cancelling
        assert (await emu_api.client.batches.retrieve(batch.id)).status == "cancelling"
    emu.advance_clock(1)
    done = await emu_api.wait(batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at - done.cancelling_at >= 600


@pytest.mark.parametrize("emu_config", [EmulatorConfig(status_hold_s=3600.0)])
async def test_status_hold_shows_every_intermediate_status(emu_api: Any, emu: Any):
    # Batch.status: validating, failed, in_progress, finalizing, completed, expired,
    # cancelling, cancelled; with a hold a poller sees validating and finalizing too.
    batch = await emu_api.submit([emu_api.chat_line("a")])
    for _ in range(5):
        assert (await emu_api.client.batches.retrieve(batch.id)).status == "validating"
    emu.advance_clock(3600)
    finalizing = await emu_api.wait(batch.id, {"finalizing", "completed"})
    assert finalizing.status == "finalizing"
    assert finalizing.finalizing_at is not None
    for _ in range(5):
        assert (await emu_api.client.batches.retrieve(batch.id)).status == "finalizing"
    emu.advance_clock(3600)
    done = await emu_api.wait(batch.id)
    assert done.status == "completed"
    assert [h.status for h in emu.record.batches[batch.id].history] == [
        "validating", "in_progress", "finalizing", "completed"]
    # With the hold a cancel can land while validating, instead of a 409 on a finished batch.
    other = await emu_api.submit([emu_api.chat_line("b")])
    assert (await emu_api.client.batches.cancel(other.id)).status == "cancelling"
    assert (await emu_api.wait(other.id)).status == "cancelled"


@pytest.mark.parametrize("emu_config", [
    EmulatorConfig(latency_s=60.0, faults=FaultConfig(enqueued_request_limit=5))])
async def test_enqueued_request_limit_is_apart_from_the_token_limit(emu_api: Any):
    first = await emu_api.submit([emu_api.chat_line(f"a{i}") for i in range(4)])
    await emu_api.wait(first.id, {"in_progress"})
    second = await emu_api.submit([emu_api.chat_line(f"b{i}") for i in range(2)])
    failed = await emu_api.wait(second.id)
    assert failed.status == "failed"
    assert failed.errors is not None
    assert failed.errors.data[0].code == "request_limit_exceeded"
    fits = await emu_api.submit([emu_api.chat_line("c0")])
    assert (await emu_api.wait(fits.id, {"in_progress", "failed"})).status == "in_progress"
    other = await emu_api.submit([emu_api.chat_line(f"d{i}", model="gpt-4o") for i in range(5)])
    assert (await emu_api.wait(other.id, {"in_progress", "failed"})).status == "in_progress"


async def test_served_from_the_shell_with_a_fast_clock(tmp_path: Any):
    # As a user runs it: the CLI in a subprocess, an unchanged client pointed at its URL.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "emulator", "--port", "0", "--latency-s", "60",
        "--time-scale", "200000", "--status-hold-s", "3600", "--cancelling-s", "600",
        "--line-invalid-rate", "0.5", "--seed", "9",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    client: openai.AsyncOpenAI | None = None
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        base_url = first.removeprefix("EMULATOR_URL=")
        client = openai.AsyncOpenAI(api_key="any", base_url=base_url, max_retries=0)
        data = "".join(json.dumps({
            "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }) + "\n" for i in range(4)).encode()
        upload = await client.files.create(file=(None, data), purpose="batch")
        batch = await client.batches.create(input_file_id=upload.id, completion_window="24h",
                                            endpoint="/v1/chat/completions")
        async with asyncio.timeout(30):
            while (batch := await client.batches.retrieve(batch.id)).status != "expired":
                await asyncio.sleep(0.02)
        # The 24 h window passed in well under a minute of real time.
        assert batch.expires_at - batch.created_at == 86_400
        assert batch.expired_at >= batch.expires_at - 1
    finally:
        if client is not None:
            await client.close()
        proc.terminate()
        await proc.wait()


def test_cli_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args([
        "--time-scale", "3600", "--cancelling-s", "600", "--models", "gpt-4o-mini, gpt-4o",
        "--line-invalid-rate", "0.1", "--enqueued-request-limit", "7", "--status-hold-s", "2",
    ]))
    assert (config.time_scale, config.cancelling_s, config.status_hold_s) == (3600.0, 600.0, 2.0)
    assert config.models == ("gpt-4o-mini", "gpt-4o")
    assert config.faults.line_invalid_rate == 0.1
    assert config.faults.enqueued_request_limit == 7
