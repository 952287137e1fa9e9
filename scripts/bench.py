"""Benchmark the whole pipeline against its limits; every figure is a ratio measured in one run.

Four parts (issue 7), each printed as it finishes; the last line is a one-line summary:

1. throughput: N rows end to end (engine + in-process emulator finishing instantly) against the
   naive raw pipeline (select, orjson dump, parse, executemany UPDATEs in chunks of 1,000) on
   the same table in the same run, per database;
2. concurrency: 20 batches with emulator latency L, max_in_flight 1 against 10 (wall ratio);
3. memory: one batch of N requests of ~4 KB; the engine runs in its own process against the
   emulator in another (``python -m engine emulator``), and reports its peak RSS (VmHWM);
4. profile: wall seconds per stage (discover, claim, render, spool, bind, upload, wait, download,
   parse, validate, apply, requeue) from timers around the stage functions of the throughput run.

    .venv/bin/python scripts/bench.py            # the full run (minutes)
    .venv/bin/python scripts/bench.py --quick    # well under a minute
    .venv/bin/python scripts/bench.py --smoke    # seconds; what the test suite runs

Nothing here asserts a time: the machines are noisy, so only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioodbc
import orjson
import pyodbc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The server DSNs (ENGINE_TEST_PG_DSN, ENGINE_TEST_MYSQL_DSN) are bench_store.py's, beside this
# file (the script's own folder is first on sys.path).
from bench_store import DSNS  # noqa: E402

from engine.batch_api import BatchApi  # noqa: E402
from engine.emulator import Emulator, EmulatorConfig  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.job import ColumnMapping, JobSpec, SourceSpec  # noqa: E402
from engine.producer import Producer  # noqa: E402
from engine.requests import RequestRenderer  # noqa: E402
from engine.results import ResultParser  # noqa: E402
from engine.settings import ApiSettings, EngineSettings, StoreSettings  # noqa: E402
from engine.store import Store  # noqa: E402

TYPES = {
    "sqlite": {"int": "INTEGER", "text": "TEXT", "ts": "TIMESTAMP", "short": "VARCHAR(200)"},
    "postgresql": {"int": "INTEGER", "text": "TEXT", "ts": "TIMESTAMP", "short": "VARCHAR(200)"},
    "mysql": {"int": "INT", "text": "LONGTEXT", "ts": "DATETIME(6)", "short": "VARCHAR(200)"},
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": ["integer", "null"]},
    },
    "required": ["name", "tags", "score"],
    "additionalProperties": False,
}
RAW_CHUNK = 1000
API_KEY = "sk-bench-not-a-key"


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    rows: int  # throughput rows per database
    text_chars: int
    batch_size: int
    concurrency_batches: int
    concurrency_rows: int  # rows per concurrency batch
    latency_s: float
    memory_sizes: tuple[int, ...]
    memory_chars: int


PLANS = {
    "full": Plan(100_000, 1200, 25_000, 20, 5, 2.0, (10_000, 25_000, 50_000), 4000),
    "quick": Plan(5_000, 1200, 2_500, 20, 5, 0.5, (1_000, 2_500, 5_000), 4000),
    "smoke": Plan(300, 200, 100, 4, 2, 0.05, (50, 100), 500),
}


# -- tables ------------------------------------------------------------------------------------


def connect(dialect: str, dsn: str) -> Any:
    """Open a plain autocommit pyodbc connection for set-up and checks."""
    conn = pyodbc.connect(dsn, autocommit=True)
    if dialect in ("sqlite", "mysql"):
        conn.setencoding(encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
    return conn


def make_source(dialect: str, dsn: str, table: str, rows: int, chars: int) -> None:
    """Create ``table`` (id, body, processed, out_*) with ``rows`` rows of ~``chars`` text."""
    t = TYPES[dialect]
    conn = connect(dialect, dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f"CREATE TABLE {table} (id {t['int']} PRIMARY KEY, body {t['text']}, "
            f"processed {t['ts']} NULL, out_name {t['short']} NULL, out_tags {t['text']} NULL, "
            f"out_score {t['int']} NULL)"
        )
        filler = "lorem ipsum dolor sit amet " * (chars // 27 + 1)
        step = 500
        for start in range(1, rows + 1, step):
            end = min(rows, start + step - 1)
            data = [
                (i, f"row {i} name=Person{i} tags=a,b {filler}"[:chars])
                for i in range(start, end + 1)
            ]
            marks = ", ".join("(?, ?)" for _ in data)
            if dialect == "sqlite":
                cur.execute("BEGIN")
            cur.execute(
                f"INSERT INTO {table} (id, body) VALUES {marks}", [x for r in data for x in r]
            )
            if dialect == "sqlite":
                cur.execute("COMMIT")
    finally:
        conn.close()


def reset_source(dialect: str, dsn: str, table: str) -> None:
    """Mark every row unprocessed again (the engine then runs on the very same table)."""
    conn = connect(dialect, dsn)
    try:
        conn.cursor().execute(
            f"UPDATE {table} SET processed = NULL, out_name = NULL, out_tags = NULL, "
            "out_score = NULL"
        )
        if dialect == "postgresql":
            conn.cursor().execute(f"VACUUM ANALYZE {table}")
    finally:
        conn.close()


def drop(dialect: str, dsn: str, *tables: str) -> None:
    """Drop tables if they exist."""
    conn = connect(dialect, dsn)
    try:
        for table in tables:
            conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


def count_done(dialect: str, dsn: str, table: str) -> int:
    """Rows of the source table marked processed with an answer."""
    conn = connect(dialect, dsn)
    try:
        row = conn.cursor().execute(
            f"SELECT COUNT(*) FROM {table} WHERE processed IS NOT NULL AND out_name IS NOT NULL"
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def make_job(table: str, name: str = "bench") -> JobSpec:
    """Return the extraction job every part runs (three output columns, a strict schema)."""
    return JobSpec(
        name=name,
        source=SourceSpec(
            table=table,
            key_column="id",
            key_type="int",
            text_columns=("body",),
            processed_column="processed",
        ),
        model="gpt-4o-mini",
        system_prompt="Extract the name and tags.",
        user_template="Text: {body}",
        output_schema=SCHEMA,
        schema_name="thing",
        columns=(
            ColumnMapping(field="name", column="out_name", max_length=200),
            ColumnMapping(field="tags", column="out_tags", kind="json"),
            ColumnMapping(field="score", column="out_score", kind="int"),
        ),
    )


def store_settings(dsn: str, prefix: str, dialect: str) -> StoreSettings:
    """Store settings on the benchmark's own engine tables."""
    return StoreSettings(
        dsn=dsn,
        dialect=dialect,  # type: ignore[arg-type]
        items_table=f"{prefix}items",
        batches_table=f"{prefix}batches",
        meta_table=f"{prefix}meta",
    )


