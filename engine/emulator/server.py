"""The aiohttp server: OpenAI Files + Batches routes, auth, HTTP faults, and ``Emulator``."""

from __future__ import annotations

import asyncio
import codecs
import hmac
import logging
import random
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from aiohttp import BodyPartReader, web

from engine.emulator.bodies import ENDPOINTS
from engine.emulator.config import EmulatorConfig, FaultConfig
from engine.emulator.state import (
    TERMINAL_STATUSES,
    Batch,
    EmulatorState,
    Record,
    StoredFile,
    new_id,
)
from engine.errors import LifecycleError

__all__ = ["Emulator"]

log = logging.getLogger("engine.emulator")

# BatchCreateParams.input_file_id: a batch input file "can be up to 200 MB in size"; the Files
# API takes up to 512 MB for every other purpose.
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_OTHER_FILE_BYTES = 512 * 1024 * 1024
# FileCreateParams.expires_after: "By default, files with purpose=batch expire after 30 days";
# expires_after.seconds and output_expires_after.seconds "Must be between 3600 and 2592000".
BATCH_FILE_EXPIRY_S = 2_592_000
EXPIRY_RANGE_S = (3600, 2_592_000)
_CHUNK = 1 << 16
_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_ENDPOINTS = ENDPOINTS
_NOT_JSONL = "Invalid file format for Batch API. Must be .jsonl"
_NOT_UTF8 = "Invalid file for Batch API. Must be utf-8 encoded"
_STATE_KEY: web.AppKey[EmulatorState] = web.AppKey("state", EmulatorState)
_EMULATOR_KEY: web.AppKey[Emulator] = web.AppKey("emulator")
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class ApiError(web.HTTPException):
    """An OpenAI-shaped error response: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status
        payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        super().__init__(
            text=web.json_response(payload).text, content_type="application/json",
            headers=headers,
        )


# --- middlewares ---------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn aiohttp's plain-text 404/405/413 into the API's JSON error shape."""
    try:
        response: web.StreamResponse = await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            raise ApiError(404, f"Invalid URL ({request.method} {request.path})") from exc
        raise ApiError(exc.status, exc.reason) from exc
    return response


@web.middleware
async def _auth_and_faults(request: web.Request, handler: Any) -> web.StreamResponse:
    """Require a bearer key on /v1, then maybe inject an HTTP fault for this call."""
    if not request.path.startswith("/v1/"):
        response: web.StreamResponse = await handler(request)
        return response
    emulator = request.app[_EMULATOR_KEY]
    state = request.app[_STATE_KEY]
    state.counters["api_requests"] += 1
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, _NO_KEY)
    expected = emulator.config.api_key
    if expected is not None and not hmac.compare_digest(key.strip().encode(), expected.encode()):
        # The real API echoes a masked key; we echo none of it, so it never reaches a log.
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    fault = emulator.draw_http_fault()
    if fault is not None:
        state.counters[f"http_fault_{fault}"] += 1
        faults = emulator.faults
        if fault == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise ApiError(500, "connection dropped")  # never reaches the client
        if fault == "429":
            headers = {
                "Retry-After": f"{faults.retry_after_s:g}",
                "retry-after-ms": str(int(faults.retry_after_s * 1000)),
            }
            raise ApiError(429, "Rate limit reached for requests. Please try again later.",
                           kind="requests", code="rate_limit_exceeded", headers=headers)
        if fault == "500":
            raise ApiError(500, "The server had an error while processing your request. "
                           "Sorry about that!", kind="server_error")
        raise ApiError(503, "The engine is currently overloaded, please try again later.",
                       kind="server_error")
    response = await handler(request)
    return response


# --- files ---------------------------------------------------------------------------------


def _file_or_404(state: EmulatorState, file_id: str) -> StoredFile:
    """Return the stored file, or raise the API's 404 (also for an expired file)."""
    stored = state.live_file(file_id)
    if stored is None:
        raise ApiError(404, f"No such File object: {file_id}", param="id")
    return stored


