"""Progress of a run: a live rich display in a terminal, plain log lines anywhere else.

``Progress`` listens to the engine's events (batch state changes, rows applied, requeued and
dead, errors) and, every ``interval_s``, reads a ``Snapshot`` of the database (rows and
batches by state, tokens, cost with and without the batch discount). In a terminal it redraws
one table in place and routes log records above it; otherwise it logs one ``progress:`` line
per interval, so a log file or a CI job shows the same figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from engine.job import JobSpec
from engine.pricing import cost_usd
from engine.results import Usage

if TYPE_CHECKING:  # the status command needs neither the OpenAI client nor the pipeline
    from engine.pipeline import EngineEvent
    from engine.store import Store

__all__ = ["Progress", "ProgressMode", "Snapshot", "format_eta", "take_snapshot"]

log = logging.getLogger("engine.progress")

ProgressMode = Literal["auto", "rich", "plain", "none"]
ROW_STATES = ("pending", "claimed", "submitted", "done", "dead")
BATCH_STATES = (
    "draft", "uploaded", "submitted", "finished", "applied", "abandoned", "quarantined"
)
# Batches read per snapshot: a day of 1,000-row batches over a million rows stays far below.
SNAPSHOT_BATCHES = 50_000


@dataclass(frozen=True)
class Snapshot:
    """Rows and batches of one job by state, with the tokens and cost so far."""

    job: str
    rows: dict[str, int]
    batches: dict[str, int]
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated_live_tokens: int = 0
    cost_usd: float = 0.0
    cost_standard_usd: float = 0.0
    at: float = field(default_factory=time.time)

    @property
    def remaining(self) -> int:
        """Rows not yet done or dead."""
        return sum(self.rows.get(s, 0) for s in ("pending", "claimed", "submitted"))

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready view."""
        return {
            "job": self.job,
            "rows": dict(self.rows),
            "batches": dict(self.batches),
            "tokens": {
                "input": self.input_tokens,
                "cached": self.cached_tokens,
                "output": self.output_tokens,
                "reasoning": self.reasoning_tokens,
                "estimated_live_input": self.estimated_live_tokens,
            },
            "cost_usd": round(self.cost_usd, 6),
            "cost_standard_usd": round(self.cost_standard_usd, 6),
        }


async def take_snapshot(store: Store, job: JobSpec) -> Snapshot:
    """Read rows by state and batch totals of a job from the database."""
    rows = await store.counts(job.name)
    records = await store.list_batches(job.name, limit=SNAPSHOT_BATCHES)
    batches = dict.fromkeys(BATCH_STATES, 0)
    totals = Counter[str]()
    cost = standard = 0.0
    for record in records:
        batches[record.state] = batches.get(record.state, 0) + 1
        totals["input"] += record.input_tokens
        totals["cached"] += record.cached_tokens
        totals["output"] += record.output_tokens
        totals["reasoning"] += record.reasoning_tokens
        if record.state in ("draft", "uploaded", "submitted"):
            totals["live"] += record.estimated_tokens
        usage = Usage(
            record.input_tokens, record.cached_tokens, record.output_tokens,
            record.reasoning_tokens,
        )
        if record.state == "applied":
            cost += record.cost_usd
        elif record.input_tokens or record.output_tokens:
            # Finished, not applied yet: its cost is recorded only once applied.
            cost += cost_usd(record.model, usage, batch=True, overrides=job.pricing)
        if record.input_tokens or record.output_tokens:
            standard += cost_usd(record.model, usage, batch=False, overrides=job.pricing)
    return Snapshot(
        job=job.name,
        rows={state: rows.get(state, 0) for state in ROW_STATES},
        batches=batches,
        input_tokens=totals["input"],
        cached_tokens=totals["cached"],
        output_tokens=totals["output"],
        reasoning_tokens=totals["reasoning"],
        estimated_live_tokens=totals["live"],
        cost_usd=cost,
        cost_standard_usd=standard,
    )


