"""Failing today; run explicitly (not collected by default):

    .venv/bin/python -m pytest -q tests/reliability/pending_bad_config.py

- A wrong API key: ``run`` exits 4 with a clear message, but only after it has claimed rows,
  spooled a draft and bound them to it (state ``submitted``): the key is first used by the
  upload. The rows wait for that draft to be adopted (at once under the same --worker-id,
  else after lease_s, 600 s by default). Engine.run (engine/engine.py) should prove the key
  with one cheap call (e.g. ``batches.list(limit=1)``) before the producer claims anything.
- An unreachable API: ``run --until-idle`` never returns. Rows are claimed and bound to
  drafts, and Submitter.submit waits for the API forever (by design for a long outage, but the
  command gives no error and no exit code). The same start-up check would turn it into
  "error: ... connection failed" and exit 1 before anything is written.

Move these into test_bad_config.py once fixed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig
from tests.conftest import DbTarget
from tests.reliability import harness
from tests.reliability.cli import cli, write_job
from tests.reliability.test_bad_config import KEY, ROWS, assert_nothing_written


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=72, api_key=KEY)) as emulator:
        yield emulator


async def test_wrong_api_key(sqlite_db: DbTarget, emu: Emulator, tmp_path: Path) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db)
    wrong = "sk-wrong-key-9876543210"
    result = await cli("run", "--job", str(job), "--until-idle",
                       env={"OPENAI_API_KEY": wrong, "OPENAI_BASE_URL": emu.base_url})
    assert result.code == 4, result.stderr
    assert "refused the key" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")


async def test_unreachable_api(sqlite_db: DbTarget, emu: Emulator, tmp_path: Path) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db)
    result = await cli("run", "--job", str(job), "--until-idle", timeout_s=60,
                       env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert result.code == 1, result.stderr
    assert "error:" in result.stderr
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")
