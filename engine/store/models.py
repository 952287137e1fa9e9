"""Plain records that cross the store's boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

__all__ = [
    "Adopted",
    "ApplyOutcome",
    "ApplyRow",
    "BatchRecord",
    "BatchState",
    "ClaimedItem",
    "Holding",
    "ItemState",
    "RequeueOutcome",
    "RequeueRow",
]

ItemState = Literal["pending", "claimed", "submitted", "done", "dead"]
# draft: items bound, nothing remote yet; uploaded: input file id saved; submitted: remote batch
# id saved (live); finished: remote status terminal, results not yet applied; applied: every
# item of it resolved; abandoned: never reached the API, items returned to pending;
# quarantined: its results could not be applied (reason in error), held until released.
BatchState = Literal[
    "draft", "uploaded", "submitted", "finished", "applied", "abandoned", "quarantined"
]


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """An item this worker now holds under a lease, with the source row's text columns."""

    key: str  # the source key as text, as stored in the items table
    claim_token: str
    attempts: int  # attempts already made before this claim
    row: dict[str, Any] = field(default_factory=dict)  # text columns by name (may hold None)


@dataclass(frozen=True, slots=True)
class ApplyRow:
    """One successful result: the values for the source row's output columns."""

    key: str
    claim_token: str
    values: dict[str, Any]  # column -> value already converted for the database


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """How many results reached the source table, which were stale, which did not fit.

    ``rejected`` holds (key, reason) of rows the database refused because a value does not
    fit its column (too long, out of range); they were not written and their items are
    untouched, so the caller requeues them with the reason.

    ``skipped`` holds (key, reason) of rows not written because their source row no longer
    matches the job's pending filter (another writer got there first: item done with a
    ``skipped:`` reason) or no longer has exactly one source row (item dead with the reason).
    """

    applied: int
    stale: list[str]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RequeueRow:
    """One failed row: back to pending with the reason, or dead past max_attempts."""

    key: str
    claim_token: str
    reason: str
    burn_attempt: bool = True  # False for token_limit_exceeded, release on stop, etc.


@dataclass(frozen=True, slots=True)
class RequeueOutcome:
    """Rows sent back to pending, rows dead-lettered, and rows fenced out as stale."""

    requeued: int
    dead: int
    stale: list[str]


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A row of the batches table."""

    id: str  # the local batch id (uuid4 hex), also sent as metadata engine_batch
    job: str
    state: BatchState
    model: str
    endpoint: str
    worker_id: str | None = None
    remote_batch_id: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    remote_status: str | None = None
    request_total: int = 0
    request_completed: int = 0
    request_failed: int = 0
    estimated_tokens: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    lease_expires_at: datetime | None = None


class Adopted(NamedTuple):
    """A batch this worker just took over, and the worker that held it before."""

    record: BatchRecord
    previous_worker: str | None


class Holding(NamedTuple):
    """Unfinished work of one other worker: its batches and rows, and whether it is alive.

    ``alive`` means its heartbeat is current and its leases have not run out; work that is
    not alive is an orphan some worker will adopt.
    """

    worker_id: str | None
    alive: bool
    batches: int
    rows: int
    heartbeat_at: datetime | None = None  # its last heartbeat, on the database clock
