"""The one wrapper over the async OpenAI client: files and batches, retried our way.

The SDK client is built with ``max_retries=0``: every call goes through
``engine.retry.retry_api`` instead, so retries are never stacked. Errors are mapped onto the
engine's tree: 408/409/429/5xx, dropped connections and timeouts become
``TransientApiError`` (with ``retry_after_s`` from Retry-After / retry-after-ms when the
server sent one), 401/403 ``AuthenticationError``, any other status ``BatchApiError``.
Messages carry the call, the status, the error code and the server's message with anything
that looks like a key masked; they never include the key. The base URL is the SDK's own
default unless the settings name one.

Uploads stream. The installed SDK (openai 3.x) reads a ``Path`` argument whole into memory
(``_files._async_transform_file`` calls ``read_bytes()``), but passes an open binary file
through to httpx, whose multipart encoder reads it in 64 KiB chunks; so ``upload_file``
opens the file itself and passes the handle (reopened on every retry). Downloads stream to
a ``.part`` file in 1 MiB chunks and are renamed into place when complete.

``create_batch`` is the one call whose retry could bill twice: a create that reached the
server but whose answer was lost would, blindly retried, start a second batch on the same
rows. So after an ambiguous failure (connection dropped, timeout, 5xx) the next attempt
first looks through the newest batches for one carrying the same ``engine_batch`` metadata
and input file, and returns it instead of creating another.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx2
import openai
from openai.types import Batch

from engine.errors import (
    AuthenticationError,
    BatchApiError,
    ConfigError,
    LeaseExpiredError,
    TransientApiError,
)
from engine.masking import mask
from engine.retry import retry_api
from engine.settings import ApiSettings
from engine.spool import disk_full_as_error, open_private

__all__ = ["BatchApi", "CreateUnsettledError"]

log = logging.getLogger("engine.batch_api")
# A create carries a few hundred bytes and returns at once (validation runs later), so it gets
# a bound of its own, well under the long timeout uploads of up to 200 MB need.
CREATE_TIMEOUT_S = 60.0
T = TypeVar("T")

_KEY_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-*]{2})[A-Za-z0-9_\-*]{6,}")
_TRANSIENT_STATUS = frozenset({408, 409, 429})
_CHUNK = 1024 * 1024
_METADATA_PAIRS = 16
_METADATA_KEY_CHARS = 64
_METADATA_VALUE_CHARS = 512
_LOOKUP_PAGES = 2
# How often a create whose request may still be on its way is looked for (seconds, at most).
_LANDING_POLL_S = 2.0


class CreateUnsettledError(BatchApiError):
    """A create was cut off after it was sent and has not shown up yet: it may still land.

    Raised instead of creating again when the caller keeps looking for it on its own
    (``create_batch(..., wait_for_landing=False)``); never retried here.
    """


def _retry_after_s(headers: httpx2.Headers | None) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, Retry-After seconds or date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no zone said; never the local zone
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - time.time(), 0.0)


class BatchApi:
    """Files and batches over ``AsyncOpenAI`` / ``AsyncAzureOpenAI``; an async context manager."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        http_client: httpx2.AsyncClient | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 60.0,
    ) -> None:
        self._settings = settings
        self._attempts = max(settings.max_retries, 1)
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # engine_batch tag -> time.monotonic() of the last create of it whose request may still
        # be on its way (timed out or cut off): a second remote batch may yet appear with it.
        self._uncertain: dict[str, float] = {}
        self._client: openai.AsyncOpenAI
        if settings.provider == "azure":
            if not settings.base_url:
                raise ConfigError("base_url: the Azure OpenAI endpoint is required for azure")
            self._client = openai.AsyncAzureOpenAI(
                api_key=settings.api_key,
                azure_endpoint=settings.base_url,
                api_version=settings.azure_api_version,
                max_retries=0,
                timeout=settings.timeout_s,
                http_client=http_client,
            )
        else:
            self._client = openai.AsyncOpenAI(
                api_key=settings.api_key,
                base_url=settings.base_url,
                max_retries=0,
                timeout=settings.timeout_s,
                http_client=http_client,
            )

    async def __aenter__(self) -> BatchApi:
        """Return the open wrapper."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the HTTP client."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent)."""
        await self._client.close()

    # -- error mapping -----------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """Mask the key (and anything key-shaped) in a server message."""
        if self._settings.api_key:
            text = text.replace(self._settings.api_key, "***")
        # Also the server's own partly starred echo of the key (sk-proj-****...1234).
        return mask(_KEY_LIKE.sub(r"\1***", text), [self._settings.api_key])

    def _map(self, what: str, exc: Exception) -> BatchApiError:
        """Turn an SDK or transport exception into the engine's tree."""
        error: BatchApiError
        if isinstance(exc, openai.APITimeoutError):
            error = TransientApiError(f"{what}: timed out")
        elif isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            error = TransientApiError(f"{what}: connection failed ({type(exc).__name__})")
        elif isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            code = exc.code or ""
            body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
            nested = body.get("error")
            inner: dict[str, Any] = nested if isinstance(nested, dict) else body
            found = inner.get("message")
            raw = found if isinstance(found, str) else exc.message
            message = self._redact(str(raw))[:300]
            text = f"{what}: HTTP {status}" + (f" {code}" if code else "") + f": {message}"
            if status in (401, 403):
                error = AuthenticationError(text)
            elif status in _TRANSIENT_STATUS or status >= 500:
                error = TransientApiError(text)
                error.retry_after_s = _retry_after_s(exc.response.headers)  # type: ignore[attr-defined]
            else:
                error = BatchApiError(text)
            error.status_code = status  # type: ignore[attr-defined]
        else:  # pragma: no cover - _call only catches the types above
            error = BatchApiError(f"{what}: {type(exc).__name__}")
        return error

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one API call through retry_api with the error mapping."""

        async def attempt() -> T:
            try:
                return await fn()
            except (openai.APIError, httpx2.TransportError) as exc:
                raise self._map(what, exc) from None

        return await retry_api(
            attempt,
            attempts=self._attempts,
            initial_s=self._retry_initial_s,
            max_s=self._retry_max_s,
        )

    # -- files -------------------------------------------------------------------------

    async def upload_file(self, path: Path) -> str:
        """Upload a JSONL file with purpose "batch", streamed from disk; return its id."""
        path = Path(path)

        async def upload() -> str:
            # A fresh handle per attempt: a retry must send the file from its start.
            handle = await asyncio.to_thread(path.open, "rb")
            try:
                created = await self._client.files.create(
                    file=(path.name, handle, "application/jsonl"), purpose="batch"
                )
            finally:
                handle.close()
            return created.id

        file_id = await self._call("upload_file", upload)
        log.info("uploaded %s as %s", path.name, file_id)
        return file_id

    async def download_file(self, file_id: str, dest: Path) -> int:
        """Stream a file's content to ``dest`` (via ``dest.part``); return the bytes written."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")

        async def download() -> int:
            written = 0
            try:
                async with self._client.files.with_streaming_response.content(file_id) as resp:
                    expected = resp.http_response.headers.get("content-length")
                    with disk_full_as_error(dest.parent), open_private(part) as out:
                        async for chunk in resp.iter_bytes(_CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                if expected is not None and expected.isdigit() and int(expected) != written:
                    raise TransientApiError(
                        f"download_file {file_id}: got {written} of {expected} bytes"
                    )
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
            return written

        size = await self._call("download_file", download)
        log.debug("downloaded %s to %s (%d bytes)", file_id, dest, size)
        return size

    async def delete_file(self, file_id: str) -> bool:
        """Delete a file; False when it was already gone (404)."""
        try:
            deleted = await self._call("delete_file", lambda: self._client.files.delete(file_id))
        except BatchApiError as exc:
            if getattr(exc, "status_code", None) == 404:
                return False
            raise
        return bool(deleted.deleted)

    # -- batches -----------------------------------------------------------------------

    @property
    def create_timeout_s(self) -> float:
        """How long one ``batches.create`` request may take before the client gives up on it.

        Shorter than uploads may take: a worker adopting a batch waits this long for a create
        the previous owner may still have in flight.
        """
        return min(float(self._settings.timeout_s), CREATE_TIMEOUT_S)

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, str],
        *,
        deadline: float | None = None,
        wait_for_landing: bool = True,
    ) -> Batch:
        """Create a batch (completion window 24h), never twice for one engine_batch.

        ``deadline`` (time.monotonic()) is when the caller's lease on the batch runs out: no
        attempt starts after it (LeaseExpiredError), so a worker that adopts the batch later
        knows how long a create of ours can still land. After a create cut off once sent, the
        next attempt looks for it during one create timeout before creating again; with
        ``wait_for_landing`` False it looks once and raises CreateUnsettledError instead, for
        a caller that goes on looking without blocking.
        """
        if len(metadata) > _METADATA_PAIRS or any(
            len(k) > _METADATA_KEY_CHARS or len(v) > _METADATA_VALUE_CHARS
            for k, v in metadata.items()
        ):
            raise ConfigError("metadata: at most 16 pairs, keys <= 64 chars, values <= 512 chars")
        ambiguous = False
        tag = metadata.get("engine_batch")
        in_flight_at: float | None = None  # when a request that may still land was cut off

        async def create() -> Batch:
            nonlocal ambiguous, in_flight_at
            if ambiguous and tag is not None:
                # A request cut off on our side may still be on its way: look for it until it
                # would have landed, and only then create again.
                until = 0.0 if in_flight_at is None else in_flight_at + self.create_timeout_s
                found = await self._await_landing(
                    input_file_id, tag, until if wait_for_landing else 0.0
                )
                if found is not None:
                    log.info("create_batch: reusing %s created by a lost attempt", found.id)
                    return found
                if in_flight_at is not None and not wait_for_landing:
                    raise CreateUnsettledError(
                        f"create_batch {tag}: cut off after it was sent; it may still land"
                    )
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseExpiredError(f"batch {metadata.get('engine_batch', '?')}: lease ran out")
            try:
                return await self._client.batches.create(
                    input_file_id=input_file_id,
                    endpoint=endpoint,  # type: ignore[arg-type]
                    completion_window="24h",
                    metadata=metadata,
                    timeout=self.create_timeout_s,
                )
            except openai.APIStatusError as exc:
                ambiguous = ambiguous or exc.status_code >= 500
                raise
            except openai.APIConnectionError as exc:
                ambiguous = True
                if not isinstance(exc.__cause__, httpx2.ConnectError | httpx2.ConnectTimeout):
                    # Sent, then timed out or cut off: it may land later than our answer.
                    in_flight_at = time.monotonic()
                    if tag is not None:
                        self._uncertain[tag] = in_flight_at
                raise

        batch = await self._call("create_batch", create)
        log.info("created batch %s from %s", batch.id, input_file_id, extra={"batch_id": batch.id})
        return batch

    def may_land(self, engine_batch: str) -> bool:
        """Whether a create of this tag was cut off after it was sent (it may land later)."""
        return engine_batch in self._uncertain

    def uncertain_create(self, engine_batch: str) -> float | None:
        """Forget and return when a create of this tag was last cut off (time.monotonic())."""
        return self._uncertain.pop(engine_batch, None)

    async def _await_landing(
        self, input_file_id: str, engine_batch: str, until: float
    ) -> Batch | None:
        """Look for a batch of an earlier attempt until ``until`` (time.monotonic())."""
        pause = min(_LANDING_POLL_S, max(self.create_timeout_s / 10, 0.05))
        while True:
            found = await self._find_created(input_file_id, engine_batch)
            left = until - time.monotonic()
            if found is not None or left <= 0:
                return found
            await asyncio.sleep(min(pause, left))

    async def file_created_at(self, file_id: str) -> int | None:
        """Return the remote's own creation time of a file (epoch s), or None when it is gone."""
        try:
            stored = await self._call(
                "retrieve_file", lambda: self._client.files.retrieve(file_id)
            )
        except BatchApiError as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise
        return int(stored.created_at)

    async def _find_created(self, input_file_id: str, engine_batch: str) -> Batch | None:
        """Look for a batch an earlier attempt may have created (one raw pass, no retries)."""
        after: str | None = None
        for _ in range(_LOOKUP_PAGES):
            page = await self._client.batches.list(limit=100, after=after or openai.omit)
            for batch in page.data:
                if (batch.metadata or {}).get("engine_batch") == engine_batch and (
                    batch.input_file_id == input_file_id
                ):
                    return batch
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id
        return None

    async def retrieve_batch(self, batch_id: str) -> Batch:
        """Return the batch's current state."""
        return await self._call("retrieve_batch", lambda: self._client.batches.retrieve(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Ask the API to cancel a batch; it passes through "cancelling".

        A batch that already ended answers 409, which no retry changes: its current state is
        returned instead, so cancelling is safe to repeat.
        """

        async def cancel() -> Batch | None:
            try:
                return await self._client.batches.cancel(batch_id)
            except openai.APIStatusError as exc:
                if exc.status_code == 409:
                    return None
                raise

        batch = await self._call("cancel_batch", cancel)
        if batch is None:
            return await self.retrieve_batch(batch_id)
        log.info("cancel requested for %s", batch_id, extra={"batch_id": batch_id})
        return batch

    async def iter_recent_batches(
        self, limit_pages: int, *, page_size: int = 100
    ) -> AsyncIterator[Batch]:
        """Yield the newest batches first, at most ``limit_pages`` pages of ``page_size``."""
        after: str | None = None
        for _ in range(limit_pages):
            cursor = after

            async def fetch(cursor: str | None = cursor) -> Any:
                return await self._client.batches.list(
                    limit=page_size, after=cursor or openai.omit
                )

            page = await self._call("list_batches", fetch)
            for batch in page.data:
                yield batch
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id
