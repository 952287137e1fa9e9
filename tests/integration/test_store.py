"""Store conformance suite: every test runs on SQLite, PostgreSQL and MariaDB (the `db` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyodbc
import pytest

import engine.store.store as store_module
from engine.errors import (
    DataFitError,
    IdentifierError,
    StaleClaimError,
    StoreError,
    TransientStoreError,
)
from engine.job import JobSpec, SourceSpec
from engine.settings import StoreSettings
from engine.store import ApplyRow, BatchRecord, RequeueRow, Store
from engine.store.dialects import get_dialect
from engine.store.pool import Connection
from engine.store.schema import SCHEMA_VERSION
from tests.integration.helpers import job_for, settings_for
from tests.support import DbTarget

TABLES = ["items", "batches", "meta", "items_workers", "meta_jobs", "candidates"]

_TYPES = {
    # dialect: (text type, timestamp type, table suffix)
    "sqlite": ("TEXT", "TEXT", ""),
    "postgresql": ("TEXT", "TIMESTAMP", ""),
    "mysql": ("LONGTEXT", "DATETIME(6)", " DEFAULT CHARSET=utf8mb4"),
    "mssql": ("NVARCHAR(MAX)", "DATETIME2", ""),
}


def source_ddl(dialect: str, table: str) -> str:
    """CREATE TABLE shaped like `candidates`: userid int PK, resume, marker, output columns."""
    text, ts, suffix = _TYPES[dialect]
    real = {"postgresql": "DOUBLE PRECISION", "sqlite": "REAL"}.get(dialect, "DOUBLE")
    # Quoted like the store quotes them, so PostgreSQL keeps the mixed-case name.
    marker = "`LastProcessed`" if dialect == "mysql" else '"LastProcessed"'
    return (
        f"CREATE TABLE {table} (userid INTEGER PRIMARY KEY, resume_text {text} NULL, "
        f"{marker} {ts} NULL, name {text} NULL, years INTEGER NULL, score {real} NULL)"
        f"{suffix}"
    )


def marker(db: DbTarget) -> str:
    """The quoted processed-marker column for raw queries."""
    return "`LastProcessed`" if db.dialect == "mysql" else '"LastProcessed"'


async def gather_all(*aws: Any) -> list[Any]:
    """Like gather, but every awaitable ends before the first error is raised."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return list(results)


