"""The command line end to end, as an operator runs it: separate processes, real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import fetch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator_url() -> Iterator[str]:
    """A Batch API emulator in its own process, stopped after the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulator", "--port", "0", "--latency-s", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("EMULATOR_URL="), line
        yield line.split("=", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def cli(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-cli", "OPENAI_BASE_URL": url}
    env.pop("ENGINE_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True,
        timeout=120, env=env, cwd=cwd, check=False,
    )


def test_submit_check_status_and_old_continuous_flags(emulator_url: str, tmp_path: Path) -> None:
    db = tmp_path / "cands.db"
    dsn = f"Driver=SQLite3;Database={db}"
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_resumes.py"), "--rows", "30", "--db",
         str(db), "--seed", "4"], capture_output=True, text=True, timeout=120, check=False,
    )
    assert made.returncode == 0, made.stderr
    common = ("--db", str(db), "--spool-dir", str(tmp_path / "spool"))
    assert cli(emulator_url, tmp_path, "init-db", *common).returncode == 0

    submitted = cli(emulator_url, tmp_path, "--submit", "--batch-size", "10", *common)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("batch_")

    for _ in range(100):
        checked = cli(emulator_url, tmp_path, "--check-batch", batch_id, *common)
        assert checked.returncode == 0, checked.stderr
        if " applied " in checked.stdout:
            break
        time.sleep(0.05)
    assert " applied " in checked.stdout
    assert fetch(dsn, "SELECT COUNT(*) FROM candidates WHERE LastProcessed IS NOT NULL") == [(10,)]

    ran = cli(emulator_url, tmp_path, "--continuous", "--num-batches", "2", "--batch-size", "10",
              "--check-interval", "0.05", *common)
    assert ran.returncode == 0, ran.stderr
    status = cli(emulator_url, tmp_path, "status", "--json", *common)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["rows"]["done"] == 30
    assert len(data["batches"]) == 3
    rows = fetch(dsn, "SELECT COUNT(*) FROM candidates WHERE LastProcessed IS NULL "
                      "OR FullName IS NULL")
    assert rows == [(0,)]


def test_wrong_key_exits_4_and_writes_nothing(tmp_path: Path) -> None:
    from tests.integration.helpers import connect

    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulator", "--port", "0", "--api-key", "sk-right"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().split("=", 1)[1]
        db = tmp_path / "c.db"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_resumes.py"), "--rows", "5",
                        "--db", str(db)], check=True, capture_output=True, timeout=120)
        result = cli(url, tmp_path, "run", "--until-idle", "--db", str(db))
        assert result.returncode == 4, result.stderr
        assert "sk-test-cli" not in result.stderr + result.stdout
        conn = connect(f"Driver=SQLite3;Database={db}")
        try:
            done = conn.cursor().execute(
                "SELECT COUNT(*) FROM candidates WHERE LastProcessed IS NOT NULL").fetchone()[0]
        finally:
            conn.close()
        assert done == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_demo_fills_and_processes_the_database(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--rows", "40", "--db", str(db),
         "--max-in-flight", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dsn = f"Driver=SQLite3;Database={db}"
    assert fetch(dsn, "SELECT COUNT(*) FROM candidates WHERE LastProcessed IS NOT NULL") == [(40,)]
    truth = dict(fetch(dsn, "SELECT userid, truth_json FROM candidates_truth"))
    names = dict(fetch(dsn, "SELECT userid, FullName FROM candidates"))
    right = sum(json.loads(truth[k])["full_name"] == names[k] for k in truth)
    assert right >= 38  # the rule-based responder reads the synthetic resumes almost perfectly
    batches = fetch(dsn, "SELECT COUNT(*) FROM demo_engine_batches WHERE state = 'applied'")
    assert batches[0][0] >= 3
