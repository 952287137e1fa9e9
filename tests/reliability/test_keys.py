"""One key, one row, nobody else's data; keys round-trip exactly; a job is one thing.

Driven through ``python -m engine`` in subprocesses on SQLite, PostgreSQL and MariaDB. Every
case ends with the same three figures: rows lost, rows applied twice (a trigger logs every
write that leaves ``processed`` set, inside the writing transaction), rows answered twice
(request lines per key in the emulator's completed batches); each must be 0 except where
the test itself asked for a second answer (a row reset by hand).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.emulator import Emulator, EmulatorConfig
from engine.store import ApplyRow, BatchRecord, Store
from tests.integration.helpers import connect_utf8 as connect
from tests.integration.helpers import drop, make_keyed_source
from tests.integration.helpers import fetch_utf8 as fetch
from tests.reliability import harness
from tests.reliability.cli import CliResult, cli, write_job
from tests.support import DbTarget

KEY = "sk-keys-test-0123456789"
LONG_A = "x" * 249 + "a"  # 250 characters: a custom_id of job|attempt|key would not fit
LONG_B = "x" * 249 + "b"  # differs from LONG_A only in its last character
TEXT_KEYS = ["Case", "CASE", "pad", "pad ", "resume", "résumé", "a|b#c", "#1", LONG_A, LONG_B]
# The key column as each database holds text keys exactly (binary, NO PAD).
EXACT_TEXT = {
    "sqlite": "TEXT",
    "postgresql": "VARCHAR(300)",
    "mysql": "VARCHAR(300) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin",
}
# MariaDB's usual key column: case- and accent-insensitive, PAD SPACE.
MARIADB_CI = "VARCHAR(300) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
BIG_INT = {"postgresql": "NUMERIC(38,0)", "mysql": "DECIMAL(38,0)", "sqlite": "INTEGER"}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=83, api_key=KEY)) as emulator:
        yield emulator


def _env(emu: Emulator) -> dict[str, str]:
    return {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url}


async def _run(job: Path, emu: Emulator, *extra: str, command: str = "run") -> CliResult:
    args = ["--job", str(job), "--worker-id", "w1", *extra]
    if command == "run":
        args.append("--until-idle")
    return await cli(command, *args, env=_env(emu))


def _source(target: DbTarget, key_sql: str, keys: Sequence[Any], *, unique: bool = True
            ) -> None:
    """The source table with these keys (a row text naming each) and the apply log."""
    harness.cleanup(target)
    rows = [(key, f"row {i} name=Person{i} tags=a,b") for i, key in enumerate(keys)]
    make_keyed_source(target.dialect, target.dsn, f"{target.prefix}src", key_sql, rows,
                      unique=unique)
    harness.install_apply_log(target, key_sql=key_sql.replace(" PRIMARY KEY", ""))


def _job(tmp_path: Path, target: DbTarget, key_type: str = "str", **kw: Any) -> Path:
    source = {"key_type": key_type, **kw.pop("source", {})}
    return write_job(tmp_path / kw.pop("dir", "job"), target, source=source,
                     engine={"batch_size": 4, "lease_s": 5}, **kw)


def _answers(emu: Emulator) -> dict[str, str]:
    """The name each output line answered, by custom_id (from the emulator's stored files).

    Oldest file first: a row reset by hand is sent again under the same custom_id, and its
    latest answer is the one its row must hold.
    """
    found: dict[str, str] = {}
    paths = [p for p in emu.storage_dir.iterdir() if p.is_file()]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
        for raw in path.read_bytes().splitlines():
            try:
                line = orjson.loads(raw)
                content = line["response"]["body"]["choices"][0]["message"]["content"]
                found[line["custom_id"]] = orjson.loads(content)["name"]
            except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
                continue
    return found


@dataclass
class KeyFigures:
    """The three figures that must be zero, and what explains a non-zero one."""

    rows: int
    lost: list[str]
    applied_twice: list[str]
    answered_twice: list[str]
    skipped: list[str]

    def problems(self, *, answered_again: Sequence[str] = ()) -> list[str]:
        """Every broken guarantee; ``answered_again`` keys were reset on purpose."""
        out = []
        if self.lost:
            out.append(f"lost {self.lost}")
        again = set(answered_again)
        if [k for k in self.applied_twice if k not in again]:
            out.append(f"applied twice {self.applied_twice}")
        if len(self.answered_twice) != len(again):
            out.append(f"answered twice {self.answered_twice}")
        return out


def figures(target: DbTarget, emu: Emulator, job: str = "t") -> KeyFigures:
    """Rows lost, applied twice and answered twice, checked key by key (exact text)."""
    p = target.prefix
    # As text in the database: the SQLite driver cuts a 64-bit INTEGER fetched as a number.
    as_text = "CAST(id AS CHAR)" if target.dialect == "mysql" else "CAST(id AS TEXT)"
    source = {str(k): (done, name) for k, done, name in
              fetch(target.dsn, f"SELECT {as_text}, processed, out_name FROM {p}src")}
    items = {str(k): (str(s), str(e or ""), cid) for k, s, e, cid in fetch(
        target.dsn, f"SELECT source_key, state, last_error, custom_id FROM {p}items "
        "WHERE job = ?", job)}
    answers = _answers(emu)
    lost, skipped = [], []
    for key, (processed, name) in source.items():
        state, error, cid = items.get(key, ("missing", "", None))
        if state == "done" and error.startswith("skipped:"):
            skipped.append(key)
        elif state != "done" or processed is None or name != answers.get(str(cid)):
            lost.append(key)  # unresolved, dead, or its row does not hold its own answer
    logged = Counter(str(r[0]) for r in fetch(target.dsn, f"SELECT {as_text} FROM {p}applied"))
    lines: Counter[str] = Counter()
    for batch in emu.record.batches.values():
        if batch.status == "completed":
            lines.update(cid.split("|", 2)[2] for cid in batch.custom_ids)
    return KeyFigures(
        rows=len(source), lost=lost,
        applied_twice=sorted(k for k, n in logged.items() if n > 1),
        answered_twice=sorted(k for k, n in lines.items() if n > 1),
        skipped=skipped,
    )


def _count(target: DbTarget, table: str) -> int:
    return int(fetch(target.dsn, f"SELECT COUNT(*) FROM {table}")[0][0])


# -- one key, one row -----------------------------------------------------------------------


async def test_duplicate_keys_are_refused_and_nothing_is_claimed(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    keys = ["k1", "k2", "k1", "k3", "k2"]
    key_sql = MARIADB_CI if db.dialect == "mysql" else EXACT_TEXT[db.dialect]
    if db.dialect == "mysql":
        keys = ["Case", "CASE", "pad", "pad ", "resume", "résumé", "other"]
    try:
        _source(db, key_sql, keys, unique=False)
        job = _job(tmp_path, db)
        doctor = await cli("doctor", "--job", str(job), env=_env(emu))
        assert doctor.code == 3, doctor.stdout + doctor.stderr
        assert "FAIL source key" in doctor.stdout
        assert "not unique" in doctor.stdout
        result = await _run(job, emu)
        assert result.code == 2, result.stderr
        assert "not unique" in result.stderr
        named = ("'Case'", "'pad'", "'resume'") if db.dialect == "mysql" else ("'k1'", "'k2'")
        assert any(n.lower() in result.stderr.lower() for n in named), result.stderr
        assert "3 values" in result.stderr or "2 values" in result.stderr, result.stderr
        assert _count(db, f"{db.prefix}items") == 0
        assert not emu.record.batches
        assert _count(db, f"{db.prefix}applied") == 0
    finally:
        harness.cleanup(db)


async def test_apply_writes_only_where_exactly_one_row_has_the_key(db: DbTarget) -> None:
    """Defence in depth: a duplicate that appears after the start-up check is never written."""
    key_sql = MARIADB_CI if db.dialect == "mysql" else EXACT_TEXT[db.dialect]
    spec = {"dsn": db.dsn, "prefix": db.prefix}
    try:
        _source(db, key_sql, ["Case", "solo"], unique=False)
        job = harness.job_for(spec)
        job = replace(job, source=replace(job.source, key_type="str"))
        async with await Store.open(harness.store_settings(spec)) as store:
            await store.init_db()
            assert await store.key_problems(job) == []
            await store.discover(job)
            claimed = await store.claim(job, "w1", 10, 60)
            record = BatchRecord(id="b1", job=job.name, state="draft", model="m",
                                 endpoint="/v1/chat/completions", worker_id="w1")
            await store.create_draft(
                record, [(c.key, c.claim_token, f"t|0|{c.key}") for c in claimed], 60)
            twin = "CASE" if db.dialect == "mysql" else "Case"
            conn = connect(db.dsn)
            try:
                conn.cursor().execute(f"INSERT INTO {db.prefix}src (id, body) VALUES (?, ?)",
                                      twin, "a second row with the same key")
            finally:
                conn.close()
            outcome = await store.apply_results(job, [
                ApplyRow(c.key, c.claim_token, {"out_name": f"for {c.key}"}) for c in claimed
            ])
        assert outcome.applied == 1
        assert [k for k, _ in outcome.skipped] == ["Case"], outcome
        assert "matches 2 source rows" in outcome.skipped[0][1]
        rows = fetch(db.dsn, f"SELECT id, out_name, processed FROM {db.prefix}src")
        written = {str(k): n for k, n, p in rows if p is not None}
        assert written == {"solo": "for solo"}, rows
        state = fetch(db.dsn, f"SELECT state FROM {db.prefix}items WHERE source_key = ?",
                      "Case")
        assert state == [("dead",)]
    finally:
        harness.cleanup(db)


# -- other writers --------------------------------------------------------------------------


async def test_another_writer_is_never_overwritten(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    """Rows marked processed by hand between claim and apply are skipped and counted."""
    try:
        _source(db, BIG_INT[db.dialect] if db.dialect != "sqlite" else "INTEGER",
                list(range(1, 13)))
        job = _job(tmp_path, db, key_type="int")
        submitted = await _run(job, emu, command="submit")
        assert submitted.code == 0, submitted.stderr
        claimed = sorted(int(str(r[0])) for r in fetch(
            db.dsn, f"SELECT source_key FROM {db.prefix}items WHERE state = 'submitted'"))
        assert claimed, "submit claimed nothing"
        taken = claimed[:2]
        conn = connect(db.dsn)
        try:
            for key in taken:  # another writer finishes these rows its own way
                conn.cursor().execute(
                    f"UPDATE {db.prefix}src SET processed = CURRENT_TIMESTAMP, "
                    f"out_name = 'by hand' WHERE id = ?", key)
        finally:
            conn.close()
        result = await _run(job, emu)
        assert result.code == 0, result.stderr
        assert "not written" in result.stderr, result.stderr[-2000:]
        assert f"run: {len(taken)} results not written" in result.stdout, result.stdout
        names = {int(str(k)): n for k, n in fetch(db.dsn, f"SELECT id, out_name FROM "
                                                  f"{db.prefix}src")}
        assert [names[k] for k in taken] == ["by hand"] * len(taken)
        got = figures(db, emu)
        assert sorted(int(k) for k in got.skipped) == taken, got
        assert got.problems() == [], got
        assert got.rows == 12
    finally:
        harness.cleanup(db)


async def test_a_row_reset_by_hand_is_processed_again(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    try:
        _source(db, "INTEGER" if db.dialect != "mysql" else "INT", list(range(1, 11)))
        job = _job(tmp_path, db, key_type="int")
        first = await _run(job, emu)
        assert first.code == 0, first.stderr
        assert figures(db, emu).problems() == []
        conn = connect(db.dsn)
        try:
            conn.cursor().execute(
                f"UPDATE {db.prefix}src SET processed = NULL, out_name = NULL "
                "WHERE id IN (3, 7)")
        finally:
            conn.close()
        second = await _run(job, emu)
        assert second.code == 0, second.stderr
        got = figures(db, emu)
        assert got.problems(answered_again=["3", "7"]) == [], got
        assert got.applied_twice == ["3", "7"]  # asked for: once per processing, no more
        assert _count(db, f"{db.prefix}applied") == 12
    finally:
        harness.cleanup(db)


# -- keys round-trip exactly ----------------------------------------------------------------


async def test_text_keys_round_trip_in_a_binary_no_pad_column(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    """'Case'/'CASE', 'pad'/'pad ', 'resume'/'résumé', 250 characters: ten rows, ten items."""
    try:
        _source(db, EXACT_TEXT[db.dialect], TEXT_KEYS)
        job = _job(tmp_path, db)
        result = await _run(job, emu)
        assert result.code == 0, result.stderr
        got = figures(db, emu)
        assert got.problems() == [], got
        items = {str(k) for (k,) in fetch(db.dsn, f"SELECT source_key FROM {db.prefix}items")}
        assert items == set(TEXT_KEYS)
        sent = [cid for b in emu.record.batches.values() for cid in b.custom_ids]
        assert len(sent) == len(TEXT_KEYS)
        assert max(map(len, sent)) <= 64
    finally:
        harness.cleanup(db)


async def test_keys_in_a_case_insensitive_pad_space_column(
    server_db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    """A unique key column that ignores case and accents (MariaDB: and trailing spaces)."""
    db = server_db
    key_sql = MARIADB_CI if db.dialect == "mysql" else "VARCHAR(300) COLLATE keys_ci"
    keys = ["Case", "pad ", "résumé", "Ünïcödé", LONG_A]
    if db.dialect == "postgresql":  # a nondeterministic ICU collation: level 1 ignores both
        conn = connect(db.dsn)
        try:
            conn.cursor().execute(
                "CREATE COLLATION IF NOT EXISTS keys_ci (provider = icu, "
                "locale = 'und-u-ks-level1', deterministic = false)")
        finally:
            conn.close()
    try:
        _source(db, key_sql, keys)
        job = _job(tmp_path, db)
        result = await _run(job, emu)
        assert result.code == 0, result.stderr
        got = figures(db, emu)
        assert got.problems() == [], got
        items = {str(k) for (k,) in fetch(db.dsn, f"SELECT source_key FROM {db.prefix}items")}
        assert items == set(keys)
    finally:
        harness.cleanup(db)


async def test_integer_keys_of_any_width(db: DbTarget, emu: Emulator, tmp_path: Path) -> None:
    """key_type = "int" over NUMERIC(38,0) / DECIMAL(38,0): keys above 64 bits (SQLite: int64)."""
    if db.dialect == "sqlite":  # SQLite stores wider integers as REAL: no exact key exists
        keys = [2**63 - 1, -(2**63), 5]
    else:
        keys = [2**70, 10**37 + 7, -(2**65), 2**63, 5]
    try:
        _source(db, BIG_INT[db.dialect], keys)
        job = _job(tmp_path, db, key_type="int")
        result = await _run(job, emu)
        assert result.code == 0, result.stderr
        got = figures(db, emu)
        assert got.problems() == [], got
        assert {int(k) for k in got_keys(db)} == set(keys)
    finally:
        harness.cleanup(db)


def got_keys(target: DbTarget) -> list[str]:
    """The items' keys as text."""
    return [str(k) for (k,) in fetch(target.dsn, f"SELECT source_key FROM {target.prefix}items")]


async def test_a_key_longer_than_the_items_table_is_refused(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    key_sql = {"sqlite": "TEXT", "postgresql": "VARCHAR(400)",
               "mysql": "VARCHAR(400) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"}
    try:
        _source(db, key_sql[db.dialect], ["short", "y" * 300])
        result = await _run(_job(tmp_path, db), emu)
        assert result.code == 2, result.stderr
        assert "300 characters" in result.stderr
        assert "at most 255" in result.stderr
        assert _count(db, f"{db.prefix}items") == 0
    finally:
        harness.cleanup(db)


# -- a job is one thing ---------------------------------------------------------------------


async def test_one_name_for_two_tables_is_refused_unless_migrated(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    other = f"{db.prefix}src2"
    try:
        _source(db, "INTEGER" if db.dialect != "mysql" else "INT", list(range(1, 7)))
        make_keyed_source(db.dialect, db.dsn, other, "INTEGER" if db.dialect != "mysql"
                          else "INT", [(i, f"other {i}") for i in range(1, 7)])
        first = _job(tmp_path, db, key_type="int", dir="a")
        second = _job(tmp_path, db, key_type="int", dir="b", source={"table": other})
        assert (await _run(first, emu)).code == 0
        refused = await _run(second, emu)
        assert refused.code == 2, refused.stderr
        assert f"table {db.prefix}src," in refused.stderr, refused.stderr
        assert f"table {other}," in refused.stderr
        assert "--migrate" in refused.stderr
        doctor = await cli("doctor", "--job", str(second), env=_env(emu))
        assert doctor.code == 3, doctor.stdout
        assert "FAIL job identity" in doctor.stdout
        assert fetch(db.dsn, f"SELECT COUNT(*) FROM {other} WHERE processed IS NOT NULL"
                     ) == [(0,)]
        migrated = await _run(second, emu, "--migrate")
        assert migrated.code == 0, migrated.stderr
        assert fetch(db.dsn, f"SELECT COUNT(*) FROM {other} WHERE processed IS NULL "
                     "OR out_name IS NULL") == [(0,)]
        assert fetch(db.dsn, f"SELECT COUNT(*) FROM {db.prefix}applied") == [(6,)]
    finally:
        harness.cleanup(db)
        if db.dialect != "sqlite":
            drop(db.dsn, other)


async def test_two_jobs_writing_the_same_columns_are_refused_while_one_is_active(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    try:
        _source(db, "INTEGER" if db.dialect != "mysql" else "INT", list(range(1, 13)))
        first = _job(tmp_path, db, key_type="int", dir="a", name="first")
        second = _job(tmp_path, db, key_type="int", dir="b", name="second",
                      source={"filter": "id > 6"})
        assert (await _run(first, emu, command="submit")).code == 0
        refused = await _run(second, emu)
        assert refused.code == 2, refused.stderr
        assert "job 'first' writes the same columns" in refused.stderr, refused.stderr
        doctor = await cli("doctor", "--job", str(second), env=_env(emu))
        assert doctor.code == 3, doctor.stdout
        assert "'first'" in doctor.stdout
        assert (await _run(first, emu)).code == 0
        assert (await _run(second, emu)).code == 0  # nothing left: the first did it all
        got = figures(db, emu, job="first")
        assert got.problems() == [], got
        assert fetch(db.dsn, f"SELECT COUNT(*) FROM {db.prefix}items WHERE job = 'second'"
                     ) == [(0,)]
    finally:
        harness.cleanup(db)


async def test_fixed_width_char_and_uuid_keys(
    db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    """CHAR(10) keys (PostgreSQL reads them back padded) and, on PostgreSQL, uuid keys."""
    cases = [("CHAR(10)", ["a", "pad", "b c"])]
    if db.dialect == "postgresql":
        cases.append(("UUID", ["0b7e6a2c-1f0e-4c39-9d55-3a3f0c1e2d4b",
                               "ffffffff-ffff-ffff-ffff-ffffffffffff"]))
    for key_sql, keys in cases:
        try:
            _source(db, key_sql, keys)
            result = await _run(_job(tmp_path, db, dir=key_sql[:4]), emu)
            assert result.code == 0, result.stderr
            got = figures(db, emu)
            assert got.problems() == [], (key_sql, got)
            assert set(got_keys(db)) == set(keys)
            states = fetch(db.dsn, f"SELECT DISTINCT state FROM {db.prefix}items")
            assert states == [("done",)], (key_sql, states)
        finally:
            harness.cleanup(db)


async def test_schema_upgrade_from_version_1_is_idempotent(db: DbTarget) -> None:
    """A version 1 database (MariaDB: PAD SPACE keys) is brought to 2 by init_db, twice."""
    spec = {"dsn": db.dsn, "prefix": db.prefix}
    try:
        async with await Store.open(harness.store_settings(spec)) as store:
            await store.init_db()
            conn = connect(db.dsn)
            try:
                cur = conn.cursor()
                cur.execute(f"UPDATE {db.prefix}meta SET value = '1' WHERE name = 'schema_version'")
                if db.dialect == "mysql":
                    cur.execute(f"ALTER TABLE {db.prefix}items MODIFY source_key VARCHAR(255) "
                                "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL")
            finally:
                conn.close()
            await store.init_db()
            await store.init_db()
            assert await store.schema_version() == 2
        if db.dialect == "mysql":
            found = fetch(db.dsn, "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
                          "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? "
                          "AND COLUMN_NAME = 'source_key'", f"{db.prefix}items")
            assert found == [("utf8mb4_nopad_bin",)]
    finally:
        harness.cleanup(db)
