"""A result file is whole before it counts (guarantee 13), through the command line.

A proxy between the engine and the emulator (tests/reliability/apiproxy.py) cuts downloads
the ways a transfer can end early and still look clean: half the lines with a matching
Content-Length, half the lines and no Content-Length, a half-written last line. The engine
must download again and apply each answer once: no row answered twice by the emulator, no
attempt used. A file that stays short is quarantined with its reason (its rows are held, not
re-sent); ``release`` and a run with a healthy network finish it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.apiproxy import ApiProxy, answered_twice
from tests.reliability.cli import CliResult, cli, write_job
from tests.support import DbTarget

ROWS = 40  # 4 batches of 10
KEY = "sk-whole-files-0123456789"


async def _run(job: Path, base_url: str, *args: str) -> CliResult:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": base_url}
    return await cli(*(args or ("run", "--until-idle")), "--job", str(job), env=env)


def _attempts(target: DbTarget) -> int:
    got = fetch(target.dsn, f"SELECT SUM(attempts) FROM {target.prefix}items WHERE job = ?", "t")
    return int(got[0][0] or 0)


@pytest.mark.parametrize("mode", ["short", "no_length", "half_line"])
async def test_cut_download_is_fetched_again_never_resent(
    db: DbTarget, tmp_path: Path, mode: str
) -> None:
    async with Emulator(EmulatorConfig(seed=81)) as emu, ApiProxy(
        emu.base_url, lambda _file, nth: mode if nth == 1 else None
    ) as proxy:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", db)
            result = await _run(job, proxy.base_url)
            assert result.code == 0, result.stderr[-3000:]
            assert proxy.damaged[mode] == len(emu.record.batches) >= 4, proxy.damaged
            figures = harness.measure(db, emu, 0)
            assert figures.problems() == [], figures
            assert figures.done == ROWS
            assert answered_twice(emu) == {}, "rows answered twice (re-sent after a cut file)"
            assert _attempts(db) == 0, "a cut download used attempts"
        finally:
            harness.cleanup(db)


async def test_file_that_stays_short_is_quarantined_then_released(
    db: DbTarget, tmp_path: Path
) -> None:
    cut_file: list[str] = []

    def always_first_file(file_id: str, _nth: int) -> str | None:
        if not cut_file:
            cut_file.append(file_id)
        return "short" if file_id == cut_file[0] else None

    async with Emulator(EmulatorConfig(seed=82)) as emu, ApiProxy(
        emu.base_url, always_first_file
    ) as proxy:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", db)
            result = await _run(job, proxy.base_url)
            assert result.code == 0, result.stderr[-3000:]
            assert "quarantined" in result.stdout, result.stdout
            assert proxy.downloads[cut_file[0]] >= 2  # downloaded again before giving up
            status = await _run(job, proxy.base_url, "status", "--json")
            data = json.loads(status.stdout)
            held = [b for b in data["batches"] if b["state"] == "quarantined"]
            assert len(held) == 1, data["batches"]
            assert "request_counts" in held[0]["error"], held[0]["error"]
            assert held[0]["id"] in result.stdout
            rows = data["rows"]
            assert (rows["done"], rows["submitted"]) == (ROWS - 10, 10), rows
            assert answered_twice(emu) == {}, "the held rows were re-sent"
            shown = await _run(job, proxy.base_url, "check", held[0]["id"], "--json")
            assert json.loads(shown.stdout)["state"] == "quarantined", shown.stdout

            proxy.damage = lambda _file, _nth: None  # the network is healthy again
            released = await _run(job, proxy.base_url, "release", held[0]["id"])
            assert released.code == 0, released.stderr
            again = await _run(job, proxy.base_url)
            assert again.code == 0, again.stderr[-3000:]
            assert "quarantined" not in again.stdout
            figures = harness.measure(db, emu, 1)
            assert figures.problems() == [], figures
            assert figures.done == ROWS
            assert answered_twice(emu) == {}
            assert _attempts(db) == 0
        finally:
            harness.cleanup(db)
