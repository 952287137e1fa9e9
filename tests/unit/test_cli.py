"""The command line: old flags, help, exit codes (subprocess where the process matters)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import EXIT_CODES, build_parser, translate_legacy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["--submit"], ["submit"]),
        (["--submit", "--batch-size", "100"], ["submit", "--batch-size", "100"]),
        (["--check-batch", "batch_abc"], ["check", "batch_abc"]),
        (
            ["--continuous", "--num-batches", "3", "--batch-size", "200", "--check-interval",
             "1800"],
            ["run", "--num-batches", "3", "--batch-size", "200", "--check-interval", "1800"],
        ),
        (["run", "--until-idle"], ["run", "--until-idle"]),
        (["status"], ["status"]),
    ],
)
def test_old_flags_map_onto_subcommands(old: list[str], new: list[str]) -> None:
    assert translate_legacy(old) == new
    build_parser().parse_args(new)  # and the result is a valid command line


def test_every_documented_command_parses() -> None:
    parser = build_parser()
    for argv in (["init-db"], ["run", "--until-idle"], ["submit"], ["check", "x"],
                 ["cancel", "x"], ["status", "--json"], ["retry-dead"], ["doctor"],
                 ["release", "x"], ["demo", "--rows", "5"], ["emulator", "--port", "0"]):
        assert parser.parse_args(argv).command == argv[0]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=cwd or ROOT, check=False,
    )


def test_help_lists_commands_old_flags_and_exit_codes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("init-db", "submit", "check", "doctor", "release", "--check-batch",
                 "exit codes"):
        assert word in result.stdout
    for code in EXIT_CODES:
        assert f"{code:>3}  " in result.stdout


def test_no_command_is_a_usage_error() -> None:
    assert run_cli().returncode == 2


def test_bad_job_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    job = tmp_path / "bad.toml"
    job.write_text('name = "x"\nmodel = "m"\n[source]\ntable = "t"\n')
    result = run_cli("status", "--job", str(job), "--db", str(tmp_path / "x.db"))
    assert result.returncode == 2
    assert "source" in result.stderr


def test_doctor_fails_clearly_without_a_key_and_hides_the_password(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY",)}
    env["ENGINE_DSN"] = "Driver={No Such Driver};Server=x;Pwd=hunter2secret;"
    result = run_cli("doctor", env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert "FAIL" in result.stdout
    assert "odbc driver" in result.stdout
    assert "hunter2secret" not in result.stdout + result.stderr
