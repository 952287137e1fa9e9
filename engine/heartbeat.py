"""Worker heartbeats: a dead worker's claims and batches are adopted in seconds, not at lease end.

Leases stay long (``lease_s``, 600 s by default) because renewing every claimed row is costly;
the heartbeat is one row per worker, written every ``heartbeat_interval_s``. Each beat also
sweeps: a worker whose heartbeat is older than ``worker_dead_after_s`` (or gone) is dead, and
the leases of its claims and batches are ended, so the claim and adoption paths that already
handle an expired lease take its work over. A worker that was only stalled, not dead, finds
its work taken when it wakes; the claim-token fence and the ownership check before a create
keep it from writing or submitting anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from engine.errors import StoreError
from engine.job import JobSpec
from engine.settings import EngineSettings
from engine.store import Store

__all__ = ["Heartbeat"]

log = logging.getLogger("engine.heartbeat")


class Heartbeat:
    """Keeps one worker's heartbeat row fresh and ends the leases of workers that went silent."""

    def __init__(
        self,
        store: Store,
        job: JobSpec,
        worker_id: str,
        settings: EngineSettings,
        batch_states: Sequence[str],
        on_orphans: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._job = job
        self._worker_id = worker_id
        self._settings = settings
        self._batch_states = tuple(batch_states)
        self._on_orphans = on_orphans

    async def beat(self) -> tuple[int, int]:
        """Write this worker's heartbeat, then end dead workers' leases: (claims, batches)."""
        await self._store.heartbeat(
            self._job, self._worker_id, self._settings.worker_dead_after_s
        )
        claims, batches = await self._store.expire_dead_workers(
            self._job, self._worker_id, self._batch_states
        )
        if claims or batches:
            log.info(
                "a worker of %s stopped beating: took over %d claimed rows and %d batches",
                self._job.name, claims, batches,
            )
            if self._on_orphans is not None:
                await self._on_orphans()
        return claims, batches

    async def run(self, stopping: asyncio.Event) -> None:
        """Beat every heartbeat_interval_s until stopping is set.

        A failed beat is logged and tried again at the next interval: the store already rides
        out outages, and a missed beat costs at most an early adoption, which the fences make
        safe.
        """
        interval = self._settings.heartbeat_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            if stopping.is_set():
                return
            try:
                await self.beat()
            except StoreError as exc:
                log.warning("heartbeat of %s failed: %s", self._worker_id, exc)

    async def forget(self) -> None:
        """Delete this worker's row once it has handed its work over (best effort)."""
        try:
            await asyncio.shield(self._store.forget_worker(self._worker_id))
        except StoreError as exc:  # the row expires on its own within worker_dead_after_s
            log.debug("heartbeat row of %s not deleted: %s", self._worker_id, exc)

    @contextlib.asynccontextmanager
    async def alive(self) -> AsyncIterator[None]:
        """Beat for the duration of a single step (submit, check), then forget this worker."""
        stopping = asyncio.Event()
        await self.beat()
        task = asyncio.create_task(self.run(stopping), name=f"engine.heartbeat[{self._job.name}]")
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(task, return_exceptions=True)
            await self.forget()
