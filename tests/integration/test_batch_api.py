"""BatchApi: against the local emulator over real HTTP, and a recording transport for the
things only a transport can see (chunked upload, exact status codes and headers)."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from engine.batch_api import BatchApi
from engine.errors import AuthenticationError, BatchApiError, ConfigError, TransientApiError
from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.requests import RequestRenderer
from engine.results import ResultParser, Success
from engine.settings import ApiSettings
from engine.store.models import ClaimedItem

SECRET = "sk-test-THIS-KEY-MUST-NEVER-APPEAR-1234567890"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "score": {"type": ["integer", "null"]}},
    "required": ["name", "score"],
    "additionalProperties": False,
}


def make_job(endpoint: str = "/v1/chat/completions") -> JobSpec:
    embeddings = endpoint == "/v1/embeddings"
    return JobSpec(
        name="api-test",
        source=SourceSpec(
            table="t", key_column="id", text_columns=("body",), processed_column="done"
        ),
        model="text-embedding-3-small" if embeddings else "gpt-4o-mini",
        endpoint=endpoint,  # type: ignore[arg-type]
        user_template="Extract from: {body}",
        output_schema=None if embeddings else SCHEMA,
        columns=() if embeddings else (
            ColumnMapping(field="name", column="out_name"),
            ColumnMapping(field="score", column="out_score", kind="int"),
        ),
        embedding_column="vec" if embeddings else None,
        embedding_dimensions=8 if embeddings else None,
    )


def write_input(path: Path, job: JobSpec, n: int) -> list[str]:
    renderer = RequestRenderer(job)
    ids = []
    with path.open("wb") as out:
        for i in range(n):
            item = ClaimedItem(key=f"k{i}|x", claim_token="t", attempts=0,
                               row={"body": f"Row {i}: Ada, {i} years, {{braces}} \"quotes\""})
            rendered = renderer.render(item, 0)
            out.write(rendered.line)
            ids.append(rendered.custom_id)
    return ids


# -- the emulator ------------------------------------------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[Callable[..., Any]]:
    from engine.emulator import Emulator, EmulatorConfig, FaultConfig

    started: list[Any] = []

    async def start(**faults: Any) -> Any:
        config = EmulatorConfig(faults=FaultConfig(**faults))
        emu = Emulator(config)
        await emu.__aenter__()
        started.append(emu)
        return emu

    try:
        yield start
    finally:
        for emu in started:
            await emu.__aexit__(None, None, None)


def api_for(
    emu: Any, *, key: str = SECRET, attempts: int = 6, timeout_s: float = 10
) -> BatchApi:
    settings = ApiSettings(
        api_key=key, base_url=emu.base_url, timeout_s=timeout_s, max_retries=attempts
    )
    return BatchApi(settings, retry_initial_s=0.001, retry_max_s=0.05)


async def wait_terminal(api: BatchApi, batch_id: str) -> Any:
    for _ in range(2000):
        batch = await api.retrieve_batch(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.005)  # the emulator's clock runs at latency 0; this is a poll
    raise AssertionError(f"batch {batch_id} did not finish")


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
async def test_lifecycle_round_trip(emulator: Any, tmp_path: Path, endpoint: str) -> None:
    emu = await emulator()
    job = make_job(endpoint)
    source = tmp_path / "in.jsonl"
    ids = write_input(source, job, 25)
    async with api_for(emu) as api:
        file_id = await api.upload_file(source)
        batch = await api.create_batch(file_id, endpoint, {"engine_batch": "local-1"})
        assert batch.metadata == {"engine_batch": "local-1"}
        assert batch.completion_window == "24h"
        done = await wait_terminal(api, batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert done.request_counts.total == 25
        out = tmp_path / "out.jsonl"
        size = await api.download_file(done.output_file_id, out)
        assert size == out.stat().st_size > 0
        assert not (tmp_path / "out.jsonl.part").exists()
        parser = ResultParser(job)
        outcomes = [parser.parse_output_line(line) for line in out.read_bytes().splitlines()]
        assert sorted(o.custom_id for o in outcomes) == sorted(ids)
        assert all(isinstance(o, Success) for o in outcomes), [
            o for o in outcomes if not isinstance(o, Success)
        ]
        assert {o.key for o in outcomes} == {f"k{i}|x" for i in range(25)}
        assert await api.delete_file(file_id) is True
        assert await api.delete_file(file_id) is False


async def test_transient_faults_are_retried(emulator: Any, tmp_path: Path) -> None:
    emu = await emulator(http_429_rate=0.3, http_500_rate=0.15, http_503_rate=0.15)
    source = tmp_path / "in.jsonl"
    write_input(source, make_job(), 5)
    async with api_for(emu, attempts=30) as api:
        for _ in range(5):
            file_id = await api.upload_file(source)
            batch = await api.create_batch(file_id, "/v1/chat/completions", {"n": "1"})
            assert (await api.retrieve_batch(batch.id)).id == batch.id


async def test_create_after_dropped_connections_makes_one_batch(
    emulator: Any, tmp_path: Path
) -> None:
    emu = await emulator()
    source = tmp_path / "in.jsonl"
    write_input(source, make_job(), 3)
    # A cut-off create is looked for during one create timeout before it is sent again.
    async with api_for(emu, attempts=40, timeout_s=0.5) as api:
        file_id = await api.upload_file(source)
        from engine.emulator import FaultConfig

        emu.faults = FaultConfig(drop_connection_rate=0.5)
        made = set()
        for i in range(6):
            batch = await api.create_batch(
                file_id, "/v1/chat/completions", {"engine_batch": f"local-{i}"}
            )
            made.add(batch.id)
        emu.faults = FaultConfig()
        seen: dict[str, int] = {}
        async for remote in api.iter_recent_batches(5):
            tag = (remote.metadata or {}).get("engine_batch", "")
            seen[tag] = seen.get(tag, 0) + 1
    assert len(made) == 6
    assert seen == {f"local-{i}": 1 for i in range(6)}


async def test_pagination_newest_first(emulator: Any, tmp_path: Path) -> None:
    emu = await emulator()
    source = tmp_path / "in.jsonl"
    write_input(source, make_job(), 1)
    async with api_for(emu) as api:
        file_id = await api.upload_file(source)
        created = [
            (await api.create_batch(file_id, "/v1/chat/completions", {"i": str(i)})).id
            for i in range(7)
        ]
        listed = [b.id async for b in api.iter_recent_batches(10, page_size=2)]
        assert listed == list(reversed(created))
        first_two_pages = [b.id async for b in api.iter_recent_batches(2, page_size=2)]
        assert first_two_pages == list(reversed(created))[:4]


async def test_cancel(emulator: Any, tmp_path: Path) -> None:
    emu = await emulator()
    source = tmp_path / "in.jsonl"
    write_input(source, make_job(), 2)
    async with api_for(emu) as api:
        file_id = await api.upload_file(source)
        batch = await api.create_batch(file_id, "/v1/chat/completions", {})
        cancelled = await api.cancel_batch(batch.id)
        assert cancelled.status in ("cancelling", "cancelled", "completed")


async def test_wrong_key_is_authentication_error_without_the_key() -> None:
    from engine.emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(api_key="right-key")) as emu, api_for(emu) as api:
        with pytest.raises(AuthenticationError) as info:
            await api.retrieve_batch("batch_x")
    assert "401" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET[10:30] not in repr(info.value)


async def test_not_found_is_not_retried(emulator: Any) -> None:
    emu = await emulator()
    async with api_for(emu) as api:
        with pytest.raises(BatchApiError) as info:
            await api.retrieve_batch("batch_does_not_exist")
    assert not isinstance(info.value, TransientApiError)
    assert "404" in str(info.value)


# -- a recording transport ---------------------------------------------------------------


class Recorder(httpx2.AsyncBaseTransport):
    """Answers from a script of responses and records every request and upload chunk."""

    def __init__(self, responses: list[httpx2.Response | Exception]) -> None:
        self.responses = responses
        self.requests: list[httpx2.Request] = []
        self.chunks: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        async for chunk in request.stream:  # type: ignore[union-attr]
            self.chunks.append(len(chunk))
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response


def recorded_api(
    responses: list[httpx2.Response | Exception], *, backoff_s: float = 0.001, **kwargs: Any
) -> tuple[BatchApi, Recorder]:
    recorder = Recorder(responses)
    settings = ApiSettings(api_key=SECRET, base_url="http://127.0.0.1:9/v1", **kwargs)
    api = BatchApi(
        settings,
        http_client=httpx2.AsyncClient(transport=recorder),
        retry_initial_s=backoff_s,
        retry_max_s=max(backoff_s, 0.05),
    )
    return api, recorder


def file_object(file_id: str = "file-1") -> httpx2.Response:
    return httpx2.Response(
        200,
        json={"id": file_id, "object": "file", "bytes": 1, "created_at": 1, "filename": "x.jsonl",
              "purpose": "batch", "status": "processed"},
    )


def batch_object(batch_id: str, engine_batch: str, input_file_id: str = "file-1"
                 ) -> dict[str, Any]:
    return {
        "id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
        "input_file_id": input_file_id, "completion_window": "24h", "status": "validating",
        "created_at": 1, "metadata": {"engine_batch": engine_batch},
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
    }


def page(*batches: dict[str, Any], has_more: bool = False) -> httpx2.Response:
    return httpx2.Response(200, json={
        "object": "list", "data": list(batches), "has_more": has_more,
        "first_id": batches[0]["id"] if batches else None,
        "last_id": batches[-1]["id"] if batches else None,
    })


async def test_create_whose_answer_was_lost_is_found_not_repeated() -> None:
    api, recorder = recorded_api([
        httpx2.ReadError("connection reset after the server created the batch"),
        page(batch_object("batch_other", "local-9"), batch_object("batch_ours", "local-1")),
    ])
    async with api:
        batch = await api.create_batch(
            "file-1", "/v1/chat/completions", {"engine_batch": "local-1"}
        )
    assert batch.id == "batch_ours"
    assert [r.method for r in recorder.requests] == ["POST", "GET"]


async def test_create_lost_before_the_server_is_created_once_more() -> None:
    api, recorder = recorded_api([
        httpx2.ConnectError("refused"),
        page(batch_object("batch_other", "local-9")),
        httpx2.Response(200, json=batch_object("batch_new", "local-1")),
    ])
    async with api:
        batch = await api.create_batch(
            "file-1", "/v1/chat/completions", {"engine_batch": "local-1"}
        )
    assert batch.id == "batch_new"
    assert [r.method for r in recorder.requests] == ["POST", "GET", "POST"]


async def test_create_refused_with_429_does_not_look_up() -> None:
    api, recorder = recorded_api([
        error(429, "rate_limit_exceeded", "slow", {"retry-after-ms": "1"}),
        httpx2.Response(200, json=batch_object("batch_new", "local-1")),
    ])
    async with api:
        await api.create_batch("file-1", "/v1/chat/completions", {"engine_batch": "local-1"})
    assert [r.method for r in recorder.requests] == ["POST", "POST"]


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None
          ) -> httpx2.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}
    return httpx2.Response(status, json=body, headers=headers or {})


async def test_upload_streams_the_file_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = b'{"custom_id": "x", "body": "' + b"a" * 1000 + b'"}\n'
    with path.open("wb") as out:
        for _ in range(16 * 1024):  # ~16 MB
            out.write(line)
    size = path.stat().st_size
    api, recorder = recorded_api([file_object()])
    tracemalloc.start()
    try:
        async with api:
            assert await api.upload_file(path) == "file-1"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(recorder.chunks) > size
    assert max(recorder.chunks) <= 64 * 1024
    assert peak < 4 * 1024 * 1024, f"upload of {size} bytes peaked at {peak} bytes"
    request = recorder.requests[0]
    assert request.url.path == "/v1/files"
    assert int(request.headers["content-length"]) == sum(recorder.chunks)
    assert request.headers["authorization"] == f"Bearer {SECRET}"


async def test_upload_retry_resends_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n' * 1000)
    api, recorder = recorded_api(
        [error(503, "overloaded", "busy", {"retry-after-ms": "1"}), file_object("file-2")]
    )
    async with api:
        assert await api.upload_file(path) == "file-2"
    first = [int(r.headers["content-length"]) for r in recorder.requests]
    assert len(first) == 2
    assert first[0] == first[1] > 9000


async def test_retry_after_is_honoured_and_no_sdk_retries() -> None:
    # Our own backoff would wait 30 s; the server's Retry-After says 0.01 s.
    api, recorder = recorded_api(
        [error(429, "rate_limit_exceeded", "slow down", {"retry-after": "0.01"}),
         httpx2.Response(200, json={"id": "file-1", "object": "file.deleted", "deleted": True})],
        backoff_s=30.0,
    )
    loop = asyncio.get_running_loop()
    async with api:
        start = loop.time()
        assert await api.delete_file("file-1") is True
        waited = loop.time() - start
    assert len(recorder.requests) == 2  # one failure, one retry: the SDK did not retry itself
    assert waited < 5.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, BatchApiError), (404, BatchApiError), (401, AuthenticationError),
     (403, AuthenticationError), (500, TransientApiError), (429, TransientApiError)],
)
async def test_status_mapping(status: int, kind: type[Exception]) -> None:
    other = "sk-proj-ANOTHERKEYSHAPEDSTRING0123456789"
    message = f"Incorrect API key provided: {SECRET}. Not {other} either."
    api, recorder = recorded_api(
        [error(status, "some_code", message) for _ in range(3)], max_retries=3
    )
    async with api:
        with pytest.raises(kind) as info:
            await api.retrieve_batch("batch_1")
    assert type(info.value) is kind
    assert f"HTTP {status} some_code" in str(info.value)
    assert str(info.value).endswith("Incorrect API key provided: ***. Not sk-pr*** either.")
    expected_calls = 3 if kind is TransientApiError else 1
    assert len(recorder.requests) == expected_calls
    assert info.value.__cause__ is None


async def test_transient_error_carries_retry_after() -> None:
    api, _ = recorded_api([error(429, "rate_limit_exceeded", "x", {"retry-after": "7"})],
                          max_retries=1)
    async with api:
        with pytest.raises(TransientApiError) as info:
            await api.cancel_batch("batch_1")
    assert info.value.retry_after_s == 7.0  # type: ignore[attr-defined]


async def test_download_writes_and_counts(tmp_path: Path) -> None:
    body = b"line\n" * 500_000
    api, recorder = recorded_api([httpx2.Response(200, content=body)])
    dest = tmp_path / "out.jsonl"
    async with api:
        assert await api.download_file("file-1", dest) == len(body)
    assert dest.read_bytes() == body
    assert recorder.requests[0].url.path == "/v1/files/file-1/content"


async def test_download_rejects_a_short_body(tmp_path: Path) -> None:
    short = httpx2.Response(200, content=b"abc", headers={"content-length": "10"})
    api, _ = recorded_api([short], max_retries=1)
    dest = tmp_path / "out.jsonl"
    async with api:
        with pytest.raises(TransientApiError, match="got 3 of 10 bytes"):
            await api.download_file("file-1", dest)
    assert list(tmp_path.iterdir()) == []


def test_metadata_limits_are_checked_before_any_call() -> None:
    api, recorder = recorded_api([])

    async def run() -> None:
        async with api:
            with pytest.raises(ConfigError, match="metadata"):
                await api.create_batch("file-1", "/v1/chat/completions", {"k" * 65: "v"})
            with pytest.raises(ConfigError, match="metadata"):
                await api.create_batch(
                    "file-1", "/v1/chat/completions", {str(i): "v" for i in range(17)}
                )

    asyncio.run(run())
    assert recorder.requests == []


def test_azure_needs_an_endpoint_and_uses_the_azure_client() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        BatchApi(ApiSettings(api_key="k", provider="azure"))

    async def run() -> None:
        api = BatchApi(ApiSettings(
            api_key="k", provider="azure", base_url="https://example.openai.azure.com"
        ))
        async with api:
            import openai

            assert isinstance(api._client, openai.AsyncAzureOpenAI)
            assert api._client.max_retries == 0

    asyncio.run(run())


async def test_openai_client_defaults() -> None:
    api = BatchApi(ApiSettings(api_key="k", timeout_s=12.5))
    async with api:
        assert api._client.max_retries == 0
        assert str(api._client.base_url).startswith("https://api.openai.com/v1")
        assert api._client.timeout == 12.5


async def test_cancel_of_a_finished_batch_returns_its_state_without_retrying(
    emulator: Any, tmp_path: Path
) -> None:
    emu = await emulator()
    source = tmp_path / "in.jsonl"
    write_input(source, make_job(), 2)
    async with api_for(emu) as api:
        file_id = await api.upload_file(source)
        batch = await api.create_batch(file_id, "/v1/chat/completions", {})
        for _ in range(200):
            batch = await api.retrieve_batch(batch.id)
            if batch.status == "completed":
                break
            await asyncio.sleep(0.01)
        assert batch.status == "completed"
        again = await api.cancel_batch(batch.id)
    assert again.status == "completed"


@pytest.mark.parametrize(("timeout_s", "create_timeout_s"), [(600.0, 60.0), (10.0, 10.0)])
async def test_create_has_its_own_short_timeout(
    monkeypatch: pytest.MonkeyPatch, timeout_s: float, create_timeout_s: float
) -> None:
    """Uploads keep the long timeout; a create is bounded, so adopters know how long to wait."""
    settings = ApiSettings(api_key="sk-test", base_url="http://127.0.0.1:9/v1", timeout_s=timeout_s)
    seen: dict[str, Any] = {}
    async with BatchApi(settings) as api:

        async def create(**kwargs: Any) -> Any:
            seen.update(kwargs)
            raise asyncio.CancelledError  # stop here: nothing listens on port 9

        monkeypatch.setattr(api._client.batches, "create", create)
        with pytest.raises(asyncio.CancelledError):
            await api.create_batch("file-1", "/v1/chat/completions", {"engine_batch": "b"})
        assert api.create_timeout_s == create_timeout_s
        assert seen["timeout"] == create_timeout_s
