"""Shared by the reliability tests and scripts/chaos.py: set-up, worker processes, the figures.

"Applied once" is proven by a trigger on the source table that logs every UPDATE that leaves
``processed`` set; it runs inside the engine's apply transaction, so a rolled-back apply
leaves no log row and a repeated apply leaves two. "Never in two live batches" is checked per
source key (not per custom_id, which changes with the attempt) over the emulator's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import ApiSettings
from engine.batch_api import BatchApi
from engine.emulator import Emulator
from engine.store import Store
from tests.integration.helpers import TYPES, connect, drop, fetch, make_source
from tests.reliability.worker import job_for, store_settings
from tests.support import DbTarget

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass
class Figures:
    """What a run came to; every guarantee is one number that must be zero."""

    rows: int
    done: int
    dead: int
    lost: int  # rows neither done nor dead, or done without their result in the source row
    double_applied: int  # rows whose result reached the source table more than once
    duplicate_live: int  # source keys that were in two live remote batches at once
    restarts: int
    dead_without_reason: int = 0
    dead_but_applied: int = 0
    double_billed: int = 0  # request lines (same custom_id) processed by two completed batches

    def line(self) -> str:
        """The figure line scripts/chaos.py prints last."""
        return (
            f"rows={self.rows} done={self.done} dead={self.dead} lost={self.lost} "
            f"double_applied={self.double_applied} duplicate_live={self.duplicate_live} "
            f"restarts={self.restarts}"
        )

    def problems(self) -> list[str]:
        """Every broken guarantee, in words (empty when all hold)."""
        found = []
        for name in ("lost", "double_applied", "duplicate_live", "dead_without_reason",
                     "dead_but_applied", "double_billed"):
            if getattr(self, name):
                found.append(f"{name}={getattr(self, name)}")
        if self.done + self.dead != self.rows:
            found.append(f"done+dead={self.done + self.dead} != rows={self.rows}")
        return found


def spec_for(target: DbTarget, emu: Emulator, **extra: Any) -> dict[str, Any]:
    """A worker spec over the target's prefixed tables and the emulator."""
    spec: dict[str, Any] = {
        "dsn": target.dsn,
        "prefix": target.prefix,
        "base_url": emu.base_url,
        "settings": {},
    }
    spec.update(extra)
    return spec


def fast(spool_dir: Path, **overrides: Any) -> dict[str, Any]:
    """EngineSettings overrides with time removed (a 1.5 s lease so peers adopt quickly)."""
    settings: dict[str, Any] = {
        "batch_size": 10,
        "max_in_flight": 3,
        "min_check_interval_s": 0.005,
        "check_interval_s": 0.05,
        "lease_s": 1.5,
        "max_attempts": 3,
        "spool_dir": str(spool_dir),
        "shutdown_grace_period_s": 5,
        "token_limit_backoff_s": 0.05,
    }
    settings.update(overrides)
    return settings


@asynccontextmanager
async def fast_api(emu: Emulator) -> AsyncIterator[BatchApi]:
    """A BatchApi whose retries wait milliseconds, not seconds (Retry-After still rules)."""
    settings = ApiSettings(api_key="sk-test-faults", base_url=emu.base_url, timeout_s=10)
    async with BatchApi(settings, retry_initial_s=0.01, retry_max_s=0.05) as api:
        yield api


# -- database set-up ----------------------------------------------------------------------


def _log_table(target: DbTarget) -> str:
    return f"{target.prefix}applied"


