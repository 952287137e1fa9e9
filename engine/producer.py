"""Stage 1: claim pending rows, render one request line each, and cut them into batch drafts.

A draft is made durable before anyone else sees it: its JSONL lies in the spool and its items
are bound to the local batch in the database (state ``draft``), so a crash from here on is
recovered by adopting the batch, never by claiming the rows again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.faults import SimulatedCrash, crash_point
from engine.pipeline import ADOPT_STATES, Draft, EngineEvent, PipelineContext
from engine.requests import InputRejected
from engine.spool import disk_full_as_error, ensure_private_dir, open_private, write_all
from engine.store import BatchRecord, ClaimedItem, Holding, RequeueRow

__all__ = ["Producer"]

log = logging.getLogger("engine.producer")

# Claims are kept short: one transaction per chunk, so a 50,000-row batch never holds locks
# for long and other workers interleave.
CLAIM_CHUNK = 2000
# While other batches are in flight, a discovery that found nothing is not repeated for this
# long: each one scans every unprocessed source row, and with short check intervals the idle
# producer would otherwise run it back to back, holding SQLite's write lock against the writer.
# With nothing in flight (the moment run(until_idle=True) decides) it always runs.
QUIET_DISCOVER_S = 2.0


class Producer:
    """Claims, renders and spools drafts until stopped, out of work, or at num_batches."""

    def __init__(
        self,
        ctx: PipelineContext,
        submit_queue: asyncio.Queue[BatchRecord],
        *,
        until_idle: bool,
        num_batches: int | None,
        adopt: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._ctx = ctx
        self._queue = submit_queue
        self._until_idle = until_idle
        self._num_batches = num_batches
        self._adopt = adopt
        self._orphans_logged = False
        # Other workers' heartbeats when this run first found itself idle: a holder counts as
        # alive only once it has beaten again since (one killed a moment ago still looks
        # alive until worker_dead_after_s has passed).
        self._first_beats: dict[str | None, object] = {}
        self.produced = 0
        self.idle = False
        self._quiet_since: float | None = None  # monotonic time of the last empty discovery

    async def run(self) -> None:
        """Produce drafts until stopping, idle (with until_idle) or num_batches reached."""
        ctx = self._ctx
        while not ctx.stopping.is_set():
            if self._num_batches is not None and self.produced >= self._num_batches:
                return
            if not await self._take_slot():
                return
            others_in_flight = ctx.slots.count - 1
            ctx.work_changed.clear()
            try:
                draft = await self.build_draft()
            except BaseException:
                await ctx.slots.release()
                raise
            if draft is not None:
                self.produced += 1
                await self._queue.put(draft.record)
                continue
            await ctx.slots.release()
            if (
                self._until_idle and others_in_flight == 0 and self._queue.empty()
                and not await self._orphans_left()
                # A batch adopted while this looked (a dead worker's, say) is ours now: its
                # requeued rows are work for this run, so look again once it is done.
                and ctx.slots.count == 0 and self._queue.empty()
            ):
                self.idle = True
                ctx.emit(EngineEvent(kind="idle", job=ctx.job.name, message="nothing pending"))
                return
            await self._wait_for_work()

    async def _orphans_left(self) -> bool:
        """Whether other workers' work may still need taking over (so not idle yet).

        Work held by workers proven alive (a current heartbeat that moved on since this run
        first looked) does not keep an until-idle run going; it is recorded for the run's
        last line. Anything else waits: a lapsed lease or a dead worker's claims and batches
        are adopted here or claimed by the next draft, and a worker not yet proven either way
        is alive within heartbeat_interval_s or dead within worker_dead_after_s.
        """
        ctx = self._ctx
        held = await ctx.store.held_elsewhere(ctx.job, ctx.worker_id, ADOPT_STATES)
        for holding in held:
            self._first_beats.setdefault(holding.worker_id, holding.heartbeat_at)
        alive = [h for h in held if h.alive and self._beat_since(h)]
        ctx.held_elsewhere = alive
        orphans = [h for h in held if h not in alive]
        if not orphans:
            return False
        if not self._orphans_logged:
            self._orphans_logged = True
            log.info(
                "waiting on other workers' work (taken over if they stopped beating): %s",
                "; ".join(
                    f"{h.worker_id or '-'} ({h.batches} batches, {h.rows} rows)" for h in orphans
                ),
            )
        if self._adopt is not None:
            await self._adopt()
        return True

    def _beat_since(self, holding: Holding) -> bool:
        """Whether a holder's heartbeat moved on since this run first saw it."""
        first = self._first_beats.get(holding.worker_id)
        now = holding.heartbeat_at
        return now is not None and now != first

    async def _take_slot(self) -> bool:
        """Wait for an in-flight slot; False when the engine is stopping first."""
        ctx = self._ctx
        acquire = asyncio.ensure_future(ctx.slots.acquire())
        stop = asyncio.ensure_future(ctx.stopping.wait())
        try:
            await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not acquire.done():
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
        if ctx.stopping.is_set():
            if acquire.done() and not acquire.cancelled():
                await ctx.slots.release()
            return False
        return True

    async def _wait_for_work(self) -> None:
        """Sleep until rows may have come back, new rows may exist, or the engine stops."""
        ctx = self._ctx
        timeout = max(ctx.settings.min_check_interval_s, 0.0)
        if not self._until_idle:
            timeout = max(ctx.settings.check_interval_s, timeout)
        elif ctx.slots.count > 0:
            # Our batches in flight set work_changed when they finish, and new source rows
            # are only discovered every QUIET_DISCOVER_S: polling faster only spins claims.
            timeout = max(timeout, QUIET_DISCOVER_S)
        waits = {
            asyncio.ensure_future(ctx.work_changed.wait()),
            asyncio.ensure_future(ctx.stopping.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def build_draft(self) -> Draft | None:
        """Claim, render and spool one batch; bind its items; None when nothing is pending."""
        ctx = self._ctx
        settings = ctx.settings
        batch_id = uuid.uuid4().hex
        path = ctx.spool_path(batch_id)
        ensure_private_dir(path.parent)
        bound: list[tuple[str, str, str]] = []
        rejected: list[RequeueRow] = []
        overflow: list[tuple[str, str]] = []
        size_bytes = 0
        tokens = 0
        discovered = False
        token_cap = settings.max_batch_tokens
        with open_private(path) as spool:
            try:
                while len(bound) < settings.batch_size and not overflow:
                    want = min(CLAIM_CHUNK, settings.batch_size - len(bound))
                    claimed = await ctx.store.claim(ctx.job, ctx.worker_id, want, settings.lease_s)
                    if not claimed:
                        if discovered or self._recently_quiet():
                            break
                        found = await ctx.store.discover(ctx.job)
                        discovered = True
                        self._quiet_since = None if found else time.monotonic()
                        if found:
                            log.info("discovered %d pending rows of %s", found, ctx.job.name)
                        continue
                    crash_point("after_claim")
                    lines: list[bytes] = []
                    for item in claimed:
                        outcome = self._render(item)
                        if isinstance(outcome, RequeueRow):
                            rejected.append(outcome)
                            continue
                        custom_id, line, estimate = outcome
                        too_big = size_bytes + len(line) > settings.max_batch_bytes
                        too_many = token_cap is not None and tokens + estimate > token_cap
                        if bound and (too_big or too_many or overflow):
                            overflow.append((item.key, item.claim_token))
                            continue
                        lines.append(line)
                        bound.append((item.key, item.claim_token, custom_id))
                        size_bytes += len(line)
                        tokens += estimate
                    await asyncio.to_thread(write_all, spool, lines, path.parent)
                    # Drop this chunk's text before claiming the next: peak memory is one chunk.
                    lines.clear()
                    got = len(claimed)
                    del claimed
                    if got < want and discovered:
                        break
            except SimulatedCrash:
                raise
            except BaseException:
                # Nothing is bound yet: give every claim back rather than wait for the lease.
                await self._give_back(bound, overflow)
                path.unlink(missing_ok=True)
                raise
        if rejected:
            dead = await ctx.store.dead_letter(ctx.job, rejected)
            ctx.count("rows_dead", dead.dead)
            ctx.emit(
                EngineEvent(
                    kind="rows_dead",
                    job=ctx.job.name,
                    rows=dead.dead,
                    message=rejected[0].reason,
                )
            )
        if overflow:
            await ctx.store.release(ctx.job, overflow)
        if not bound:
            path.unlink(missing_ok=True)
            return None
        return await self._bind(batch_id, path, bound, tokens)

    def _recently_quiet(self) -> bool:
        """Whether to skip discovery: it just found nothing and other batches are in flight."""
        others_in_flight = self._ctx.slots.count > 1
        quiet = self._quiet_since
        return (
            others_in_flight
            and quiet is not None
            and time.monotonic() - quiet < QUIET_DISCOVER_S
        )

    def _render(self, item: ClaimedItem) -> tuple[str, bytes, int] | RequeueRow:
        """Render one row, or the dead-letter reason for input that can never succeed."""
        try:
            rendered = self._ctx.renderer.render(item, item.attempts)
        except InputRejected as exc:
            return RequeueRow(item.key, item.claim_token, f"input rejected: {exc}")
        return rendered.custom_id, rendered.line, rendered.estimated_tokens

    async def _give_back(
        self, bound: list[tuple[str, str, str]], overflow: list[tuple[str, str]]
    ) -> None:
        """Release claims after a failure, shielded so cancellation cannot skip it."""
        pairs = [(key, token) for key, token, _ in bound] + overflow
        if not pairs:
            return
        try:
            await asyncio.shield(self._ctx.store.release(self._ctx.job, pairs))
        except Exception:  # the leases expire anyway; never hide the original error
            log.warning("could not release %d claims; their leases will expire", len(pairs))

    async def _bind(
        self, batch_id: str, path: Path, bound: list[tuple[str, str, str]], tokens: int
    ) -> Draft | None:
        """Persist the draft batch and bind its items; rewrite the spool if some were lost."""
        ctx = self._ctx
        record = BatchRecord(
            id=batch_id,
            job=ctx.job.name,
            state="draft",
            model=ctx.job.model,
            endpoint=ctx.job.endpoint,
            worker_id=ctx.worker_id,
            request_total=len(bound),
            estimated_tokens=tokens,
        )
        count = await ctx.store.create_draft(record, bound, ctx.settings.lease_s)
        if count < len(bound):
            # Some claims expired and were taken by another worker: send only what we hold.
            kept = {cid for _, _, cid, _ in await ctx.store.batch_items(batch_id)}
            log.warning(
                "batch %s: %d of %d claims were lost to another worker",
                batch_id,
                len(bound) - count,
                len(bound),
            )
            await asyncio.to_thread(_filter_spool, path, kept)
            if not kept:
                await ctx.store.update_batch(batch_id, state="abandoned", error="claims lost")
                ctx.remove_spool(batch_id)
                return None
            await ctx.store.update_batch(batch_id, request_total=len(kept))
        ctx.owned.add(batch_id)
        crash_point("after_spool")
        ctx.emit(
            EngineEvent(
                kind="batch_state",
                job=ctx.job.name,
                batch_id=batch_id,
                state="draft/-",
                rows=count,
            )
        )
        log.info("batch %s: draft of %d requests", batch_id, count, extra={"batch_id": batch_id})
        return Draft(record=record, spool_path=path, requests=count, estimated_tokens=tokens)


def _filter_spool(path: Path, keep: set[str]) -> None:
    """Rewrite a spool file keeping only the lines whose custom_id is in ``keep``."""
    import orjson

    if not path.exists():
        return  # swept meanwhile: the submitter rebuilds it from the items bound
    tmp = path.with_suffix(".tmp")
    try:
        with disk_full_as_error(path.parent), path.open("rb") as src, open_private(tmp) as dst:
            for line in src:
                if orjson.loads(line)["custom_id"] in keep:
                    dst.write(line)
    except BaseException:
        # Never leave the unfiltered file: uploaded, it would send rows another worker holds.
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    tmp.replace(path)
