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
from datetime import UTC, datetime
from typing import Any

import orjson

from engine.errors import AuthenticationError, BatchApiError, ConfigError, EngineError, StoreError
from engine.logs import RedactingFilter, secrets_of_dsn, setup_logging
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
# The API key of a dry run that has none: the client is built but never called.
DRY_RUN_KEY = "dry-run-no-key"
_redactor: RedactingFilter | None = None

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
    parser.add_argument("--keep-spool", action="store_true", default=None,
                        help="keep batch files after their batch ends (they hold the rows' "
                             "text and answers; deleted by default)")


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Options that shape batches and polling."""
    parser.add_argument("--batch-size", type=int, default=None, help="requests per batch")
    parser.add_argument("--max-in-flight", type=int, default=None, help="live batches at once")
    parser.add_argument("--check-interval", type=float, default=None,
                        help="longest wait between polls of a batch, seconds")
    parser.add_argument("--max-attempts", type=int, default=None, help="tries per row")


def _add_logging_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q/--log-format, accepted before or after the command."""
    # On subcommands the defaults are suppressed so they never overwrite the top level's.
    count: Any = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=count,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="count", default=count,
                        help="less log output (-q warnings only, -qq errors only)")
    parser.add_argument("--log-format", choices=("text", "json"),
                        default="text" if top else argparse.SUPPRESS,
                        help="log lines as text (default) or one JSON object each")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="batch-engine",
        description="Turn SQL rows into OpenAI Batch API jobs and write the answers back.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_logging_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    original_add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        made = original_add(name, **kwargs)
        _add_logging_flags(made, top=False)
        return made

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("init-db", help="create the engine's tables (idempotent)")
    _add_common(p)

    p = sub.add_parser("run", help="claim, submit, poll and apply until stopped or done")
    _add_common(p)
    _add_engine_flags(p)
    p.add_argument(
        "--until-idle", action="store_true",
        help="return when nothing is pending and nothing is in flight for the job; work of "
        "workers that stopped (no heartbeat for worker_dead_after_s, 30 s by default) is "
        "taken over first, work of live workers is named on the last line",
    )
    p.add_argument("--num-batches", type=int, default=None,
                   help="stop after this many new batches were submitted and applied")
    p.add_argument("--dry-run", action="store_true",
                   help="build the first batch file, estimate tokens and cost of everything "
                        "pending, submit nothing")
    p.add_argument("--max-cost-usd", type=float, default=None,
                   help="submit no new batch once this run's spend plus the next batch's "
                        "estimate would pass this many USD (batch prices)")
    _add_progress_flags(p)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (0 picks a free one)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address of the metrics endpoint (default 127.0.0.1)")

    _add_migrate_flag(p)

    p = sub.add_parser("submit", help="submit one batch, print its id and exit")
    _add_common(p)
    _add_engine_flags(p)
    _add_migrate_flag(p)

    p = sub.add_parser("check", help="show a batch; apply its results if it has finished")
    _add_common(p)
    p.add_argument("batch_id", help="local or remote batch id")
    p.add_argument("--no-apply", action="store_true", help="only show the status")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("cancel", help="cancel a live batch (its partial results are kept)")
    _add_common(p)
    p.add_argument("batch_id", help="local or remote batch id")

    p = sub.add_parser("status", help="rows by state and recent batches")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, help="batches to list")

    p = sub.add_parser("retry-dead", help="send every dead row of the job back to pending")
    _add_common(p)

    p = sub.add_parser("release", help="release a quarantined batch so the next run applies it")
    _add_common(p)
    p.add_argument("batch_id", help="local or remote batch id")

    p = sub.add_parser("doctor", help="check drivers, database, tables, API key and job file")
    _add_common(p)

    p = sub.add_parser("emulator", help="serve the local Batch API emulator")
    from engine.emulator.cli import add_arguments

    add_arguments(p)

    p = sub.add_parser("demo", help="the whole job on synthetic resumes against the emulator")
    p.add_argument("--rows", type=int, default=2000, help="synthetic resumes to create")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help="SQLite file (default: a fresh temp file)")
    where.add_argument("--dsn", default=None, help="ODBC connection string instead of SQLite")
    p.add_argument("--max-in-flight", type=int, default=4, help="live batches at once")
    p.add_argument("--batch-size", type=int, default=None, help="requests per batch")
    p.add_argument("--seed", type=int, default=7, help="synthetic data seed")
    _add_progress_flags(p)
    return parser


