"""The Engine: lifecycle, the four stages in one task group, recovery, and graceful stop.

    async with Engine(job, store=StoreSettings(...), api=ApiSettings(...)) as engine:
        summary = await engine.run(until_idle=True)

``run()`` runs until ``stop()``; ``run(until_idle=True)`` drains what is pending and returns;
``run(num_batches=N)`` returns once N new batches were submitted and applied. Stopping is an
event, not a cancellation: intake closes, in-flight work reaches a safe point within
``shutdown_grace_period_s``, then whatever is left is cancelled (and recovered by the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType

from engine.batch_api import BatchApi
from engine.errors import EngineError, LifecycleError
from engine.job import JobSpec
from engine.pipeline import EngineEvent, InFlightSlots, PipelineContext
from engine.poller import Poller
from engine.producer import Producer
from engine.requests import RequestRenderer, parse_custom_id
from engine.results import ResultParser
from engine.settings import ApiSettings, EngineSettings, StoreSettings
from engine.store import BatchRecord, ClaimedItem, Store
from engine.submitter import Submitter, TokenBudget
from engine.writer import Writer

__all__ = ["Engine", "EngineEvent", "RunSummary"]

log = logging.getLogger("engine.engine")

ADOPT_STATES = ("draft", "uploaded", "submitted", "finished")
EVENT_BUFFER = 10_000


class _Lifecycle(Enum):
    """Where an Engine is in its life; it is never reused once closed."""

    NEW = "new"
    OPEN = "open"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class RunSummary:
    """What one run did, and the item counts when it ended."""

    batches_submitted: int
    batches_applied: int
    rows_applied: int
    rows_requeued: int
    rows_dead: int
    counts: dict[str, int] = field(default_factory=dict)
    stopped: bool = False


def default_worker_id() -> str:
    """host-pid-random: unique per process, readable in the batches table."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Engine:
    """Runs one job: rows in, batches out, answers back into the rows."""

    def __init__(
        self,
        job: JobSpec,
        *,
        store: Store | StoreSettings,
        api: BatchApi | ApiSettings,
        settings: EngineSettings | None = None,
        on_event: Callable[[EngineEvent], None] | None = None,
    ) -> None:
        self.job = job
        self.settings = settings or EngineSettings()
        self.worker_id = self.settings.worker_id or default_worker_id()
        self._store_arg = store
        self._api_arg = api
        self._store: Store | None = store if isinstance(store, Store) else None
        self._api: BatchApi | None = api if isinstance(api, BatchApi) else None
        self._on_event = on_event
        self._subscribers: list[asyncio.Queue[EngineEvent]] = []
        self._state = _Lifecycle.NEW
        self._stopping = asyncio.Event()
        self._exit_stack = contextlib.AsyncExitStack()
        self.dropped_events = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        """Open the store and the API client (those we were given settings for)."""
        if self._state is not _Lifecycle.NEW:
            raise LifecycleError(f"Engine is {self._state.value}; create a new one")
        try:
            if self._store is None:
                assert isinstance(self._store_arg, StoreSettings)
                self._store = await Store.open(self._store_arg)
                self._exit_stack.push_async_callback(self._store.close)
            if self._api is None:
                assert isinstance(self._api_arg, ApiSettings)
                self._api = BatchApi(self._api_arg)
                await self._exit_stack.enter_async_context(self._api)
        except BaseException:
            await self._exit_stack.aclose()
            self._state = _Lifecycle.CLOSED
            raise
        self._state = _Lifecycle.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close what we opened; the engine cannot be used again."""
        self._state = _Lifecycle.CLOSED
        await self._exit_stack.aclose()
        for queue in self._subscribers:
            queue.put_nowait(EngineEvent(kind="idle", job=self.job.name, message="closed"))

    @property
    def store(self) -> Store:
        """The open store."""
        if self._store is None or self._state in (_Lifecycle.NEW, _Lifecycle.CLOSED):
            raise LifecycleError("Engine is not open: use 'async with Engine(...)'")
        return self._store

    @property
    def api(self) -> BatchApi:
        """The open Batch API wrapper."""
        if self._api is None or self._state in (_Lifecycle.NEW, _Lifecycle.CLOSED):
            raise LifecycleError("Engine is not open: use 'async with Engine(...)'")
        return self._api

    def stop(self) -> None:
        """Ask a running engine to stop gracefully; safe from signal handlers and callbacks."""
        self._stopping.set()

    # -- events -------------------------------------------------------------------------------

    def _emit(self, event: EngineEvent) -> None:
        """Deliver an event to the callback and to every subscriber (dropping when full)."""
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a faulty callback must never stop the pipeline
                log.exception("on_event callback failed")
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped_events += 1

    async def events(self) -> AsyncIterator[EngineEvent]:
        """Yield events as they happen until the engine closes."""
        queue: asyncio.Queue[EngineEvent] = asyncio.Queue(EVENT_BUFFER)
        self._subscribers.append(queue)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.kind == "idle" and event.message == "closed":
                    return
        finally:
            self._subscribers.remove(queue)

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        until_idle: bool = False,
        num_batches: int | None = None,
        install_signal_handlers: bool = False,
    ) -> RunSummary:
        """Run the pipeline; see the module docstring for the three ways it ends."""
        if self._state is not _Lifecycle.OPEN:
            raise LifecycleError(f"Engine is {self._state.value}; run() needs an open engine")
        if num_batches is not None and num_batches < 1:
            raise EngineError(f"num_batches: must be >= 1, got {num_batches}")
        self._state = _Lifecycle.RUNNING
        self._stopping = asyncio.Event()
        ctx = self._context()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        try:
            await self._run(ctx, until_idle=until_idle, num_batches=num_batches)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._state = _Lifecycle.OPEN
        counts = await ctx.store.counts(self.job.name)
        return RunSummary(
            batches_submitted=ctx.batches_submitted,
            batches_applied=ctx.batches_applied,
            rows_applied=ctx.counters.get("rows_applied", 0),
            rows_requeued=ctx.counters.get("rows_requeued", 0),
            rows_dead=ctx.counters.get("rows_dead", 0),
            counts=counts,
            stopped=self._stopping.is_set(),
        )

    # -- single steps (the submit / check / cancel commands and small scripts) -------------------

    async def submit_one(self) -> BatchRecord | None:
        """Claim, spool and submit one batch, then return its record; None when nothing pends.

        The batch is handed over (its lease expired) at once, so ``check`` or any ``run``
        can pick it up from here.
        """
        ctx = self._ready_context()
        queue: asyncio.Queue[BatchRecord] = asyncio.Queue()
        producer = Producer(ctx, queue, until_idle=True, num_batches=1)
        draft = await producer.build_draft()
        if draft is None:
            return None

        async def keep(_record: BatchRecord) -> None:
            return None

        submitter = Submitter(
            ctx, queue, TokenBudget(None), track=keep,
            rebuild_spool=lambda r: self._rebuild_spool(ctx, r),
        )
        try:
            await submitter.submit(draft.record)
        finally:
            await self._hand_over(ctx)
        return await ctx.store.get_batch(draft.record.id)

    async def check_batch(self, ref: str, *, apply: bool = True) -> BatchRecord:
        """Poll one batch (local or remote id) once; apply its results when it has finished."""
        ctx = self._ready_context()
        record = await self.find_batch(ref)
        writer = Writer(ctx)
        finished: list[BatchRecord] = []

        async def on_finished(done: BatchRecord) -> None:
            finished.append(done)

        async def nothing(_record: BatchRecord) -> None:
            return None

        async def no_adoption() -> int:
            return 0

        poller = Poller(
            ctx, TokenBudget(None), finished=on_finished, resubmit=nothing, adopt=no_adoption
        )
        ctx.owned.add(record.id)
        try:
            if record.state == "submitted" and record.remote_batch_id:
                await poller.poll_once(record)
            elif record.state == "finished":
                finished.append(record)
            if finished and apply:
                await ctx.store.update_batch(record.id, worker_id=self.worker_id)
                await writer.apply_batch(finished[0])
        finally:
            await self._hand_over(ctx)
        return await self.find_batch(record.id)

    async def cancel_batch(self, ref: str) -> BatchRecord:
        """Ask the API to cancel a live batch; its partial results are applied when it ends."""
        record = await self.find_batch(ref)
        if not record.remote_batch_id:
            raise EngineError(f"batch {ref}: not submitted yet (state {record.state})")
        batch = await self.api.cancel_batch(record.remote_batch_id)
        await self.store.update_batch(record.id, remote_status=batch.status)
        log.info("batch %s (%s): cancel requested", record.id, record.remote_batch_id)
        return await self.find_batch(record.id)

    async def find_batch(self, ref: str) -> BatchRecord:
        """Return a batch by local id or remote batch id; EngineError when unknown."""
        record = await self.store.get_batch(ref)
        if record is None:
            record = await self.store.find_batch_by_remote_id(ref)
        if record is None:
            raise EngineError(f"no batch {ref!r} in the batches table")
        return record

    def _ready_context(self) -> PipelineContext:
        """Build a context for a single step; refused while this engine is running."""
        if self._state is not _Lifecycle.OPEN:
            raise LifecycleError(f"Engine is {self._state.value}; this step needs an open engine")
        return self._context()

    def _context(self) -> PipelineContext:
        """Build the per-run context shared by the stages."""
        return PipelineContext(
            job=self.job,
            store=self.store,
            api=self.api,
            settings=self.settings,
            worker_id=self.worker_id,
            renderer=RequestRenderer(self.job),
            parser=ResultParser(self.job),
            slots=InFlightSlots(self.settings.max_in_flight),
            spool_dir=Path(self.settings.spool_dir),
            emit=self._emit,
        )

    async def _run(
        self, ctx: PipelineContext, *, until_idle: bool, num_batches: int | None
    ) -> None:
        """Wire the stages, recover, and supervise until done or stopped."""
        budget = TokenBudget(self.settings.enqueued_token_budget)
        submit_queue: asyncio.Queue[BatchRecord] = asyncio.Queue()
        writer = Writer(ctx)

        async def resubmit(record: BatchRecord) -> None:
            await submit_queue.put(record)

        poller: Poller
        submitter = Submitter(
            ctx, submit_queue, budget, track=lambda r: poller.track(r),
            rebuild_spool=lambda r: self._rebuild_spool(ctx, r),
        )

        async def adopt() -> int:
            return await self._adopt(ctx, submitter, submit_queue, poller, writer)

        poller = Poller(ctx, budget, finished=writer.accept, resubmit=resubmit, adopt=adopt)
        producer = Producer(ctx, submit_queue, until_idle=until_idle, num_batches=num_batches)

        # Claims under our own id are a crashed predecessor's: nothing else can hold them.
        await ctx.store.reap_expired(self.job, self.worker_id)
        adopted = await adopt()
        if adopted:
            log.info("recovered %d batches of %s", adopted, self.job.name)
        producer_finished = asyncio.Event()

        async def run_producer() -> None:
            try:
                await producer.run()
            finally:
                producer_finished.set()

        stages = {
            "producer": run_producer(),
            "submitter": submitter.run(),
            "poller": poller.run(),
            "writer": writer.run(),
        }
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(coro, name=f"engine.{name}[{self.job.name}]")
                    for name, coro in stages.items()
                ]
                await self._supervise(ctx, producer_finished)
                await self._grace(tasks)
        except BaseExceptionGroup as failed:
            # A stage died: the group cancelled the others. Raise the cause itself, loudly.
            causes = [e for e in failed.exceptions if not isinstance(e, asyncio.CancelledError)]
            if len(causes) == 1:
                raise causes[0] from None
            raise
        finally:
            await self._hand_over(ctx)

    async def _supervise(self, ctx: PipelineContext, producer_finished: asyncio.Event) -> None:
        """Wait for stop() or for the producer to finish and every owned batch to be applied."""
        producer_done = asyncio.ensure_future(producer_finished.wait())
        stop_asked = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({producer_done, stop_asked}, return_when=asyncio.FIRST_COMPLETED)
            if not stop_asked.done():
                drained = asyncio.ensure_future(ctx.slots.wait_below(1))
                await asyncio.wait({drained, stop_asked}, return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
                await asyncio.gather(drained, return_exceptions=True)
            if stop_asked.done():
                log.info("stopping: no new claims; letting in-flight steps finish")
        finally:
            producer_done.cancel()
            stop_asked.cancel()
            await asyncio.gather(producer_done, stop_asked, return_exceptions=True)
        ctx.stopping.set()

    async def _grace(self, tasks: list[asyncio.Task[None]]) -> None:
        """Give the stages the grace period to reach a safe point, then cancel the rest."""
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_period_s)
        for task in late:
            log.warning("cancelling %s after the grace period", task.get_name())
            task.cancel()

    async def _hand_over(self, ctx: PipelineContext) -> None:
        """Expire the leases of batches we still own so a restart or peer adopts them now."""
        if not ctx.owned:
            return
        try:
            await asyncio.shield(
                ctx.store.renew_batch_leases(self.worker_id, sorted(ctx.owned), 0.0)
            )
        except Exception:  # their leases expire on their own; never mask the run's outcome
            log.warning("could not hand over %d batches; their leases will expire", len(ctx.owned))

    async def _adopt(
        self,
        ctx: PipelineContext,
        submitter: Submitter,
        submit_queue: asyncio.Queue[BatchRecord],
        poller: Poller,
        writer: Writer,
    ) -> int:
        """Adopt this worker's and dead workers' unfinished batches and route each to its stage."""
        records = await ctx.store.adopt_batches(
            self.job, self.worker_id, self.settings.lease_s, ADOPT_STATES
        )
        count = 0
        for record in records:
            if record.id in ctx.owned:
                continue
            ctx.owned.add(record.id)
            await ctx.slots.adopt()
            count += 1
            log.info(
                "adopted batch %s (%s) in state %s",
                record.id, record.remote_batch_id or "-", record.state,
                extra={"batch_id": record.id},
            )
            if record.state == "draft":
                await submit_queue.put(record)
            elif record.state == "uploaded":
                # A crash between create and saving its id leaves a remote batch we must find.
                submitter.suspect.add(record.id)
                await submit_queue.put(record)
            elif record.state == "submitted":
                await poller.track(record)
            else:
                await writer.accept(record)
        return count

    async def _rebuild_spool(self, ctx: PipelineContext, record: BatchRecord) -> None:
        """Re-render a draft's JSONL from the database (the spool was on another machine)."""
        items = await ctx.store.batch_items(record.id)
        rows = await ctx.store.fetch_source_rows(self.job, [key for key, *_ in items])
        path = ctx.spool_path(record.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[bytes] = []
        for key, token, custom_id, _attempts in items:
            _job, _key, attempt = parse_custom_id(custom_id)
            item = ClaimedItem(key=key, claim_token=token, attempts=attempt, row=rows.get(key, {}))
            lines.append(ctx.renderer.render(item, attempt).line)
        await asyncio.to_thread(_write_lines, path, lines)
        log.info("batch %s: spool rebuilt from the database (%d lines)", record.id, len(lines))


def _write_lines(path: Path, lines: list[bytes]) -> None:
    """Write a spool file atomically."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        out.writelines(lines)
    tmp.replace(path)