async def _upload(request: web.Request) -> web.Response:
    """POST /v1/files: stream the multipart ``file`` part to disk in chunks, then check it.

    A ``file`` part with no file name, or one without an extension, is accepted: the openai SDK
    sends raw bytes so (``filename="upload"`` for bytes or BytesIO, none for ``(None, bytes)``),
    and the real API takes them. A batch file named with another extension is refused.
    """
    state = request.app[_STATE_KEY]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Expected a multipart/form-data request.")
    file_id = new_id("file-")
    partial = state.storage_dir / f"{file_id}.upload"
    purpose: str | None = None
    filename: str | None = None
    text_ok = True
    expiry: dict[str, str] = {}
    size = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or "upload"
                size, text_ok = await _save_part(part, partial, purpose)
            elif part.name in ("expires_after[anchor]", "expires_after[seconds]"):
                expiry[part.name[len("expires_after["):-1]] = (await part.text()).strip()
            else:
                await part.release()
        if purpose is None:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose",
                           code="missing_required_parameter")
        if filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file",
                           code="missing_required_parameter")
        if purpose not in _PURPOSES:
            raise ApiError(400, f"'{purpose}' is not one of {list(_PURPOSES)} - 'purpose'",
                           param="purpose", code="invalid_value")
        expires_after_s = _check_expiry(expiry, "expires_after") if expiry else None
        if purpose == "batch":
            suffix = PurePosixPath(filename).suffix
            if suffix and suffix.lower() != ".jsonl":
                raise ApiError(400, _NOT_JSONL)
            if size > MAX_FILE_BYTES:
                raise _too_large(MAX_FILE_BYTES)
            if not text_ok:
                raise ApiError(400, _NOT_UTF8)
            if expires_after_s is None:
                expires_after_s = BATCH_FILE_EXPIRY_S
        partial.rename(state.file_path(file_id))
        stored = state.add_file(file_id, filename, purpose, size, expires_after_s)
    finally:
        partial.unlink(missing_ok=True)
    log.info("file %s uploaded (%d bytes, purpose %s)", file_id, size, purpose)
    return web.json_response(stored.to_json())


def _too_large(limit: int) -> ApiError:
    """Build the 400 for a file over ``limit`` bytes."""
    return ApiError(400, f"File is too large: the limit for this purpose is "
                    f"{limit // (1024 * 1024)} MB.", param="file", code="file_too_large")


def _check_expiry(given: Any, name: str) -> int:
    """Validate an ``expires_after``-shaped value ({anchor: created_at, seconds}); seconds."""
    if not isinstance(given, dict):
        raise ApiError(400, f"Invalid type for '{name}': expected an object, but got "
                       f"{type(given).__name__} instead.", param=name, code="invalid_type")
    for key in ("anchor", "seconds"):
        if key not in given:
            raise ApiError(400, f"Missing required parameter: '{name}.{key}'.",
                           param=f"{name}.{key}", code="missing_required_parameter")
    if given["anchor"] != "created_at":
        raise ApiError(400, f"Invalid value: '{given['anchor']}'. Supported values are: "
                       "'created_at'.", param=f"{name}.anchor", code="invalid_value")
    raw = given["seconds"]
    try:
        if isinstance(raw, (bool, float)):
            raise ValueError(raw)
        seconds = int(raw)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"Invalid type for '{name}.seconds': expected an integer, but got "
                       f"'{raw}' instead.", param=f"{name}.seconds",
                       code="invalid_type") from exc
    low, high = EXPIRY_RANGE_S
    if seconds < low:
        raise ApiError(400, f"Invalid '{name}.seconds': integer below minimum value. Expected "
                       f"a value >= {low}, but got {seconds} instead.", param=f"{name}.seconds",
                       code="integer_below_min_value")
    if seconds > high:
        raise ApiError(400, f"Invalid '{name}.seconds': integer above maximum value. Expected "
                       f"a value <= {high}, but got {seconds} instead.", param=f"{name}.seconds",
                       code="integer_above_max_value")
    return seconds


