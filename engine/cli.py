"""Command line: ``python -m engine`` / ``batch-engine``; the only place that sets up logging.

The old tool's flags keep working: ``--submit [--batch-size N]``, ``--check-batch ID`` and
``--continuous --num-batches N --batch-size N --check-interval S`` map onto the subcommands.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

import orjson

from engine.errors import AuthenticationError, BatchApiError, ConfigError, EngineError, StoreError
from engine.settings import ApiSettings, StoreSettings, redact_dsn

__all__ = ["EXIT_CODES", "main"]

log = logging.getLogger("engine.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the engine, the database or the API failed (the message says which)",
    EXIT_USAGE: "bad command line, job file or setting (the message names it)",
    EXIT_CHECK_FAILED: "doctor: at least one check failed",
    EXIT_AUTH: "the Batch API refused the key",
    EXIT_INTERRUPTED: "interrupted before a safe point",
}
DEFAULT_SQLITE = "batch-engine.db"

EPILOG = (
    "environment: OPENAI_API_KEY, OPENAI_BASE_URL, ENGINE_DSN, ENGINE_JOB, ENGINE_WORKER_ID\n"
    "old flags still work: --submit [--batch-size N] | --check-batch ID |\n"
    "  --continuous --num-batches N --batch-size N --check-interval S\n"
    "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
)


def translate_legacy(argv: list[str]) -> list[str]:
    """Map the old one_step_processor.py flags onto subcommands; other argv is unchanged."""
    if not argv or argv[0] in {"-h", "--help"} or not any(a.startswith("--") for a in argv):
        return argv
    flags = set(argv)
    rest = [a for a in argv if a not in {"--submit", "--continuous"}]
    if "--check-batch" in flags:
        index = rest.index("--check-batch")
        batch = rest[index + 1 : index + 2]
        del rest[index : index + 2]
        return ["check", *batch, *rest]
    if "--submit" in flags:
        return ["submit", *rest]
    if "--continuous" in flags:
        return ["run", *rest]
    return argv


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every database command takes."""
    parser.add_argument(
        "--job",
        default=os.environ.get("ENGINE_JOB", "resumes"),
        help="job file (TOML) or bundled job name (default: $ENGINE_JOB or 'resumes')",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--dsn",
        default=None,
        help="ODBC connection string (default: $ENGINE_DSN, else the job's [database])",
    )
    where.add_argument("--db", default=None, help=f"SQLite file (default {DEFAULT_SQLITE})")
    parser.add_argument("--batches-table", default=None, help="name of the batches table")
    parser.add_argument("--worker-id", default=os.environ.get("ENGINE_WORKER_ID"),
                        help="stable id so a restart re-attaches to its batches at once")
    parser.add_argument("--spool-dir", default=None, help="where batch files are written")


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Options that shape batches and polling."""
    parser.add_argument("--batch-size", type=int, default=None, help="requests per batch")
    parser.add_argument("--max-in-flight", type=int, default=None, help="live batches at once")
    parser.add_argument("--check-interval", type=float, default=None,
                        help="longest wait between polls of a batch, seconds")
    parser.add_argument("--max-attempts", type=int, default=None, help="tries per row")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="batch-engine",
        description="Turn SQL rows into OpenAI Batch API jobs and write the answers back.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init-db", help="create the engine's tables (idempotent)")
    _add_common(p)

    p = sub.add_parser("run", help="claim, submit, poll and apply until stopped or done")
    _add_common(p)
    _add_engine_flags(p)
    p.add_argument("--until-idle", action="store_true", help="return when nothing is pending")
    p.add_argument("--num-batches", type=int, default=None,
                   help="stop after this many new batches were submitted and applied")

    p = sub.add_parser("submit", help="submit one batch, print its id and exit")
    _add_common(p)
    _add_engine_flags(p)

    p = sub.add_parser("check", help="show a batch; apply its results if it has finished")
    _add_common(p)
    p.add_argument("batch_id", help="local or remote batch id")
    p.add_argument("--no-apply", action="store_true", help="only show the status")

    p = sub.add_parser("cancel", help="cancel a live batch (its partial results are kept)")
    _add_common(p)
    p.add_argument("batch_id", help="local or remote batch id")

    p = sub.add_parser("status", help="rows by state and recent batches")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, help="batches to list")

    p = sub.add_parser("retry-dead", help="send every dead row of the job back to pending")
    _add_common(p)

    p = sub.add_parser("doctor", help="check drivers, database, tables, API key and job file")
    _add_common(p)

    p = sub.add_parser("emulator", help="serve the local Batch API emulator")
    from engine.emulator.cli import add_arguments

    add_arguments(p)

    p = sub.add_parser("demo", help="the whole job on synthetic resumes against the emulator")
    p.add_argument("--rows", type=int, default=200, help="synthetic resumes to create")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help="SQLite file (default: a fresh temp file)")
    where.add_argument("--dsn", default=None, help="ODBC connection string instead of SQLite")
    p.add_argument("--max-in-flight", type=int, default=4, help="live batches at once")
    p.add_argument("--batch-size", type=int, default=None, help="requests per batch")
    p.add_argument("--seed", type=int, default=7, help="synthetic data seed")
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    """One handler on the root, human text or JSON lines; never called by the library."""
    level = logging.INFO + 10 * (args.quiet - args.verbose)
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.DEBUG, min(logging.CRITICAL, level)))
    # The HTTP stack logs every request at INFO; keep ours readable.
    for noisy in ("httpx", "httpx2", "openai", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


class _JsonFormatter(logging.Formatter):
    """One JSON object per line with the batch ids when a record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        data: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("batch_id", "remote_batch_id"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


# -- building the engine from arguments ------------------------------------------------------


def _load(args: argparse.Namespace) -> Any:
    """Load the job file named by --job."""
    from engine.jobfile import load_job

    return load_job(args.job)


def _store_settings(args: argparse.Namespace, loaded: Any) -> StoreSettings:
    """Database settings: --db, --dsn, $ENGINE_DSN, the job's [database], else SQLite."""
    overrides: dict[str, Any] = {}
    if args.batches_table:
        overrides["batches_table"] = args.batches_table
    if args.db:
        settings = StoreSettings.sqlite(args.db)
    else:
        dsn = args.dsn or os.environ.get("ENGINE_DSN")
        if dsn is None and loaded.database is None:
            settings = StoreSettings.sqlite(DEFAULT_SQLITE)
        else:
            settings = loaded.store_settings(dsn=dsn)
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    return settings


def _engine_settings(args: argparse.Namespace, loaded: Any) -> Any:
    """Engine settings: the job's [engine] table, then the flags given."""
    return loaded.engine_settings(
        batch_size=getattr(args, "batch_size", None),
        max_in_flight=getattr(args, "max_in_flight", None),
        check_interval_s=getattr(args, "check_interval", None),
        max_attempts=getattr(args, "max_attempts", None),
        worker_id=args.worker_id,
        spool_dir=args.spool_dir,
    )


def _api_settings() -> ApiSettings:
    """Read the API key and base URL from the environment."""
    return ApiSettings.from_env()


async def _with_engine(
    args: argparse.Namespace, body: Callable[[Any], Awaitable[int]]
) -> int:
    """Open an Engine for the job and run ``body(engine)``."""
    from engine.engine import Engine

    loaded = _load(args)
    store = _store_settings(args, loaded)
    log.debug("database: %s", redact_dsn(store.dsn))
    async with Engine(
        loaded.spec, store=store, api=_api_settings(), settings=_engine_settings(args, loaded)
    ) as engine:
        return await body(engine)


# -- commands ------------------------------------------------------------------------------------


async def _cmd_init_db(args: argparse.Namespace) -> int:
    """Create the engine's tables."""
    from engine.store import Store

    loaded = _load(args)
    settings = _store_settings(args, loaded)
    store = await Store.open(settings)
    try:
        await store.init_db()
    finally:
        await store.close()
    print(f"init-db: tables ready ({settings.items_table}, {settings.batches_table})")
    return EXIT_OK


async def _cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline."""

    async def body(engine: Any) -> int:
        await engine.store.init_db()
        await engine.store.check_source(engine.job)
        summary = await engine.run(
            until_idle=args.until_idle,
            num_batches=args.num_batches,
            install_signal_handlers=True,
        )
        print(
            f"run: {summary.batches_submitted} batches submitted, {summary.batches_applied} "
            f"applied; rows applied={summary.rows_applied} requeued={summary.rows_requeued} "
            f"dead={summary.rows_dead}; now {_fmt_counts(summary.counts)}"
        )
        return EXIT_OK

    return await _with_engine(args, body)


async def _cmd_submit(args: argparse.Namespace) -> int:
    """Submit one batch."""

    async def body(engine: Any) -> int:
        await engine.store.init_db()
        await engine.store.check_source(engine.job)
        record = await engine.submit_one()
        if record is None:
            print("submit: nothing pending")
            return EXIT_OK
        print(record.remote_batch_id or record.id)
        log.info("submitted %d requests as %s (local %s, %s)", record.request_total,
                 record.remote_batch_id, record.id, record.state)
        return EXIT_OK if record.state == "submitted" else EXIT_FAILED

    return await _with_engine(args, body)


async def _cmd_check(args: argparse.Namespace) -> int:
    """Show one batch and apply it when finished."""

    async def body(engine: Any) -> int:
        record = await engine.check_batch(args.batch_id, apply=not args.no_apply)
        print(_fmt_batch(record))
        return EXIT_OK

    return await _with_engine(args, body)


async def _cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel one batch."""

    async def body(engine: Any) -> int:
        record = await engine.cancel_batch(args.batch_id)
        print(_fmt_batch(record))
        return EXIT_OK

    return await _with_engine(args, body)


async def _cmd_status(args: argparse.Namespace) -> int:
    """Print counts and recent batches."""
    from engine.store import Store

    loaded = _load(args)
    store = await Store.open(_store_settings(args, loaded))
    try:
        counts = await store.counts(loaded.spec.name)
        batches = await store.list_batches(loaded.spec.name, limit=args.limit)
    finally:
        await store.close()
    if args.json:
        data = {
            "job": loaded.spec.name,
            "rows": counts,
            "batches": [asdict(b) for b in batches],
        }
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
        return EXIT_OK
    print(f"job {loaded.spec.name}: {_fmt_counts(counts)}")
    for record in batches:
        print(_fmt_batch(record))
    return EXIT_OK


async def _cmd_retry_dead(args: argparse.Namespace) -> int:
    """Requeue dead rows."""
    from engine.store import Store

    loaded = _load(args)
    store = await Store.open(_store_settings(args, loaded))
    try:
        count = await store.retry_dead(loaded.spec)
    finally:
        await store.close()
    print(f"retry-dead: {count} rows back to pending")
    return EXIT_OK


async def _cmd_doctor(args: argparse.Namespace) -> int:
    """Check everything the engine needs, one line per check."""
    from engine.doctor import run_checks

    ok = await run_checks(args, _load, _store_settings)
    return EXIT_OK if ok else EXIT_CHECK_FAILED


async def _cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from engine.demo import run_demo

    if args.verbose == 0:
        # The demo prints its own progress lines; the per-batch INFO log would repeat them.
        logging.getLogger("engine").setLevel(logging.WARNING)

    code: int = await run_demo(
        rows=args.rows, db=args.db, dsn=args.dsn, max_in_flight=args.max_in_flight,
        batch_size=args.batch_size, seed=args.seed,
    )
    return code


def _fmt_counts(counts: dict[str, int]) -> str:
    """pending=3 claimed=0 ... in a fixed order."""
    order = ("pending", "claimed", "submitted", "done", "dead")
    return " ".join(f"{state}={counts.get(state, 0)}" for state in order)


def _fmt_batch(record: Any) -> str:
    """One line per batch for humans."""
    return (
        f"{record.id} {record.remote_batch_id or '-':<32} {record.state:<9} "
        f"{record.remote_status or '-':<11} {record.request_completed}/{record.request_total} "
        f"failed={record.request_failed} tokens in/out={record.input_tokens}/"
        f"{record.output_tokens} cost=${record.cost_usd:.4f}"
        + (f" error={record.error[:120]}" if record.error else "")
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "init-db": _cmd_init_db,
    "run": _cmd_run,
    "submit": _cmd_submit,
    "check": _cmd_check,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "retry-dead": _cmd_retry_dead,
    "doctor": _cmd_doctor,
    "demo": _cmd_demo,
}


async def _call(
    command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Await one command (asyncio.run wants a coroutine, not any awaitable)."""
    return await command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(translate_legacy(list(sys.argv[1:] if argv is None else argv)))
    _setup_logging(args)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "emulator":
        from engine.emulator.cli import run as run_emulator

        code: int = run_emulator(args)
        return code
    command = COMMANDS[args.command]
    try:
        return asyncio.run(_call(command, args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AuthenticationError as exc:
        print(f"error: the Batch API refused the key: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except (StoreError, BatchApiError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED




if __name__ == "__main__":
    sys.exit(main())