def format_eta(seconds: float | None) -> str:
    """Render an ETA as 1h02m, 3m20s or 45s; '-' when unknown."""
    if seconds is None or seconds < 0 or seconds != seconds:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Follows one run and shows it; use as ``async with Progress(...) as progress:``."""

    def __init__(
        self,
        job: JobSpec,
        store: Store,
        *,
        mode: ProgressMode = "auto",
        interval_s: float | None = None,
        stream: Any = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        line_every_s: float = 30.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.job = job
        self._store = store
        self._stream = stream or sys.stdout
        if mode == "auto":
            mode = "rich" if _isatty(self._stream) else "plain"
        self.mode: ProgressMode = mode
        # How often the database is read; plain lines are written every line_every_s.
        self.interval_s = interval_s if interval_s is not None else (
            1.0 if mode == "rich" else min(5.0, line_every_s)
        )
        self.line_every_s = line_every_s
        self._say = say or (lambda line: log.info("%s", line))
        self._on_snapshot = on_snapshot
        self.started = time.monotonic()
        self.snapshot: Snapshot | None = None
        self._first: Snapshot | None = None
        self.rows_applied = 0
        self.rows_requeued = 0
        self.rows_dead = 0
        self.errors = 0
        self.batch_changes = 0
        self.recent: deque[str] = deque(maxlen=6)
        self._task: asyncio.Task[None] | None = None
        self._live: Any = None
        self._old_handlers: list[logging.Handler] | None = None

    # -- events ---------------------------------------------------------------------------

    def on_event(self, event: EngineEvent) -> None:
        """Count one engine event (a synchronous callback: never blocks)."""
        if event.kind == "batch_state":
            self.batch_changes += 1
            remote = f" ({event.remote_batch_id})" if event.remote_batch_id else ""
            self.recent.append(f"batch {event.batch_id}{remote} -> {event.state}")
        elif event.kind == "rows_applied":
            self.rows_applied += event.rows
        elif event.kind == "rows_requeued":
            self.rows_requeued += event.rows
        elif event.kind == "rows_dead":
            self.rows_dead += event.rows
            self.recent.append(f"{event.rows} rows dead: {event.message[:100]}")
        elif event.kind == "error":
            self.errors += 1
            self.recent.append(f"{event.state or 'error'}: {event.message[:120]}")

    # -- figures --------------------------------------------------------------------------

    def eta_s(self) -> float | None:
        """Seconds until nothing remains, at the rate rows were settled since the start."""
        if self.snapshot is None or self._first is None:
            return None
        now, first = self.snapshot, self._first
        settled = (now.rows["done"] + now.rows["dead"]) - (first.rows["done"] + first.rows["dead"])
        elapsed = now.at - first.at
        if now.remaining == 0:
            return 0.0
        if settled <= 0 or elapsed <= 0:
            return None
        return now.remaining / (settled / elapsed)

    def plain_line(self) -> str:
        """One log line with the run's figures."""
        snap = self.snapshot
        if snap is None:
            return f"progress: job {self.job.name}: starting"
        rows = " ".join(f"{s}={snap.rows.get(s, 0)}" for s in ROW_STATES)
        live = sum(snap.batches.get(s, 0) for s in ("draft", "uploaded", "submitted", "finished"))
        return (
            f"progress: job {snap.job}: rows {rows}; batches live={live} "
            f"applied={snap.batches.get('applied', 0)}; tokens in={snap.input_tokens} "
            f"out={snap.output_tokens}; cost ${snap.cost_usd:.4f} "
            f"(${snap.cost_standard_usd:.4f} without the batch discount); "
            f"eta {format_eta(self.eta_s())}"
        )

    def render(self) -> Any:
        """Build the rich renderable of the live display."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        snap = self.snapshot
        elapsed = format_eta(time.monotonic() - self.started)
        title = f"batch-engine · job {self.job.name} · {self.job.model} · {elapsed}"
        if snap is None:
            return Text(f"{title}: reading the database ...")
        rows = Table(title=title, title_justify="left", expand=False)
        for state in ROW_STATES:
            rows.add_column(state, justify="right")
        rows.add_column("eta", justify="right")
        rows.add_row(*(f"{snap.rows.get(s, 0):,}" for s in ROW_STATES), format_eta(self.eta_s()))
        batches = Table(show_header=True, expand=False)
        for state in BATCH_STATES:
            batches.add_column(f"batches {state}" if state == "draft" else state, justify="right")
        batches.add_row(*(f"{snap.batches.get(s, 0):,}" for s in BATCH_STATES))
        money = Table(show_header=True, expand=False)
        for name in ("tokens in", "cached", "out", "cost (batch)", "without discount"):
            money.add_column(name, justify="right")
        money.add_row(
            f"{snap.input_tokens:,}", f"{snap.cached_tokens:,}", f"{snap.output_tokens:,}",
            f"${snap.cost_usd:,.4f}", f"${snap.cost_standard_usd:,.4f}",
        )
        this_run = Text(
            f"this run: applied {self.rows_applied:,}, requeued {self.rows_requeued:,}, "
            f"dead {self.rows_dead:,}, errors {self.errors}"
        )
        recent = Text("\n".join(self.recent), style="dim")
        return Group(rows, batches, money, this_run, recent)

    # -- lifecycle ------------------------------------------------------------------------

    async def refresh(self) -> Snapshot:
        """Read a new snapshot and show it."""
        snap = await take_snapshot(self._store, self.job)
        if self._first is None:
            self._first = snap
        self.snapshot = snap
        if self._on_snapshot is not None:
            self._on_snapshot(snap)
        if self._live is not None:
            self._live.update(self.render())
        return snap

    async def __aenter__(self) -> Progress:
        """Start the display and its refresh task."""
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live
            from rich.logging import RichHandler

            from engine.logs import replace_handler

            console = Console(file=self._stream)
            self._old_handlers = replace_handler(
                RichHandler(console=console, show_path=False, markup=False)
            )
            self._live = Live(self.render(), console=console, refresh_per_second=4,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        if self.mode != "none" or self._on_snapshot is not None:
            self._task = asyncio.create_task(self._loop(), name="engine.progress")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop refreshing, show the final figures once, and restore logging."""
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            if self._task is not None and exc_type is None:
                with contextlib.suppress(Exception):  # a last refresh must not mask the result
                    await self.refresh()
                    if self.mode == "plain":
                        self._say(self.plain_line())
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None
            if self._old_handlers is not None:
                from engine.logs import restore_handlers

                restore_handlers(self._old_handlers)
                self._old_handlers = None

    async def _loop(self) -> None:
        """Refresh every interval; a failed read is logged and retried, never fatal."""
        next_line = time.monotonic()
        while True:
            try:
                await self.refresh()
                if self.mode == "plain" and time.monotonic() >= next_line:
                    self._say(self.plain_line())
                    next_line = time.monotonic() + self.line_every_s
            except Exception as exc:  # the display must never stop the engine
                log.warning("progress: could not read the database: %s", exc)
            await asyncio.sleep(self.interval_s)


def _isatty(stream: Any) -> bool:
    """Whether a stream is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
