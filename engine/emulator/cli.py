"""The emulator's command-line hook: ``add_arguments`` and ``run`` (wired into engine.cli)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from engine.emulator.config import EmulatorConfig, FaultConfig
from engine.emulator.server import Emulator

__all__ = ["add_arguments", "config_from_args", "run"]

_RATE_FLAGS = (
    ("line_error_rate", "fraction of lines failing with 500/429 (error file)"),
    ("line_invalid_rate", "fraction of lines refused with 400 invalid_request_error"),
    ("line_timeout_rate", "fraction of lines failing with request_timeout"),
    ("schema_break_rate", "fraction of 200 lines whose content violates the schema"),
    ("length_rate", "fraction of 200 lines cut short with finish_reason length"),
    ("http_429_rate", "fraction of API calls answered 429 with Retry-After"),
    ("http_500_rate", "fraction of API calls answered 500"),
    ("http_503_rate", "fraction of API calls answered 503"),
    ("drop_connection_rate", "fraction of API calls whose connection is dropped"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags (server, clock, seed, and one flag per fault)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--latency-s", type=float, default=0.0,
                        help="seconds a batch spends in_progress")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests processed per second (per batch)")
    parser.add_argument("--expire-after-s", type=float, default=86400.0,
                        help="batches not finished this long after creation expire "
                             "(emulated seconds)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="emulated seconds per real second for the window, file expiry and "
                             "cancelling (3600: an hour a second)")
    parser.add_argument("--cancelling-s", type=float, default=0.0,
                        help="emulated seconds a cancelled batch stays cancelling")
    parser.add_argument("--status-hold-s", type=float, default=0.0,
                        help="emulated seconds a batch stays validating and finalizing")
    parser.add_argument("--models", default=None,
                        help="comma-separated models known; lines naming others get 404 "
                             "(default: any model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--api-key", default=None,
                        help="the only bearer key accepted (default: any key)")
    parser.add_argument("--storage-dir", default=None,
                        help="keep files here (default: a temporary dir, removed on exit)")
    parser.add_argument("--template-answers", action="store_true",
                        help="reuse each batch's first answer for every line (benchmarks)")
    faults = parser.add_argument_group("faults (all off by default)")
    for name, text in _RATE_FLAGS:
        faults.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=text)
    faults.add_argument("--retry-after-s", type=float, default=0.01,
                        help="Retry-After sent with injected 429s")
    faults.add_argument("--enqueued-token-limit", type=int, default=None,
                        help="enqueued tokens per model over live batches")
    faults.add_argument("--enqueued-request-limit", type=int, default=None,
                        help="enqueued requests per model over live batches")
    faults.add_argument("--expire-fraction", type=float, default=None,
                        help="batches expire once this fraction of lines is done")
    faults.add_argument("--fail-validation", action="store_true",
                        help="every batch fails validation")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the EmulatorConfig the flags describe."""
    faults = FaultConfig(
        **{name: getattr(args, name) for name, _ in _RATE_FLAGS},
        retry_after_s=args.retry_after_s,
        enqueued_token_limit=args.enqueued_token_limit,
        enqueued_request_limit=args.enqueued_request_limit,
        expire_fraction=args.expire_fraction,
        fail_validation=args.fail_validation,
    )
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        latency_s=args.latency_s,
        rate_rps=args.rate,
        completion_window_s=args.expire_after_s,
        time_scale=args.time_scale,
        cancelling_s=args.cancelling_s,
        status_hold_s=args.status_hold_s,
        models=None if args.models is None else tuple(
            m.strip() for m in args.models.split(",") if m.strip()),
        seed=args.seed,
        storage_dir=args.storage_dir,
        faults=faults,
        template_answers=args.template_answers,
    )


async def _serve(config: EmulatorConfig) -> None:
    """Serve until SIGINT or SIGTERM, printing the base URL once it listens."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        async with Emulator(config) as emulator:
            print(f"EMULATOR_URL={emulator.base_url}", flush=True)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Start the emulator, print ``EMULATOR_URL=<base_url>``, serve until a signal; exit 0."""
    asyncio.run(_serve(config_from_args(args)))
    return 0
