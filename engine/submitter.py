"""Stage 2: upload a draft's spool file and create its remote batch, persisting every id.

Each remote call is bracketed by database writes: the draft exists before the upload, the
file id is saved before ``batches.create``, and the batch id right after. The one window left
(a crash after ``create`` returned, before its id was saved) is closed at recovery by matching
the ``engine_batch`` metadata of recent remote batches.

Leases keep two workers from creating the same batch. The lease is renewed right before
``create``, no create attempt starts after it would have run out, and the id is saved only
while the lease is still ours. A worker that adopts an uploaded batch from another worker
waits one create timeout (at most 60 s) before it looks for (or creates) the remote batch, so
a create the other worker had in flight has landed and is found instead of doubled.

No look-back depends on a clock we do not share with the API: recovery stops at the input
file's ``created_at`` on the remote's own clock. A create cut off after it was sent (timeout,
reset) is looked for until one create timeout has passed before it is sent again, without
holding up other batches; after such a create, any second remote batch carrying the same
``engine_batch`` tag is cancelled at once with a WARNING naming both ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from engine.batch_api import CreateUnsettledError
from engine.errors import (
    AuthenticationError,
    BatchApiError,
    LeaseExpiredError,
    StaleClaimError,
    TransientApiError,
)
from engine.faults import crash_point
from engine.pipeline import (
    EngineEvent,
    PipelineContext,
    abandon_batch,
    get_or_stop,
    is_not_found,
    sleep_or_stop,
)
from engine.store import BatchRecord

if TYPE_CHECKING:
    from openai.types import Batch

__all__ = ["Submitter", "TokenBudget"]

log = logging.getLogger("engine.submitter")

# How many pages of remote batches recovery looks through for one created but never recorded.
RECOVERY_MAX_PAGES = 20
# Recovery's look-back ends this far before the input file's creation, both read on the
# remote's own clock (a batch cannot exist before its file); the margin covers its servers.
REMOTE_CLOCK_MARGIN_S = 300
# After a create whose request may still be on its way, extra remote batches carrying the same
# tag are looked for (and cancelled) for this many create timeouts.
TWIN_WATCH_TIMEOUTS = 10
# Uploads of a draft's input again after the API forgot the file, before it is given up.
INPUT_REUPLOADS = 3
_TWIN_LIVE = frozenset({"validating", "in_progress", "finalizing"})
# Added to the create timeout before an adopted batch may be looked for or created.
ADOPT_SETTLE_MARGIN_S = 5.0


class TokenBudget:
    """Estimated enqueued tokens per model across this worker's live batches, under a cap."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._used: dict[str, int] = {}
        self._changed = asyncio.Condition()

    def used(self, model: str) -> int:
        """Tokens counted against a model now."""
        return self._used.get(model, 0)

    async def reserve(self, model: str, tokens: int) -> None:
        """Wait until the batch fits (a batch larger than the cap goes alone), then count it."""
        async with self._changed:
            if self._limit is not None:
                limit = self._limit
                await self._changed.wait_for(
                    lambda: self.used(model) == 0 or self.used(model) + tokens <= limit
                )
            self._used[model] = self.used(model) + tokens

    async def release(self, model: str, tokens: int) -> None:
        """Stop counting a batch that reached a terminal status."""
        async with self._changed:
            self._used[model] = max(0, self.used(model) - tokens)
            self._changed.notify_all()


