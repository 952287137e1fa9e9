"""Operator features end to end: dry run, cost ceiling, progress, metrics, status and logs.

Library-level tests use the in-process Emulator; where the process matters (exit codes, what
reaches stdout and stderr, the emulator in another process) the CLI runs as a subprocess
against ``python -m engine emulator``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.emulator import Emulator, EmulatorConfig
from engine.engine import Engine, EngineEvent, estimate_batch_cost
from engine.metrics import Metrics
from engine.progress import Progress, take_snapshot
from engine.resumes_data import fill_database
from tests.integration.helpers import api_for, cleanup, fast_settings, fetch, prepared
from tests.support import DbTarget

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-operator-SECRETKEY-1234567890"
DB_PASSWORD = "hunter2-db-secret"


def _texts(n: int) -> list[str | None]:
    """Texts of equal length, so every batch of the same size has the same estimate."""
    return [f"row {i:04d} name=Person{i:04d} tags=a,b" for i in range(n)]


# -- dry run -------------------------------------------------------------------------------------


async def test_dry_run_writes_the_first_file_and_submits_nothing(
    db: DbTarget, tmp_path: Path
) -> None:
    texts = [*_texts(23), None, ""]  # two rows that would be dead at once
    job, store_settings = await prepared(db, texts)
    try:
        async with Emulator(EmulatorConfig(seed=4)) as emu:
            settings = fast_settings(tmp_path, batch_size=10)
            async with Engine(job, store=store_settings, api=api_for(emu),
                              settings=settings) as engine:
                report = await engine.dry_run()
                counts = await engine.store.counts(job.name)
                assert emu.record.batches == {}  # nothing created
                assert report.first_batch_path is not None
                # Read before the run: a run removes the last dry run's file (personal data).
                lines = Path(report.first_batch_path).read_bytes().splitlines()
                summary = await engine.run(until_idle=True)  # every claim was given back
                assert not Path(report.first_batch_path).exists()
        assert report.rows_pending == 25
        assert report.requests == 23
        assert report.rejected == 2
        assert report.batches == 3
        assert report.first_batch_requests == 10
        assert report.input_tokens > 0
        assert report.cost_max_usd > report.cost_input_usd > 0
        assert report.cost_input_standard_usd == pytest.approx(report.cost_input_usd * 2)
        assert len(lines) == 10
        assert all(orjson.loads(line)["method"] == "POST" for line in lines)
        assert counts["pending"] == 25
        assert counts["claimed"] == 0
        assert counts["dead"] == 0
        assert summary.counts["done"] == 23
    finally:
        cleanup(db)


# -- cost ceiling --------------------------------------------------------------------------------


async def test_max_cost_usd_stops_submission_and_says_so(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    job, store_settings = await prepared(sqlite_db, _texts(50))
    events: list[EngineEvent] = []
    # Batches stay in progress while the drafts are admitted: spend is the estimates alone.
    async with Emulator(EmulatorConfig(seed=6, latency_s=1.0)) as emu:
        settings = fast_settings(tmp_path, batch_size=10, max_in_flight=5)
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings,
                          on_event=events.append) as engine:
            report = await engine.dry_run()
            per_batch = estimate_batch_cost(job, job.model, report.input_tokens // 5, 10,
                                            report.output_tokens_per_request)
            ceiling = per_batch * 2.5
            summary = await engine.run(until_idle=True, max_cost_usd=ceiling)
            batches = await engine.store.list_batches(job.name, limit=100)
        created = len(emu.record.batches)
    assert summary.cost_ceiling is not None
    assert "max_cost_usd" in summary.cost_ceiling
    assert 2 <= created < 5, created  # without the ceiling all 5 would go
    assert summary.batches_submitted == created
    assert summary.counts["done"] == created * 10
    assert summary.counts["pending"] == 50 - created * 10
    assert summary.counts["claimed"] == summary.counts["submitted"] == 0
    assert sum(b.cost_usd for b in batches if b.state == "applied") <= ceiling
    assert 0 < summary.cost_usd <= ceiling
    refused = [e for e in events if e.kind == "error" and e.state == "cost_ceiling"]
    assert refused
    assert all(e.batch_id for e in refused)
    abandoned = [b for b in batches if b.state == "abandoned"]
    assert abandoned
    assert all("cost ceiling" in (b.error or "") for b in abandoned)
    # No attempt was used on the rows given back: a later run sends them as first attempts.
    attempts = fetch(sqlite_db.dsn, f"SELECT MAX(attempts) FROM {sqlite_db.prefix}items "
                     "WHERE state = 'pending'")
    assert attempts[0][0] == 0


async def test_zero_ceiling_submits_nothing(sqlite_db: DbTarget, tmp_path: Path) -> None:
    job, store_settings = await prepared(sqlite_db, _texts(15))
    async with Emulator(EmulatorConfig(seed=6)) as emu:
        async with Engine(job, store=store_settings, api=api_for(emu),
                          settings=fast_settings(tmp_path)) as engine:
            summary = await engine.run(num_batches=3, max_cost_usd=0.0)
        assert emu.record.batches == {}
    assert summary.cost_ceiling is not None
    assert summary.counts["pending"] == 15


# -- progress and metrics ------------------------------------------------------------------------


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_progress_plain_lines_and_rich_display(
    sqlite_db: DbTarget, tmp_path: Path, restore_root: None
) -> None:
    job, store_settings = await prepared(sqlite_db, _texts(20))
    lines: list[str] = []
    emu = Emulator(EmulatorConfig(seed=2))
    async with emu, Engine(job, store=store_settings, api=api_for(emu),
                           settings=fast_settings(tmp_path)) as engine:
        plain = Progress(job, engine.store, mode="auto", stream=io.StringIO(),
                         interval_s=0.01, say=lines.append)
        assert plain.mode == "plain"  # a StringIO is not a terminal
        engine.add_listener(plain.on_event)
        async with plain:
            await engine.run(until_idle=True)
    assert lines[-1].startswith("progress: job t: rows pending=0 claimed=0 submitted=0 done=20")
    assert "eta 0s" in lines[-1]
    assert plain.rows_applied == 20
    assert any("applied" in text for text in plain.recent)

    screen = io.StringIO()
    before = logging.getLogger().handlers[:]
    async with Engine(job, store=store_settings, api=api_for(emu),
                      settings=fast_settings(tmp_path)) as engine:
        rich = Progress(job, engine.store, mode="rich", stream=screen, interval_s=0.01)
        async with rich:
            assert type(logging.getLogger().handlers[0]).__name__ == "RichHandler"
            logging.getLogger("engine.test").warning("shown above the display")
    assert logging.getLogger().handlers == before  # logging restored
    out = screen.getvalue()
    for word in ("pending", "applied", "without discount", "shown above the display"):
        assert word in out


async def test_metrics_endpoint_serves_every_series(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    job, store_settings = await prepared(sqlite_db, [*_texts(20), None])
    metrics = Metrics(job.name)
    port = metrics.serve(0)
    try:
        assert metrics._server is not None
        assert metrics._server.server_address[0] == "127.0.0.1"
        emu = Emulator(EmulatorConfig(seed=2))
        async with emu, Engine(job, store=store_settings, api=api_for(emu),
                               settings=fast_settings(tmp_path)) as engine:
            metrics.instrument(engine.api)
            engine.add_listener(metrics.on_event)
            await engine.run(until_idle=True)
            metrics.update(await take_snapshot(engine.store, job))
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    finally:
        metrics.close()
    text = body.decode()
    for series in (
        'engine_rows{job="t",state="done"} 20.0',
        'engine_rows{job="t",state="dead"} 1.0',
        'engine_batches{job="t",state="applied"} 2.0',
        'engine_tokens{job="t",kind="input"}',
        'engine_cost_usd{job="t",pricing="batch"}',
        'engine_cost_usd{job="t",pricing="standard"}',
        'engine_batch_transitions_total{job="t",state="applied"} 2.0',
        'engine_row_events_total{job="t",kind="dead"} 1.0',
        'engine_api_call_seconds_count{call="create_batch"} 2.0',
        'engine_api_call_seconds_bucket{call="retrieve_batch",le="+Inf"}',
    ):
        assert series in text, series


# -- the command line in subprocesses ----------------------------------------------------------


@pytest.fixture
def emulator_process() -> Iterator[str]:
    """``python -m engine emulator`` in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulator", "--port", "0", "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if line.startswith("EMULATOR_URL="):
                url = line.strip().split("=", 1)[1]
                break
        assert url, "the emulator did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _remote_batches(url: str) -> list[Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/_emulator/record", timeout=10) as r:
        record = json.loads(r.read())
    batches: Any = record["batches"]
    return list(batches.values() if isinstance(batches, dict) else batches)


