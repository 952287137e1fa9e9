"""The engine's own tables (items, batches, meta, workers) and the schema version row."""

from __future__ import annotations

from dataclasses import dataclass, fields

from engine.settings import StoreSettings
from engine.store.dialects import Dialect
from engine.store.models import BatchRecord

__all__ = [
    "BATCH_COLUMNS",
    "BATCH_INTS",
    "KEY_CHARS",
    "SCHEMA_VERSION",
    "Tables",
    "ddl_statements",
]

# 2: items.source_key compares exactly on MariaDB (NO PAD binary), and the jobs table.
SCHEMA_VERSION = 2
KEY_CHARS = 255  # the longest source key (as text) the items table holds
BATCH_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(BatchRecord))
BATCH_INTS = {
    "request_total",
    "request_completed",
    "request_failed",
    "estimated_tokens",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
}
_BATCH_TIMES = {"created_at", "updated_at", "lease_expires_at"}


@dataclass(frozen=True)
class Tables:
    """Quoted names of the engine's tables, plus plain names for constraints and indexes."""

    items: str
    batches: str
    meta: str
    jobs: str  # each job's identity (table, key, columns, filter), recorded at its first run
    items_plain: str
    batches_plain: str
    meta_plain: str
    workers: str  # one heartbeat row per running worker
    workers_plain: str
    jobs_plain: str

    @classmethod
    def from_settings(cls, dialect: Dialect, settings: StoreSettings) -> Tables:
        """Validate and quote the configured table names (IdentifierError names the setting)."""
        # One heartbeat table per items table: the workers coordinating over the same items
        # are the ones whose liveness matters to each other.
        workers = settings.workers_table or f"{settings.items_table}_workers"
        return cls(
            items=dialect.table(settings.items_table, "items_table"),
            batches=dialect.table(settings.batches_table, "batches_table"),
            meta=dialect.table(settings.meta_table, "meta_table"),
            jobs=dialect.table(settings.meta_table + "_jobs", "meta_table"),
            items_plain=settings.items_table.replace(".", "_"),
            batches_plain=settings.batches_table.replace(".", "_"),
            meta_plain=settings.meta_table.replace(".", "_"),
            workers=dialect.table(workers, "workers_table"),
            workers_plain=workers.replace(".", "_"),
            jobs_plain=settings.meta_table.replace(".", "_") + "_jobs",
        )


def _batch_column_type(dialect: Dialect, name: str) -> str:
    """Return the column type of one BatchRecord field."""
    if name in BATCH_INTS:
        return f"{dialect.t_int} NOT NULL DEFAULT 0"
    if name == "cost_usd":
        return f"{dialect.t_float} NOT NULL DEFAULT 0"
    if name in _BATCH_TIMES:
        return f"{dialect.t_ts} NULL"
    if name == "error":
        return f"{dialect.t_text} NULL"
    if name in {"id", "job", "state", "model", "endpoint"}:
        return f"{dialect.t_key} NOT NULL"
    return f"{dialect.t_key} NULL"


def ddl_statements(dialect: Dialect, tables: Tables) -> list[str]:
    """CREATE statements for the engine's tables and their indexes, each idempotent."""
    q = dialect.open_quote + "{}" + dialect.close_quote

    def c(name: str) -> str:
        return q.format(name)

    k, t, ts, i = dialect.t_key, dialect.t_text, dialect.t_ts, dialect.t_int
    items_ix = [
        # lease_expires_at too, so expired claims are an index range, not a scan
        (f"ix_{tables.items_plain}_state", f"{c('job')}, {c('state')}, {c('lease_expires_at')}"),
        (f"ix_{tables.items_plain}_batch", c("batch_id")),
    ]
    items_body = [
        f"{c('job')} {k} NOT NULL",
        f"{c('source_key')} {k}{dialect.key_collation} NOT NULL",
        f"{c('state')} {k} NOT NULL",
        f"{c('claim_token')} {k} NULL",
        f"{c('worker_id')} {k} NULL",
        f"{c('lease_expires_at')} {ts} NULL",
        f"{c('attempts')} {i} NOT NULL DEFAULT 0",
        f"{c('batch_id')} {k} NULL",
        f"{c('custom_id')} {k} NULL",
        f"{c('last_error')} {t} NULL",
        f"{c('created_at')} {ts} NULL",
        f"{c('updated_at')} {ts} NULL",
        f"CONSTRAINT {c('pk_' + tables.items_plain)} PRIMARY KEY ({c('job')}, {c('source_key')})",
    ]
    batches_ix = [
        (f"ix_{tables.batches_plain}_remote", c("remote_batch_id")),
        (f"ix_{tables.batches_plain}_state", f"{c('job')}, {c('state')}"),
    ]
    batches_body = [f"{c(n)} {_batch_column_type(dialect, n)}" for n in BATCH_COLUMNS]
    batches_body.append(f"CONSTRAINT {c('pk_' + tables.batches_plain)} PRIMARY KEY ({c('id')})")
    meta_body = [
        f"{c('name')} {k} NOT NULL",
        f"{c('value')} {k} NULL",
        f"CONSTRAINT {c('pk_' + tables.meta_plain)} PRIMARY KEY ({c('name')})",
    ]
    # One row per running worker: expires_at is "database now + worker_dead_after_s" at its
    # last heartbeat, so liveness is judged on the database clock alone.
    workers_body = [
        f"{c('worker_id')} {k} NOT NULL",
        f"{c('job')} {k} NULL",
        f"{c('started_at')} {ts} NULL",
        f"{c('heartbeat_at')} {ts} NULL",
        f"{c('expires_at')} {ts} NULL",
        f"CONSTRAINT {c('pk_' + tables.workers_plain)} PRIMARY KEY ({c('worker_id')})",
    ]
    jobs_body = [
        f"{c('name')} {k} NOT NULL",
        f"{c('source_table')} {k} NOT NULL",
        f"{c('key_column')} {k} NOT NULL",
        f"{c('output_columns')} {t} NOT NULL",
        f"{c('pending_filter')} {t} NOT NULL",
        f"{c('created_at')} {ts} NULL",
        f"{c('updated_at')} {ts} NULL",
        f"CONSTRAINT {c('pk_' + tables.jobs_plain)} PRIMARY KEY ({c('name')})",
    ]
    statements: list[str] = []
    for table, body, indexes in (
        (tables.items, items_body, items_ix),
        (tables.batches, batches_body, batches_ix),
        (tables.meta, meta_body, []),
        (tables.workers, workers_body, []),
        (tables.jobs, jobs_body, []),
    ):
        inline = [dialect.inline_index(c(n), cols) for n, cols in indexes]
        full_body = ", ".join(body + [x for x in inline if x])
        statements.append(dialect.create_table(table, full_body))
        for name, cols in indexes:
            stmt = dialect.create_index(c(name), table, cols)
            if stmt:
                statements.append(stmt)
    return statements