def _add_migrate_flag(parser: argparse.ArgumentParser) -> None:
    """--migrate: accept a changed job identity under the same name."""
    parser.add_argument("--migrate", action="store_true",
                        help="the job file changed the job's table, key, columns or filter "
                             "on purpose: record the new identity (refused while rows are "
                             "in flight)")


async def _check_job(engine: Any, args: argparse.Namespace) -> None:
    """Refuse a key that is not unique or too long, and a job that is not one thing."""
    problems = await engine.store.key_problems(engine.job)
    problems += await engine.store.job_problems(
        engine.job, record=not problems, migrate=getattr(args, "migrate", False)
    )
    if problems:
        raise ConfigError("; ".join(problems))


def _add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """--progress and --progress-interval."""
    parser.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="auto",
                        help="live display in a terminal, log lines otherwise (default auto)")
    parser.add_argument("--progress-interval", type=float, default=None,
                        help="seconds between plain progress lines (default 30)")


def _setup_logging(args: argparse.Namespace) -> None:
    """One redacting handler on the root, human text or JSON lines; never the library's job."""
    global _redactor
    secrets = [os.environ.get("OPENAI_API_KEY", "")]
    for dsn in (getattr(args, "dsn", None), os.environ.get("ENGINE_DSN")):
        secrets.extend(secrets_of_dsn(dsn))
    _redactor = setup_logging(
        verbose=args.verbose, quiet=args.quiet, log_format=args.log_format, secrets=secrets
    )


def _mask(text: str) -> str:
    """Redact secrets from text the CLI prints itself (errors, tables)."""
    if _redactor is not None:  # knows the key and every DSN this command has used
        return _redactor.mask(text)
    from engine.logs import redact

    secrets = [os.environ.get("OPENAI_API_KEY", "")]
    secrets.extend(secrets_of_dsn(os.environ.get("ENGINE_DSN")))
    return redact(text, [s for s in secrets if s])


