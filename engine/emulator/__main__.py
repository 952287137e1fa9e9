"""``python -m engine.emulator``: run the emulator on its own (what tests in a subprocess use)."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.emulator.cli import add_arguments, run


def main() -> int:
    """Parse the emulator's flags and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.emulator", description="Local OpenAI Batch API emulator."
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