async def _save_part(part: BodyPartReader, dest: Path, purpose: str | None) -> tuple[int, bool]:
    """Copy one multipart part to ``dest`` chunk by chunk; return (size, is utf-8 text).

    The cap is the purpose's when the purpose came first (the SDK sends it first), else the
    larger one and the batch cap is applied after. NUL bytes count as not text: a UTF-16 file
    without a byte-order mark is valid UTF-8 byte by byte but is not what the API accepts.
    """
    limit = MAX_FILE_BYTES if purpose == "batch" else MAX_OTHER_FILE_BYTES
    decoder = codecs.getincrementaldecoder("utf-8")()
    text_ok = True
    size = 0
    with dest.open("wb") as fh:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if text_ok:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    text_ok = False
                text_ok = text_ok and b"\x00" not in chunk
            fh.write(chunk)
    if text_ok:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            text_ok = False
    return size, text_ok


async def _list_files(request: web.Request) -> web.Response:
    """GET /v1/files (newest first, optional purpose, after/limit)."""
    state = request.app[_STATE_KEY]
    state.expire_files()
    purpose = request.query.get("purpose")
    files = [f for f in state.files.values() if purpose is None or f.purpose == purpose]
    files.sort(key=lambda f: f.created_at, reverse=request.query.get("order", "desc") == "desc")
    page = _page([f.to_json() for f in files], request, default=10_000, maximum=10_000)
    return web.json_response(page)


async def _get_file(request: web.Request) -> web.Response:
    """GET /v1/files/{file_id}."""
    state = request.app[_STATE_KEY]
    return web.json_response(_file_or_404(state, request.match_info["file_id"]).to_json())


async def _delete_file(request: web.Request) -> web.Response:
    """DELETE /v1/files/{file_id}."""
    state = request.app[_STATE_KEY]
    stored = _file_or_404(state, request.match_info["file_id"])
    state.delete_file(stored.id)
    return web.json_response({"id": stored.id, "object": "file", "deleted": True})


async def _file_content(request: web.Request) -> web.StreamResponse:
    """GET /v1/files/{file_id}/content, streamed from disk."""
    state = request.app[_STATE_KEY]
    stored = _file_or_404(state, request.match_info["file_id"])
    return web.FileResponse(stored.path, headers={"Content-Type": "application/octet-stream"})


# --- batches -------------------------------------------------------------------------------