def install_apply_log(
    target: DbTarget, key_type: str = "int", key_sql: str | None = None
) -> None:
    """Create the log table and the trigger that logs each apply to the source table.

    ``key_sql`` gives the log's key column the source key's own type (DECIMAL(38,0), a
    collation) so every key is logged exactly.
    """
    src, log = f"{target.prefix}src", _log_table(target)
    kind = key_sql or TYPES[target.dialect]["int" if key_type == "int" else "short"]
    trigger = f"{target.prefix}trg"
    conn = connect(target.dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {log} (id {kind} NOT NULL)")
        if target.dialect == "sqlite":
            cur.execute(
                f"CREATE TRIGGER {trigger} AFTER UPDATE OF processed ON {src} FOR EACH ROW "
                f"WHEN NEW.processed IS NOT NULL BEGIN INSERT INTO {log} (id) VALUES (NEW.id); END"
            )
        elif target.dialect == "postgresql":
            cur.execute(
                f"CREATE FUNCTION {trigger}_fn() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN INSERT INTO {log} (id) VALUES (NEW.id); RETURN NEW; END $$"
            )
            cur.execute(
                f"CREATE TRIGGER {trigger} AFTER UPDATE ON {src} FOR EACH ROW "
                f"WHEN (NEW.processed IS NOT NULL) EXECUTE FUNCTION {trigger}_fn()"
            )
        else:
            cur.execute(
                f"CREATE TRIGGER {trigger} AFTER UPDATE ON {src} FOR EACH ROW "
                f"INSERT INTO {log} (id) SELECT NEW.id FROM DUAL WHERE NEW.processed IS NOT NULL"
            )
    finally:
        conn.close()


async def prepare(target: DbTarget, texts: list[str | None]) -> None:
    """Create the source table, the engine's tables and the apply log."""
    cleanup(target)
    make_source(target.dialect, target.dsn, f"{target.prefix}src", texts)
    store = await Store.open(store_settings({"dsn": target.dsn, "prefix": target.prefix}))
    try:
        await store.init_db()
    finally:
        await store.close()
    install_apply_log(target)


def cleanup(target: DbTarget) -> None:
    """Drop every table (and the trigger function) a scenario created on a server database."""
    if target.dialect == "sqlite":
        return
    p = target.prefix
    drop(target.dsn, f"{p}src", f"{p}items", f"{p}batches", f"{p}meta", f"{p}meta_jobs",
         f"{p}applied", f"{p}items_workers")
    if target.dialect == "postgresql":
        conn = connect(target.dsn)
        try:
            conn.cursor().execute(f"DROP FUNCTION IF EXISTS {p}trg_fn()")
        finally:
            conn.close()


# -- worker processes ---------------------------------------------------------------------


@dataclass
class Exit:
    """How one worker process ended."""

    code: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        """True when SIGKILL ended it."""
        return self.code == -signal.SIGKILL


async def start_worker(
    spec: dict[str, Any], *, crash_at: str | None = None, crash_after: int = 1,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start tests/reliability/worker.py as a subprocess (crashing at a point when asked)."""
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("ENGINE_CRASH", "ENGINE_STOP"))}
    child_env.update(env or {})
    if crash_at is not None:
        child_env["ENGINE_CRASH_AT"] = crash_at
        child_env["ENGINE_CRASH_AFTER"] = str(crash_after)
    return await asyncio.create_subprocess_exec(
        PYTHON, "-m", "tests.reliability.worker", json.dumps(spec),
        cwd=str(REPO), env=child_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout_s: float = 90) -> Exit:
    """Wait for a worker (killing it after timeout_s) and collect its output."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"worker hung for {timeout_s}s; stderr:\n{err.decode()[-3000:]}"
        ) from None
    assert proc.returncode is not None
    return Exit(proc.returncode, out.decode(), err.decode())


async def run_worker(spec: dict[str, Any], **kw: Any) -> Exit:
    """Run one worker to its end."""
    return await finish(await start_worker(spec, **kw))


async def kill_after(proc: asyncio.subprocess.Process, delay_s: float) -> Exit:
    """SIGKILL a worker after delay_s unless it ended first."""
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), delay_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return await finish(proc)


def unresolved(target: DbTarget, rows: int) -> int:
    """Source rows whose item is not done or dead yet."""
    got = fetch(
        target.dsn,
        f"SELECT COUNT(*) FROM {target.prefix}items WHERE job = ? AND state IN ('done', 'dead')",
        "t",
    )
    return rows - int(got[0][0])


async def run_until_resolved(
    target: DbTarget, spec: dict[str, Any], rows: int, *, max_rounds: int = 8,
    env: dict[str, str] | None = None,
) -> int:
    """Restart workers until every row is done or dead; return how many runs it took.

    A run that exits 0 while rows remain is waiting on a dead peer's lease: the next run
    (after the lease) adopts it.
    """
    lease_s = float(spec["settings"].get("lease_s", 1.5))
    for round_no in range(1, max_rounds + 1):
        result = await run_worker(spec, env=env)
        if result.code != 0:
            raise AssertionError(f"restart {round_no} failed ({result.code}):\n"
                                 f"{result.stderr[-3000:]}")
        if unresolved(target, rows) == 0:
            return round_no
        await asyncio.sleep(lease_s)  # a dead worker's lease must run out before adoption
    raise AssertionError(f"{unresolved(target, rows)} rows unresolved after {max_rounds} runs")


