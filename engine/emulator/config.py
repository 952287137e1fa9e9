"""The emulator's settings: server, clock and seed (EmulatorConfig) and injected faults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from engine.errors import ConfigError

__all__ = ["EmulatorConfig", "FaultConfig"]

_RATE_FIELDS = (
    "line_error_rate",
    "line_invalid_rate",
    "line_timeout_rate",
    "schema_break_rate",
    "length_rate",
    "http_429_rate",
    "http_500_rate",
    "http_503_rate",
    "drop_connection_rate",
)


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Faults to inject; every one is off by default and all are drawn from the seed.

    Line faults are drawn per (seed, custom_id, n-th time that custom_id was processed), so
    the same seed and the same submissions give the same faulty lines, while a retried line
    gets a fresh draw. HTTP faults are drawn from one seeded stream, one draw per API call.
    """

    line_error_rate: float = 0.0  # lines failing with 500 or 429 + error body (error file)
    line_invalid_rate: float = 0.0  # lines refused with 400 invalid_request_error (error file)
    line_timeout_rate: float = 0.0  # lines with error.code request_timeout
    schema_break_rate: float = 0.0  # 200 lines whose content violates the schema
    length_rate: float = 0.0  # 200 lines with finish_reason "length", cut content
    http_429_rate: float = 0.0  # API calls answered 429 with Retry-After
    http_500_rate: float = 0.0
    http_503_rate: float = 0.0
    drop_connection_rate: float = 0.0  # connection closed without a response
    retry_after_s: float = 0.01
    enqueued_token_limit: int | None = None  # per model, over live batches
    enqueued_request_limit: int | None = None  # requests per model, over live batches
    expire_fraction: float | None = None  # batches expire once this fraction is done
    fail_validation: bool = False  # every batch fails validation
    # Lines whose user text contains this marker are answered with content nested
    # deep_answer_depth deep (a poison answer; see responders.nested_answer).
    deep_answer_marker: str | None = None
    deep_answer_depth: int = 10_000
    # Test faults for the engine's recovery paths (see their use in server.py and state.py).
    short_output_lines: int = 0  # drop this many lines from each output file (a short file)
    create_delay_s: float = 0.0  # hold each batches.create this long before it lands

    def __post_init__(self) -> None:
        """Reject rates outside [0, 1] and rate sums that leave no room for success."""
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"faults.{name}: {value!r} is not within 0..1")
        line = (
            self.line_error_rate + self.line_invalid_rate + self.line_timeout_rate
            + self.schema_break_rate + self.length_rate
        )
        http = self.http_429_rate + self.http_500_rate + self.http_503_rate
        if line > 1.0 + 1e-9:
            raise ConfigError(f"faults: line fault rates add up to {line:.3f} > 1")
        if http + self.drop_connection_rate > 1.0 + 1e-9:
            raise ConfigError("faults: HTTP fault rates add up to more than 1")
        if self.retry_after_s < 0:
            raise ConfigError(f"faults.retry_after_s: {self.retry_after_s!r} is negative")
        if self.enqueued_token_limit is not None and self.enqueued_token_limit < 1:
            raise ConfigError("faults.enqueued_token_limit: must be at least 1")
        if self.enqueued_request_limit is not None and self.enqueued_request_limit < 1:
            raise ConfigError("faults.enqueued_request_limit: must be at least 1")
        if self.expire_fraction is not None and not 0.0 <= self.expire_fraction <= 1.0:
            raise ConfigError(f"faults.expire_fraction: {self.expire_fraction!r} not in 0..1")
        _check_test_faults(self)

    def active(self) -> dict[str, object]:
        """Return the faults that differ from the defaults (for logs and stats)."""
        default = FaultConfig()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def _check_test_faults(faults: FaultConfig) -> None:
    """Reject negative values of the short-file and held-create faults."""
    if faults.short_output_lines < 0:
        raise ConfigError(f"faults.short_output_lines: {faults.short_output_lines!r} is negative")
    if faults.create_delay_s < 0:
        raise ConfigError(f"faults.create_delay_s: {faults.create_delay_s!r} is negative")


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """How the emulator listens, how fast its clock runs, and which faults it injects."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    api_key: str | None = field(default=None, repr=False)  # None: any bearer key is accepted
    latency_s: float = 0.0  # time a batch spends in_progress before finalizing
    rate_rps: float | None = None  # and/or: requests processed per second
    completion_window_s: float = 86400.0  # a batch not done by then expires (emulated seconds)
    # The emulated clock runs this many times faster than real time: the 24 h window, file
    # expiry and ``cancelling_s`` are emulated seconds, so 3600.0 turns an hour into a second.
    # latency_s and rate_rps stay real time (they pace tests, not the API's lifecycle).
    time_scale: float = 1.0
    cancelling_s: float = 0.0  # how long a cancelled batch stays cancelling (real API: <= 10 min)
    # How long a batch stays validating, and finalizing, so a poller sees every intermediate
    # status (emulated seconds). 0 keeps the fast default: a batch may pass both between polls.
    status_hold_s: float = 0.0
    # Models the emulator knows; a line naming another gets 404 model_not_found. None: any.
    models: tuple[str, ...] | None = None
    seed: int = 0
    storage_dir: str | None = None  # files live on disk here (a removed temp dir when None)
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Answer a batch's first line, then reuse that answer (and its usage) for every other line
    # with only the ids changed: the emulator's own CPU stays out of benchmark figures. Lines
    # are drawn one by one as usual whenever a fault is configured.
    template_answers: bool = False

    def __post_init__(self) -> None:
        """Reject negative times and rates, naming the setting."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port!r} is not a TCP port")
        if self.latency_s < 0:
            raise ConfigError(f"latency_s: {self.latency_s!r} is negative")
        if self.rate_rps is not None and self.rate_rps <= 0:
            raise ConfigError(f"rate_rps: {self.rate_rps!r} must be positive")
        if self.completion_window_s <= 0:
            raise ConfigError(f"completion_window_s: {self.completion_window_s!r} not positive")
        if self.time_scale <= 0:
            raise ConfigError(f"time_scale: {self.time_scale!r} must be positive")
        if self.cancelling_s < 0:
            raise ConfigError(f"cancelling_s: {self.cancelling_s!r} is negative")
        if self.status_hold_s < 0:
            raise ConfigError(f"status_hold_s: {self.status_hold_s!r} is negative")