def _cli(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "OPENAI_"))}
    env.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=90,
        env=env, cwd=cwd, check=False,
    )


@pytest.fixture
def resumes_db(tmp_path: Path) -> str:
    """An SQLite file with 30 synthetic resumes for the bundled job; returns its DSN."""
    dsn = f"Driver=SQLite3;Database={tmp_path / 'r.db'};Pwd={DB_PASSWORD}"
    fill_database(dsn, 30, seed=3)
    return dsn


def test_cli_dry_run_leaves_the_emulator_without_batches(
    emulator_process: str, resumes_db: str, tmp_path: Path
) -> None:
    result = _cli(emulator_process, tmp_path, "run", "--dsn", resumes_db, "--dry-run",
                  "--batch-size", "12")
    assert result.returncode == 0, result.stderr
    assert "nothing was submitted" in result.stdout
    assert "rows pending:       30" in result.stdout
    assert "30 in 3 batches" in result.stdout
    spool = tmp_path / "spool" / "resumes-dry-run.input.jsonl"
    assert len(spool.read_bytes().splitlines()) == 12
    assert spool.stat().st_mode & 0o777 == 0o600  # the rows' text: the owner's alone
    assert _remote_batches(emulator_process) == []


def test_cli_run_with_ceiling_status_check_and_json_logs(
    emulator_process: str, resumes_db: str, tmp_path: Path
) -> None:
    # A zero ceiling: nothing may be submitted, and the run says why.
    capped = _cli(emulator_process, tmp_path, "run", "--dsn", resumes_db, "--until-idle",
                  "--max-cost-usd", "0", "--check-interval", "0.05")
    assert capped.returncode == 0, capped.stderr
    assert "stopped submitting at the cost ceiling" in capped.stdout
    assert "cost ceiling" in capped.stderr  # the warning log line
    assert _remote_batches(emulator_process) == []

    run = _cli(emulator_process, tmp_path, "-v", "run", "--dsn", resumes_db, "--until-idle",
               "--batch-size", "15", "--check-interval", "0.05", "--log-format", "json",
               "--progress", "plain")
    assert run.returncode == 0, run.stderr
    assert "done=30" in run.stdout
    records = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert records, run.stderr
    changes = [r for r in records if r["logger"] == "engine.pipeline" and "batch_id" in r]
    assert {r["message"].split(": ")[-1] for r in changes} >= {"submitted/validating",
                                                               "applied/completed"}
    assert all(r.get("remote_batch_id") for r in changes if "submitted" in r["message"])
    assert any(r["logger"] == "engine.progress" for r in records)

    status = _cli(emulator_process, tmp_path, "status", "--dsn", resumes_db, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["rows"]["done"] == 30
    assert data["batches_by_state"]["applied"] == 2
    assert data["tokens"]["input"] > 0
    assert data["cost_standard_usd"] == pytest.approx(data["cost_usd"] * 2, rel=1e-3)
    remote = next(b["remote_batch_id"] for b in data["batches"] if b["remote_batch_id"])

    table = _cli(emulator_process, tmp_path, "status", "--dsn", resumes_db)
    assert table.returncode == 0, table.stderr
    for word in ("rows", "done", "cost without batch discount", remote):
        assert word in table.stdout

    check = _cli(emulator_process, tmp_path, "check", remote, "--dsn", resumes_db, "--json")
    assert check.returncode == 0, check.stderr
    detail = json.loads(check.stdout)
    assert detail["remote_batch_id"] == remote
    assert detail["state"] == "applied"
    assert detail["cost_standard_usd"] == pytest.approx(detail["cost_usd"] * 2, rel=1e-3)
    human = _cli(emulator_process, tmp_path, "check", remote, "--dsn", resumes_db)
    assert "cost without the batch discount" in human.stdout

    everything = "".join(p.stdout + p.stderr for p in (capped, run, status, table, check, human))
    assert KEY not in everything
    assert DB_PASSWORD not in everything


async def test_ceiling_without_a_price_is_refused(sqlite_db: DbTarget, tmp_path: Path) -> None:
    from dataclasses import replace

    from engine import ConfigError

    job, store_settings = await prepared(sqlite_db, _texts(3))
    unpriced = replace(job, model="operator-test-unpriced-model")
    async with Emulator(EmulatorConfig()) as emu, Engine(
        unpriced, store=store_settings, api=api_for(emu), settings=fast_settings(tmp_path)
    ) as engine:
        with pytest.raises(ConfigError, match="no price known"):
            await engine.run(until_idle=True, max_cost_usd=1.0)
        assert emu.record.batches == {}
