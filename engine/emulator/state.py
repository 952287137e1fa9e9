"""The emulator's state: stored files, batches, their state machine and the record.

Every batch is worked on by one background task owned by ``EmulatorState``: validate (in a
thread, streaming the input file), then process lines as the clock allows, then write the
output and error files (shuffled with the seed) and reach a terminal status. Cancel and
forced expiry set a flag and wake the task; it writes what it has and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from engine.emulator.bodies import (
    MAX_EMBEDDING_INPUTS,
    MODEL_OPTIONAL,
    check_line,
    embedding_inputs,
)
from engine.emulator.clock import Clock
from engine.emulator.config import EmulatorConfig, FaultConfig
from engine.emulator.responders import (
    LineFault,
    LineOutcome,
    input_tokens,
    nested_answer,
    respond,
    user_text,
)

__all__ = [
    "LIVE_STATUSES",
    "MAX_TASKS",
    "TERMINAL_STATUSES",
    "Batch",
    "BatchRecord",
    "EmulatorState",
    "Record",
    "StatusChange",
    "StoredFile",
]

log = logging.getLogger("engine.emulator")

MAX_TASKS = 50_000
MAX_REPORTED_ERRORS = 100
LIVE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
TERMINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
_STAMPED = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
            "cancelled")
_YIELD_EVERY = 100  # lines processed between yields to the event loop
_EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
_CANCELLED_ERROR = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}

Ending = Literal["completed", "cancel", "expire"]


def new_id(prefix: str) -> str:
    """Return a new id shaped like the real ones (``file-...``, ``batch_...``)."""
    return f"{prefix}{uuid.uuid4().hex}"


@dataclass
class StoredFile:
    """One file on disk with the metadata the Files API returns."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the File object as the API returns it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.expires_at,
            "status_details": None,
        }


@dataclass(frozen=True)
class StatusChange:
    """One entry of a batch's status history: wall-clock and monotonic time."""

    status: str
    at: float
    mono: float


@dataclass
class BatchRecord:
    """What the record keeps of one accepted batch."""

    id: str
    input_file_id: str
    endpoint: str
    model: str | None = None
    custom_ids: tuple[str, ...] = ()
    history: list[StatusChange] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The latest status this batch reached."""
        return self.history[-1].status if self.history else "validating"

    def live_interval(self) -> tuple[float, float]:
        """(start, end) in monotonic seconds while the batch was live; end is inf if still so."""
        start = self.history[0].mono if self.history else math.inf
        end = next((h.mono for h in self.history if h.status in TERMINAL_STATUSES), math.inf)
        return start, end

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``GET /_emulator/record``."""
        return {
            "id": self.id,
            "input_file_id": self.input_file_id,
            "endpoint": self.endpoint,
            "model": self.model,
            "custom_ids": list(self.custom_ids),
            "history": [{"status": h.status, "at": h.at} for h in self.history],
        }


class Record:
    """Every batch the emulator accepted, so tests can prove no double submission."""

    def __init__(self) -> None:
        self.batches: dict[str, BatchRecord] = {}

    def duplicate_live_custom_ids(self) -> set[str]:
        """custom_ids that were in two batches whose live intervals overlapped."""
        items = list(self.batches.values())
        spans = [b.live_interval() for b in items]
        sets: dict[int, frozenset[str]] = {}
        found: set[str] = set()
        for i, a in enumerate(items):
            for j in range(i + 1, len(items)):
                (a0, a1), (b0, b1) = spans[i], spans[j]
                if a0 < b1 and b0 < a1:
                    if i not in sets:
                        sets[i] = frozenset(a.custom_ids)
                    found |= sets[i].intersection(items[j].custom_ids)
        return found

    def max_concurrent_live(self) -> int:
        """Return the largest number of batches that were live at the same moment."""
        edges: list[tuple[float, int]] = []
        for batch in self.batches.values():
            start, end = batch.live_interval()
            if start != math.inf:
                edges += [(start, 1), (end, -1)]
        live = peak = 0
        # At equal times, ends sort before starts: touching intervals did not overlap.
        for _at, step in sorted(edges):
            live += step
            peak = max(peak, live)
        return peak

    def to_json(self) -> dict[str, Any]:
        """JSON form: every batch and the duplicates."""
        return {
            "batches": [b.to_json() for b in self.batches.values()],
            "duplicate_live_custom_ids": sorted(self.duplicate_live_custom_ids()),
            "max_concurrent_live": self.max_concurrent_live(),
        }


