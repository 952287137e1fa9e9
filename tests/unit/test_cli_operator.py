"""Operator features without a database: logging, redaction, flags, labels and formatting."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from engine.cli import _fmt_dry_run, build_parser
from engine.engine import DryRunReport, estimate_batch_cost
from engine.job import JobSpec, SourceSpec
from engine.logs import RedactingFilter, level_for, redact, secrets_of_dsn, setup_logging
from engine.metrics import Metrics, error_kind
from engine.pipeline import EngineEvent
from engine.progress import Progress, Snapshot, format_eta

KEY = "sk-proj-AbCdEfGh1234567890XYZ"


def _job() -> JobSpec:
    return JobSpec(name="j", source=SourceSpec(table="t", key_column="id", text_columns=("b",),
                                               processed_column="p"),
                   model="gpt-4o-mini", user_template="{b}", output_schema={"type": "object"})


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(log_format: str = "text", **kw: int) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(log_format=log_format, secrets=[KEY, "hunter2secret"], stream=stream, **kw)
    return stream


def test_secrets_of_dsn_finds_passwords_in_any_spelling() -> None:
    dsn = "Driver={X};Server=s;UID=u;PWD={p;w d};Password=two;token=abc123"
    assert secrets_of_dsn(dsn) == ["p;w d", "two", "abc123"]
    assert secrets_of_dsn(None) == []


def test_redact_masks_given_and_shaped_secrets() -> None:
    text = (f"key {KEY} dsn Server=x;Pwd=hunter2secret;Uid=u url postgres://u:pa55word@h/db "
            "other sk-abcdefghijklmnop")
    out = redact(text, [KEY])
    for secret in (KEY, "hunter2secret", "pa55word", "sk-abcdefghijklmnop"):
        assert secret not in out
    assert "Server=x" in out
    assert "Uid=u" in out
    assert redact("claim_token=abc token_limit_exceeded") == "claim_token=abc token_limit_exceeded"


def test_log_filter_masks_message_args_and_traceback(restore_root: None) -> None:
    stream = _capture()
    log = logging.getLogger("engine.test")
    log.warning("calling with %s and dsn %s", KEY, "Pwd=hunter2secret;")
    try:
        raise ValueError(f"boom {KEY}")
    except ValueError:
        log.exception("failed for %s", "x")
    out = stream.getvalue()
    assert KEY not in out
    assert "hunter2secret" not in out
    assert "calling with ***" in out
    assert "ValueError: boom ***" in out


def test_json_lines_carry_batch_ids_and_are_redacted(restore_root: None) -> None:
    stream = _capture("json")
    logging.getLogger("engine.pipeline").info(
        "batch %s: %s", "b1", KEY, extra={"batch_id": "b1", "remote_batch_id": "batch_9"}
    )
    line = orjson.loads(stream.getvalue().strip())
    assert line["batch_id"] == "b1"
    assert line["remote_batch_id"] == "batch_9"
    assert line["level"] == "INFO"
    assert line["logger"] == "engine.pipeline"
    assert KEY not in line["message"]


def test_verbose_and_quiet_move_the_level(restore_root: None) -> None:
    assert level_for(0, 0) == logging.INFO
    assert level_for(1, 0) == logging.DEBUG
    assert level_for(5, 0) == logging.DEBUG
    assert level_for(0, 1) == logging.WARNING
    assert level_for(0, 9) == logging.CRITICAL
    stream = _capture(quiet=1)
    logging.getLogger("engine.x").info("hidden")
    logging.getLogger("engine.x").warning("shown")
    assert "hidden" not in stream.getvalue()
    assert "shown" in stream.getvalue()


def test_filter_adds_secrets_later() -> None:
    redactor = RedactingFilter()
    redactor.add_secret("late-secret-value")
    record = logging.LogRecord("engine", logging.INFO, __file__, 1, "x %s", ("late-secret-value",),
                               None)
    redactor.filter(record)
    assert record.getMessage() == "x ***"


def test_operator_flags_parse_before_and_after_the_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--dry-run", "--max-cost-usd", "2.5", "--metrics-port", "0",
                              "--progress", "plain", "-v", "--log-format", "json"])
    assert args.dry_run
    assert args.max_cost_usd == 2.5
    assert args.metrics_port == 0
    assert args.metrics_host == "127.0.0.1"
    assert args.verbose == 1
    assert args.log_format == "json"
    top = parser.parse_args(["-qq", "status", "--json"])
    assert top.quiet == 2
    assert top.verbose == 0
    assert top.json
    assert parser.parse_args(["check", "b1", "--json"]).json


def test_error_kinds_are_bounded_labels() -> None:
    def event(message: str, state: str | None = None) -> EngineEvent:
        return EngineEvent(kind="error", job="j", message=message, state=state)

    assert error_kind(event("x", state="cost_ceiling")) == "cost_ceiling"
    assert error_kind(event("download failed: HTTP 500")) == "download"
    assert error_kind(event("create batch: HTTP 429 rate_limit: slow down")) == "api_rate_limited"
    assert error_kind(event("something new and strange")) == "other"


def test_metrics_count_events_and_snapshots() -> None:
    metrics = Metrics("j")
    metrics.on_event(EngineEvent(kind="batch_state", job="j", state="submitted/validating"))
    metrics.on_event(EngineEvent(kind="rows_applied", job="j", rows=7))
    metrics.on_event(EngineEvent(kind="error", job="j", message="download failed: x"))
    metrics.update(Snapshot(job="j", rows={"done": 7}, batches={"applied": 1}, input_tokens=10,
                            cost_usd=0.5, cost_standard_usd=1.0))
    value = metrics.registry.get_sample_value
    assert value("engine_batch_transitions_total", {"job": "j", "state": "submitted"}) == 1
    assert value("engine_row_events_total", {"job": "j", "kind": "applied"}) == 7
    assert value("engine_errors_total", {"job": "j", "kind": "download"}) == 1
    assert value("engine_rows", {"job": "j", "state": "done"}) == 7
    assert value("engine_cost_usd", {"job": "j", "pricing": "standard"}) == 1.0


def test_eta_and_plain_line() -> None:
    assert format_eta(None) == "-"
    assert format_eta(45) == "45s"
    assert format_eta(200) == "3m20s"
    assert format_eta(3720) == "1h02m"
    progress = Progress(_job(), store=None, mode="plain")  # type: ignore[arg-type]
    progress._first = Snapshot(job="j", rows={"pending": 100, "done": 0, "dead": 0}, batches={},
                               at=0.0)
    progress.snapshot = Snapshot(job="j", rows={"pending": 50, "done": 50, "dead": 0},
                                 batches={"applied": 5}, cost_usd=1.0, cost_standard_usd=2.0,
                                 at=10.0)
    assert progress.eta_s() == pytest.approx(10.0)
    line = progress.plain_line()
    assert "pending=50" in line
    assert "done=50" in line
    assert "eta 10s" in line
    assert "$1.0000" in line
    assert "$2.0000 without the batch discount" in line


def test_batch_cost_estimate_halves_with_the_discount() -> None:
    job = _job()
    standard = estimate_batch_cost(job, "gpt-4o-mini", 1_000_000, 1000, 1000, batch=False)
    assert standard == pytest.approx(0.15 + 0.60)
    assert estimate_batch_cost(job, "gpt-4o-mini", 1_000_000, 1000, 1000) == pytest.approx(
        standard / 2
    )


def test_dry_run_report_reads_well() -> None:
    report = DryRunReport(
        job="j", model="m", rows_pending=12, requests=10, rejected=2, batches=2,
        input_tokens=1234, output_tokens_per_request=100, cost_input_usd=0.1, cost_max_usd=0.2,
        cost_input_standard_usd=0.2, cost_max_standard_usd=0.4, price_known=False,
        first_batch_path="spool/j-dry-run.input.jsonl", first_batch_requests=5,
        first_batch_tokens=600, first_batch_bytes=999,
    )
    text = _fmt_dry_run(report)
    assert "nothing was submitted" in text
    assert "10 in 2 batches" in text
    assert "rejected at once:   2" in text
    assert "no price known for m" in text
    assert "spool/j-dry-run.input.jsonl (5 requests" in text
