"""The Engine: lifecycle, the four stages in one task group, recovery, and graceful stop.

    async with Engine(job, store=StoreSettings(...), api=ApiSettings(...)) as engine:
        summary = await engine.run(until_idle=True)

``run()`` runs until ``stop()``; ``run(until_idle=True)`` drains what is pending and returns;
``run(num_batches=N)`` returns once N new batches were submitted and applied;
``run(max_cost_usd=X)`` submits no new batch once what this run spent plus the estimate of the
next batch would pass X, and returns when nothing else is in flight. ``dry_run()`` builds the
first batch file and estimates tokens and cost for everything pending, submitting nothing.

Stopping is an event, not a cancellation: intake closes, in-flight work reaches a safe point within
``shutdown_grace_period_s``, then whatever is left is cancelled (and recovered by the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType

from engine.batch_api import BatchApi
from engine.errors import (
    BatchApiError,
    ConfigError,
    EngineError,
    LifecycleError,
    RemoteGoneError,
)
from engine.heartbeat import Heartbeat
from engine.job import JobSpec
from engine.pipeline import (
    ADOPT_STATES,
    EngineEvent,
    InFlightSlots,
    PipelineContext,
    is_not_found,
)
from engine.poller import Poller
from engine.pricing import cost as price_cost
from engine.producer import CLAIM_CHUNK, Producer
from engine.requests import InputRejected, RequestRenderer, parse_custom_id
from engine.results import ResultParser, Usage
from engine.settings import ApiSettings, EngineSettings, StoreSettings
from engine.spool import (
    disk_full_as_error,
    ensure_private_dir,
    open_private,
    warn_if_shared,
    write_all,
)
from engine.store import BatchRecord, ClaimedItem, Holding, RequeueRow, Store
from engine.submitter import Submitter, TokenBudget
from engine.writer import Writer

__all__ = ["CostCeiling", "DryRunReport", "Engine", "EngineEvent", "RunSummary"]

log = logging.getLogger("engine.engine")

EVENT_BUFFER = 10_000
# Output tokens per request assumed when the job sets no max_output_tokens (estimates only).
DEFAULT_OUTPUT_TOKENS = 1000
# Observed output per request is scaled up by this before it replaces the worst case.
OUTPUT_MARGIN = 1.5
# Recent applied batches of the job read to learn its output tokens per request.
SEED_BATCHES = 20


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
    cost_usd: float = 0.0  # this run's batches: applied at their cost, the rest estimated
    cost_ceiling: str | None = None  # why submission stopped at max_cost_usd, when it did
    # Unfinished work other live workers held when an until-idle run ended.
    held_elsewhere: tuple[Holding, ...] = ()
    rows_skipped: int = 0  # results not written: the row was no longer pending, or not one row


@dataclass(frozen=True)
class DryRunReport:
    """What a run would send: the first batch file, and estimates for everything pending."""

    job: str
    model: str
    rows_pending: int  # rows counted (pending, or claimed by a worker that died)
    requests: int  # rows that would be sent
    rejected: int  # rows that would be dead at once (no text, too long)
    batches: int  # batches the requests would be cut into
    input_tokens: int  # estimated, conservative
    output_tokens_per_request: int  # the job's max_output_tokens (an upper bound)
    cost_input_usd: float  # input alone, batch prices
    cost_max_usd: float  # input plus every request using max output tokens, batch prices
    cost_input_standard_usd: float  # the same without the batch discount
    cost_max_standard_usd: float
    price_known: bool
    first_batch_path: str | None
    first_batch_requests: int
    first_batch_tokens: int
    first_batch_bytes: int


def estimate_batch_cost(
    job: JobSpec, model: str, input_tokens: int, requests: int, output_per_request: int,
    *, batch: bool = True,
) -> float:
    """USD for ``input_tokens`` plus ``requests * output_per_request`` output tokens."""
    usage = Usage(input_tokens, 0, requests * output_per_request, 0)
    return price_cost(model, usage, batch=batch, overrides=job.pricing).usd


class CostCeiling:
    """Admits a batch to creation only while this run's spend plus its estimate stays <= max.

    Spent counts this run's admitted batches: applied ones at their recorded cost, the others
    at their estimate. A batch is estimated as its estimated input tokens plus, per request,
    the job's ``max_output_tokens`` (or DEFAULT_OUTPUT_TOKENS) until an applied batch of the
    job (recent ones in the database, then this run's) shows the real output per completed
    request; from then on 1.5x that mean, capped at the maximum. The ceiling, once reached,
    stays reached for the run. A refused batch is abandoned without using an attempt (its rows
    go back to pending), the refusal is logged at WARNING and emitted as an ``error`` event
    whose state is ``cost_ceiling``, and ``on_trip`` runs once so the producer stops.
    """

    def __init__(
        self,
        ctx: PipelineContext,
        max_cost_usd: float,
        on_trip: Callable[[], None] | None = None,
    ) -> None:
        if max_cost_usd < 0 or math.isnan(max_cost_usd):
            raise ConfigError(f"max_cost_usd: must be >= 0, got {max_cost_usd}")
        self._ctx = ctx
        self.max_cost_usd = max_cost_usd
        self.on_trip = on_trip
        self._open: dict[str, float] = {}  # admitted, not yet applied: id -> estimate
        self.spent_usd = 0.0  # admitted and applied, at their recorded cost
        self._observed_requests = 0
        self._observed_output = 0
        self.tripped: str | None = None
        self.refused = 0
        self._seeded = False

    @property
    def committed_usd(self) -> float:
        """Spent plus the estimates of admitted batches not applied yet."""
        return self.spent_usd + sum(self._open.values())

    def output_per_request(self) -> int:
        """Output tokens per request used in estimates (see the class docstring)."""
        ceiling = self._ctx.job.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        if self._observed_requests == 0:
            return ceiling
        mean = self._observed_output / self._observed_requests
        return min(ceiling, max(1, math.ceil(mean * OUTPUT_MARGIN)))

    def estimate(self, record: BatchRecord) -> float:
        """Estimated batch-price USD of one batch."""
        return estimate_batch_cost(
            self._ctx.job, record.model, record.estimated_tokens, record.request_total,
            self.output_per_request(),
        )

    async def settle(self) -> None:
        """Replace estimates by recorded costs for admitted batches that have been applied."""
        if not self._seeded:
            # Earlier runs' applied batches tell the output per request before ours do.
            self._seeded = True
            for done in await self._ctx.store.list_batches(
                self._ctx.job.name, states=["applied"], limit=SEED_BATCHES
            ):
                if done.output_tokens and done.request_completed:
                    self._observed_requests += done.request_completed
                    self._observed_output += done.output_tokens
        for batch_id in list(self._open):
            current = await self._ctx.store.get_batch(batch_id)
            if current is None or current.state not in ("applied", "abandoned"):
                continue
            del self._open[batch_id]
            if current.state == "applied":
                self.spent_usd += current.cost_usd
                self._observed_requests += current.request_completed
                self._observed_output += current.output_tokens

    async def admit(self, record: BatchRecord) -> bool:
        """Return True when the batch may be created; else give its rows back and say why."""
        if record.id in self._open:  # admitted before; this is a retry of its create
            return True
        await self.settle()
        estimate = self.estimate(record)
        committed = self.committed_usd
        if self.tripped is None and committed + estimate <= self.max_cost_usd:
            self._open[record.id] = estimate
            return True
        reason = (
            f"cost ceiling: spent ${committed:.4f} this run (estimates included) + "
            f"${estimate:.4f} estimated for batch {record.id} would pass max_cost_usd "
            f"${self.max_cost_usd:.4f}; no new batches will be submitted"
        )
        if self.tripped is None:
            self.tripped = reason
            log.warning("%s", reason, extra={"batch_id": record.id})
            if self.on_trip is not None:
                self.on_trip()
        await self._give_back(record, reason)
        return False

    async def _give_back(self, record: BatchRecord, reason: str) -> None:
        """Abandon a refused batch: rows to pending (no attempt used), slot freed."""
        ctx = self._ctx
        self.refused += 1
        items = await ctx.store.batch_items(record.id)
        rows = [RequeueRow(key, token, reason, burn_attempt=False) for key, token, _c, _a in items]
        await ctx.store.requeue(ctx.job, rows, ctx.settings.max_attempts)
        await ctx.record_batch(record, state="abandoned", error=reason[:2000])
        ctx.emit(EngineEvent(kind="error", job=ctx.job.name, batch_id=record.id,
                             state="cost_ceiling", rows=len(rows), message=reason))
        ctx.remove_spool(record.id)
        await ctx.done_with(record.id)


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
        self._listeners: list[Callable[[EngineEvent], None]] = []
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

    def add_listener(self, callback: Callable[[EngineEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every event (like ``on_event``); return a remover."""
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    def _emit(self, event: EngineEvent) -> None:
        """Deliver an event to the callbacks and to every subscriber (dropping when full)."""
        callbacks = [self._on_event] if self._on_event is not None else []
        for callback in [*callbacks, *self._listeners]:
            try:
                callback(event)
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
        max_cost_usd: float | None = None,
    ) -> RunSummary:
        """Run the pipeline; see the module docstring for the ways it ends."""
        if self._state is not _Lifecycle.OPEN:
            raise LifecycleError(f"Engine is {self._state.value}; run() needs an open engine")
        if num_batches is not None and num_batches < 1:
            raise EngineError(f"num_batches: must be >= 1, got {num_batches}")
        if max_cost_usd is not None and not max_cost_usd >= 0:
            raise ConfigError(f"max_cost_usd: must be >= 0, got {max_cost_usd}")
        if max_cost_usd is not None and not price_cost(
            self.job.model, Usage(1, 0, 1, 0), overrides=self.job.pricing
        ).known:
            # Every estimate would be $0 and the ceiling would never hold.
            raise ConfigError(
                f"max_cost_usd: no price known for model {self.job.model!r}; set the job's "
                "[pricing] (input, output USD per 1M tokens)"
            )
        # Prove the key and the address before claiming anything: a refused key or an
        # unreachable API must fail the run with nothing written, not strand claimed rows.
        await self.check_api()
        self._state = _Lifecycle.RUNNING
        self._stopping = asyncio.Event()
        ctx = self._context()
        ceiling: CostCeiling | None = None
        if max_cost_usd is not None:
            ceiling = CostCeiling(ctx, max_cost_usd)
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        try:
            await self._run(
                ctx, until_idle=until_idle, num_batches=num_batches, ceiling=ceiling
            )
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
            cost_usd=await self._run_cost(ctx, ceiling),
            cost_ceiling=ceiling.tripped if ceiling is not None else None,
            held_elsewhere=tuple(ctx.held_elsewhere),
            rows_skipped=ctx.counters.get("rows_skipped", 0),
        )

    async def _run_cost(self, ctx: PipelineContext, ceiling: CostCeiling | None) -> float:
        """Return this run's cost (applied batches at cost, the rest estimated), if tracked."""
        if ceiling is None:
            return 0.0
        await ceiling.settle()
        return ceiling.committed_usd

    # -- single steps (the submit / check / cancel commands and small scripts) -------------------

    async def check_api(self) -> None:
        """Make one cheap authenticated call (list one batch); raise if it cannot succeed.

        AuthenticationError for a refused key, TransientApiError when the API stays
        unreachable through the retry policy, BatchApiError for anything else.
        """
        async for _batch in self.api.iter_recent_batches(1, page_size=1):
            break

    async def submit_one(self) -> BatchRecord | None:
        """Claim, spool and submit one batch, then return its record; None when nothing pends.

        The batch is handed over (its lease expired) at once, so ``check`` or any ``run``
        can pick it up from here.
        """
        ctx = self._ready_context()
        await self.check_api()
        async with self._heartbeat(ctx).alive():
            return await self._submit_one(ctx)

    async def _submit_one(self, ctx: PipelineContext) -> BatchRecord | None:
        """submit_one's work, while this worker's heartbeat says it is alive."""
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

    async def dry_run(self, path: Path | None = None) -> DryRunReport:
        """Write the first batch file and estimate tokens and cost of everything pending.

        Nothing reaches the API. Pending rows are discovered (items are created for new source
        rows, as any run would), claimed chunk by chunk to be rendered, and every claim is
        released at the end without using an attempt; other workers skip these rows
        meanwhile. Rows whose input would be rejected are counted, not dead-lettered.
        """
        ctx = self._ready_context()
        store, job, settings = ctx.store, self.job, self.settings
        await store.discover(job)
        first = path or ctx.spool_path("dry-run")
        ensure_private_dir(first.parent)
        held: list[tuple[str, str]] = []
        seen: set[str] = set()
        rejected = requests = input_tokens = batches = 0
        cut_requests = cut_bytes = cut_tokens = 0
        first_requests = first_tokens = first_bytes = 0
        first_open = True
        cap = settings.max_batch_tokens
        try:
            with open_private(first) as out:
                while True:
                    claimed = await store.claim(job, self.worker_id, CLAIM_CHUNK, settings.lease_s)
                    held.extend((item.key, item.claim_token) for item in claimed)
                    fresh = [item for item in claimed if item.key not in seen]
                    if not fresh:  # nothing left, or our own claims came back after a lease
                        break
                    lines: list[bytes] = []
                    for item in fresh:
                        seen.add(item.key)
                        try:
                            rendered = ctx.renderer.render(item, item.attempts)
                        except InputRejected:
                            rejected += 1
                            continue
                        size, tokens = len(rendered.line), rendered.estimated_tokens
                        # Cut batches by the producer's rules: count, bytes, tokens.
                        if cut_requests and (
                            cut_requests >= settings.batch_size
                            or cut_bytes + size > settings.max_batch_bytes
                            or (cap is not None and cut_tokens + tokens > cap)
                        ):
                            first_open = False
                            cut_requests = cut_bytes = cut_tokens = 0
                        if cut_requests == 0:
                            batches += 1
                        cut_requests += 1
                        cut_bytes += size
                        cut_tokens += tokens
                        requests += 1
                        input_tokens += tokens
                        if first_open:
                            lines.append(rendered.line)
                            first_requests, first_bytes = first_requests + 1, first_bytes + size
                            first_tokens += tokens
                    if lines:
                        await asyncio.to_thread(write_all, out, lines, first.parent)
        finally:
            if held:
                try:
                    await asyncio.shield(store.release(job, held))
                except Exception:  # the leases expire anyway; never hide the outcome
                    log.warning("dry run: could not release %d claims; their leases will expire",
                                len(held))
        if not first_requests:
            first.unlink(missing_ok=True)
        per_request = job.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        known = price_cost(job.model, Usage(1, 0, 1, 0), overrides=job.pricing).known

        def usd(with_output: bool, batch: bool) -> float:
            out = per_request if with_output else 0
            return estimate_batch_cost(job, job.model, input_tokens, requests, out, batch=batch)

        report = DryRunReport(
            job=job.name,
            model=job.model,
            rows_pending=len(seen),
            requests=requests,
            rejected=rejected,
            batches=batches,
            input_tokens=input_tokens,
            output_tokens_per_request=per_request,
            cost_input_usd=usd(False, True),
            cost_max_usd=usd(True, True),
            cost_input_standard_usd=usd(False, False),
            cost_max_standard_usd=usd(True, False),
            price_known=known,
            first_batch_path=str(first) if first_requests else None,
            first_batch_requests=first_requests,
            first_batch_tokens=first_tokens,
            first_batch_bytes=first_bytes,
        )
        log.info("dry run of %s: %d requests in %d batches, ~%d input tokens, nothing submitted",
                 job.name, requests, batches, input_tokens)
        return report

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
            async with self._heartbeat(ctx).alive():
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
        if record.state == "abandoned" and is_gone(record):
            raise RemoteGoneError(f"batch {record.id}: nothing to cancel, {record.error}")
        if not record.remote_batch_id:
            raise EngineError(f"batch {ref}: not submitted yet (state {record.state})")
        try:
            batch = await self.api.cancel_batch(record.remote_batch_id)
        except BatchApiError as exc:
            if not is_not_found(exc):
                raise
            note = f"remote batch {record.remote_batch_id} not found when cancelling: {exc}"
            await self.store.update_batch(record.id, error=note[:2000])
            raise RemoteGoneError(
                f"batch {record.id}: remote batch {record.remote_batch_id} is gone (the API "
                "answers 404: restarted, deleted, or another project's key); nothing to cancel. "
                f"A run abandons it after {self.settings.remote_gone_polls} such answers over "
                f"{self.settings.remote_gone_s:g}s and sends its rows back without using an "
                "attempt"
            ) from None
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
        self,
        ctx: PipelineContext,
        *,
        until_idle: bool,
        num_batches: int | None,
        ceiling: CostCeiling | None = None,
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
        producer = Producer(
            ctx, submit_queue, until_idle=until_idle, num_batches=num_batches, adopt=adopt
        )
        if ceiling is not None:

            def stop_producing() -> None:
                # Producer has no public "no more drafts"; num_batches is the limit it checks
                # before each draft, so lowering it ends production after the one in hand.
                producer._num_batches = producer.produced

            ceiling.on_trip = stop_producing
            submitter.admit = ceiling.admit

        async def orphans_found() -> None:
            # Adopt first: a producer woken before the adoption landed could find nothing
            # in flight and nothing elsewhere, and call the run idle.
            await adopt()
            ctx.work_changed.set()

        heartbeat = self._heartbeat(ctx, orphans_found)
        # The first beat also ends the leases of workers that died since they last beat.
        await heartbeat.beat()
        # Claims under our own id are a crashed predecessor's: nothing else can hold them.
        await ctx.store.reap_expired(self.job, self.worker_id)
        # The reconciler of guarantee 7: batches marked applied with rows that never landed.
        for batch_id in await ctx.store.reopen_unsettled(self.job):
            log.warning("batch %s was applied with rows unsettled; applying it again", batch_id,
                        extra={"batch_id": batch_id})
        adopted = await adopt()
        if adopted:
            log.info("recovered %d batches of %s", adopted, self.job.name)
        ensure_private_dir(ctx.spool_dir)
        warn_if_shared(ctx.spool_dir)
        await self._sweep_spool(ctx)
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
            "heartbeat": heartbeat.run(ctx.stopping),
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
            causes = _causes(failed)
            if len(causes) == 1:
                raise causes[0] from None
            raise
        finally:
            await self._hand_over(ctx)
            await heartbeat.forget()
            await self._sweep_spool(ctx)

    def _heartbeat(
        self, ctx: PipelineContext, on_orphans: Callable[[], Awaitable[None]] | None = None
    ) -> Heartbeat:
        """Return this worker's heartbeat over the context's store."""
        return Heartbeat(
            ctx.store, self.job, self.worker_id, self.settings, ADOPT_STATES, on_orphans
        )

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
        adopted = await ctx.store.adopt_batches(
            self.job, self.worker_id, self.settings.lease_s, ADOPT_STATES
        )
        count = 0
        for record, previous in adopted:
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
                # A crash between create and saving its id leaves a remote batch we must find;
                # a live worker whose lease lapsed may still have its create in flight.
                if previous is not None and previous != self.worker_id:
                    submitter.adopted_from(record, previous)
                else:
                    submitter.suspect.add(record.id)
                await submit_queue.put(record)
            elif record.state == "submitted":
                await poller.track(record)
            else:
                await writer.accept(record)
        return count

    async def _sweep_spool(self, ctx: PipelineContext) -> None:
        """Remove spool files left by batches that ended or were never bound."""
        try:
            await asyncio.shield(ctx.sweep_spool())
        except Exception as exc:  # the next run sweeps again; never mask the run's outcome
            log.warning("spool: could not remove old batch files: %s", exc)

    async def _rebuild_spool(self, ctx: PipelineContext, record: BatchRecord) -> None:
        """Re-render a draft's JSONL from the database (the spool was on another machine)."""
        items = await ctx.store.batch_items(record.id)
        rows = await ctx.store.fetch_source_rows(self.job, [key for key, *_ in items])
        path = ctx.spool_path(record.id)
        ensure_private_dir(path.parent)
        lines: list[bytes] = []
        for key, token, custom_id, _attempts in items:
            _job, _key, attempt = parse_custom_id(custom_id)
            item = ClaimedItem(key=key, claim_token=token, attempts=attempt, row=rows.get(key, {}))
            lines.append(ctx.renderer.render(item, attempt).line)
        await asyncio.to_thread(_write_lines, path, lines)
        log.info("batch %s: spool rebuilt from the database (%d lines)", record.id, len(lines))


def is_gone(record: BatchRecord) -> bool:
    """Whether a batch was abandoned because the remote side forgot it or its files."""
    return " is gone: the API answered " in (record.error or "")


def _causes(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Return the exceptions in a (possibly nested) group, cancellations left out.

    A stage may run its own task group, so its failure arrives as a group inside ours.
    """
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_causes(exc))
        elif not isinstance(exc, asyncio.CancelledError):
            found.append(exc)
    return found


def _write_lines(path: Path, lines: list[bytes]) -> None:
    """Write a spool file atomically (0600; a full disk is a SpoolFullError)."""
    tmp = path.with_suffix(".tmp")
    try:
        with disk_full_as_error(path.parent), open_private(tmp) as out:
            out.writelines(lines)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