# -- the naive raw pipeline --------------------------------------------------------------------


async def raw_pipeline(dialect: str, dsn: str, table: str, rows: int) -> float:
    """Rows/s of select + orjson dump + parse + executemany UPDATE, 1,000 rows a transaction."""
    conn = await aioodbc.connect(dsn=dsn, autocommit=False)
    try:
        if dialect in ("sqlite", "mysql"):
            raw = conn._conn  # the pyodbc connection: same UTF-8 set-up as the store's
            raw.setencoding(encoding="utf-8")
            raw.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
            raw.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
        update = (
            f"UPDATE {table} SET out_name = ?, out_tags = ?, out_score = ?, "
            "processed = CURRENT_TIMESTAMP WHERE id = ?"
        )
        last, done = 0, 0
        start = time.perf_counter()
        while True:
            cur = await conn.cursor()
            await cur.execute(
                f"SELECT id, body FROM {table} WHERE id > ? ORDER BY id LIMIT {RAW_CHUNK}", last
            )
            page = await cur.fetchall()
            await cur.close()
            if not page:
                break
            params = []
            for key, body in page:
                line = orjson.dumps(
                    {"custom_id": f"raw|0|{key}", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "m", "messages": [{"role": "user", "content": body}]}}
                )
                request = orjson.loads(line)
                answer = orjson.dumps({"name": f"Person{key}", "tags": ["a", "b"], "score": 1})
                result = orjson.loads(
                    orjson.dumps({"custom_id": request["custom_id"], "response": {
                        "status_code": 200, "body": {"choices": [{"message": {
                            "content": answer.decode()}}]}}})
                )
                value = orjson.loads(result["response"]["body"]["choices"][0]["message"]["content"])
                params.append(
                    (value["name"], orjson.dumps(value["tags"]).decode(), value["score"], key)
                )
            cur = await conn.cursor()
            await cur.executemany(update, params)
            await cur.close()
            await conn.commit()
            last = page[-1][0]
            done += len(page)
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    if done != rows:
        raise RuntimeError(f"raw pipeline saw {done} rows, expected {rows}")
    return rows / elapsed