def _batch_or_404(state: EmulatorState, batch_id: str) -> Batch:
    """Return the batch, or raise the API's 404."""
    batch = state.batches.get(batch_id)
    if batch is None:
        raise ApiError(404, f"No batch found with id '{batch_id}'.")
    return batch


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    """Validate metadata as the API does: <= 16 string pairs, keys <= 64, values <= 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ApiError(400, "Invalid type for 'metadata': expected an object.",
                       param="metadata", code="invalid_type")
    if len(metadata) > 16:
        raise ApiError(400, "Invalid 'metadata': too many properties. Expected an object "
                       "with at most 16 properties.", param="metadata",
                       code="object_above_max_properties")
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(400, "Invalid 'metadata': keys can be at most 64 characters.",
                           param="metadata", code="invalid_value")
        if not isinstance(value, str):
            raise ApiError(400, f"Invalid type for 'metadata.{key}': expected a string.",
                           param=f"metadata.{key}", code="invalid_type")
        if len(value) > 512:
            raise ApiError(400, f"Invalid 'metadata.{key}': string too long. Expected at "
                           "most 512 characters.", param=f"metadata.{key}",
                           code="string_above_max_length")
    return dict(metadata)


async def _create_batch(request: web.Request) -> web.Response:
    """POST /v1/batches."""
    state = request.app[_STATE_KEY]
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, "We could not parse the JSON body of your request.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if key not in body:
            raise ApiError(400, f"Missing required parameter: '{key}'.", param=key,
                           code="missing_required_parameter")
    endpoint = body["endpoint"]
    if endpoint not in _ENDPOINTS:
        raise ApiError(400, f"Invalid value: '{endpoint}'. Supported values are: "
                       f"{', '.join(_ENDPOINTS)}.", param="endpoint", code="invalid_value")
    if body["completion_window"] != "24h":
        raise ApiError(400, f"Invalid value: '{body['completion_window']}'. Supported values "
                       "are: '24h'.", param="completion_window", code="invalid_value")
    metadata = _check_metadata(body.get("metadata"))
    output_expires_s = None
    if body.get("output_expires_after") is not None:
        output_expires_s = _check_expiry(body["output_expires_after"], "output_expires_after")
    input_file = state.live_file(str(body["input_file_id"]))
    if input_file is None:
        raise ApiError(404, f"No such File object: {body['input_file_id']}",
                       param="input_file_id")
    if input_file.purpose != "batch":
        raise ApiError(400, "The input file must be uploaded with purpose 'batch'.",
                       param="input_file_id")
    await _hold_create(request)
    batch = state.create_batch(input_file, endpoint, "24h", metadata, output_expires_s)
    return web.json_response(batch.to_json())


async def _hold_create(request: web.Request) -> None:
    """Keep an accepted create in flight for faults.create_delay_s (the held-create fault).

    The batch lands when the delay is over even if the client has gone meanwhile (aiohttp
    does not cancel a handler whose client disconnected), like a request already on the wire.
    """
    emulator = request.app[_EMULATOR_KEY]
    delay = emulator.faults.create_delay_s
    if delay > 0:
        emulator.creates_held += 1
        await asyncio.sleep(delay)


async def _get_batch(request: web.Request) -> web.Response:
    """GET /v1/batches/{batch_id}."""
    state = request.app[_STATE_KEY]
    return web.json_response(_batch_or_404(state, request.match_info["batch_id"]).to_json())


async def _list_batches(request: web.Request) -> web.Response:
    """GET /v1/batches?after=&limit= (newest first)."""
    state = request.app[_STATE_KEY]
    batches = sorted(state.batches.values(), key=lambda b: b.seq, reverse=True)
    return web.json_response(_page([b.to_json() for b in batches], request, 20, 100))


def _page(
    items: list[dict[str, Any]], request: web.Request, default: int, maximum: int
) -> dict[str, Any]:
    """Build a cursor page: ``after`` (an id) and ``limit``; first_id, last_id, has_more."""
    raw = request.query.get("limit")
    limit = default
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError as exc:
            raise ApiError(400, f"Invalid 'limit': expected an integer, got '{raw}'.",
                           param="limit", code="invalid_type") from exc
        if limit < 1:
            raise ApiError(400, f"Invalid 'limit': integer below minimum value. Expected a "
                           f"value >= 1, but got {limit} instead.", param="limit",
                           code="integer_below_min_value")
        if limit > maximum:
            raise ApiError(400, f"Invalid 'limit': integer above maximum value. Expected a "
                           f"value <= {maximum}, but got {limit} instead.", param="limit",
                           code="integer_above_max_value")
    after = request.query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


async def _cancel_batch(request: web.Request) -> web.Response:
    """POST /v1/batches/{batch_id}/cancel."""
    state = request.app[_STATE_KEY]
    batch = _batch_or_404(state, request.match_info["batch_id"])
    if batch.status in ("completed", "failed", "expired"):
        raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
    state.cancel_batch(batch)
    return web.json_response(batch.to_json())


# --- test hooks ----------------------------------------------------------------------------


async def _record(request: web.Request) -> web.Response:
    """GET /_emulator/record: every accepted batch, for tests in another process."""
    return web.json_response(request.app[_STATE_KEY].record.to_json())


async def _stats(request: web.Request) -> web.Response:
    """GET /_emulator/stats: counts and memory."""
    return web.json_response(request.app[_STATE_KEY].stats())


# --- the emulator --------------------------------------------------------------------------


class Emulator:
    """A local OpenAI Files + Batches API over real HTTP.

    ``async with Emulator(EmulatorConfig(...)) as emu:`` then point any client at
    ``emu.base_url``. ``emu.faults`` may be replaced while it runs.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.record = Record()
        self.base_url = ""
        self._faults = self.config.faults
        self._http_rng = random.Random(f"{self.config.seed}:http")
        self._state: EmulatorState | None = None
        self._runner: web.AppRunner | None = None
        self._temp_dir: str | None = None
        self._used = False
        self.creates_held = 0  # batches.create requests the create_delay_s fault has held

    @property
    def faults(self) -> FaultConfig:
        """The faults in force; assign a new FaultConfig to change them mid-run."""
        return self._faults

    @faults.setter
    def faults(self, value: FaultConfig) -> None:
        self._faults = value
        if self._state is not None:
            self._state.faults = value

    @property
    def storage_dir(self) -> Path:
        """The directory holding every stored file (valid while running)."""
        return self._live_state().storage_dir

    def _live_state(self) -> EmulatorState:
        """Return the running state, or raise LifecycleError."""
        if self._state is None:
            raise LifecycleError("Emulator is not running: use 'async with' or start()")
        return self._state

    def draw_http_fault(self) -> str | None:
        """Draw this API call's fault: "drop", "429", "500", "503" or None."""
        faults = self._faults
        draw = self._http_rng.random()
        edge = 0.0
        for rate, name in (
            (faults.drop_connection_rate, "drop"),
            (faults.http_429_rate, "429"),
            (faults.http_500_rate, "500"),
            (faults.http_503_rate, "503"),
        ):
            edge += rate
            if draw < edge:
                return name
        return None

    def force_expire(self, batch_id: str) -> None:
        """Expire a live batch now: finished lines kept, the rest ``batch_expired``."""
        self._live_state().force_expire(batch_id)

    def advance_clock(self, seconds: float) -> None:
        """Move the emulated clock ``seconds`` on: windows, file expiry and cancelling see it."""
        self._live_state().advance_clock(seconds)

    def now(self) -> float:
        """Return the emulated Unix time (what ``created_at`` and ``expires_at`` count in)."""
        return self._live_state().clock.now()

    def forget(self) -> list[str]:
        """Lose every batch and file, as an API restarted without its state would (a fault).

        Every id answers 404 from now on. Live batches stop where they are and their record
        ends as cancelled: nothing more of them is processed or billed. Returns their ids.
        """
        state = self._live_state()
        for task in list(state._tasks):
            task.cancel()
        forgotten = list(state.batches)
        for batch in state.batches.values():
            if batch.status not in TERMINAL_STATUSES:
                state._history(batch, "cancelled")
        state.batches.clear()
        state.files.clear()
        log.warning("emulator forgot %d batches and every file", len(forgotten))
        return forgotten

    def duplicate_live_custom_ids(self) -> set[str]:
        """custom_ids that were in two batches whose live intervals overlapped."""
        return self.record.duplicate_live_custom_ids()

    def stats(self) -> dict[str, Any]:
        """Return what ``GET /_emulator/stats`` returns."""
        return self._live_state().stats()

    async def start(self) -> None:
        """Bind the port and start serving."""
        if self._used:
            raise LifecycleError("an Emulator can be started once; create a new one")
        self._used = True
        if self.config.storage_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="emulator-")
            storage = Path(self._temp_dir)
        else:
            storage = Path(self.config.storage_dir)
            storage.mkdir(parents=True, exist_ok=True)
        state = EmulatorState(self.config, storage)
        state.record = self.record
        state.faults = self._faults
        self._state = state
        app = web.Application(middlewares=[_errors, _auth_and_faults], client_max_size=1 << 20)
        app[_STATE_KEY] = state
        app[_EMULATOR_KEY] = self
        app.router.add_post("/v1/files", _upload)
        app.router.add_get("/v1/files", _list_files)
        app.router.add_get("/v1/files/{file_id}", _get_file)
        app.router.add_delete("/v1/files/{file_id}", _delete_file)
        app.router.add_get("/v1/files/{file_id}/content", _file_content)
        app.router.add_post("/v1/batches", _create_batch)
        app.router.add_get("/v1/batches", _list_batches)
        app.router.add_get("/v1/batches/{batch_id}", _get_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", _cancel_batch)
        app.router.add_get("/_emulator/record", _record)
        app.router.add_get("/_emulator/stats", _stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except OSError:
            await self.close()
            raise
        host, port = runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        log.info("emulator listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop batch workers, stop serving, and remove a temporary storage dir."""
        try:
            if self._state is not None:
                await self._state.close()
        finally:
            try:
                if self._runner is not None:
                    await self._runner.cleanup()
                    self._runner = None
            finally:
                if self._temp_dir is not None:
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                    self._temp_dir = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
