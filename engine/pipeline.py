"""What the four stages share: the context, the in-flight slots, events and batch hand-offs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from engine.batch_api import BatchApi
from engine.job import JobSpec
from engine.requests import RequestRenderer
from engine.results import ResultParser
from engine.settings import EngineSettings
from engine.spool import batch_files, spool_file_batch, try_lock
from engine.store import BatchRecord, Holding, RequeueRow, Store

__all__ = [
    "ADOPT_STATES",
    "Draft",
    "EngineEvent",
    "EventKind",
    "InFlightSlots",
    "PipelineContext",
    "RemoteGone",
    "abandon_batch",
    "get_or_stop",
    "is_not_found",
    "sleep_or_stop",
]

# Batch states that still need a worker: a dead worker's batches in these states are adopted.
ADOPT_STATES = ("draft", "uploaded", "submitted", "finished")

log = logging.getLogger("engine.pipeline")
T = TypeVar("T")

EventKind = Literal[
    "batch_state",  # a batch changed local state or remote status
    "rows_applied",  # results written to the source table
    "rows_requeued",  # rows sent back to pending (with reasons)
    "rows_dead",  # rows dead-lettered
    "error",  # something went wrong that the engine handled
    "idle",  # nothing left to do (run(until_idle=True) returns next)
]


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """One thing that happened, for embedding applications and progress displays."""

    kind: EventKind
    job: str
    batch_id: str | None = None
    remote_batch_id: str | None = None
    state: str | None = None
    rows: int = 0
    message: str = ""
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Draft:
    """A batch whose items are bound in the database and whose JSONL lies in the spool."""

    record: BatchRecord
    spool_path: Path
    requests: int
    estimated_tokens: int


class InFlightSlots:
    """Counts this worker's batches from draft to applied and bounds them by max_in_flight.

    Adopted batches (found at start-up) are counted without waiting, so a restart never refuses
    to finish work it already owns; new drafts wait until the count is under the limit.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0
        self._changed = asyncio.Condition()

    @property
    def count(self) -> int:
        """Batches currently counted."""
        return self._count

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._count < self._limit)
            self._count += 1

    async def adopt(self) -> None:
        """Count a batch that already exists, without waiting."""
        async with self._changed:
            self._count += 1

    async def release(self) -> None:
        """Give a slot back and wake whoever waits."""
        async with self._changed:
            self._count = max(0, self._count - 1)
            self._changed.notify_all()

    async def wait_below(self, count: int) -> None:
        """Wait until fewer than ``count`` slots are taken."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._count < count)


@dataclass
class PipelineContext:
    """Everything the stages share; built by Engine, one per run."""

    job: JobSpec
    store: Store
    api: BatchApi
    settings: EngineSettings
    worker_id: str
    renderer: RequestRenderer
    parser: ResultParser
    slots: InFlightSlots
    spool_dir: Path
    emit: Callable[[EngineEvent], None]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Set whenever rows may have become claimable again (a batch finished, rows requeued).
    work_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Batches this worker owns (draft to applied); the slots count the same set.
    owned: set[str] = field(default_factory=set)
    batches_submitted: int = 0
    batches_applied: int = 0
    # What other live workers still held when an until-idle run ended (for its last line).
    held_elsewhere: list[Holding] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    async def done_with(self, batch_id: str, *, expire_lease: bool = False) -> None:
        """Stop owning a batch: free its slot, and with expire_lease let anyone adopt it now."""
        if batch_id not in self.owned:
            return
        self.owned.discard(batch_id)
        if expire_lease:
            await self.store.renew_batch_leases(self.worker_id, [batch_id], 0.0)
        await self.slots.release()
        self.work_changed.set()

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a run counter (rows applied, requeued, dead, ...)."""
        self.counters[name] = self.counters.get(name, 0) + amount

    async def record_batch(
        self, record: BatchRecord, *, fenced: bool = False, **fields: Any
    ) -> BatchRecord:
        """Persist a batch transition, log it once at INFO, emit an event; return the new record.

        ``fenced`` writes only while this worker still holds the batch (StaleClaimError if not).
        """
        await self.store.update_batch(
            record.id, owner=self.worker_id if fenced else None, **fields
        )
        new = replace(record, **fields)
        if new.state != record.state or new.remote_status != record.remote_status:
            log.info(
                "batch %s (%s): %s/%s",
                new.id,
                new.remote_batch_id or "-",
                new.state,
                new.remote_status or "-",
                extra={"batch_id": new.id, "remote_batch_id": new.remote_batch_id},
            )
            self.emit(
                EngineEvent(
                    kind="batch_state",
                    job=self.job.name,
                    batch_id=new.id,
                    remote_batch_id=new.remote_batch_id,
                    state=f"{new.state}/{new.remote_status or '-'}",
                )
            )
        return new

    def spool_path(self, batch_id: str, suffix: str = "input") -> Path:
        """Where a batch's local files live."""
        return self.spool_dir / f"{self.job.name}-{batch_id}.{suffix}.jsonl"

    def remove_spool(self, batch_id: str) -> None:
        """Delete a batch's local files once it is applied or abandoned (unless kept)."""
        if self.settings.keep_spool_files:
            return
        for path in batch_files(self.spool_dir, self.job.name, batch_id):
            path.unlink(missing_ok=True)

    async def sweep_spool(self) -> int:
        """Delete this job's spool files of batches that ended or never were; return how many.

        Left by a crash (a draft killed before it was bound), by a batch another worker
        finished, or by a dry run. A file being written is locked and skipped; a draft's file
        taken between its writing and its binding is rebuilt from the database before upload.
        """
        if self.settings.keep_spool_files:
            return 0
        try:
            names = os.listdir(self.spool_dir)
        except FileNotFoundError:
            return 0
        by_batch: dict[str, list[Path]] = {}
        for name in names:
            batch_id = spool_file_batch(self.job.name, name)
            if batch_id is not None:
                by_batch.setdefault(batch_id, []).append(self.spool_dir / name)
        removed = 0
        dry_run = self.spool_path("dry-run")
        if dry_run.name in names:
            dry_run.unlink(missing_ok=True)
            removed += 1
        for batch_id, paths in by_batch.items():
            record = await self.store.get_batch(batch_id)
            if record is not None and record.state not in ("applied", "abandoned"):
                continue
            for path in paths:
                fd = try_lock(path)
                if fd is None:
                    continue
                try:
                    path.unlink(missing_ok=True)
                    removed += 1
                finally:
                    os.close(fd)
        if removed:
            log.info("spool: removed %d files of batches that ended or were never bound", removed)
        return removed


