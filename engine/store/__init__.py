"""The database layer: one aioodbc path for SQL Server, PostgreSQL, MariaDB/MySQL and SQLite."""

from __future__ import annotations

from engine.store.models import (
    Adopted,
    ApplyOutcome,
    ApplyRow,
    BatchRecord,
    ClaimedItem,
    Holding,
    RequeueOutcome,
    RequeueRow,
)
from engine.store.store import Store

__all__ = [
    "Adopted",
    "ApplyOutcome",
    "ApplyRow",
    "BatchRecord",
    "ClaimedItem",
    "Holding",
    "RequeueOutcome",
    "RequeueRow",
    "Store",
]
