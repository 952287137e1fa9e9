"""Frozen, keyword-only settings with units in their names; only the CLI reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from engine.errors import ConfigError
from engine.masking import mask_dsn

__all__ = ["ApiSettings", "EngineSettings", "StoreSettings", "redact_dsn"]

Dialect = Literal["mssql", "postgresql", "mysql", "sqlite"]


def redact_dsn(dsn: str) -> str:
    """Return the DSN with every password-like attribute replaced by ***, safe to log."""
    return mask_dsn(dsn)


@dataclass(frozen=True, kw_only=True)
class StoreSettings:
    """Where the engine keeps its state and finds the source table."""

    dsn: str = field(repr=False)
    dialect: Dialect | None = None  # detected from the DSN's driver when None
    pool_size: int = 4
    query_timeout_s: int = 60
    # Once open, a transient failure (lost connection, server restarting, lock timeout) is
    # retried until this many seconds have passed; the first connect still fails at once.
    outage_s: float = 120.0
    items_table: str = "engine_items"
    batches_table: str = "engine_batches"
    meta_table: str = "engine_meta"
    workers_table: str = ""  # heartbeats; "" means "<items_table>_workers"

    def __post_init__(self) -> None:
        """Reject settings that cannot work, naming the one at fault."""
        if not self.dsn.strip():
            raise ConfigError("dsn: empty connection string")
        if self.pool_size < 1:
            raise ConfigError(f"pool_size: must be >= 1, got {self.pool_size}")
        if self.query_timeout_s < 0:
            raise ConfigError(f"query_timeout_s: must be >= 0, got {self.query_timeout_s}")
        if self.outage_s < 0:
            raise ConfigError(f"outage_s: must be >= 0, got {self.outage_s}")

    def __repr__(self) -> str:
        """Show the DSN without its password."""
        return (
            f"StoreSettings(dsn={redact_dsn(self.dsn)!r}, dialect={self.dialect!r}, "
            f"pool_size={self.pool_size}, items_table={self.items_table!r}, "
            f"batches_table={self.batches_table!r})"
        )

    @classmethod
    def sqlite(cls, path: str, *, pool_size: int = 4) -> StoreSettings:
        """Build settings for an SQLite file through the SQLite3 ODBC driver (the default)."""
        return cls(dsn=f"Driver=SQLite3;Database={path}", dialect="sqlite", pool_size=pool_size)


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """How to reach the Batch API (OpenAI, Azure OpenAI, or any compatible server)."""

    api_key: str = field(repr=False)
    base_url: str | None = None
    provider: Literal["openai", "azure"] = "openai"
    azure_api_version: str = "2024-10-21"
    timeout_s: float = 600.0
    max_retries: int = 6  # ours, through engine.retry; the SDK's own retries are turned off

    @classmethod
    def from_env(cls) -> ApiSettings:
        """Read OPENAI_API_KEY and OPENAI_BASE_URL (the CLI's job, never the library's)."""
        key = os.environ.get("OPENAI_API_KEY", "")
        if not key:
            raise ConfigError("OPENAI_API_KEY: not set")
        return cls(api_key=key, base_url=os.environ.get("OPENAI_BASE_URL") or None)


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """How the pipeline behaves: sizes, intervals, leases and limits."""

    worker_id: str | None = None  # host:pid:random when None
    batch_size: int = 1000  # requests per batch (the API allows 50,000)
    max_batch_bytes: int = 190 * 1024 * 1024  # under the API's 200 MB per file
    max_batch_tokens: int | None = None  # estimated input tokens per batch
    max_in_flight: int = 4  # live remote batches owned by this worker
    enqueued_token_budget: int | None = None  # per model, across live batches
    check_interval_s: float = 60.0  # upper bound of the poll backoff
    min_check_interval_s: float = 5.0  # first poll after submission
    lease_s: float = 600.0  # how long a claim or batch lease lasts without renewal
    max_attempts: int = 3
    apply_chunk_rows: int = 500
    spool_dir: str = "spool"
    # A batch's spool files (personal data) are deleted once it is applied or abandoned.
    keep_spool_files: bool = False
    shutdown_grace_period_s: float = 30.0
    token_limit_backoff_s: float = 60.0
    # Each worker writes a heartbeat this often; one silent for worker_dead_after_s is dead,
    # and its claims and batches are adopted then, not when their (longer) leases end.
    heartbeat_interval_s: float = 5.0
    worker_dead_after_s: float = 30.0
    # A remote batch or file answering 404 this many times in a row over at least this long is
    # gone (the API forgot it): its batch is abandoned and its rows go back without an attempt.
    remote_gone_polls: int = 3
    remote_gone_s: float = 60.0

    def __post_init__(self) -> None:
        """Reject settings that cannot work, naming the one at fault."""
        if not 1 <= self.batch_size <= 50_000:
            raise ConfigError(f"batch_size: must be 1..50000, got {self.batch_size}")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight: must be >= 1, got {self.max_in_flight}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts: must be >= 1, got {self.max_attempts}")
        if self.check_interval_s < 0 or self.min_check_interval_s < 0:
            raise ConfigError("check_interval_s: must be >= 0")
        if self.lease_s <= 0:
            raise ConfigError(f"lease_s: must be > 0, got {self.lease_s}")
        if self.heartbeat_interval_s <= 0:
            raise ConfigError(
                f"heartbeat_interval_s: must be > 0, got {self.heartbeat_interval_s}"
            )
        if self.worker_dead_after_s < 2 * self.heartbeat_interval_s:
            # One late heartbeat (a slow database, a busy loop) must not make a live worker
            # look dead: its peers would adopt batches it is still working on.
            raise ConfigError(
                f"worker_dead_after_s: must be >= 2 x heartbeat_interval_s "
                f"({2 * self.heartbeat_interval_s:g}), got {self.worker_dead_after_s}"
            )
        if self.remote_gone_polls < 1:
            raise ConfigError(f"remote_gone_polls: must be >= 1, got {self.remote_gone_polls}")
        if self.remote_gone_s < 0:
            raise ConfigError(f"remote_gone_s: must be >= 0, got {self.remote_gone_s}")
