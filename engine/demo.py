"""The demo: the bundled resumes job on synthetic resumes, end to end, against the emulator.

It creates the database (``demo.db`` by default, or any DSN), fills ``candidates``, starts the
local Batch API emulator on 127.0.0.1, runs the job with several batches in flight, and prints
rows done, batches, tokens, cost, wall time and the extraction's accuracy against the truth.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import orjson

from engine.emulator import Emulator, EmulatorConfig
from engine.engine import Engine, EngineEvent
from engine.jobfile import load_job
from engine.progress import Progress, ProgressMode
from engine.resumes_data import SCORED_FIELDS, fill_database, score_fields
from engine.settings import ApiSettings, StoreSettings
from engine.store import Store

__all__ = ["run_demo"]

DEMO_ITEMS = "demo_engine_items"
DEMO_BATCHES = "demo_engine_batches"
DEMO_META = "demo_engine_meta"


def _say(text: str) -> None:
    """Print one line of the demo's story."""
    print(text, flush=True)


def _drop_demo_tables(dsn: str) -> None:
    """Start from a clean slate: the demo's own engine tables from an earlier run go."""
    import pyodbc

    conn = pyodbc.connect(dsn, autocommit=True)
    try:
        cursor = conn.cursor()
        for table in (DEMO_ITEMS, DEMO_BATCHES, DEMO_META):
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


def _read_back(dsn: str, columns: list[str]) -> tuple[dict[int, tuple[Any, ...]], dict[int, Any]]:
    """Fetch the extracted columns and the ground truth, by userid."""
    import pyodbc

    conn = pyodbc.connect(dsn, autocommit=True)
    if "sqlite" in dsn.lower():
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
    try:
        cursor = conn.cursor()
        listed = ", ".join(columns)
        got = {
            int(row[0]): tuple(row[1:])
            for row in cursor.execute(
                f"SELECT userid, {listed} FROM candidates WHERE LastProcessed IS NOT NULL"
            ).fetchall()
        }
        truth = {
            int(row[0]): orjson.loads(row[1])
            for row in cursor.execute("SELECT userid, truth_json FROM candidates_truth").fetchall()
        }
    finally:
        conn.close()
    return got, truth


async def run_demo(
    *,
    rows: int = 2000,
    db: str | None = None,
    dsn: str | None = None,
    max_in_flight: int = 4,
    batch_size: int | None = None,
    seed: int = 7,
    progress: ProgressMode = "auto",
) -> int:
    """Run the demo and return an exit code (0 when every row ended done or dead).

    In a terminal the run is shown by the live progress display; elsewhere each batch state
    change is printed, with a progress line every few seconds.
    """
    if dsn is None:
        path = Path(db or "demo.db")
        path.unlink(missing_ok=True)
        dsn = f"Driver=SQLite3;Database={path}"
        where = f"SQLite file {path}"
    else:
        where = "the given DSN"
    loaded = load_job("resumes")
    job = loaded.spec
    size = batch_size or max(10, math.ceil(rows / (max_in_flight * 2)))
    _say(f"demo: {rows} synthetic resumes into 'candidates' in {where}")
    filled = await asyncio.to_thread(fill_database, dsn, rows, seed=seed, replace=True)
    await asyncio.to_thread(_drop_demo_tables, dsn)
    _say(f"demo: filled in {filled.seconds:.1f}s; batches of {size}, up to {max_in_flight} live")

    store_settings = StoreSettings(
        dsn=dsn, items_table=DEMO_ITEMS, batches_table=DEMO_BATCHES, meta_table=DEMO_META
    )
    store = await Store.open(store_settings)
    try:
        await store.init_db()
    finally:
        await store.close()

    def story(event: EngineEvent) -> None:
        if display.mode != "plain":
            return
        if event.kind == "batch_state":
            _say(f"  batch {event.batch_id} {event.remote_batch_id or ''} -> {event.state}")
        elif event.kind in ("rows_dead", "error"):
            _say(f"  {event.kind}: {event.rows or ''} {event.message}")

    started = time.monotonic()
    async with Emulator(EmulatorConfig(seed=seed, latency_s=0.5)) as emu:
        _say(f"demo: Batch API emulator at {emu.base_url}")
        api = ApiSettings(api_key="sk-demo-local-emulator", base_url=emu.base_url)
        settings = loaded.engine_settings(
            batch_size=size,
            max_in_flight=max_in_flight,
            min_check_interval_s=0.05,
            check_interval_s=0.5,
            spool_dir=str(Path(".demo-spool")),
        )
        async with Engine(job, store=store_settings, api=api, settings=settings,
                          on_event=story) as engine:
            display = Progress(job, engine.store, mode=progress, line_every_s=5.0, say=_say)
            engine.add_listener(display.on_event)
            async with display:
                summary = await engine.run(until_idle=True, install_signal_handlers=True)
            batches = await engine.store.list_batches(job.name, limit=10_000)
    wall = time.monotonic() - started

    columns = [m.column for m in job.columns]
    got, truth = await asyncio.to_thread(_read_back, dsn, columns)
    hits = dict.fromkeys(SCORED_FIELDS, 0)
    for userid, values in got.items():
        extracted: dict[str, Any] = {}
        for mapping, value in zip(job.columns, values, strict=True):
            if mapping.kind == "json" and isinstance(value, str):
                value = orjson.loads(value)
            extracted[mapping.field] = value
        for name, ok in score_fields(truth.get(userid, {}), extracted).items():
            hits[name] += int(ok)
    counts = summary.counts
    input_tokens = sum(b.input_tokens for b in batches)
    output_tokens = sum(b.output_tokens for b in batches)
    cost = sum(b.cost_usd for b in batches)
    _say("")
    _say(f"rows: done={counts.get('done', 0)} dead={counts.get('dead', 0)} "
         f"pending={counts.get('pending', 0)}")
    _say(f"batches: {len(batches)} applied; tokens in={input_tokens} out={output_tokens}")
    _say(f"cost: ${cost:.4f} at batch prices (${cost * 2:.4f} without the batch discount)")
    _say(f"wall time: {wall:.1f}s ({rows / max(wall, 1e-9):.0f} rows/s)")
    if got:
        accuracy = ", ".join(f"{name} {hits[name] / len(got):.0%}" for name in SCORED_FIELDS)
        _say(f"accuracy against the ground truth: {accuracy}")
    _say("")
    _say("To run the same job for real: export OPENAI_API_KEY=sk-... (and unset OPENAI_BASE_URL),")
    _say("then: python -m engine run --job resumes --dsn 'Driver={ODBC Driver 18 for SQL Server};"
         "Server=...;Database=...;Uid=...;Pwd=...' --max-in-flight 4")
    settled = counts.get("done", 0) + counts.get("dead", 0)
    return 0 if settled == rows else 1