def raw_connect(dialect: str, dsn: str) -> Any:
    """A plain autocommit pyodbc connection set up like the store's."""
    conn = pyodbc.connect(dsn, autocommit=True)
    if dialect == "mysql":
        conn.setencoding(encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
    return conn


def make_source(dialect: str, dsn: str, table: str, texts: list[Any]) -> None:
    """Create the source table and insert one row per text (userid 1..n)."""
    conn = raw_connect(dialect, dsn)
    try:
        cur = conn.cursor()
        cur.execute(source_ddl(dialect, table))
        rows = [(i + 1, t) for i, t in enumerate(texts)]
        if rows:
            cur.executemany(f"INSERT INTO {table} (userid, resume_text) VALUES (?, ?)", rows)
    finally:
        conn.close()


def query(dialect: str, dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one query on a plain connection and return its rows."""
    conn = raw_connect(dialect, dsn)
    try:
        cur = conn.cursor()
        cur.execute(sql, *params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def drop_tables(dialect: str, dsn: str, prefix: str, names: list[str]) -> None:
    """Drop the test's tables (ignore the ones never created)."""
    conn = raw_connect(dialect, dsn)
    try:
        cur = conn.cursor()
        for name in names:
            with contextlib.suppress(pyodbc.Error):
                cur.execute(f"DROP TABLE {prefix}{name}")
    finally:
        conn.close()


@pytest.fixture
async def env(db: DbTarget) -> AsyncIterator[tuple[DbTarget, Store, JobSpec]]:
    """An initialised store and a 20-row source table; tables dropped afterwards."""
    drop_tables(db.dialect, db.dsn, db.prefix, TABLES)
    make_source(db.dialect, db.dsn, f"{db.prefix}candidates", [f"text {i}" for i in range(20)])
    store = await Store.open(settings_for(db.dialect, db.dsn, db.prefix))
    try:
        await store.init_db()
        yield db, store, job_for(db.prefix)
    finally:
        await store.close()
        drop_tables(db.dialect, db.dsn, db.prefix, TABLES)


async def test_init_db_idempotent_and_concurrent(env: tuple[DbTarget, Store, JobSpec]) -> None:
    db, store, _ = env
    await store.init_db()
    others = [await Store.open(settings_for(db.dialect, db.dsn, db.prefix)) for _ in range(3)]
    try:
        await gather_all(*(s.init_db() for s in others))
    finally:
        for s in others:
            await s.close()
    assert await store.schema_version() == SCHEMA_VERSION
    rows = query(db.dialect, db.dsn, f"SELECT COUNT(*) FROM {db.prefix}meta")
    assert rows[0][0] == 1


async def test_init_db_concurrent_from_scratch(db: DbTarget) -> None:
    drop_tables(db.dialect, db.dsn, db.prefix, TABLES)
    stores = [await Store.open(settings_for(db.dialect, db.dsn, db.prefix)) for _ in range(3)]
    try:
        await gather_all(*(s.init_db() for s in stores))
        assert await stores[0].schema_version() == SCHEMA_VERSION
    finally:
        for s in stores:
            await s.close()
        drop_tables(db.dialect, db.dsn, db.prefix, TABLES)


async def test_discover_idempotent_under_concurrency(env: tuple[DbTarget, Store, JobSpec]) -> None:
    db, store, job = env
    others = [await Store.open(settings_for(db.dialect, db.dsn, db.prefix)) for _ in range(3)]
    try:
        inserted = await gather_all(*(s.discover(job) for s in others))
    finally:
        for s in others:
            await s.close()
    assert sum(inserted) == 20
    assert await store.discover(job) == 0
    counts = await store.counts(job.name)
    assert counts == {"pending": 20, "claimed": 0, "submitted": 0, "done": 0, "dead": 0}


async def test_discover_limit_and_filter(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    assert await store.discover(job, limit=5) == 5
    assert (await store.counts(job.name))["pending"] == 5
    filtered = JobSpec(
        name="filtered",
        source=SourceSpec(
            table=job.source.table,
            key_column="userid",
            text_columns=("resume_text",),
            processed_column="LastProcessed",
            extra_filter="userid <= 3",
        ),
        model="m",
        output_schema={"type": "object"},
    )
    assert await store.discover(filtered) == 3


async def test_claim_returns_rows_once(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    await store.discover(job)
    first = await store.claim(job, "w1", 8, 60)
    second = await store.claim(job, "w2", 100, 60)
    assert len(first) == 8
    assert len(second) == 12
    keys = [i.key for i in first + second]
    assert sorted(keys, key=int) == [str(i) for i in range(1, 21)]
    assert first[0].row == {"resume_text": f"text {int(first[0].key) - 1}"}
    assert await store.claim(job, "w3", 5, 60) == []


WORKER = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from engine.settings import StoreSettings
from engine.store import Store
from tests.integration.helpers import job_for, settings_for

async def main():
    dialect, dsn, prefix = sys.argv[2], sys.argv[3], sys.argv[4]
    store = await Store.open(settings_for(dialect, dsn, prefix, pool_size=2))
    job = job_for(prefix)
    got = []
    try:
        while True:
            items = await store.claim(job, "proc", 17, 300)
            if not items:
                break
            got.extend(i.key for i in items)
    finally:
        await store.close()
    print(json.dumps(got))

asyncio.run(main())
"""


async def test_processes_claim_each_item_once(db: DbTarget) -> None:
    drop_tables(db.dialect, db.dsn, db.prefix, TABLES)
    n = 400
    make_source(db.dialect, db.dsn, f"{db.prefix}candidates", [f"t{i}" for i in range(n)])
    store = await Store.open(settings_for(db.dialect, db.dsn, db.prefix))
    try:
        await store.init_db()
        assert await store.discover(job_for(db.prefix)) == n
        root = str(Path(__file__).resolve().parents[2])
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                root,
                db.dialect,
                db.dsn,
                db.prefix,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        outs = [await p.communicate() for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err.decode()[-2000:]
        claimed = [k for out, _ in outs for k in json.loads(out)]
        assert len(claimed) == n
        assert sorted(claimed, key=int) == [str(i) for i in range(1, n + 1)]
        assert (await store.counts())["claimed"] == n
    finally:
        await store.close()
        drop_tables(db.dialect, db.dsn, db.prefix, TABLES)


def _record(job: JobSpec, batch_id: str, worker: str) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        job=job.name,
        state="draft",
        model=job.model,
        endpoint=job.endpoint,
        worker_id=worker,
    )


async def test_stale_worker_applies_nothing(env: tuple[DbTarget, Store, JobSpec]) -> None:
    db, store, job = env
    await store.discover(job, limit=3)
    stale = await store.claim(job, "slow", 3, 0)  # lease over at once
    fresh = await store.claim(job, "fast", 3, 60)  # takes the same rows over
    assert {i.key for i in fresh} == {i.key for i in stale}
    assert await store.discover(job) == 17
    assert (
        await store.create_draft(
            _record(job, "b-stale", "slow"),
            [(i.key, i.claim_token, f"c{i.key}") for i in stale],
            60,
        )
        == 0
    )
    assert (
        await store.create_draft(
            _record(job, "b-fresh", "fast"),
            [(i.key, i.claim_token, f"c{i.key}") for i in fresh],
            60,
        )
        == 3
    )
    out = await store.apply_results(
        job, [ApplyRow(i.key, i.claim_token, {"name": "STALE", "years": 1}) for i in stale]
    )
    assert out.applied == 0
    assert sorted(out.stale) == sorted(i.key for i in stale)
    rows = query(
        db.dialect,
        db.dsn,
        f"SELECT COUNT(*) FROM {db.prefix}candidates "
        f"WHERE name IS NOT NULL OR {marker(db)} IS NOT NULL",
    )
    assert rows[0][0] == 0
    good = [ApplyRow(i.key, i.claim_token, {"name": "ok", "years": 7, "score": 0.5}) for i in fresh]
    out = await store.apply_results(job, good)
    assert out.applied == 3
    assert out.stale == []
    again = await store.apply_results(job, good)
    assert again.applied == 0
    assert len(again.stale) == 3
    rows = query(
        db.dialect,
        db.dsn,
        f"SELECT name, years, score FROM {db.prefix}candidates WHERE {marker(db)} IS NOT NULL",
    )
    assert sorted(rows) == [("ok", 7, 0.5)] * 3
    counts = await store.counts(job.name)
    assert counts["done"] == 3
    assert counts["pending"] == 17


async def test_expired_leases_reaped(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    await store.discover(job)
    await store.claim(job, "live-worker", 3, 600)
    await store.claim(job, "dead-worker", 4, 0)
    assert await store.reap_expired(job) == 4
    counts = await store.counts(job.name)
    assert counts["claimed"] == 3
    assert counts["pending"] == 17


async def test_release_and_renew(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    await store.discover(job)
    items = await store.claim(job, "w", 4, 600)
    pairs = [(i.key, i.claim_token) for i in items]
    assert await store.renew_claims(job, pairs, 600) == []
    assert await store.renew_claims(job, [(items[0].key, "wrong")], 600) == [items[0].key]
    assert await store.release(job, [*pairs[:2], (items[2].key, "wrong")]) == 2
    assert (await store.counts(job.name))["claimed"] == 2


async def test_requeue_dead_letter_retry_dead(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    await store.discover(job, limit=3)
    for attempt in (1, 2):
        items = await store.claim(job, "w", 10, 600)
        assert [i.attempts for i in items] == [attempt - 1] * 3
        out = await store.requeue(
            job, [RequeueRow(i.key, i.claim_token, f"bad json {attempt}") for i in items], 2
        )
        assert (out.requeued, out.dead) == ((3, 0) if attempt == 1 else (0, 3))
    assert await store.dead_items(job) == [(k, "bad json 2") for k in ("1", "2", "3")]
    assert await store.retry_dead(job) == 3
    items = await store.claim(job, "w", 10, 600)
    assert [i.attempts for i in items] == [0, 0, 0]
    out = await store.requeue(
        job, [RequeueRow(items[0].key, items[0].claim_token, "tokens", burn_attempt=False)], 1
    )
    assert (out.requeued, out.dead) == (1, 0)
    out = await store.dead_letter(
        job, [RequeueRow(i.key, i.claim_token, "too long") for i in items]
    )
    assert out.dead == 2
    assert out.stale == [items[0].key]
    assert (await store.counts(job.name))["dead"] == 2


async def test_batch_transitions(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    await store.discover(job)
    items = await store.claim(job, "w", 5, 600)
    bound = await store.create_draft(
        _record(job, "b1", "w"), [(i.key, i.claim_token, f"cid-{i.key}") for i in items], 600
    )
    assert bound == 5
    rec = await store.get_batch("b1")
    assert rec is not None
    assert rec.state == "draft"
    assert rec.worker_id == "w"
    assert rec.created_at is not None
    assert rec.lease_expires_at is not None
    await store.update_batch("b1", state="uploaded", input_file_id="file-1")
    await store.update_batch(
        "b1",
        state="submitted",
        remote_batch_id="batch_abc",
        remote_status="validating",
        request_total=5,
        input_tokens=123,
        cost_usd=0.25,
        error="x" * 5000,
    )
    rec = await store.find_batch_by_remote_id("batch_abc")
    assert rec is not None
    assert rec.id == "b1"
    assert rec.state == "submitted"
    assert rec.input_file_id == "file-1"
    assert rec.request_total == 5
    assert rec.cost_usd == 0.25
    assert rec.error is not None
    assert len(rec.error) == 4000
    assert await store.find_batch_by_remote_id("nope") is None
    assert [b.id for b in await store.list_batches(job=job.name, states=["submitted"])] == ["b1"]
    assert await store.list_batches(states=["draft"]) == []
    got = await store.batch_items("b1")
    assert sorted(got) == sorted((i.key, i.claim_token, f"cid-{i.key}", 0) for i in items)
    with pytest.raises(TypeError):
        await store.update_batch("b1", bogus=1)
    assert (await store.counts(job.name))["submitted"] == 5


async def test_adopt_batches(env: tuple[DbTarget, Store, JobSpec]) -> None:
    db, store, job = env
    for n in range(6):
        await store.create_draft(_record(job, f"b{n}", "gone"), [], 0)  # leases expired
    await store.create_draft(_record(job, "live", "alive"), [], 600)
    other = await Store.open(settings_for(db.dialect, db.dsn, db.prefix))
    try:
        a, b = await gather_all(
            store.adopt_batches(job, "A", 600, ["draft"]),
            other.adopt_batches(job, "B", 600, ["draft"]),
        )
    finally:
        await other.close()
    ids_a, ids_b = {r.record.id for r in a}, {r.record.id for r in b}
    assert not ids_a & ids_b
    assert ids_a | ids_b == {f"b{n}" for n in range(6)}
    assert all(r.record.worker_id == "A" for r in a)
    assert {r.previous_worker for r in [*a, *b]} == {"gone"}
    again = await store.adopt_batches(job, "C", 600, ["draft"])
    assert again == []
    for name, held in (("A", ids_a), ("B", ids_b)):  # SQLite may hand all six to one of them
        mine = await store.adopt_batches(job, name, 600, ["draft"])
        assert {r.record.id for r in mine} == held
        assert all(r.previous_worker == name for r in mine)
    lost = await store.renew_batch_leases("A", [*sorted(ids_a), "live"], 600)
    assert lost == ["live"]


async def test_injected_deadlock_is_retried(
    env: tuple[DbTarget, Store, JobSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    _db, store, job = env
    await store.discover(job)
    real = Connection.fetchall
    calls = {"n": 0}
    messages = {
        "postgresql": ("40P01", "[40P01] ERROR: deadlock detected (1) (SQLExecDirectW)"),
        "mysql": ("40001", "[40001] Deadlock found (1213) (SQLExecDirectW)"),
        "sqlite": ("HY000", "[HY000] [SQLite]database is locked (5) (5) (SQLExecDirectW)"),
    }

    async def flaky(self: Connection, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        calls["n"] += 1
        if calls["n"] == 1:
            self.broken = True
            raise self._pool.dialect.classify(pyodbc.Error(*messages[store.dialect_name]))
        return await real(self, sql, params)

    monkeypatch.setattr(Connection, "fetchall", flaky)
    items = await store.claim(job, "w", 5, 60)
    assert len(items) == 5
    assert calls["n"] >= 2
    assert store.pool.discarded >= 1


async def test_giving_up_names_the_operation(
    env: tuple[DbTarget, Store, JobSpec],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db, _store, job = env
    quick = functools.partial(store_module.retry_store, attempts=2, initial_s=0.001, max_s=0.001)
    monkeypatch.setattr(store_module, "retry_store", quick)
    store = await Store.open(settings_for(db.dialect, db.dsn, db.prefix, outage_s=0))

    async def always_locked(self: Connection, *_args: Any, **_kwargs: Any) -> Any:
        raise TransientStoreError("database is locked")

    monkeypatch.setattr(Connection, "fetchall", always_locked)
    try:
        with caplog.at_level(logging.ERROR, logger="engine.store"), pytest.raises(
            TransientStoreError
        ):
            await store.claim(job, "w", 5, 60)
    finally:
        await store.close()
    assert "Store.claim gave up" in caplog.text


async def test_real_lock_wait_is_transient(env: tuple[DbTarget, Store, JobSpec]) -> None:
    db, _store, job = env
    short = await Store.open(
        settings_for(
            db.dialect, db.dsn, db.prefix, pool_size=1,
            query_timeout_s=5 if db.dialect == "mysql" else 1,
        )
    )
    set_wait = {
        "postgresql": "SET LOCAL lock_timeout = 200",
        "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
    }.get(db.dialect)
    blocker = raw_connect(db.dialect, db.dsn)
    try:
        cur = blocker.cursor()
        cur.execute("BEGIN IMMEDIATE" if db.dialect == "sqlite" else "BEGIN")
        cur.execute(f"UPDATE {db.prefix}items SET attempts = attempts WHERE job = ?", job.name)
        cur.execute(f"INSERT INTO {db.prefix}meta (name, value) VALUES ('lock', 'held')")

        async def insert_same_key() -> None:
            async with short.pool.transaction() as conn:
                if set_wait:
                    await conn.execute(set_wait)
                await conn.execute(
                    f"INSERT INTO {db.prefix}meta (name, value) VALUES ('lock', 'wait')"
                )

        with pytest.raises(TransientStoreError):
            await insert_same_key()
        assert short.pool.discarded == 1
    finally:
        cur.execute("ROLLBACK")
        blocker.close()
        await short.close()


async def test_statement_timeout_while_blocked_is_transient(
    env: tuple[DbTarget, Store, JobSpec],
) -> None:
    """A statement stopped by the query timeout (stuck behind a lock under load) is retried.

    PostgreSQL reports 57014, MariaDB 1969, SQLite its busy timeout: the whole transaction
    can run again once the blocker has gone.
    """
    db, _store, job = env
    short = await Store.open(
        settings_for(db.dialect, db.dsn, db.prefix, pool_size=1, query_timeout_s=1, outage_s=0)
    )
    blocker = raw_connect(db.dialect, db.dsn)
    try:
        cur = blocker.cursor()
        cur.execute("BEGIN IMMEDIATE" if db.dialect == "sqlite" else "BEGIN")
        cur.execute(f"INSERT INTO {db.prefix}meta (name, value) VALUES ('stuck', 'held')")

        async def insert_same_key() -> None:
            async with short.pool.transaction() as conn:
                await conn.execute(
                    f"INSERT INTO {db.prefix}meta (name, value) VALUES ('stuck', 'wait')"
                )

        with pytest.raises(TransientStoreError) as info:
            await insert_same_key()
        assert short.pool.discarded == 1
        assert job.name not in str(info.value)
    finally:
        cur.execute("ROLLBACK")
        blocker.close()
        await short.close()


async def test_cancelled_query_connection_not_reused(
    env: tuple[DbTarget, Store, JobSpec],
) -> None:
    db, store, _job = env
    slow = {
        "postgresql": "SELECT pg_sleep(20)",
        "mysql": "SELECT SLEEP(20)",
        "sqlite": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c "
        "WHERE n < 300000000) SELECT COUNT(*) FROM c",
    }[db.dialect]
    seen: list[int] = []

    async def run() -> None:
        async with store.pool.acquire() as conn:
            seen.append(id(conn.raw))
            await conn.fetchall(slow)

    task = asyncio.create_task(run())
    while not seen:
        await asyncio.sleep(0)
    # SQLCancel only stops a statement the server has started; give it time to arrive.
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.pool.discarded == 1
    await asyncio.wait_for(store.pool.drain(), 10)  # SQLCancel made the close quick
    assert seen[0] not in {id(c.raw) for c in store.pool._free}
    async with store.pool.acquire() as conn:
        assert id(conn.raw) != seen[0]
        assert (await conn.fetchall("SELECT 1"))[0][0] == 1


async def test_cancelled_connection_is_closed(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, _job = env
    started = asyncio.Event()
    raws: list[Any] = []

    async def run() -> None:
        async with store.pool.acquire() as conn:
            raws.append(conn.raw)
            started.set()
            await asyncio.Event().wait()  # cancelled while holding the connection

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.pool.drain()
    with pytest.raises(pyodbc.ProgrammingError):
        raws[0].cursor()  # closed, not pooled


UNICODE = [
    "emoji 😀👩‍👩‍👧 🇫🇷",
    "CJK 漢字 かな 한국어",
    "RTL שלום עולם مرحبا بالعالم \u200f",
    "",
    None,
    "quotes ' \" ; -- \\ %s ?",
]


async def test_text_round_trips_byte_exact(db: DbTarget) -> None:
    drop_tables(db.dialect, db.dsn, db.prefix, TABLES)
    big = ("a😀漢ש" * 300_000)[:1_000_000]
    texts: list[Any] = [*UNICODE, big]
    make_source(db.dialect, db.dsn, f"{db.prefix}candidates", texts)
    store = await Store.open(settings_for(db.dialect, db.dsn, db.prefix))
    try:
        await store.init_db()
        job = job_for(db.prefix)
        await store.discover(job)
        items = await store.claim(job, "w", 100, 600)
        by_key = {i.key: i for i in items}
        for n, text in enumerate(texts, start=1):
            got = by_key[str(n)].row["resume_text"]
            assert got == text, f"row {n}"
            if text:
                assert got.encode("utf-8") == text.encode("utf-8")
        await store.create_draft(
            _record(job, "bu", "w"), [(i.key, i.claim_token, i.key) for i in items], 600
        )
        out = await store.apply_results(
            job, [ApplyRow(i.key, i.claim_token, {"name": i.row["resume_text"]}) for i in items]
        )
        assert out.applied == len(texts)
        rows = dict(query(db.dialect, db.dsn, f"SELECT userid, name FROM {db.prefix}candidates"))
        for n, text in enumerate(texts, start=1):
            assert rows[n] == text, f"row {n}"
    finally:
        await store.close()
        drop_tables(db.dialect, db.dsn, db.prefix, TABLES)


async def test_check_source(env: tuple[DbTarget, Store, JobSpec]) -> None:
    _db, store, job = env
    await store.check_source(job)
    from engine.errors import ConfigError

    missing_col = JobSpec(
        name="x",
        source=SourceSpec(
            table=job.source.table,
            key_column="userid",
            text_columns=("nope",),
            processed_column="LastProcessed",
        ),
        model="m",
        output_schema={"type": "object"},
    )
    with pytest.raises(ConfigError, match="nope"):
        await store.check_source(missing_col)
    missing_table = JobSpec(
        name="x",
        source=SourceSpec(
            table="no_such_table_here",
            key_column="userid",
            text_columns=("a",),
            processed_column="b",
        ),
        model="m",
        output_schema={"type": "object"},
    )
    with pytest.raises(ConfigError, match=r"source\.table"):
        await store.check_source(missing_table)


@pytest.mark.parametrize("bad", ['it"ems', "my items", "items;drop", "a.b.c", "", "1x"])
def test_bad_identifiers_rejected(bad: str) -> None:
    with pytest.raises(IdentifierError, match="items_table"):
        Store(StoreSettings(dsn="Driver=SQLite3;Database=x", items_table=bad))


def test_store_error_is_store_error() -> None:
    assert issubclass(TransientStoreError, StoreError)


async def test_open_fails_fast_without_leaking_the_password() -> None:
    dsn = "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=1;Database=x;Uid=u;Pwd=hunter2;"
    with pytest.raises(StoreError) as info:
        await Store.open(StoreSettings(dsn=dsn, pool_size=1))
    assert "hunter2" not in str(info.value)


async def test_store_is_a_context_manager_and_close_is_idempotent(sqlite_db: DbTarget) -> None:
    async with await Store.open(settings_for("sqlite", sqlite_db.dsn, "x_")) as store:
        await store.init_db()
        assert store.dialect_name == "sqlite"
        assert await store.counts() == dict.fromkeys(
            ("pending", "claimed", "submitted", "done", "dead"), 0
        )
    await store.close()
    with pytest.raises(StoreError):
        await store.counts()


@pytest.mark.parametrize(
    ("dialect", "sqlstate", "message"),
    [
        ("postgresql", "HY000", "[HY000] The connection has been lost (35) (SQLExecDirectW)"),
        (
            "postgresql",
            "HY000",
            "[HY000] server closed the connection unexpectedly\n\tThis probably means the "
            "server terminated abnormally (1) (SQLExecDirectW)",
        ),
        ("postgresql", "HY000", "[HY000] could not connect to server: Connection refused (101)"),
        ("postgresql", "HY000", "[HY000] internal SAVEPOINT failed (8) (SQLExecDirectW)"),
        (
            "postgresql",
            "57P01",
            "[57P01] FATAL: terminating connection due to administrator command (1) "
            "(SQLExecDirectW)",
        ),
        ("mysql", "HY000", "[HY000] [ma-3.1.20]Can't connect to server on '127.0.0.1' (111) "
                           "(2002) (SQLDriverConnect)"),
        ("mysql", "HY000", "[HY000] [ma-3.1.20]Can't connect to server on 'db' (2003) "
                           "(SQLDriverConnect)"),
        ("mysql", "HY000", "[HY000] [ma-3.1.20]Server has gone away (2006) (SQLExecDirectW)"),
        ("mysql", "HY000", "[HY000] [ma-3.1.20]Lost connection to server during query (2013) "
                           "(SQLExecDirectW)"),
        ("mysql", "70100", "[70100] Connection was killed (1927) (SQLExecDirectW)"),
        ("mysql", "08S01", "[08S01] Server shutdown in progress (1053) (SQLExecDirectW)"),
    ],
)
def test_lost_connections_are_transient(dialect: str, sqlstate: str, message: str) -> None:
    error = get_dialect(dialect).classify(pyodbc.Error(sqlstate, message))
    assert isinstance(error, TransientStoreError), error


@pytest.mark.parametrize(
    ("dialect", "sqlstate", "message"),
    [
        ("postgresql", "HY000", "[HY000] ERROR: division by zero (1) (SQLExecDirectW)"),
        ("postgresql", "28P01", "[28P01] password authentication failed for user (101)"),
        ("mysql", "HY000", "[HY000] Unknown column 'x' in 'field list' (1054) (SQLExecDirectW)"),
        ("mysql", "42000", "[42000] Access denied for user 'u'@'h' (1045) (SQLDriverConnect)"),
    ],
)
def test_other_errors_stay_fatal(dialect: str, sqlstate: str, message: str) -> None:
    error = get_dialect(dialect).classify(pyodbc.Error(sqlstate, message))
    assert not isinstance(error, TransientStoreError | DataFitError), error


def _lose_first_commit(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make the first COMMIT land on the server and then report a lost connection.

    Returns the commit counter; ``monkeypatch.undo()`` puts the real commit back.
    """
    real_commit = Connection.commit
    commits = {"n": 0}

    async def commit_then_lose(self: Connection) -> None:
        await real_commit(self)
        commits["n"] += 1
        if commits["n"] == 1:
            self.broken = True
            raise TransientStoreError("connection lost during COMMIT (injected)")

    monkeypatch.setattr(Connection, "commit", commit_then_lose)
    return commits


async def test_create_draft_retried_after_its_commit_landed(
    env: tuple[DbTarget, Store, JobSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection is lost during COMMIT after the server committed: the retry must find
    # its own batch row, not fail on the duplicate key, and bind nothing twice.
    _db, store, job = env
    await store.discover(job)
    items = await store.claim(job, "w", 5, 600)
    commits = _lose_first_commit(monkeypatch)
    wanted = [(i.key, i.claim_token, f"cid-{i.key}") for i in items]
    assert await store.create_draft(_record(job, "b-amb", "w"), wanted, 600) == 5
    assert commits["n"] == 2  # the whole transaction did run again
    monkeypatch.undo()
    again = [(k, t, f"other-{k}") for k, t, _ in wanted]
    assert await store.create_draft(_record(job, "b-amb", "w"), again, 600) == 5
    got = await store.batch_items("b-amb")
    assert sorted(got) == sorted((k, t, cid, 0) for k, t, cid in wanted)
    assert (await store.counts(job.name))["submitted"] == 5
    with pytest.raises(StaleClaimError):
        await store.create_draft(_record(job, "b-amb", "someone-else"), wanted, 600)


async def test_claim_retried_after_its_commit_landed(
    env: tuple[DbTarget, Store, JobSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry must return the rows the landed attempt claimed, not strand them claimed.
    _db, store, job = env
    await store.discover(job)
    commits = _lose_first_commit(monkeypatch)
    items = await store.claim(job, "w", 5, 600)
    monkeypatch.undo()
    assert commits["n"] == 2
    assert len(items) == 5
    assert (await store.counts(job.name))["claimed"] == 5


_BAD_UTF8 = {1: "6C6F6E65EDA08020", 3: "737472617980"}  # a CESU-8 surrogate; a stray byte


async def test_invalid_utf8_source_row_is_dead_with_reason(
    env: tuple[DbTarget, Store, JobSpec],
) -> None:
    # SQLite keeps any bytes and MariaDB takes surrogates in utf8mb4; PostgreSQL refuses both.
    db, store, job = env
    stored: set[str] = set()
    conn = raw_connect(db.dialect, db.dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"UPDATE {db.prefix}candidates SET resume_text = ? WHERE userid = 2", "é ok")
        for key, hex_bytes in _BAD_UTF8.items():
            bad = {
                "sqlite": f"CAST(X'{hex_bytes}' AS TEXT)",
                "postgresql": f"convert_from(decode('{hex_bytes}', 'hex'), 'UTF8')",
                "mysql": f"UNHEX('{hex_bytes}')",
            }[db.dialect]
            try:
                cur.execute(
                    f"UPDATE {db.prefix}candidates SET resume_text = {bad} WHERE userid = {key}"
                )
            except pyodbc.Error:  # the server validated the text on the way in
                continue
            stored.add(str(key))
    finally:
        conn.close()
    expected = {"sqlite": {"1", "3"}, "postgresql": set(), "mysql": {"1"}}[db.dialect]
    assert stored == expected
    await store.discover(job)
    claimed = await store.claim(job, "w", 20, 600)
    by_key = {i.key: i.row["resume_text"] for i in claimed}
    assert by_key["2"] == "é ok"
    assert sorted(by_key, key=int) == [str(n) for n in range(1, 21) if str(n) not in stored]
    dead = dict(await store.dead_items(job))
    assert sorted(dead) == sorted(stored)
    for key, reason in dead.items():
        assert "source text is not valid UTF-8" in reason
        assert f"key {key}" in reason
    rows = await store.fetch_source_rows(job, ["1", "2", "3"])
    assert sorted(rows) == sorted({"1", "2", "3"} - stored)


async def test_value_that_does_not_fit_is_rejected_alone(db: DbTarget) -> None:
    # A value the column cannot take fails the whole statement; only its row is refused.
    drop_tables(db.dialect, db.dsn, db.prefix, TABLES)
    conn = raw_connect(db.dialect, db.dsn)
    try:
        # SQLite checks types only in STRICT tables (its TEXT/INTEGER/REAL are all allowed).
        strict = " STRICT" if db.dialect == "sqlite" else ""
        conn.cursor().execute(source_ddl(db.dialect, f"{db.prefix}candidates") + strict)
        conn.cursor().executemany(
            f"INSERT INTO {db.prefix}candidates (userid, resume_text) VALUES (?, ?)",
            [(n, f"text {n}") for n in range(1, 11)],
        )
    finally:
        conn.close()
    store = await Store.open(settings_for(db.dialect, db.dsn, db.prefix))
    try:
        await store.init_db()
        job = job_for(db.prefix)
        await store.discover(job)
        items = sorted(await store.claim(job, "w", 10, 600), key=lambda i: int(i.key))
        await store.create_draft(
            _record(job, "b-fit", "w"), [(i.key, i.claim_token, i.key) for i in items], 600
        )
        bad: dict[str, Any] = {"3": "many", "8": "lots"}
        if db.dialect != "sqlite":
            bad["6"] = 2**40  # beyond a 32-bit INTEGER (SQLite's are 64-bit)
        rows = [
            ApplyRow(i.key, i.claim_token, {"name": f"n{i.key}", "years": bad.get(i.key, 7)})
            for i in items
        ]
        out = await store.apply_results(job, rows)
        assert out.applied == 10 - len(bad)
        assert out.stale == []
        assert sorted(k for k, _ in out.rejected) == sorted(bad)
        for _key, reason in out.rejected:
            assert reason.startswith("value does not fit column years: "), reason
        written = query(
            db.dialect,
            db.dsn,
            f"SELECT userid, name, years FROM {db.prefix}candidates "
            f"WHERE {marker(db)} IS NOT NULL ORDER BY userid",
        )
        assert [(str(k), n, y) for k, n, y in written] == [
            (i.key, f"n{i.key}", 7) for i in items if i.key not in bad
        ]
        counts = await store.counts(job.name)
        assert (counts["done"], counts["submitted"]) == (10 - len(bad), len(bad))
        again = await store.apply_results(job, rows)  # the fence still holds
        assert again.applied == 0
        assert sorted(k for k, _ in again.rejected) == sorted(bad)
        assert len(again.stale) == 10 - len(bad)
    finally:
        await store.close()
        drop_tables(db.dialect, db.dsn, db.prefix, TABLES)
