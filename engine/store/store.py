"""The store: every operation the engine performs on its database, dialect-neutral.

CONTRACT (being implemented): the signatures and docstrings below are what the engine codes
against. Each method runs its own short transaction(s); none spans a network call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.job import JobSpec
from engine.settings import StoreSettings
from engine.store.models import (
    ApplyOutcome,
    ApplyRow,
    BatchRecord,
    ClaimedItem,
    RequeueOutcome,
    RequeueRow,
)

__all__ = ["Store"]


class Store:
    """The engine's memory: the items and batches tables, and fenced writes to the source."""

    @classmethod
    async def open(cls, settings: StoreSettings) -> Store:
        """Open the pool (detecting the dialect from the DSN when not set)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close every connection and the thread pool; idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Store:
        """Return self; the pool is already open."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the store."""
        await self.close()

    @property
    def dialect_name(self) -> str:
        """One of mssql, postgresql, mysql, sqlite."""
        raise NotImplementedError

    # -- schema -------------------------------------------------------------------------------

    async def init_db(self) -> None:
        """Create the engine's tables and indexes if absent, and the schema version row.

        Idempotent, and safe when several workers run it at once.
        """
        raise NotImplementedError

    async def check_source(self, job: JobSpec) -> None:
        """Raise ConfigError naming the table or column when the job's source does not exist."""
        raise NotImplementedError

    # -- items --------------------------------------------------------------------------------

    async def discover(self, job: JobSpec, limit: int | None = None) -> int:
        """Insert an item (state pending) for each pending source row that has none yet.

        Idempotent and safe when several workers do it at once. Returns rows inserted.
        """
        raise NotImplementedError

    async def claim(
        self, job: JobSpec, worker_id: str, limit: int, lease_s: float
    ) -> list[ClaimedItem]:
        """Claim up to ``limit`` pending items with a fresh claim token and a lease.

        Items in state claimed whose lease expired count as pending (their worker died before
        binding them to a batch). Each returned item carries its source row's text columns.
        Two concurrent claims never return the same item.
        """
        raise NotImplementedError

    async def release(self, job: JobSpec, keys_tokens: Sequence[tuple[str, str]]) -> int:
        """Return claimed (not yet batched) items to pending, no attempt burned. Fenced."""
        raise NotImplementedError

    async def reap_expired(self, job: JobSpec) -> int:
        """Return claimed items whose lease expired to pending. Returns how many."""
        raise NotImplementedError

    # -- batches ------------------------------------------------------------------------------

    async def create_draft(
        self,
        record: BatchRecord,
        items: Sequence[tuple[str, str, str]],
        lease_s: float,
    ) -> int:
        """Insert the batch (state draft, owned by record.worker_id) and bind items to it.

        ``items`` are (key, claim_token, custom_id); each moves claimed -> submitted with the
        local batch id and custom_id, fenced by its claim token. One transaction. Returns how
        many items were bound (fewer means some claims were lost to another worker).
        """
        raise NotImplementedError

    async def update_batch(self, batch_id: str, **fields: Any) -> None:
        """Record a batch transition: set the given BatchRecord fields and updated_at.

        Fields are BatchRecord attribute names (state, remote_batch_id, input_file_id, ...).
        """
        raise NotImplementedError

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """Return one batch by local id."""
        raise NotImplementedError

    async def find_batch_by_remote_id(self, remote_batch_id: str) -> BatchRecord | None:
        """Return the batch that carries this remote id, if any."""
        raise NotImplementedError

    async def list_batches(
        self, job: str | None = None, states: Sequence[str] | None = None, limit: int = 100
    ) -> list[BatchRecord]:
        """Return batches, newest first, optionally filtered by job and local state."""
        raise NotImplementedError

    async def adopt_batches(
        self, job: JobSpec, worker_id: str, lease_s: float, states: Sequence[str]
    ) -> list[BatchRecord]:
        """Take over batches in ``states`` that are this worker's or whose lease expired.

        Sets worker and a new lease atomically (two workers never adopt the same batch) and
        returns them. Used at start-up and periodically, so a dead worker's batches go on.
        """
        raise NotImplementedError

    async def renew_batch_leases(
        self, worker_id: str, batch_ids: Sequence[str], lease_s: float
    ) -> list[str]:
        """Extend the leases of batches this worker owns; return the ids it no longer owns."""
        raise NotImplementedError

    async def batch_items(self, batch_id: str) -> list[tuple[str, str, str, int]]:
        """Return (key, claim_token, custom_id, attempts) of the items bound to a batch."""
        raise NotImplementedError

    async def fetch_source_rows(
        self, job: JobSpec, keys: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Return the text columns of these source rows, by key (to rebuild a lost spool)."""
        raise NotImplementedError

    # -- results ------------------------------------------------------------------------------

    async def apply_results(self, job: JobSpec, rows: Sequence[ApplyRow]) -> ApplyOutcome:
        """Write results to the source rows, set the processed marker and mark items done.

        Chunked transactions; each row is fenced by (key, claim_token, state submitted): a row
        whose item no longer matches is skipped and reported in ``stale``, and its source row is
        not touched. Idempotent: applying the same rows twice applies nothing the second time.
        """
        raise NotImplementedError

    async def requeue(
        self, job: JobSpec, rows: Sequence[RequeueRow], max_attempts: int
    ) -> RequeueOutcome:
        """Send failed rows back to pending with their reason, or dead past max_attempts.

        Fenced like apply_results. ``burn_attempt`` rows count an attempt; the others do not.
        """
        raise NotImplementedError

    async def dead_letter(self, job: JobSpec, rows: Sequence[RequeueRow]) -> RequeueOutcome:
        """Mark rows dead now with their reason (input that can never succeed). Fenced."""
        raise NotImplementedError

    async def retry_dead(self, job: JobSpec) -> int:
        """Move every dead item of the job back to pending with attempts reset; return count."""
        raise NotImplementedError

    async def counts(self, job: str | None = None) -> dict[str, int]:
        """Items by state (every state present, zero when none)."""
        raise NotImplementedError

    async def dead_items(self, job: JobSpec, limit: int = 100) -> list[tuple[str, str]]:
        """Return (key, last_error) of dead items."""
        raise NotImplementedError