class Submitter:
    """Takes drafts (and recovered batches) to live remote batches, one at a time."""

    def __init__(
        self,
        ctx: PipelineContext,
        inbox: asyncio.Queue[BatchRecord],
        budget: TokenBudget,
        track: Callable[[BatchRecord], Awaitable[None]],
        rebuild_spool: Callable[[BatchRecord], Awaitable[None]],
    ) -> None:
        self._ctx = ctx
        self._inbox = inbox
        self._budget = budget
        self._track = track
        self._rebuild_spool = rebuild_spool
        # Local ids that may have a remote batch we never recorded (crash after create).
        self.suspect: set[str] = set()
        # Local id -> time.monotonic() before which it must not be looked for or created: an
        # uploaded batch adopted from another worker whose create may still be in flight.
        self.not_before: dict[str, float] = {}
        # Operator feature (engine.engine.CostCeiling): False refuses a batch before create.
        self.admit: Callable[[BatchRecord], Awaitable[bool]] | None = None
        # Local id -> time.monotonic() until which a create of it that failed may still land.
        self.landing_until: dict[str, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._reuploads: dict[str, int] = {}  # local id -> uploads after its file was gone
        # True inside run(): a batch waiting for a create to land goes back to the inbox
        # (call_later) so the others go on; single steps (submit_one) wait in place.
        self._looping = False

    async def run(self) -> None:
        """Submit whatever arrives until the engine stops; then stop watching for twins."""
        try:
            await self._run()
        finally:
            for task in list(self._watchers):
                task.cancel()
            await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _run(self) -> None:
        """Submit whatever arrives until the engine stops."""
        ctx = self._ctx
        self._looping = True
        while not ctx.stopping.is_set():
            record = await get_or_stop(self._inbox, ctx.stopping)
            if record is None:
                return
            wait_s = self.not_before.get(record.id, 0.0) - time.monotonic()
            if wait_s > 0:
                # Back in the (unbounded) inbox later, as the writer does; others go on.
                asyncio.get_running_loop().call_later(wait_s, self._inbox.put_nowait, record)
                continue
            self.not_before.pop(record.id, None)
            await self.submit(record)

    def adopted_from(self, record: BatchRecord, worker: str) -> None:
        """Hold an uploaded batch adopted from ``worker`` until its creates can have landed."""
        self.suspect.add(record.id)
        settle_s = self._ctx.api.create_timeout_s + ADOPT_SETTLE_MARGIN_S
        self.not_before[record.id] = time.monotonic() + settle_s
        log.info(
            "batch %s: adopted from %s after upload; waiting %.0fs for any create it had in "
            "flight before looking for it", record.id, worker, settle_s,
            extra={"batch_id": record.id},
        )

    async def submit(self, record: BatchRecord) -> None:
        """Upload and create until the batch is live, abandoned, or the engine stops."""
        ctx = self._ctx
        delay = max(ctx.settings.min_check_interval_s, 0.05)
        while True:
            try:
                await self._submit_once(record)
                return
            except AuthenticationError:
                raise
            except LeaseExpiredError:
                # The create never started; renew (or find the batch taken) and decide again.
                log.info("batch %s: lease ran out before create; renewing", record.id,
                         extra={"batch_id": record.id})
                self.suspect.add(record.id)
            except TransientApiError as exc:
                # The retry module already tried hard; keep the draft and wait, never drop it.
                log.warning("batch %s: API unavailable (%s); waiting %.1fs", record.id, exc, delay)
                ctx.emit(EngineEvent(kind="error", job=ctx.job.name, batch_id=record.id,
                                     message=str(exc)))
                if await sleep_or_stop(delay, ctx.stopping):
                    return
                delay = min(delay * 2, max(ctx.settings.check_interval_s, delay))
                refreshed = await ctx.store.get_batch(record.id)
                record = refreshed or record
            except CreateUnsettledError as exc:
                # Looked for and not there yet: look again shortly, the others go on meanwhile.
                log.info("batch %s: %s; looking again", record.id, exc,
                         extra={"batch_id": record.id})
                asyncio.get_running_loop().call_later(
                    self._landing_pause(), self._inbox.put_nowait, record
                )
                return
            except BatchApiError as exc:
                if is_not_found(exc) and record.state == "uploaded":
                    gone = await self._input_gone(record, exc)
                    if gone is not None:
                        record = gone
                        continue
                    return
                await self._abandon(record, f"submission refused: {exc}")
                return

    async def _submit_once(self, record: BatchRecord) -> None:
        """One pass through upload and create, from whatever state the record is in."""
        ctx = self._ctx
        if record.state == "draft":
            path = ctx.spool_path(record.id)
            if not path.exists():
                await self._rebuild_spool(record)
            file_id = await ctx.api.upload_file(path)
            record = await ctx.record_batch(record, state="uploaded", input_file_id=file_id)
            crash_point("after_upload")
        input_file_id = record.input_file_id
        if record.state != "uploaded" or input_file_id is None:
            raise BatchApiError(f"batch {record.id} cannot be submitted from {record.state}")
        deadline = await self._still_ours(record)
        if deadline is None:
            return
        if record.id in self.suspect:
            found = await self._find_remote(record)
            self.suspect.discard(record.id)
            if found is not None:
                await self._budget.reserve(record.model, record.estimated_tokens)
                try:
                    record = await ctx.record_batch(
                        record, fenced=True, state="submitted", remote_batch_id=found[0],
                        remote_status=found[1],
                    )
                except StaleClaimError:
                    await self._budget.release(record.model, record.estimated_tokens)
                    await self._let_go(record)
                    return
                log.info("batch %s: re-attached to remote %s", record.id, found[0])
                self._watch_twins(record, found[0])
                await self._track(record)
                return
        # -- cost ceiling (operator): a refused batch is given back by admit() itself --------
        if self.admit is not None and not await self.admit(record):
            return
        # --------------------------------------------------------------------------------------
        await self._budget.reserve(record.model, record.estimated_tokens)
        try:
            batch = await ctx.api.create_batch(
                input_file_id,
                record.endpoint,
                {"engine_batch": record.id, "engine_job": ctx.job.name},
                deadline=deadline,
                wait_for_landing=not self._looping,
            )
        except BaseException:
            await self._budget.release(record.model, record.estimated_tokens)
            # The create may have reached the API before the failure: check before retrying,
            # and keep checking until a request still on its way would have landed.
            self.suspect.add(record.id)
            if ctx.api.may_land(record.id):
                self.landing_until[record.id] = time.monotonic() + ctx.api.create_timeout_s
            raise
        crash_point("after_create")
        try:
            record = await ctx.record_batch(
                record, fenced=True, state="submitted", remote_batch_id=batch.id,
                remote_status=batch.status,
            )
        except StaleClaimError:
            # Adopted while the create was in flight: the adopter waits out our request
            # timeout, then finds this remote batch by its metadata and tracks it.
            await self._budget.release(record.model, record.estimated_tokens)
            log.warning("batch %s: created remote %s after another worker took it over; "
                        "that worker goes on with it", record.id, batch.id,
                        extra={"batch_id": record.id, "remote_batch_id": batch.id})
            await self._let_go(record)
            return
        ctx.batches_submitted += 1
        self._watch_twins(record, batch.id)
        await self._track(record)

    async def _input_gone(self, record: BatchRecord, exc: BatchApiError) -> BatchRecord | None:
        """Upload again a draft whose input file the API forgot; give up after a few tries.

        The rows are not at fault: a batch given up on goes back without using an attempt.
        """
        ctx = self._ctx
        tries = self._reuploads.get(record.id, 0) + 1
        self._reuploads[record.id] = tries
        if tries > INPUT_REUPLOADS:
            self._reuploads.pop(record.id, None)
            reason = (
                f"input file {record.input_file_id} is gone: the API answered 404 after "
                f"{INPUT_REUPLOADS} uploads ({exc}); its rows were sent back without using an "
                "attempt"
            )
            await abandon_batch(ctx, record, reason, burn_attempt=False)
            return None
        log.warning("batch %s: input file %s not found (%s); uploading it again", record.id,
                    record.input_file_id, exc, extra={"batch_id": record.id})
        return await ctx.record_batch(record, state="draft", input_file_id=None)

    async def _still_ours(self, record: BatchRecord) -> float | None:
        """Renew this batch's lease right before create; return when it runs out, or None.

        A worker whose lease lapsed (a long stall, a slow API) may find its draft adopted and
        submitted by another worker; creating it too would put the same rows in two live
        batches. The returned time.monotonic() deadline is taken before the renewal, so it is
        never later than the lease the database granted; no create attempt starts after it.
        """
        ctx = self._ctx
        started = time.monotonic()
        lost = await ctx.store.renew_batch_leases(ctx.worker_id, [record.id], ctx.settings.lease_s)
        if not lost:
            return started + ctx.settings.lease_s
        log.warning("batch %s: lease lost to another worker; not creating it", record.id,
                    extra={"batch_id": record.id})
        await self._let_go(record)
        return None

    async def _let_go(self, record: BatchRecord) -> None:
        """Stop handling a batch another worker owns now."""
        self.suspect.discard(record.id)
        self.not_before.pop(record.id, None)
        # The spool stays: the new owner may be reading the same file on this machine.
        await self._ctx.done_with(record.id)

    async def _find_remote(self, record: BatchRecord) -> tuple[str, str] | None:
        """Return (remote id, status) of a live or finished remote batch made for this record.

        After a create whose outcome is unknown, keeps looking until a request still on its
        way would have landed. When several carry the tag, the oldest is kept and the others
        are cancelled.
        """
        ctx = self._ctx
        until = self.landing_until.get(record.id, 0.0)
        while True:
            found = await self._tagged(record)
            if found or time.monotonic() >= until:
                break
            if self._looping:
                raise CreateUnsettledError(f"batch {record.id}: a create may still land")
            pause = min(self._landing_pause(), until - time.monotonic())
            if await sleep_or_stop(pause, ctx.stopping):
                break
        self.landing_until.pop(record.id, None)
        if not found:
            return None
        # The oldest (listed last) that was not cancelled: a cancelled one is a twin we stopped.
        kept = [b for b in found if b.status not in ("cancelling", "cancelled")] or found
        keep = kept[-1]
        for twin in found:
            if twin.id != keep.id and twin.status in _TWIN_LIVE:
                await self._cancel_twin(record, twin.id, keep.id)
        return keep.id, keep.status

    async def _tagged(self, record: BatchRecord) -> list[Batch]:
        """Remote batches carrying this record's tag, newest first, failed ones left out.

        The look-back is bounded by the input file's creation time on the remote's own clock
        (no batch can be older than its file), never by the local clock; when the file is
        gone, by the page limit alone.
        """
        api = self._ctx.api
        since: int | None = None
        if record.input_file_id:
            created = await api.file_created_at(record.input_file_id)
            since = None if created is None else created - REMOTE_CLOCK_MARGIN_S
        found: list[Batch] = []
        async for batch in api.iter_recent_batches(RECOVERY_MAX_PAGES):
            if since is not None and batch.created_at < since:
                break
            meta = batch.metadata or {}
            # A failed batch processed nothing (validation, token limit): create a new one.
            if meta.get("engine_batch") == record.id and batch.status != "failed":
                found.append(batch)
        return found

    def _landing_pause(self) -> float:
        """How long to wait between looks for a create that may still land."""
        return min(2.0, max(self._ctx.api.create_timeout_s / 10, 0.05))

    def _watch_twins(self, record: BatchRecord, keep_id: str) -> None:
        """After an uncertain create, cancel any later remote batch carrying the same tag."""
        api = self._ctx.api
        if api.uncertain_create(record.id) is None and record.id not in self.landing_until:
            return
        self.landing_until.pop(record.id, None)
        until = time.monotonic() + TWIN_WATCH_TIMEOUTS * api.create_timeout_s
        task = asyncio.create_task(
            self._sweep_twins(record, keep_id, until),
            name=f"engine.submitter.twins[{record.id}]",
        )
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _sweep_twins(self, record: BatchRecord, keep_id: str, until: float) -> None:
        """Look for twins of ``keep_id`` until ``until`` (time.monotonic()) or the stop."""
        ctx = self._ctx
        pause = self._landing_pause()
        while time.monotonic() < until:
            try:
                for twin in await self._tagged(record):
                    if twin.id != keep_id and twin.status in _TWIN_LIVE:
                        await self._cancel_twin(record, twin.id, keep_id)
            except AuthenticationError:
                return
            except BatchApiError as exc:
                log.info("batch %s: could not look for twins: %s", record.id, exc)
            if await sleep_or_stop(pause, ctx.stopping):
                return

    async def _cancel_twin(self, record: BatchRecord, twin_id: str, keep_id: str) -> None:
        """Cancel a second remote batch of one local batch; its lines are never applied."""
        try:
            twin = await self._ctx.api.cancel_batch(twin_id)
            status: str = twin.status
        except BatchApiError as exc:
            status = f"cancel failed: {exc}"
        log.warning(
            "batch %s: remote %s carries the same tag as %s (a create that landed late); "
            "cancelled it (%s), its lines are never applied", record.id, twin_id, keep_id,
            status, extra={"batch_id": record.id, "remote_batch_id": twin_id},
        )

    async def _abandon(self, record: BatchRecord, reason: str) -> None:
        """Give a batch's rows back with the reason (an attempt each) and free its slot."""
        await abandon_batch(self._ctx, record, reason, burn_attempt=True)

