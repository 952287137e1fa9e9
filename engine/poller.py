"""Stage 3: the one place that tracks every live batch, polls it with backoff, renews leases.

It also adopts batches whose worker died (their lease expired), so several engine processes
can share one database and finish each other's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from engine.errors import AuthenticationError, BatchApiError
from engine.faults import crash_point
from engine.pipeline import (
    PipelineContext,
    RemoteGone,
    abandon_batch,
    get_or_stop,
    is_not_found,
    sleep_or_stop,
)
from engine.store import BatchRecord
from engine.submitter import TokenBudget

__all__ = ["TERMINAL_STATUSES", "Poller"]

log = logging.getLogger("engine.poller")

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class _Tracked:
    """A live batch and when to look at it next."""

    record: BatchRecord
    next_poll: float
    interval: float


class Poller:
    """Polls live batches; terminal ones go to the writer, token-limited ones back to submit."""

    def __init__(
        self,
        ctx: PipelineContext,
        budget: TokenBudget,
        finished: Callable[[BatchRecord], Awaitable[None]],
        resubmit: Callable[[BatchRecord], Awaitable[None]],
        adopt: Callable[[], Awaitable[int]],
    ) -> None:
        self._ctx = ctx
        self._budget = budget
        self._finished = finished
        self._resubmit = resubmit
        self._adopt = adopt
        self._inbox: asyncio.Queue[BatchRecord] = asyncio.Queue()
        self._tracked: dict[str, _Tracked] = {}
        self._retry_later: dict[str, tuple[float, BatchRecord]] = {}
        self._gone = RemoteGone(ctx.settings)

    @property
    def live(self) -> int:
        """Batches being polled or waiting to be resubmitted."""
        return len(self._tracked) + len(self._retry_later) + self._inbox.qsize()

    async def track(self, record: BatchRecord) -> None:
        """Start polling a batch that is live remotely."""
        await self._inbox.put(record)

    async def run(self) -> None:
        """Poll until the engine stops; leases are renewed by a task of their own.

        The first failure of either loop is raised as itself (no exception group), so the
        engine reports a refused key or a crash point exactly as from any other stage.
        """
        name = self._ctx.job.name
        tasks = [
            asyncio.create_task(self._poll_loop(), name=f"engine.poller.poll[{name}]"),
            asyncio.create_task(self._renew_loop(), name=f"engine.poller.leases[{name}]"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    task.result()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll_loop(self) -> None:
        """Poll due batches and resubmit token-limited ones until the engine stops."""
        ctx = self._ctx
        while not ctx.stopping.is_set():
            self._drain_inbox()
            now = time.monotonic()
            for tracked in [t for t in self._tracked.values() if t.next_poll <= now]:
                await self._poll(tracked)
            for batch_id, (due, record) in list(self._retry_later.items()):
                # The lease task may drop a lost batch meanwhile: only resubmit what is left.
                if due <= now and self._retry_later.pop(batch_id, None) is not None:
                    await self._resubmit(record)
            wake_at = min(
                [t.next_poll for t in self._tracked.values()]
                + [due for due, _ in self._retry_later.values()]
                + [time.monotonic() + max(ctx.settings.check_interval_s, 0.01)]
            )
            timeout = max(0.0, wake_at - time.monotonic())
            arrived = await get_or_stop(self._inbox, ctx.stopping, timeout)
            if arrived is not None:
                self._add(arrived)

    async def _renew_loop(self) -> None:
        """Renew leases and adopt orphans every lease_s / 3 until the engine stops.

        Apart from the polls on purpose: a poll retrying a flaky API can take longer than a
        lease, and a lease that lapses while its owner is alive lets a second worker submit
        the same draft (two live batches for the same rows).
        """
        ctx = self._ctx
        lease_every = max(ctx.settings.lease_s / 3, 0.05)
        while not await sleep_or_stop(lease_every, ctx.stopping):
            await self._renew_and_adopt()

    async def poll_once(self, record: BatchRecord) -> None:
        """Poll one batch now (the check command); terminal batches go on as usual."""
        self._tracked[record.id] = _Tracked(record, time.monotonic(), 0.01)
        await self._poll(self._tracked[record.id])
        self._tracked.pop(record.id, None)

    def _drain_inbox(self) -> None:
        """Move every queued batch into the tracked set."""
        while not self._inbox.empty():
            self._add(self._inbox.get_nowait())

    def _add(self, record: BatchRecord) -> None:
        """Track a batch, first poll soon."""
        first = self._ctx.settings.min_check_interval_s
        self._tracked[record.id] = _Tracked(record, time.monotonic() + first, max(first, 0.01))

    async def _poll(self, tracked: _Tracked) -> None:
        """Retrieve one batch; record changes; hand it on when it is terminal."""
        ctx = self._ctx
        record = tracked.record
        assert record.remote_batch_id is not None
        crash_point("mid_poll")
        try:
            batch = await ctx.api.retrieve_batch(record.remote_batch_id)
        except AuthenticationError:
            raise
        except BatchApiError as exc:
            if is_not_found(exc) and await self._not_found(tracked, exc):
                return
            log.warning("batch %s: poll failed: %s", record.id, exc, extra={"batch_id": record.id})
            tracked.next_poll = time.monotonic() + self._backoff(tracked)
            return
        self._gone.found(record.id)
        counts = batch.request_counts
        fields: dict[str, Any] = {"remote_status": batch.status}
        if counts is not None:
            fields.update(
                request_completed=counts.completed,
                request_failed=counts.failed,
                request_total=counts.total or record.request_total,
            )
        changed = batch.status != record.remote_status or (
            counts is not None and counts.completed != record.request_completed
        )
        if batch.status not in TERMINAL_STATUSES:
            if changed:
                tracked.record = await ctx.record_batch(record, **fields)
                tracked.interval = max(ctx.settings.min_check_interval_s, 0.01)
            tracked.next_poll = time.monotonic() + self._backoff(tracked)
            return
        if self._tracked.pop(record.id, None) is None:
            return  # the lease was lost while we polled: the new owner hands it on
        await self._budget.release(record.model, record.estimated_tokens)
        errors = [e.model_dump() for e in (batch.errors.data or [])] if batch.errors else []
        token_limited = any(e.get("code") == "token_limit_exceeded" for e in errors)
        if batch.status == "failed" and token_limited:
            # Not the rows' fault: keep the uploaded file, wait, and create a new batch.
            record = await ctx.record_batch(
                record,
                state="uploaded",
                remote_batch_id=None,
                remote_status=None,
                error="token_limit_exceeded: waiting to resubmit",
            )
            due = time.monotonic() + ctx.settings.token_limit_backoff_s
            self._retry_later[record.id] = (due, record)
            return
        if batch.usage is not None:
            usage = batch.usage
            fields.update(
                input_tokens=usage.input_tokens,
                cached_tokens=usage.input_tokens_details.cached_tokens,
                output_tokens=usage.output_tokens,
                reasoning_tokens=usage.output_tokens_details.reasoning_tokens,
            )
        fields.update(
            state="finished",
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
        )
        if errors:
            fields["error"] = orjson.dumps(errors[:50]).decode()[:4000]
        record = await ctx.record_batch(record, **fields)
        await self._finished(record)

    async def _not_found(self, tracked: _Tracked, exc: BatchApiError) -> bool:
        """Count a 404; abandon the batch once it has lasted (True), rows keep their attempts.

        The first 404 is written to the batch's error so ``status`` and ``check`` show it.
        """
        ctx = self._ctx
        record = tracked.record
        lasted = self._gone.not_found(record.id)
        if lasted is None:
            if not (record.error or "").startswith("remote batch"):
                tracked.record = await ctx.record_batch(
                    record, error=f"remote batch {record.remote_batch_id} not found: {exc}"[:2000]
                )
            return False
        if self._tracked.pop(record.id, None) is None:
            return True  # the lease was lost while we polled: the new owner decides
        await self._budget.release(record.model, record.estimated_tokens)
        reason = (
            f"remote batch {record.remote_batch_id} is gone: the API answered {lasted} "
            "(it no longer knows the batch: restarted, deleted, or another project's key); "
            "its rows were sent back without using an attempt"
        )
        await abandon_batch(ctx, record, reason, burn_attempt=False)
        return True

    def _backoff(self, tracked: _Tracked) -> float:
        """Double the interval up to check_interval_s and return it."""
        upper = max(self._ctx.settings.check_interval_s, 0.01)
        tracked.interval = min(tracked.interval * 2, upper)
        return tracked.interval

    async def _renew_and_adopt(self) -> None:
        """Extend this worker's leases, drop lost batches, adopt dead workers' batches."""
        ctx = self._ctx
        owned = sorted(ctx.owned)
        if owned:
            lost = await ctx.store.renew_batch_leases(ctx.worker_id, owned, ctx.settings.lease_s)
            for batch_id in lost:
                log.warning("batch %s: lease lost to another worker", batch_id)
                tracked = self._tracked.pop(batch_id, None)
                if tracked is not None:
                    record = tracked.record
                    await self._budget.release(record.model, record.estimated_tokens)
                self._retry_later.pop(batch_id, None)
                await ctx.done_with(batch_id)
        await self._adopt()