@dataclass
class Validation:
    """The outcome of reading an input file once."""

    errors: list[dict[str, Any]]
    custom_ids: list[str]
    model: str | None
    tokens: int
    requests: int = 0


@dataclass(eq=False)
class Batch:
    """One batch and everything the API shows about it."""

    id: str
    seq: int
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    created_mono: float
    expires_mono: float
    expires_at: int
    status: str = "validating"
    stamps: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    model: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    enqueued_tokens: int = 0
    enqueued_requests: int = 0
    output_expires_s: int | None = None  # output_expires_after.seconds, if given
    custom_ids: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    cancel_mono: float = 0.0  # emulated monotonic time of the cancel request
    expire_requested: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        """Return the Batch object as the API returns it."""
        errors = None if self.errors is None else {"object": "list", "data": self.errors}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.stamps.get("in_progress"),
            "expires_at": self.expires_at,
            "finalizing_at": self.stamps.get("finalizing"),
            "completed_at": self.stamps.get("completed"),
            "failed_at": self.stamps.get("failed"),
            "expired_at": self.stamps.get("expired"),
            "cancelling_at": self.stamps.get("cancelling"),
            "cancelled_at": self.stamps.get("cancelled"),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }


class _LineSpool:
    """Result lines appended to a temp file, then copied out in a seeded shuffled order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] = path.open("wb")
        self._spans: list[tuple[int, int]] = []
        self._offset = 0

    def __len__(self) -> int:
        return len(self._spans)

    def append(self, line: bytes) -> None:
        """Append one JSONL line (newline added)."""
        data = line + b"\n"
        self._fh.write(data)
        self._spans.append((self._offset, len(data)))
        self._offset += len(data)

    def finish(self, dest: Path, rng: random.Random) -> int:
        """Write the lines to ``dest`` in shuffled order; return its size (runs in a thread)."""
        self._fh.close()
        order = list(range(len(self._spans)))
        rng.shuffle(order)
        with self.path.open("rb") as src, dest.open("wb") as out:
            for index in order:
                offset, size = self._spans[index]
                src.seek(offset)
                out.write(src.read(size))
        self.path.unlink(missing_ok=True)
        return self._offset

    def discard(self) -> None:
        """Close and remove the temp file."""
        self._fh.close()
        self.path.unlink(missing_ok=True)


def validate_file(path: Path, endpoint: str) -> Validation:
    """Read an input file once, checking every rule the real API checks at validation."""
    errors: list[dict[str, Any]] = []
    custom_ids: list[str] = []
    seen: set[str] = set()
    model: str | None = None
    tokens = 0
    count = 0
    inputs = 0

    def error(code: str, line: int | None, message: str, param: str | None) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"code": code, "line": line, "message": message, "param": param})

    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            count += 1
            if count > MAX_TASKS:
                errors.insert(0, {
                    "code": "too_many_tasks", "line": None, "param": None,
                    "message": f"The batch input file has more than {MAX_TASKS} requests.",
                })
                break
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                error("invalid_json_line", lineno, "This line is not parseable as valid JSON.",
                      None)
                continue
            if not isinstance(line, dict):
                error("invalid_json_line", lineno, "This line is not a JSON object.", None)
                continue
            missing = [k for k in ("custom_id", "method", "url", "body") if k not in line]
            for key in missing:
                error("missing_required_parameter", lineno,
                      f"Missing required parameter: '{key}'.", key)
            if missing:
                continue
            custom_id = str(line["custom_id"])
            custom_ids.append(custom_id)
            if custom_id in seen:
                error("duplicate_custom_id", lineno,
                      "The custom_id for this request is a duplicate of another request. "
                      "The custom_id parameter must be unique for each request in a batch.",
                      "custom_id")
            seen.add(custom_id)
            if line["method"] != "POST":
                error("invalid_request", lineno, "Only the POST method is supported.", "method")
            if line["url"] != endpoint:
                error("url_mismatch", lineno,
                      "The URL provided for this request does not match the batch endpoint.",
                      "url")
            body = line["body"]
            if not isinstance(body, dict):
                error("invalid_request", lineno, "The body must be a JSON object.", "body")
                continue
            if body.get("stream"):
                error("streaming_unsupported", lineno,
                      "Streaming is not supported in the Batch API.", "body.stream")
            line_model = body.get("model")
            if line_model is None and endpoint in MODEL_OPTIONAL:
                pass  # the endpoint has a default model (the SDK's params mark it optional)
            elif not isinstance(line_model, str) or not line_model:
                error("invalid_request", lineno, "Model parameter is required.", "body.model")
            elif model is None:
                model = line_model
            elif line_model != model:
                error("model_mismatch", lineno,
                      f"The provided model '{line_model}' does not match the model '{model}' "
                      "of the other requests. All requests in a batch must use the same model.",
                      "body.model")
            tokens += input_tokens(endpoint, body)
            if endpoint == "/v1/embeddings":
                inputs += embedding_inputs(body)
    if count == 0:
        error("empty_file", None, "The batch input file is empty.", None)
    if inputs > MAX_EMBEDDING_INPUTS:
        # The cap is documented (BatchCreateParams.endpoint) but its error code is not; the
        # emulator reports it under the documented code for a batch that is too large.
        errors.insert(0, {
            "code": "too_many_tasks", "line": None, "param": None,
            "message": f"The batch has {inputs:,} embedding inputs; /v1/embeddings batches "
                       f"are limited to {MAX_EMBEDDING_INPUTS:,} inputs across all requests.",
        })
    return Validation(errors, custom_ids, model, tokens, count)


class EmulatorState:
    """Files, batches, the record and the background tasks that move batches along."""

    def __init__(self, config: EmulatorConfig, storage_dir: Path) -> None:
        self.config = config
        self.faults: FaultConfig = config.faults
        self.storage_dir = storage_dir
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self.record = Record()
        self.counters: Counter[str] = Counter()
        self.clock = Clock(config.time_scale)
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: Counter[str] = Counter()
        # template_answers: batch id -> (response JSON, input tokens, output tokens, succeeded)
        self._templates: dict[str, tuple[bytes, int, int, bool]] = {}
        self._seq = 0
        self._closed = False

    # --- files -------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        """Where a file's bytes live."""
        return self.storage_dir / f"{file_id}.jsonl"

    def add_file(
        self, file_id: str, filename: str, purpose: str, size: int,
        expires_after_s: int | None = None,
    ) -> StoredFile:
        """Register a file whose bytes are already at ``file_path(file_id)``."""
        created = int(self.clock.now())
        expires = None if expires_after_s is None else created + expires_after_s
        stored = StoredFile(file_id, filename, purpose, size, created, self.file_path(file_id),
                            expires)
        self.files[file_id] = stored
        return stored

    def live_file(self, file_id: str) -> StoredFile | None:
        """Return a stored file, or None when there is none or it has expired (then removed)."""
        stored = self.files.get(file_id)
        expires = None if stored is None else stored.expires_at
        if expires is not None and self.clock.now() >= expires:
            # An expired file is gone, as a deleted one is: the API answers 404 for it.
            self.delete_file(file_id)
            return None
        return stored

    def expire_files(self) -> None:
        """Remove every file whose ``expires_at`` has passed."""
        for file_id in list(self.files):
            self.live_file(file_id)

    def advance_clock(self, seconds: float) -> None:
        """Move the emulated clock on and let every batch see the new time."""
        self.clock.advance(seconds)
        for batch in self.batches.values():
            batch.wake.set()

    def delete_file(self, file_id: str) -> None:
        """Forget a file and remove its bytes (a batch reading it keeps its open handle)."""
        stored = self.files.pop(file_id)
        stored.path.unlink(missing_ok=True)

    # --- batches -----------------------------------------------------------------------

    def create_batch(
        self, input_file: StoredFile, endpoint: str, window: str, metadata: dict[str, str] | None,
        output_expires_s: int | None = None,
    ) -> Batch:
        """Accept a batch (status validating) and start its worker."""
        self._seq += 1
        now, mono = self.clock.now(), self.clock.mono()
        window_s = self.config.completion_window_s
        batch = Batch(
            id=new_id("batch_"),
            seq=self._seq,
            endpoint=endpoint,
            input_file_id=input_file.id,
            completion_window=window,
            metadata=metadata,
            created_at=int(now),
            created_mono=mono,
            expires_mono=mono + window_s,
            expires_at=int(now + window_s),
            output_expires_s=output_expires_s,
        )
        self.batches[batch.id] = batch
        self.record.batches[batch.id] = BatchRecord(batch.id, input_file.id, endpoint)
        self._history(batch, "validating")
        log.info("batch %s validating (%s)", batch.id, endpoint, extra={"batch_id": batch.id})
        # Open now, so a file deleted right after create is still read in full.
        handle = input_file.path.open("rb")
        task = asyncio.create_task(self._run(batch, handle), name=f"emulator-{batch.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    def cancel_batch(self, batch: Batch) -> None:
        """Move a live batch to cancelling and wake its worker."""
        if batch.status in ("validating", "in_progress", "finalizing"):
            self._set_status(batch, "cancelling")
        if not batch.cancel_requested:
            batch.cancel_mono = self.clock.mono()
        batch.cancel_requested = True
        batch.wake.set()

    def force_expire(self, batch_id: str) -> None:
        """Make a live batch expire now, keeping what it finished."""
        batch = self.batches[batch_id]
        batch.expire_requested = True
        batch.wake.set()

    async def close(self) -> None:
        """Cancel every batch worker and wait for them."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _history(self, batch: Batch, status: str) -> None:
        """Append to the record's status history."""
        change = StatusChange(status, time.time(), time.monotonic())
        self.record.batches[batch.id].history.append(change)

    def _set_status(self, batch: Batch, status: str) -> None:
        """Change status, stamp ``<status>_at``, record it, release enqueued tokens at the end."""
        batch.status = status
        if status in _STAMPED:
            batch.stamps[status] = int(self.clock.now())
        if status in TERMINAL_STATUSES:
            batch.enqueued_tokens = 0
            batch.enqueued_requests = 0
        self._history(batch, status)
        log.info("batch %s %s", batch.id, status, extra={"batch_id": batch.id})

    async def _run(self, batch: Batch, handle: IO[bytes]) -> None:
        """Run the batch's whole life after creation."""
        try:
            path = Path(f"/proc/self/fd/{handle.fileno()}")
            if not path.exists():  # no procfs: read by name (deletes are then not safe)
                path = self.file_path(batch.input_file_id)
            result = await asyncio.to_thread(validate_file, path, batch.endpoint)
            record = self.record.batches[batch.id]
            record.custom_ids = tuple(result.custom_ids)
            record.model = result.model
            batch.model = result.model
            await self._hold(batch)
            if batch.cancel_requested:
                await self._linger_cancelling(batch)
                self._set_status(batch, "cancelled")
                return
            if not self._admit(batch, result):
                return
            batch.custom_ids = result.custom_ids
            batch.total = len(result.custom_ids)
            self._set_status(batch, "in_progress")
            await self._process(batch, handle)
        except Exception:
            # A bug here must not leave a batch live forever: fail it loudly and visibly.
            log.exception("batch %s worker crashed", batch.id, extra={"batch_id": batch.id})
            if batch.status in LIVE_STATUSES:
                batch.errors = [{"code": "server_error", "line": None, "param": None,
                                 "message": "The emulator failed while processing the batch."}]
                self._set_status(batch, "failed")
        finally:
            handle.close()

    def _admit(self, batch: Batch, result: Validation) -> bool:
        """Apply validation errors, injected failure and the enqueued-token limit."""
        faults = self.faults
        errors = list(result.errors)
        if not errors and faults.fail_validation:
            errors.append({"code": "invalid_json_line", "line": 1, "param": None,
                           "message": "Injected validation failure (emulator fault)."})
        limit = faults.enqueued_token_limit
        if not errors and limit is not None:
            enqueued = sum(
                b.enqueued_tokens for b in self.batches.values()
                if b is not batch and b.model == result.model and b.status in LIVE_STATUSES
            )
            if enqueued + result.tokens > limit:
                errors.append({
                    "code": "token_limit_exceeded", "line": None, "param": None,
                    "message": (
                        f"Enqueued token limit reached for {result.model} in organization "
                        f"org-emulator. Limit: {limit:,} enqueued tokens. Please try again once "
                        "some in_progress batches have been completed."
                    ),
                })
        requests = faults.enqueued_request_limit
        if not errors and requests is not None:
            enqueued = sum(
                b.enqueued_requests for b in self.batches.values()
                if b is not batch and b.model == result.model and b.status in LIVE_STATUSES
            )
            if enqueued + result.requests > requests:
                # A limit apart from the token one (the rate-limits page lists both); its code
                # is not documented, this one is named like the token limit's.
                errors.append({
                    "code": "request_limit_exceeded", "line": None, "param": None,
                    "message": (
                        f"Enqueued request limit reached for {result.model} in organization "
                        f"org-emulator. Limit: {requests:,} enqueued requests. Please try again "
                        "once some in_progress batches have been completed."
                    ),
                })
        if errors:
            batch.errors = errors
            self._set_status(batch, "failed")
            return False
        batch.enqueued_tokens = result.tokens
        batch.enqueued_requests = result.requests
        return True

    async def _hold(self, batch: Batch) -> None:
        """Stay in the current status for ``status_hold_s`` emulated seconds, or until cancel."""
        until = self.clock.mono() + self.config.status_hold_s
        while not batch.cancel_requested and (left := until - self.clock.mono()) > 0:
            batch.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.wake.wait(), self.clock.real_delay(left))

    async def _linger_cancelling(self, batch: Batch) -> None:
        """Stay ``cancelling`` for ``cancelling_s`` emulated seconds (the real API: <= 10 min)."""
        until = batch.cancel_mono + self.config.cancelling_s
        while (left := until - self.clock.mono()) > 0:
            batch.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.wake.wait(), self.clock.real_delay(left))

    def _offset_s(self, done: int, total: int) -> float:
        """Seconds after in_progress at which line number ``done`` (1-based) is finished."""
        offset = self.config.latency_s * done / total if total else 0.0
        if self.config.rate_rps:
            offset += done / self.config.rate_rps
        return offset

    async def _wait_due(self, batch: Batch, start: float, index: int) -> Ending | None:
        """Wait until line ``index`` is due; return why to stop early, or None to go on."""
        due = start + self._offset_s(index + 1, batch.total)
        while True:
            if batch.cancel_requested:
                return "cancel"
            fraction = self.faults.expire_fraction
            if batch.expire_requested or (
                fraction is not None and index >= math.ceil(fraction * batch.total)
            ):
                return "expire"
            now = time.monotonic()
            window_left = batch.expires_mono - self.clock.mono()
            if window_left <= 0:
                return "expire"
            if now >= due:
                return None
            batch.wake.clear()  # set again by cancel, expiry or a clock jump
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.wake.wait(),
                                       min(due - now, self.clock.real_delay(window_left)))

    def _fault_for(self, custom_id: str) -> tuple[LineFault, random.Random]:
        """Draw this line's fault from (seed, custom_id, n-th time it was processed)."""
        self._seen[custom_id] += 1
        key = f"{self.config.seed}:{custom_id}:{self._seen[custom_id]}"
        rng = random.Random(key)
        faults = self.faults
        draw = rng.random()
        bands: list[tuple[float, LineFault]] = [
            (faults.line_error_rate, "error_500" if rng.random() < 0.5 else "error_429"),
            (faults.line_timeout_rate, "timeout"),
            (faults.schema_break_rate, "schema_break"),
            (faults.length_rate, "length"),
            (faults.line_invalid_rate, "error_400"),
        ]
        edge = 0.0
        for rate, fault in bands:
            edge += rate
            if draw < edge:
                return fault, rng
        return None, rng

    async def _process(self, batch: Batch, handle: IO[bytes]) -> None:
        """Answer lines as the clock allows, then write files and reach a terminal status."""
        out = _LineSpool(self.storage_dir / f"{batch.id}.output.part")
        err = _LineSpool(self.storage_dir / f"{batch.id}.error.part")
        try:
            start = time.monotonic()
            ending: Ending = "completed"
            index = 0
            handle.seek(0)
            for raw in handle:
                if not raw.strip():
                    continue
                stop = await self._wait_due(batch, start, index)
                if stop is not None:
                    ending = stop
                    break
                custom_id = batch.custom_ids[index]
                line = orjson.loads(raw)
                invalid = check_line(batch.endpoint, line, self.config.models)
                if invalid is not None:
                    self._refuse(batch, custom_id, invalid, err)
                else:
                    self._answer(batch, custom_id, line["body"], out, err)
                index += 1
                if index % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if ending == "completed" and batch.cancel_requested:
                ending = "cancel"
            if ending == "cancel":
                await self._linger_cancelling(batch)
            if ending != "completed":
                error = _EXPIRED_ERROR if ending == "expire" else _CANCELLED_ERROR
                for custom_id in batch.custom_ids[index:]:
                    err.append(_line_json(custom_id, None, dict(error)))
                    # An expired batch's unrun lines are not counted as failed: a live expired
                    # batch showed {total: 10, completed: 1, failed: 0} (warmbly PR 333).
                    if ending == "cancel":
                        batch.failed += 1
            if ending == "completed":
                self._set_status(batch, "finalizing")
                await self._hold(batch)
            await self._write_files(batch, out, err)
            if ending == "completed" and batch.cancel_requested:
                ending = "cancel"  # cancelled while finalizing: every line is in the files
            final = {"completed": "completed", "cancel": "cancelled", "expire": "expired"}[ending]
            self._set_status(batch, final)
        finally:
            self._templates.pop(batch.id, None)
            out.discard()
            err.discard()

    def _refuse(
        self, batch: Batch, custom_id: str, invalid: tuple[int, dict[str, Any]], err: _LineSpool
    ) -> None:
        """Write a bad request's 4xx answer to the error spool, as the real API does."""
        status, body = invalid
        self.counters["lines_invalid"] += 1
        response = {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
        err.append(_line_json(custom_id, response, None))
        batch.failed += 1

    def _answer(
        self, batch: Batch, custom_id: str, body: dict[str, Any], out: _LineSpool, err: _LineSpool
    ) -> None:
        """Answer one line and append it to the output or error spool."""
        if self.config.template_answers and not self.faults.active():
            self._answer_from_template(batch, custom_id, body, out, err)
            return
        fault, rng = self._fault_for(custom_id)
        outcome: LineOutcome = respond(
            batch.endpoint, body, rng=rng, fault=fault, created=int(self.clock.now())
        )
        outcome = self._poisoned(batch, body, outcome)
        self.counters["lines_processed"] += 1
        if outcome.status_code is None:
            err.append(_line_json(custom_id, None, outcome.error))
            batch.failed += 1
            return
        response = {
            "status_code": outcome.status_code,
            "request_id": f"req_{uuid.uuid4().hex}",
            "body": outcome.body,
        }
        if outcome.succeeded:
            out.append(_line_json(custom_id, response, None))
            batch.completed += 1
            batch.input_tokens += outcome.input_tokens
            batch.output_tokens += outcome.output_tokens
        else:
            err.append(_line_json(custom_id, response, None))
            batch.failed += 1

    def _poisoned(self, batch: Batch, body: dict[str, Any], outcome: LineOutcome) -> LineOutcome:
        """Apply deep_answer_marker: a nested answer for the lines that carry the marker."""
        marker = self.faults.deep_answer_marker
        if not marker or marker not in user_text(batch.endpoint, body):
            return outcome
        return nested_answer(batch.endpoint, body, depth=self.faults.deep_answer_depth,
                             created=int(time.time()))

    def _answer_from_template(
        self, batch: Batch, custom_id: str, body: dict[str, Any], out: _LineSpool,
        err: _LineSpool,
    ) -> None:
        """Answer like the batch's first line did, changing only the ids (template_answers)."""
        template = self._templates.get(batch.id)
        if template is None:
            rng = random.Random(f"{self.config.seed}:template:{batch.id}")
            outcome = respond(batch.endpoint, body, rng=rng, fault=None,
                              created=int(self.clock.now()))
            response = {
                "status_code": outcome.status_code,
                "request_id": f"req_{uuid.uuid4().hex}",
                "body": outcome.body,
            }
            template = (
                orjson.dumps(response),
                outcome.input_tokens,
                outcome.output_tokens,
                outcome.succeeded,
            )
            self._templates[batch.id] = template
        response_json, input_tokens_, output_tokens, succeeded = template
        self.counters["lines_processed"] += 1
        line = b"".join((
            b'{"id":"batch_req_', batch.id.encode(), b"_",
            str(batch.completed + batch.failed).encode(),
            b'","custom_id":', orjson.dumps(custom_id), b',"response":', response_json,
            b',"error":null}',
        ))
        (out if succeeded else err).append(line)
        if succeeded:
            batch.completed += 1
            batch.input_tokens += input_tokens_
            batch.output_tokens += output_tokens
        else:
            batch.failed += 1

    async def _write_files(self, batch: Batch, out: _LineSpool, err: _LineSpool) -> None:
        """Shuffle the spools into output/error files (only those with lines) and register."""
        rng = random.Random(f"{self.config.seed}:shuffle:{batch.seq}")
        for spool, kind in ((out, "output"), (err, "error")):
            if not len(spool):
                continue
            file_id = new_id("file-")
            size = await asyncio.to_thread(spool.finish, self.file_path(file_id), rng)
            if kind == "output" and self.faults.short_output_lines:
                size = await asyncio.to_thread(
                    _drop_last_lines, self.file_path(file_id), self.faults.short_output_lines
                )
            self.add_file(file_id, f"batch_{batch.id}_{kind}.jsonl", "batch_output", size,
                          batch.output_expires_s)
            if kind == "output":
                batch.output_file_id = file_id
            else:
                batch.error_file_id = file_id

    # --- stats -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counts for ``GET /_emulator/stats``, with this process's memory use."""
        statuses = Counter(b.status for b in self.batches.values())
        return {
            "files": len(self.files),
            "batches": dict(statuses),
            "live_tasks": len(self._tasks),
            "counters": dict(self.counters),
            "faults": self.faults.active(),
            **_memory(),
        }


def _drop_last_lines(path: Path, count: int) -> int:
    """Cut the last ``count`` lines off a finished file (the short-file fault); return its size."""
    lines = path.read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[: max(0, len(lines) - count)])
    path.write_bytes(kept)
    return len(kept)


def _line_json(
    custom_id: str, response: dict[str, Any] | None, error: dict[str, str] | None
) -> bytes:
    """One output/error file line."""
    return orjson.dumps({
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    })


def _memory() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in kB, from /proc/self/status (Linux only)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found["rss_kb" if key == "VmRSS" else "peak_rss_kb"] = int(value.split()[0])
    return found