# -- stage timers ------------------------------------------------------------------------------


@dataclass
class Timers:
    """Wall seconds and calls per stage, filled by wrappers around the stage functions."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, elapsed: float) -> None:
        """Count one call of a stage."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
        self.calls[stage] = self.calls.get(stage, 0) + 1


@contextlib.contextmanager
def timed_stages(timers: Timers) -> Iterator[None]:
    """Patch the stage functions with timing wrappers for the duration of the block."""
    patches: list[tuple[Any, str, Any]] = []

    def wrap_async(owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                timers.add(stage, time.perf_counter() - start)

        patches.append((owner, name, original))
        setattr(owner, name, timed)

    def wrap_sync(owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.add(stage, time.perf_counter() - start)

        patches.append((owner, name, original))
        setattr(owner, name, timed)

    wrap_async(Store, "discover", "discover")
    wrap_async(Store, "claim", "claim")
    wrap_async(Store, "create_draft", "bind")
    wrap_async(Store, "release", "bind")
    wrap_async(Store, "apply_results", "apply")
    wrap_async(Store, "requeue", "requeue")
    wrap_async(Store, "dead_letter", "requeue")
    wrap_async(Store, "batch_items", "items")
    wrap_async(Producer, "build_draft", "_producer")
    wrap_sync(RequestRenderer, "render", "render")
    wrap_async(BatchApi, "upload_file", "upload")
    wrap_async(BatchApi, "create_batch", "create")
    wrap_async(BatchApi, "retrieve_batch", "poll")
    wrap_async(BatchApi, "download_file", "download")
    wrap_sync(ResultParser, "parse_line", "_parse_all")
    wrap_sync(ResultParser, "_fast_valid", "validate")
    wrap_sync(ResultParser, "_check_schema", "validate")
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


STAGES = (
    "discover", "claim", "render", "spool", "bind", "upload", "create", "poll", "download",
    "items", "parse", "validate", "apply", "requeue",
)


def stage_table(timers: Timers, rows: int, wall: float) -> list[tuple[str, float, int]]:
    """Seconds and calls per stage; spool and parse are their enclosing call minus the rest."""
    s = dict(timers.seconds)
    calls = dict(timers.calls)
    calls["spool"] = calls.get("_producer", 0)
    calls["parse"] = calls.get("_parse_all", 0)
    producer_parts = sum(s.get(k, 0.0) for k in ("discover", "claim", "render", "bind"))
    s["spool"] = max(0.0, s.pop("_producer", 0.0) - producer_parts)
    s["parse"] = max(0.0, s.pop("_parse_all", 0.0) - s.get("validate", 0.0))
    return [(k, s.get(k, 0.0), calls.get(k, 0)) for k in STAGES]


def print_profile(
    label: str, table: list[tuple[str, float, int]], rows: int, wall: float
) -> str:
    """Print the per-stage profile; return its top three as one short string."""
    print(f"  profile {label} ({rows} rows, wall {wall:.2f}s; stages overlap, so the sum may "
          "exceed the wall):")
    for stage, seconds, calls in table:
        print(f"    {stage:9} {seconds:8.3f}s {seconds / rows * 1e6:9.1f} us/row "
              f"{seconds / wall * 100:6.1f}% of wall  {calls:7d} calls")
    top = sorted(table, key=lambda kv: kv[1], reverse=True)[:3]
    return ",".join(f"{k} {v / wall * 100:.0f}%" for k, v, _ in top)


# -- 1. throughput -----------------------------------------------------------------------------


def fast_engine_settings(spool: Path, **overrides: Any) -> EngineSettings:
    """Engine settings with time removed: tiny poll intervals, no waiting between steps."""
    values: dict[str, Any] = {
        "batch_size": 1000,
        "max_in_flight": 4,
        "min_check_interval_s": 0.005,
        "check_interval_s": 0.05,
        "lease_s": 600,
        "apply_chunk_rows": 1000,
        "spool_dir": str(spool),
        "shutdown_grace_period_s": 10,
    }
    values.update(overrides)
    return EngineSettings(**values)


async def run_engine(
    job: JobSpec, settings: StoreSettings, base_url: str, engine: EngineSettings
) -> tuple[float, Any]:
    """Run the engine until idle; return (wall seconds, summary)."""
    api = ApiSettings(api_key=API_KEY, base_url=base_url, timeout_s=600)
    start = time.perf_counter()
    async with Engine(job, store=settings, api=api, settings=engine) as eng:
        summary = await eng.run(until_idle=True)
    return time.perf_counter() - start, summary


async def throughput(dialect: str, dsn: str, plan: Plan, tmp: Path) -> dict[str, Any]:
    """Raw rows/s and engine rows/s on the same table; the engine's stage profile."""
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    table = f"{prefix}src"
    make_source(dialect, dsn, table, plan.rows, plan.text_chars)
    try:
        raw = await raw_pipeline(dialect, dsn, table, plan.rows)
        reset_source(dialect, dsn, table)
        job = make_job(table)
        settings = store_settings(dsn, prefix, dialect)
        store = await Store.open(settings)
        try:
            await store.init_db()
        finally:
            await store.close()
        timers = Timers()
        engine_settings = fast_engine_settings(
            tmp / f"spool-{dialect}", batch_size=min(plan.batch_size, plan.rows)
        )
        # template_answers: the in-process emulator answers each batch once, so its CPU stays
        # out of the engine's figures (the engine still parses and validates every line).
        async with Emulator(EmulatorConfig(seed=1, template_answers=True)) as emu:
            with timed_stages(timers):
                wall, summary = await run_engine(job, settings, emu.base_url, engine_settings)
        done = count_done(dialect, dsn, table)
        if summary.counts.get("done") != plan.rows or done != plan.rows:
            raise RuntimeError(f"{dialect}: engine finished {done} of {plan.rows} rows")
        rate = plan.rows / wall
        print(f"throughput {dialect:10} engine {rate:8.0f} rows/s   naive raw {raw:8.0f} rows/s"
              f"   x{rate / raw:.2f}")
        top = print_profile(dialect, stage_table(timers, plan.rows, wall), plan.rows, wall)
        return {"engine": rate, "raw": raw, "ratio": rate / raw, "top": top}
    finally:
        if dialect != "sqlite":
            drop(dialect, dsn, table, f"{prefix}items", f"{prefix}batches", f"{prefix}meta",
                 f"{prefix}items_workers", f"{prefix}meta_jobs")


# -- 2. concurrency ----------------------------------------------------------------------------


async def concurrency_run(plan: Plan, tmp: Path, base_url: str, label: str) -> dict[str, float]:
    """Wall time of the same batches with max_in_flight 1 and 10 against one emulator."""
    walls: dict[int, float] = {}
    rows = plan.concurrency_batches * plan.concurrency_rows
    for in_flight in (1, 10):
        dsn = f"Driver=SQLite3;Database={tmp / f'conc-{label}-{in_flight}.db'}"
        make_source("sqlite", dsn, "src", rows, 200)
        settings = store_settings(dsn, "c_", "sqlite")
        store = await Store.open(settings)
        try:
            await store.init_db()
        finally:
            await store.close()
        # Polls back off to L/5: each poll costs a few ms of the event loop, and ten live
        # batches polled every 50 ms would keep it busy (real intervals are minutes).
        engine = fast_engine_settings(
            tmp / f"spool-conc-{label}-{in_flight}", batch_size=plan.concurrency_rows,
            max_in_flight=in_flight, check_interval_s=max(0.05, plan.latency_s / 5),
        )
        timers = Timers()
        with timed_stages(timers):
            wall, summary = await run_engine(make_job("src"), settings, base_url, engine)
        if summary.batches_applied != plan.concurrency_batches:
            raise RuntimeError(f"concurrency: {summary.batches_applied} batches applied")
        walls[in_flight] = wall
        per_batch = {
            k: v / plan.concurrency_batches * 1000
            for k, v, _ in stage_table(timers, rows, wall)
            if k not in ("poll", "render", "parse", "validate") and v
        }
        print(f"  {label}, max_in_flight {in_flight:2}: {wall:.2f}s; ms per batch: "
              + ", ".join(f"{k} {v:.0f}" for k, v in per_batch.items()))
    ratio = walls[1] / walls[10]
    print(f"concurrency ({label}) {plan.concurrency_batches} batches, latency "
          f"{plan.latency_s}s: max_in_flight 1 {walls[1]:.2f}s, 10 {walls[10]:.2f}s   "
          f"x{ratio:.1f} (ideal x{min(10, plan.concurrency_batches):.0f})")
    return {"one": walls[1], "ten": walls[10], "ratio": ratio}


async def concurrency_in_process(plan: Plan, tmp: Path) -> dict[str, float]:
    """Concurrency against an emulator sharing the engine's process and event loop."""
    async with Emulator(EmulatorConfig(seed=2, latency_s=plan.latency_s)) as emu:
        return await concurrency_run(plan, tmp, emu.base_url, "emulator in-process")


def concurrency(plan: Plan, tmp: Path) -> dict[str, dict[str, float]]:
    """Concurrency twice: emulator in the engine's process, and in a process of its own."""
    found = {"in": asyncio.run(concurrency_in_process(plan, tmp))}
    with emulator_process(plan.latency_s) as url:
        found["out"] = asyncio.run(concurrency_run(plan, tmp, url, "emulator separate"))
    return found


# -- 3. memory ---------------------------------------------------------------------------------


def _peak_rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in kB."""
    found = {"VmRSS": 0, "VmHWM": 0}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in found:
            found[key] = int(value.split()[0])
    return found["VmRSS"], found["VmHWM"]


async def memory_child(db: str, rows: int, url: str, spool: str) -> None:
    """Run the engine over one batch of ``rows`` and print its peak RSS (the child process)."""
    settings = store_settings(f"Driver=SQLite3;Database={db}", "m_", "sqlite")
    engine = fast_engine_settings(Path(spool), batch_size=rows, max_in_flight=1,
                                  check_interval_s=0.2)
    _, before = _peak_rss_kb()
    _, summary = await run_engine(make_job("src"), settings, url, engine)
    _, after = _peak_rss_kb()
    print(json.dumps({"rows": rows, "done": summary.counts.get("done", 0),
                      "start_kb": before, "peak_kb": after}), flush=True)


@contextlib.contextmanager
def emulator_process(latency_s: float = 0.0) -> Iterator[str]:
    """Start ``python -m engine emulator`` and yield its base URL; stop it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulator", "--latency-s", str(latency_s),
         "--template-answers"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("EMULATOR_URL="):
                url = line.strip().split("=", 1)[1]
                break
        if not url:
            raise RuntimeError("the emulator process printed no EMULATOR_URL")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory(plan: Plan, tmp: Path) -> dict[str, Any]:
    """Peak RSS of a separate engine process for one batch of each size."""
    peaks: dict[int, int] = {}
    starts: dict[int, int] = {}
    with emulator_process() as url:
        for rows in plan.memory_sizes:
            db = tmp / f"mem{rows}.db"
            dsn = f"Driver=SQLite3;Database={db}"
            make_source("sqlite", dsn, "src", rows, plan.memory_chars)

            async def init(dsn: str = dsn) -> None:
                store = await Store.open(store_settings(dsn, "m_", "sqlite"))
                try:
                    await store.init_db()
                finally:
                    await store.close()

            asyncio.run(init())
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(db),
                 str(rows), url, str(tmp / f"spool-mem{rows}")],
                cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"memory child failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if result["done"] != rows:
                raise RuntimeError(f"memory child finished {result['done']} of {rows} rows")
            peaks[rows] = result["peak_kb"]
            starts[rows] = result["start_kb"]
            db.unlink(missing_ok=True)
    sizes = list(plan.memory_sizes)
    mb = {r: peaks[r] / 1024 for r in sizes}
    growth = mb[sizes[-1]] - mb[sizes[0]]
    jsonl_mb = sizes[-1] * (plan.memory_chars + 400) / 1e6
    peaks_text = ", ".join(f"{r}: {mb[r]:.0f} MB" for r in sizes)
    print(f"memory one batch of ~{plan.memory_chars} B requests (engine process, emulator "
          f"separate): peak RSS {peaks_text}; after imports {starts[sizes[-1]] / 1024:.0f} MB; "
          f"growth {growth:+.0f} MB from {sizes[0]} to {sizes[-1]} requests "
          f"(JSONL ~{jsonl_mb:.0f} MB)")
    return {"peak_mb": mb[sizes[-1]], "growth_mb": growth, "largest": sizes[-1]}


# -- main --------------------------------------------------------------------------------------


def reachable(dsn: str) -> bool:
    """Whether a plain pyodbc connection works."""
    try:
        pyodbc.connect(dsn, timeout=3).close()
    except pyodbc.Error:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and print the figures, ending with a one-line summary."""
    parser = argparse.ArgumentParser(
        description="Benchmark the pipeline: throughput, concurrency, memory, stage profile."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, SQLite only (tests)")
    parser.add_argument("--rows", type=int, default=None, help="throughput rows per database")
    parser.add_argument("--only", default=None,
                        help="databases for throughput (default sqlite,postgresql)")
    parser.add_argument("--parts", default="throughput,concurrency,memory",
                        help="which parts to run (comma-separated)")
    parser.add_argument("--memory-child", nargs=4, metavar=("DB", "ROWS", "URL", "SPOOL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        db, rows, url, spool = args.memory_child
        asyncio.run(memory_child(db, int(rows), url, spool))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = PLANS[mode]
    if args.rows:
        plan = Plan(args.rows, *list(plan.__dict__.values())[1:])
    dialects = (args.only or ("sqlite" if args.smoke else "sqlite,postgresql")).split(",")
    parts = {p.strip() for p in args.parts.split(",")}
    print(f"bench {mode}: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{plan.rows} rows x {plan.text_chars} chars")
    summary: list[str] = []
    goals = {"sqlite": 2 / 3, "postgresql": 2.0, "mysql": 1.0}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "throughput" in parts:
            for dialect in [d.strip() for d in dialects if d.strip()]:
                dsn = (f"Driver=SQLite3;Database={tmp / 'throughput.db'}"
                       if dialect == "sqlite" else DSNS[dialect])
                if not reachable(dsn):
                    print(f"throughput {dialect}: skipped, not reachable")
                    summary.append(f"{dialect} skipped")
                    continue
                found = asyncio.run(throughput(dialect, dsn, plan, tmp))
                summary.append(
                    f"{dialect} x{found['ratio']:.2f} of raw (goal >={goals[dialect]:.2f})"
                )
        if "concurrency" in parts:
            both = concurrency(plan, tmp)
            summary.append(
                f"concurrency x{both['out']['ratio']:.1f} (emulator separate; "
                f"in-process x{both['in']['ratio']:.1f}; goal >=8)"
            )
        if "memory" in parts:
            found = memory(plan, tmp)
            summary.append(
                f"memory {found['peak_mb']:.0f} MB at {found['largest']} "
                f"(goal <=200), growth {found['growth_mb']:+.0f} MB"
            )
    print(f"summary {mode}: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