def _mask_data(data: Any) -> Any:
    """Mask every string in JSON-ready data (before encoding, so the JSON stays valid)."""
    if isinstance(data, str):
        return _mask(data)
    if isinstance(data, dict):
        return {key: _mask_data(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_mask_data(value) for value in data]
    return data


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
    if _redactor is not None:
        for secret in secrets_of_dsn(settings.dsn):
            _redactor.add_secret(secret)
    return settings


def _engine_settings(args: argparse.Namespace, loaded: Any) -> Any:
    """Engine settings: the job's [engine] table, then the flags given."""
    settings = loaded.engine_settings(
        batch_size=getattr(args, "batch_size", None),
        max_in_flight=getattr(args, "max_in_flight", None),
        check_interval_s=getattr(args, "check_interval", None),
        max_attempts=getattr(args, "max_attempts", None),
        worker_id=args.worker_id,
        spool_dir=args.spool_dir,
        keep_spool_files=args.keep_spool,
    )
    if settings.min_check_interval_s > settings.check_interval_s:
        from dataclasses import replace

        # --check-interval is the longest wait between polls: the first poll waits no longer.
        settings = replace(settings, min_check_interval_s=settings.check_interval_s)
    return settings


def _api_settings(args: argparse.Namespace | None = None) -> ApiSettings:
    """Read the API key and base URL from the environment (a dry run needs no key)."""
    if args is not None and getattr(args, "dry_run", False) and not os.environ.get(
        "OPENAI_API_KEY"
    ):
        return ApiSettings(api_key=DRY_RUN_KEY, base_url=os.environ.get("OPENAI_BASE_URL"))
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
        loaded.spec, store=store, api=_api_settings(args),
        settings=_engine_settings(args, loaded),
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
    if args.max_cost_usd is not None and not args.max_cost_usd >= 0:
        raise ConfigError(f"--max-cost-usd: must be >= 0, got {args.max_cost_usd}")

    async def body(engine: Any) -> int:
        await engine.store.init_db()
        await engine.store.check_source(engine.job)
        await _check_job(engine, args)
        if args.dry_run:
            print(_fmt_dry_run(await engine.dry_run()), flush=True)
            return EXIT_OK
        from engine.progress import Progress

        metrics = None
        if args.metrics_port is not None:
            from engine.metrics import Metrics

            metrics = Metrics(engine.job.name)
            metrics.instrument(engine.api)
            engine.add_listener(metrics.on_event)
            port = metrics.serve(args.metrics_port, args.metrics_host)
            print(f"METRICS_URL=http://{args.metrics_host}:{port}/metrics", flush=True)
        progress = Progress(
            engine.job, engine.store, mode=args.progress,
            line_every_s=args.progress_interval or 30.0,
            interval_s=min(args.progress_interval or 5.0, 5.0) if metrics else None,
            on_snapshot=metrics.update if metrics else None,
        )
        engine.add_listener(progress.on_event)
        try:
            async with progress:
                summary = await engine.run(
                    until_idle=args.until_idle,
                    num_batches=args.num_batches,
                    install_signal_handlers=True,
                    max_cost_usd=args.max_cost_usd,
                )
        finally:
            if metrics is not None:
                metrics.close()
        print(
            f"run: {summary.batches_submitted} batches submitted, {summary.batches_applied} "
            f"applied; rows applied={summary.rows_applied} requeued={summary.rows_requeued} "
            f"dead={summary.rows_dead}; now {_fmt_counts(summary.counts)}"
        )
        if summary.rows_skipped:
            print(f"run: {summary.rows_skipped} results not written: their rows were changed "
                  "by another writer (no longer pending) or no longer have one row per key "
                  "(their items say which)")
        await _print_quarantined(engine.store, engine.job.name)
        if summary.cost_ceiling:
            print(f"run: stopped submitting at the cost ceiling: {summary.cost_ceiling}")
        if args.max_cost_usd is not None:
            print(f"run: this run's cost ${summary.cost_usd:.4f} (batch prices, estimates for "
                  f"batches not applied) of max ${args.max_cost_usd:.4f}")
        if summary.held_elsewhere:
            # Last, so a script sees at once why an until-idle run left rows unfinished.
            print("run: still held by live workers: " + "; ".join(
                f"{h.worker_id or '-'} ({h.batches} batches, {h.rows} rows)"
                for h in summary.held_elsewhere
            ))
        return EXIT_OK

    return await _with_engine(args, body)


async def _cmd_submit(args: argparse.Namespace) -> int:
    """Submit one batch."""

    async def body(engine: Any) -> int:
        await engine.store.init_db()
        await engine.store.check_source(engine.job)
        await _check_job(engine, args)
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
        if args.json:
            print(_json(_batch_dict(record, engine.job)))
        else:
            _print_batch_detail(record, engine.job)
        return EXIT_OK

    return await _with_engine(args, body)


async def _cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel one batch."""

    async def body(engine: Any) -> int:
        from engine.errors import RemoteGoneError

        try:
            record = await engine.cancel_batch(args.batch_id)
        except RemoteGoneError as exc:
            # Nothing runs remotely, so nothing is billed: what cancel wants already holds.
            print(f"gone: {_mask(str(exc))}")
            return EXIT_OK
        print(_fmt_batch(record))
        return EXIT_OK

    return await _with_engine(args, body)


async def _cmd_status(args: argparse.Namespace) -> int:
    """Print counts and recent batches."""
    from engine.progress import take_snapshot
    from engine.store import Store

    loaded = _load(args)
    job = loaded.spec
    store = await Store.open(_store_settings(args, loaded))
    try:
        snap = await take_snapshot(store, job)
        batches = await store.list_batches(job.name, limit=args.limit)
    finally:
        await store.close()
    if args.json:
        data = snap.as_dict()
        # "batches" stays the list of recent batches (its shape before counts existed).
        data["batches_by_state"] = data.pop("batches")
        data["model"] = job.model
        data["batches"] = [_batch_dict(b, job) for b in batches]
        print(_json(data))
        return EXIT_OK
    _print_status(job, snap, batches)
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


async def _print_quarantined(store: Any, job: str) -> None:
    """Name every quarantined batch of the job, its reason and how to release it."""
    held = await store.list_batches(job, states=["quarantined"], limit=1000)
    for record in held:
        print(f"run: batch {record.id} quarantined ({record.request_total} rows held): "
              f"{_mask((record.error or '')[:300])}; after fixing the cause: release {record.id}")


async def _cmd_release(args: argparse.Namespace) -> int:
    """Put a quarantined batch back to finished."""
    from engine.store import Store

    loaded = _load(args)
    store = await Store.open(_store_settings(args, loaded))
    try:
        record = await store.release_batch(args.batch_id)
    finally:
        await store.close()
    print(f"release: batch {record.id} is {record.state} again; the next run applies it")
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
        batch_size=args.batch_size, seed=args.seed, progress=args.progress,
    )
    return code


# -- output --------------------------------------------------------------------------------------


def _json(data: Any) -> str:
    """Pretty JSON, datetimes as ISO text, secrets masked."""
    plain = orjson.loads(orjson.dumps(data, default=str))
    return orjson.dumps(_mask_data(plain), option=orjson.OPT_INDENT_2).decode()


def _console() -> Any:
    """Return a rich console on stdout, wide enough for tables when it is not a terminal."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if tty else 240, highlight=False,
                   no_color=not tty, emoji=False)


