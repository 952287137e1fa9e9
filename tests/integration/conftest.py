"""Fixtures for the emulator tests: a running Emulator and the official AsyncOpenAI client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import openai
import pytest

from engine.emulator import Emulator, EmulatorConfig

TERMINAL = {"completed", "failed", "expired", "cancelled"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 40},
        "years": {"type": "integer", "minimum": 0, "maximum": 60},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "level": {"type": "string", "enum": ["junior", "mid", "senior"]},
        "remote": {"type": "boolean"},
        "email": {"type": ["string", "null"], "format": "email"},
        "skills": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "last_job": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {"title": {"type": "string"}, "until": {"type": "string",
                                                                          "format": "date"}},
                    "required": ["title", "until"],
                    "additionalProperties": False,
                },
            ]
        },
    },
    "required": ["name", "years", "score", "level", "remote", "email", "skills", "last_job"],
    "additionalProperties": False,
}


def chat_line(custom_id: str, text: str = "hello", *, model: str = "gpt-4o-mini",
              schema: dict[str, Any] | None = SCHEMA, name: str = "extraction",
              **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [
        {"role": "system", "content": "Extract."}, {"role": "user", "content": text}]}
    if schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": name, "schema": schema, "strict": True}}
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def responses_line(custom_id: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "instructions": "Extract.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        "text": {"format": {"type": "json_schema", "name": "extraction", "schema": SCHEMA,
                            "strict": True}},
    }
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def embedding_line(custom_id: str, text: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "text-embedding-3-small", "input": text,
                            "encoding_format": "float"}
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def jsonl(lines: Iterable[dict[str, Any] | str]) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


class Api:
    """Thin helpers over the official client, so each test reads as its scenario."""

    SCHEMA = SCHEMA
    TERMINAL = TERMINAL
    chat_line = staticmethod(chat_line)
    responses_line = staticmethod(responses_line)
    embedding_line = staticmethod(embedding_line)
    jsonl = staticmethod(jsonl)

    def __init__(self, client: openai.AsyncOpenAI, emu: Emulator) -> None:
        self.client = client
        self.emu = emu

    async def upload(self, lines: Iterable[dict[str, Any] | str], name: str = "in.jsonl") -> str:
        f = await self.client.files.create(file=(name, jsonl(lines)), purpose="batch")
        return f.id

    async def submit(self, lines: Iterable[dict[str, Any] | str],
                     endpoint: str = "/v1/chat/completions", **kw: Any) -> Any:
        file_id = await self.upload(lines)
        return await self.client.batches.create(
            input_file_id=file_id, endpoint=endpoint, completion_window="24h", **kw
        )

    async def wait(self, batch_id: str, statuses: set[str] = TERMINAL,
                   timeout: float = 20.0) -> Any:
        """Poll (as the engine does) until the batch reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        while True:
            batch = await self.client.batches.retrieve(batch_id)
            if batch.status in statuses:
                return batch
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {batch_id} stuck in {batch.status}")
            await asyncio.sleep(0.005)

    async def wait_for(self, batch_id: str, predicate: Any, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            batch = await self.client.batches.retrieve(batch_id)
            if predicate(batch):
                return batch
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {batch_id}: condition not met ({batch.status})")
            await asyncio.sleep(0.005)

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        content = await self.client.files.content(file_id)
        return [json.loads(x) for x in content.text.splitlines() if x.strip()]


@pytest.fixture
def emu_config() -> EmulatorConfig:
    return EmulatorConfig()


@pytest.fixture
async def emu(emu_config: EmulatorConfig) -> AsyncIterator[Emulator]:
    async with Emulator(emu_config) as emulator:
        yield emulator


@pytest.fixture
async def emu_api(emu: Emulator) -> AsyncIterator[Api]:
    client = openai.AsyncOpenAI(api_key="test", base_url=emu.base_url, max_retries=0)
    try:
        yield Api(client, emu)
    finally:
        await client.close()


@pytest.fixture
async def make_emu_api() -> AsyncIterator[Any]:
    """Start more emulators in one test: ``api = await make_emu_api(EmulatorConfig(...))``."""
    opened: list[tuple[Emulator, openai.AsyncOpenAI]] = []

    async def make(config: EmulatorConfig) -> Api:
        emulator = Emulator(config)
        await emulator.start()
        client = openai.AsyncOpenAI(api_key="test", base_url=emulator.base_url, max_retries=0)
        opened.append((emulator, client))
        return Api(client, emulator)

    try:
        yield make
    finally:
        for emulator, client in opened:
            await client.close()
            await emulator.close()
