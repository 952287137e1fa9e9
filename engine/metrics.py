"""An optional Prometheus endpoint (``run --metrics-port``): the engine's figures, scraped.

prometheus-client is used rather than a hand-written aiohttp handler: its exposition format,
histogram buckets and label escaping are what Prometheus expects, it has no dependencies, and
its server runs in a daemon thread, so a slow scrape never waits on the event loop. Each
``Metrics`` has its own registry (never the process-global one), so tests and embedding
applications can hold several.

Exposed (every series labelled ``job``):

* ``engine_rows{state}`` and ``engine_batches{state}``: gauges from the database snapshot
* ``engine_tokens{kind}``: input, cached, output, reasoning (applied and finished batches)
* ``engine_cost_usd{pricing}``: ``batch`` (what is billed) and ``standard`` (no discount)
* ``engine_batch_transitions_total{state}``, ``engine_row_events_total{kind}``
* ``engine_errors_total{kind}``: errors the engine handled, by kind
* ``engine_api_call_seconds{call}``: latency of each Batch API call (retries included)
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from engine.pipeline import EngineEvent
    from engine.progress import Snapshot

__all__ = ["API_CALLS", "Metrics", "error_kind"]

log = logging.getLogger("engine.metrics")

API_CALLS = (
    "upload_file", "download_file", "delete_file", "create_batch", "retrieve_batch",
    "cancel_batch",
)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_KINDS = (
    ("cost ceiling", "cost_ceiling"),
    ("download failed", "download"),
    ("submission refused", "submission_refused"),
    ("timed out", "api_timeout"),
    ("connection failed", "api_connection"),
    ("http 429", "api_rate_limited"),
    ("http 5", "api_server_error"),
    ("poll failed", "poll"),
)
_NOT_WORD = re.compile(r"[^a-z0-9_]+")


def error_kind(event: EngineEvent) -> str:
    """Return a short, bounded label for an error event (never its free-text message)."""
    if event.state:
        return _NOT_WORD.sub("_", event.state.lower())[:40]
    text = event.message.lower()
    for needle, kind in _KINDS:
        if needle in text:
            return kind
    return "other"


class Metrics:
    """The engine's Prometheus series for one job; feed it events and snapshots."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rows = Gauge("engine_rows", "Rows (items) by state", ["job", "state"], registry=r)
        self.batches = Gauge("engine_batches", "Batches by local state", ["job", "state"],
                             registry=r)
        self.tokens = Gauge("engine_tokens", "Tokens billed so far, by kind", ["job", "kind"],
                            registry=r)
        self.cost = Gauge("engine_cost_usd", "USD so far: batch (billed) and standard prices",
                          ["job", "pricing"], registry=r)
        self.transitions = Counter("engine_batch_transitions", "Batch state changes seen",
                                   ["job", "state"], registry=r)
        self.row_events = Counter("engine_row_events", "Rows applied, requeued or dead",
                                  ["job", "kind"], registry=r)
        self.errors = Counter("engine_errors", "Errors the engine handled, by kind",
                              ["job", "kind"], registry=r)
        self.api_latency = Histogram("engine_api_call_seconds", "Batch API call latency",
                                     ["call"], buckets=_LATENCY_BUCKETS, registry=r)
        self.api_failures = Counter("engine_api_call_failures", "Batch API calls that raised",
                                    ["call", "error"], registry=r)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- feeding ----------------------------------------------------------------------------

    def on_event(self, event: EngineEvent) -> None:
        """Count one engine event."""
        if event.kind == "batch_state" and event.state:
            self.transitions.labels(self.job, event.state.split("/", 1)[0]).inc()
        elif event.kind in ("rows_applied", "rows_requeued", "rows_dead"):
            self.row_events.labels(self.job, event.kind.removeprefix("rows_")).inc(event.rows)
        elif event.kind == "error":
            self.errors.labels(self.job, error_kind(event)).inc()

    def update(self, snap: Snapshot) -> None:
        """Set the gauges from a database snapshot."""
        for state, count in snap.rows.items():
            self.rows.labels(self.job, state).set(count)
        for state, count in snap.batches.items():
            self.batches.labels(self.job, state).set(count)
        for kind, value in (
            ("input", snap.input_tokens), ("cached", snap.cached_tokens),
            ("output", snap.output_tokens), ("reasoning", snap.reasoning_tokens),
        ):
            self.tokens.labels(self.job, kind).set(value)
        self.cost.labels(self.job, "batch").set(snap.cost_usd)
        self.cost.labels(self.job, "standard").set(snap.cost_standard_usd)

    def instrument(self, api: Any) -> None:
        """Time every Batch API call of one ``BatchApi`` instance (wraps its methods in place)."""
        for name in API_CALLS:
            method = getattr(api, name, None)
            if method is not None:
                setattr(api, name, self._timed(name, method))

    def _timed(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        """Wrap one coroutine method with the latency histogram."""
        histogram = self.api_latency.labels(name)

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            except Exception as exc:
                self.api_failures.labels(name, type(exc).__name__).inc()
                raise
            finally:
                histogram.observe(time.perf_counter() - started)

        return timed

    # -- serving ----------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on addr:port in a daemon thread; return the port (0 picks one)."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        bound = int(self._server.server_address[1])
        log.info("metrics: serving Prometheus metrics on http://%s:%d/metrics", addr, bound)
        return bound

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