def _standard_cost(record: Any, job: Any) -> float:
    """Return what a batch would have cost without the batch discount."""
    from engine.pricing import cost_usd
    from engine.results import Usage

    usage = Usage(record.input_tokens, record.cached_tokens, record.output_tokens,
                  record.reasoning_tokens)
    return cost_usd(record.model, usage, batch=False, overrides=job.pricing)


def _batch_dict(record: Any, job: Any) -> dict[str, Any]:
    """Return a batch as JSON-ready data, with its cost with and without the discount."""
    data = asdict(record)
    data["cost_standard_usd"] = round(_standard_cost(record, job), 6)
    return data


def _print_status(job: Any, snap: Any, batches: list[Any]) -> None:
    """Rows, batches, tokens and cost of a job, and its recent batches, as tables."""
    from rich.table import Table

    from engine.progress import BATCH_STATES, ROW_STATES

    console = _console()
    console.print(f"job {job.name} · model {job.model}")
    rows = Table(title="rows", title_justify="left")
    for state in ROW_STATES:
        rows.add_column(state, justify="right")
    rows.add_row(*(f"{snap.rows.get(s, 0):,}" for s in ROW_STATES))
    console.print(rows)
    by_state = Table(title="batches", title_justify="left")
    for state in BATCH_STATES:
        by_state.add_column(state, justify="right")
    by_state.add_row(*(f"{snap.batches.get(s, 0):,}" for s in BATCH_STATES))
    console.print(by_state)
    money = Table(title="tokens and cost", title_justify="left")
    for name in ("input", "cached", "output", "reasoning", "cost (batch)",
                 "cost without batch discount"):
        money.add_column(name, justify="right")
    money.add_row(f"{snap.input_tokens:,}", f"{snap.cached_tokens:,}",
                  f"{snap.output_tokens:,}", f"{snap.reasoning_tokens:,}",
                  f"${snap.cost_usd:,.4f}", f"${snap.cost_standard_usd:,.4f}")
    console.print(money)
    if not batches:
        console.print("no batches yet")
        return
    recent = Table(title=f"recent batches ({len(batches)})", title_justify="left")
    for name in ("batch", "remote", "state", "remote status"):
        recent.add_column(name, no_wrap=True)
    for name in ("done/total", "failed", "tokens in/out", "cost"):
        recent.add_column(name, justify="right", no_wrap=True)
    recent.add_column("created", no_wrap=True)
    recent.add_column("error", no_wrap=True, overflow="ellipsis", max_width=60)
    for b in batches:
        recent.add_row(
            b.id, b.remote_batch_id or "-", b.state, b.remote_status or "-",
            f"{b.request_completed}/{b.request_total}", str(b.request_failed),
            f"{b.input_tokens:,}/{b.output_tokens:,}", f"${b.cost_usd:.4f}",
            _utc_text(b.created_at),
            _mask((b.error or "")[:60]),
        )
    console.print(recent)


