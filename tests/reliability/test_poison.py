"""No poison (guarantee 8): one bad line fails its row only; a batch that keeps failing to
apply is quarantined with its reason and the rest of the job goes on.

- Through the command line: the emulator answers some rows with JSON content nested 10,000
  deep (before, RecursionError: exit 1 on every run, for every worker adopting the batch).
  The run exits 0, every other row is done, those rows are retried and end dead with the
  reason.
- Lines built every other bad way (huge numbers, invalid UTF-8, not an object, a custom_id
  that is not ours) fail their own row and never raise out of the parser.
- A batch whose apply raises every time is counted in the database, quarantined after
  writer.APPLY_FAILURES_TO_QUARANTINE tries, named at the end of the run and released by
  ``Store.release_batch`` (the ``release`` command); the other batches are applied.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import ApiSettings, EngineSettings
from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.engine import ADOPT_STATES, Engine
from engine.results import Failure, MalformedLineError, ResultParser
from engine.store import BatchRecord, Store
from engine.writer import APPLY_FAILURES_TO_QUARANTINE, Writer
from tests.integration.helpers import fetch, make_job
from tests.reliability import harness
from tests.reliability.cli import cli, write_job
from tests.support import DbTarget

ROWS = 30
POISONED = (4, 17, 23)  # 1-based ids whose answer is nested 10,000 deep
KEY = "sk-poison-0123456789"


def _texts() -> list[str | None]:
    return [
        f"row {i} name=Person{i} tags=a,b" + (" POISON" if i + 1 in POISONED else "")
        for i in range(ROWS)
    ]


async def test_deep_answer_fails_its_rows_only_through_the_cli(
    db: DbTarget, tmp_path: Path
) -> None:
    faults = FaultConfig(deep_answer_marker="POISON", deep_answer_depth=10_000)
    async with Emulator(EmulatorConfig(seed=91, faults=faults)) as emu:
        try:
            await harness.prepare(db, _texts())
            job = write_job(tmp_path / "job", db)
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url}
            result = await cli("run", "--job", str(job), "--until-idle", env=env)
            assert result.code == 0, result.stderr[-3000:]
            assert "RecursionError" not in result.stderr
            figures = harness.measure(db, emu, 0)
            assert figures.problems() == [], figures
            assert (figures.done, figures.dead) == (ROWS - len(POISONED), len(POISONED))
            dead = fetch(db.dsn, f"SELECT source_key, attempts, last_error FROM {db.prefix}items "
                         "WHERE job = ? AND state = 'dead' ORDER BY source_key", "t")
            assert sorted(int(k) for k, _, _ in dead) == sorted(POISONED)
            for _key, attempts, reason in dead:
                assert attempts == 3, dead  # retried, one attempt used per answer
                assert "nested too deep" in reason, reason
        finally:
            harness.cleanup(db)


def _line(custom_id: Any, content: str | bytes) -> bytes:
    """An output line around raw content bytes (which may be anything)."""
    body = {"choices": [{"message": {"content": "@C@"}, "finish_reason": "stop"}]}
    raw = orjson.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": body}})
    text = content.encode() if isinstance(content, str) else content
    return raw.replace(b'"@C@"', b'"' + text.replace(b'"', b'\\"') + b'"')


@pytest.mark.parametrize(
    "line",
    [
        _line("t|0|1", "[" * 10_000 + "]" * 10_000),
        _line("t|0|1", '{"name": "a", "tags": [], "score": ' + "9" * 5000 + "}"),
        _line("t|0|1", '{"name": "a", "tags": [], "score": 1e999999}'),
        _line("t|0|1", b'{"name": "\xff\xfe", "tags": [], "score": 1}'),
        b"[" * 10_000 + b"]" * 10_000,
        b'"just a string"',
        b"\xff\xfe not utf-8 at all",
        b'{"custom_id": 12, "response": null}',
        _line("other|0|1", "{}"),
        _line("t|x|1", "{}"),
    ],
    ids=["deep-content", "huge-int", "huge-float", "invalid-utf8-content", "deep-line",
         "not-object", "invalid-utf8-line", "custom-id-not-text", "other-job", "bad-id"],
)
def test_any_line_fails_alone(line: bytes) -> None:
    parser = ResultParser(make_job("src"))
    try:
        outcome: object = parser.parse_line(line)
    except MalformedLineError:  # "not ours": the writer skips it and retries its row
        return
    if isinstance(outcome, Failure):
        assert outcome.disposition in ("retry", "dead")
        assert outcome.reason


async def test_failing_batch_is_quarantined_and_the_job_goes_on(
    db: DbTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"dsn": db.dsn, "prefix": db.prefix}
    settings = replace(EngineSettings(), **harness.fast(tmp_path / "spool", max_in_flight=2))
    real_apply = Writer._apply_file
    poisoned: list[str] = []
    tries: list[str] = []

    async def explode(self: Writer, record: Any, *args: Any) -> None:
        if not poisoned:
            poisoned.append(record.id)
        if record.id == poisoned[0]:
            tries.append(record.id)
            raise KeyError("a bug that only this batch's data reaches")
        await real_apply(self, record, *args)

    monkeypatch.setattr(Writer, "_apply_file", explode)
    async with Emulator(EmulatorConfig(seed=92)) as emu:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            api = ApiSettings(api_key=KEY, base_url=emu.base_url, timeout_s=30)
            async with Engine(harness.job_for(spec), store=harness.store_settings(spec),
                              api=api, settings=settings) as engine:
                summary = await engine.run(until_idle=True)
                held = await engine.store.list_batches("t", states=["quarantined"])
            assert len(tries) == APPLY_FAILURES_TO_QUARANTINE
            assert [b.id for b in held] == poisoned
            assert "apply failed 3 times: KeyError" in (held[0].error or ""), held[0].error
            assert summary.counts["done"] == ROWS - 10
            assert summary.counts["submitted"] == 10  # held with their batch, not re-sent

            monkeypatch.setattr(Writer, "_apply_file", real_apply)
            store = await Store.open(harness.store_settings(spec))
            try:
                assert (await store.release_batch(poisoned[0])).state == "finished"
            finally:
                await store.close()
            async with Engine(harness.job_for(spec), store=harness.store_settings(spec),
                              api=api, settings=settings) as engine:
                await engine.run(until_idle=True)
            figures = harness.measure(db, emu, 1)
            assert figures.problems() == [], figures
            assert figures.done == ROWS
        finally:
            harness.cleanup(db)


async def test_apply_failures_are_counted_in_the_database(db: DbTarget) -> None:
    # Each Store stands for another process or worker: the count survives and is shared.
    spec = {"dsn": db.dsn, "prefix": db.prefix}
    job = harness.job_for(spec)
    record = BatchRecord(id="b-poison", job="t", state="draft", model=job.model,
                         endpoint=job.endpoint, worker_id="w1")
    try:
        await harness.prepare(db, harness.texts(3))
        for worker, expected in (("w1", 1), ("w2", 2), ("w3", 3)):
            store = await Store.open(harness.store_settings(spec))
            try:
                if worker == "w1":
                    await store.create_draft(record, [], 0)  # lease over: anyone adopts
                    await store.update_batch(record.id, state="finished")
                assert await store.note_apply_failure(record.id, "KeyError: x", 3) == expected
                found = await store.get_batch(record.id)
                assert found is not None
                assert found.state == ("quarantined" if expected == 3 else "finished")
                assert f"apply failed {expected} times: KeyError: x" in (found.error or "")
                adopted = await store.adopt_batches(job, worker, 0, ADOPT_STATES)
                assert [a.record.id for a in adopted] == ([] if expected == 3 else [record.id])
            finally:
                await store.close()
        store = await Store.open(harness.store_settings(spec))
        try:
            released = await store.release_batch(record.id)
            assert (released.state, released.error) == ("finished", None)
            adopted = await store.adopt_batches(job, "w4", 60, ADOPT_STATES)
            assert [a.record.id for a in adopted] == [record.id]
            assert await store.note_apply_failure(record.id, "again", 3) == 1  # count cleared
        finally:
            await store.close()
    finally:
        harness.cleanup(db)