async def wait_for_submitted(target: DbTarget, batches: int, timeout_s: float = 60) -> None:
    """Wait until this many batches of the job are live remotely (state submitted)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = fetch(target.dsn, f"SELECT COUNT(*) FROM {target.prefix}batches "
                     "WHERE state = 'submitted'")
        if int(rows[0][0]) >= batches:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {batches} batches were submitted in {timeout_s}s")


# -- the figures ----------------------------------------------------------------------------


def duplicate_live_keys(emu: Emulator) -> set[str]:
    """Source keys that were in two remote batches whose live intervals overlapped."""
    batches = [
        (b.live_interval(), {cid.split("|", 2)[2] for cid in b.custom_ids})
        for b in emu.record.batches.values()
    ]
    found: set[str] = set()
    for i, ((a0, a1), keys_a) in enumerate(batches):
        for (b0, b1), keys_b in batches[i + 1:]:
            if a0 < b1 and b0 < a1 and not (math.isinf(a0) or math.isinf(b0)):
                found |= keys_a & keys_b
    return found


def double_billed(emu: Emulator) -> set[str]:
    """custom_ids processed (so billed) by more than one completed batch.

    A retried line carries a new attempt number, so the same custom_id twice means one request
    was paid for twice: a batch created again after a crash instead of being re-attached.
    Cancelled and expired batches are left out (their unprocessed lines are not billed, and a
    cancelled line is resent under the same id on purpose).
    """
    seen: Counter[str] = Counter()
    for batch in emu.record.batches.values():
        if batch.status == "completed":
            seen.update(set(batch.custom_ids))
    return {cid for cid, n in seen.items() if n > 1}


def explain_duplicates(target: DbTarget, emu: Emulator, logs: str = "") -> str:
    """Describe the remote batches behind double-billed or doubly-live rows (for a failure)."""
    state = emu._live_state()  # the batches' metadata: a diagnostic, not part of the check
    by_local: dict[str, list[str]] = {}
    for batch in emu.record.batches.values():
        local = (state.batches[batch.id].metadata or {}).get("engine_batch", "?")
        by_local.setdefault(local, []).append(
            f"{batch.id} {batch.status} {[(h.status, round(h.mono, 2)) for h in batch.history]}"
        )
    lines = []
    for local, remotes in by_local.items():
        if len(remotes) > 1:
            rows = fetch(target.dsn, f"SELECT state, worker_id, remote_batch_id, error FROM "
                         f"{target.prefix}batches WHERE id = ?", local)
            lines.append(f"local {local} {rows}: " + " | ".join(remotes))
            lines.extend(line for line in logs.splitlines() if local in line)
    return "\n".join(lines[:60])


def measure(target: DbTarget, emu: Emulator, restarts: int) -> Figures:
    """Read the items, the source table and the apply log; count every broken guarantee."""
    p = target.prefix
    source = {str(k): v for k, v in fetch(target.dsn, f"SELECT id, processed FROM {p}src")}
    items = {
        str(k): (str(s), e)
        for k, s, e in fetch(
            target.dsn, f"SELECT source_key, state, last_error FROM {p}items WHERE job = ?", "t"
        )
    }
    applied = Counter(str(r[0]) for r in fetch(target.dsn, f"SELECT id FROM {p}applied"))
    done = [k for k in source if items.get(k, ("", None))[0] == "done"]
    dead = [k for k in source if items.get(k, ("", None))[0] == "dead"]
    unresolved_rows = len(source) - len(done) - len(dead)
    done_missing = sum(1 for k in done if applied[k] == 0 or source[k] is None)
    return Figures(
        rows=len(source),
        done=len(done),
        dead=len(dead),
        lost=unresolved_rows + done_missing,
        double_applied=sum(1 for n in applied.values() if n > 1),
        duplicate_live=len(duplicate_live_keys(emu)),
        restarts=restarts,
        dead_without_reason=sum(1 for k in dead if not (items[k][1] or "").strip()),
        dead_but_applied=sum(1 for k in dead if applied[k] > 0),
        double_billed=len(double_billed(emu)),
    )


def texts(rows: int) -> list[str | None]:
    """Plain source texts."""
    return [f"row {i} name=Person{i} tags=a,b" for i in range(rows)]


__all__ = [
    "Exit",
    "Figures",
    "cleanup",
    "double_billed",
    "duplicate_live_keys",
    "fast",
    "fast_api",
    "finish",
    "install_apply_log",
    "job_for",
    "kill_after",
    "measure",
    "prepare",
    "run_until_resolved",
    "run_worker",
    "spec_for",
    "start_worker",
    "texts",
    "unresolved",
    "wait_for_submitted",
]