def _utc_text(when: datetime | None) -> str:
    """Show a stored time in UTC and say so (never in the viewer's local zone)."""
    if when is None:
        return "-"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_batch_detail(record: Any, job: Any) -> None:
    """Every field of one batch, one per line, with its cost with and without the discount."""
    from rich.table import Table

    table = Table(title=f"batch {record.id}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    standard = _standard_cost(record, job)
    fields: list[tuple[str, Any]] = [
        ("job", record.job), ("local id", record.id),
        ("remote batch id", record.remote_batch_id or "-"),
        ("state", record.state), ("remote status", record.remote_status or "-"),
        ("model", record.model), ("endpoint", record.endpoint),
        ("worker", record.worker_id or "-"),
        ("input file", record.input_file_id or "-"),
        ("output file", record.output_file_id or "-"),
        ("error file", record.error_file_id or "-"),
        ("requests", f"{record.request_completed} completed, {record.request_failed} failed, "
                     f"{record.request_total} total"),
        ("estimated input tokens", f"{record.estimated_tokens:,}"),
        ("tokens", f"input {record.input_tokens:,} (cached {record.cached_tokens:,}), output "
                   f"{record.output_tokens:,} (reasoning {record.reasoning_tokens:,})"),
        ("cost (batch prices)", f"${record.cost_usd:.6f}"),
        ("cost without the batch discount", f"${standard:.6f}"),
        ("created", _utc_text(record.created_at)), ("updated", _utc_text(record.updated_at)),
        ("lease expires", _utc_text(record.lease_expires_at)),
    ]
    if record.error:
        fields.append(("error", _mask(record.error[:2000])))
    for name, value in fields:
        table.add_row(name, str(value))
    _console().print(table)


def _fmt_dry_run(report: Any) -> str:
    """Render the dry run's report for humans."""
    lines = [
        f"dry run: job {report.job} ({report.model}); nothing was submitted",
        f"  rows pending:       {report.rows_pending:,}",
        f"  requests to send:   {report.requests:,} in {report.batches:,} batches",
        f"  rejected at once:   {report.rejected:,} (no text, or longer than max_input_chars)",
        f"  input tokens:       ~{report.input_tokens:,} (estimated, conservative)",
        f"  output tokens:      up to {report.output_tokens_per_request:,} per request "
        f"(max_output_tokens) = {report.output_tokens_per_request * report.requests:,}",
        f"  cost, batch prices: ${report.cost_input_usd:.4f} for input, up to "
        f"${report.cost_max_usd:.4f} with every output at its maximum",
        f"  without the batch discount: ${report.cost_input_standard_usd:.4f} for input, up to "
        f"${report.cost_max_standard_usd:.4f}",
    ]
    if not report.price_known:
        lines.append(f"  no price known for {report.model}: set the job's [pricing]")
    if report.first_batch_path:
        lines.append(
            f"  first batch file:   {report.first_batch_path} ({report.first_batch_requests:,} "
            f"requests, {report.first_batch_bytes:,} bytes, ~{report.first_batch_tokens:,} "
            "input tokens)"
        )
    else:
        lines.append("  first batch file:   none (nothing to send)")
    return "\n".join(lines)


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
        + (f" error={_mask(record.error[:120])}" if record.error else "")
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "init-db": _cmd_init_db,
    "run": _cmd_run,
    "submit": _cmd_submit,
    "check": _cmd_check,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "retry-dead": _cmd_retry_dead,
    "release": _cmd_release,
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
        print(f"error: {_mask(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except AuthenticationError as exc:
        print(f"error: the Batch API refused the key: {_mask(str(exc))}", file=sys.stderr)
        return EXIT_AUTH
    except (StoreError, BatchApiError, EngineError) as exc:
        print(f"error: {_mask(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