async def get_or_stop(
    queue: asyncio.Queue[T], stopping: asyncio.Event, wait_s: float | None = None
) -> T | None:
    """Return the next queued item; None on timeout or once the engine is stopping."""
    if not queue.empty():
        return queue.get_nowait()
    if stopping.is_set():
        return None
    get = asyncio.ensure_future(queue.get())
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({get, stop}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not get.done():
            get.cancel()
        await asyncio.gather(stop, get, return_exceptions=True)
    if get.done() and not get.cancelled():
        return get.result()
    return None


async def sleep_or_stop(seconds: float, stopping: asyncio.Event) -> bool:
    """Sleep, waking early when the engine stops; True when it is stopping."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=max(seconds, 0.0))
    except TimeoutError:
        return False
    return True


def is_not_found(exc: BaseException) -> bool:
    """Whether an API error is the remote side saying it does not know the object (404)."""
    return getattr(exc, "status_code", None) == 404


class RemoteGone:
    """Counts each batch's 404s in a row; says when the remote side has forgotten it.

    Gone means ``remote_gone_polls`` answers of 404 in a row spread over at least
    ``remote_gone_s`` (time.monotonic()), so one stray 404 never abandons a live batch.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self._polls = settings.remote_gone_polls
        self._gone_s = settings.remote_gone_s
        self._seen: dict[str, tuple[int, float]] = {}  # batch id -> (404s in a row, first)

    def not_found(self, batch_id: str) -> str | None:
        """Count one 404; return how long it lasted (for the reason) once it is gone."""
        count, first = self._seen.get(batch_id, (0, time.monotonic()))
        count += 1
        self._seen[batch_id] = (count, first)
        lasted = time.monotonic() - first
        if count >= self._polls and lasted >= self._gone_s:
            self._seen.pop(batch_id, None)
            return f"404 {count} times over {lasted:.1f}s"
        return None

    def found(self, batch_id: str) -> None:
        """Forget the 404s of a batch that answered."""
        self._seen.pop(batch_id, None)


async def abandon_batch(
    ctx: PipelineContext, record: BatchRecord, reason: str, *, burn_attempt: bool
) -> None:
    """Give a batch's rows back with the reason, record it abandoned, and free its slot.

    ``burn_attempt`` False when the rows are not at fault (the remote side forgot the batch):
    they go back to pending with their attempts unused.
    """
    items = await ctx.store.batch_items(record.id)
    rows = [RequeueRow(key, token, reason, burn_attempt=burn_attempt)
            for key, token, _cid, _att in items]
    outcome = await ctx.store.requeue(ctx.job, rows, ctx.settings.max_attempts)
    await ctx.record_batch(record, state="abandoned", error=reason[:2000])
    log.error("batch %s abandoned: %s", record.id, reason, extra={"batch_id": record.id})
    ctx.count("rows_requeued", outcome.requeued)
    ctx.count("rows_dead", outcome.dead)
    ctx.emit(EngineEvent(kind="error", job=ctx.job.name, batch_id=record.id, message=reason))
    ctx.remove_spool(record.id)
    ctx.work_changed.set()
    await ctx.done_with(record.id)
