"""scripts/bench.py and bench_parts.py keep running: their smoke modes (nothing timed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_help_lists_the_modes() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    )
    assert "--quick" in out.stdout
    assert "--smoke" in out.stdout


def test_bench_smoke_runs_every_part_and_ends_with_a_summary() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke"],
        capture_output=True, text=True, timeout=110, check=False, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("summary smoke: ")
    assert "sqlite x" in lines[-1]
    assert "concurrency x" in lines[-1]
    assert "memory " in lines[-1]
    # Every stage of the profile is printed, so a renamed stage function shows up here.
    profile = "\n".join(lines)
    for stage in ("discover", "claim", "render", "spool", "upload", "parse", "validate", "apply"):
        assert f"    {stage} " in profile


def test_bench_parts_smoke_prints_every_figure() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_parts.py"), "--smoke"],
        capture_output=True, text=True, timeout=110, check=False, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    parts = [line.split()[0] for line in lines[:-1]]
    assert parts == ["parse", "render", "tokens", "extract", "extract", "resumes", "stream",
                     "stream"]
    assert lines[-1].startswith("summary smoke: parse x")
    assert all(" x" in line for line in lines)
