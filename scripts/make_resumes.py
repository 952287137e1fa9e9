#!/usr/bin/env python3
"""Create the ``candidates`` table and fill it with deterministic synthetic resumes.

Nothing else runs: no engine, no API. Afterwards any command (``run``, ``submit``, ``check``,
the demo) can be tried on that table. Exit codes: 0 done, 1 database error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from engine.errors import ConfigError, StoreError
from engine.masking import dsn_secrets, mask
from engine.resumes_data import fill_database
from engine.settings import redact_dsn

DESCRIPTION = """\
Create the table (default `candidates`) if it is absent and fill it with N synthetic resumes,
shaped like the bundled `resumes` job expects: userid INT PRIMARY KEY, resume_text, a
LastProcessed timestamp left NULL (so every row is pending), and one empty column per
extracted field (FullName, Email, Phone, ..., Skills and other lists as JSON text).

The ground truth of each resume goes to a side table `<table>_truth` (userid, truth_json) so
the demo can score the extraction. The same --seed always gives the same rows, byte for
byte; new rows get userids after the largest one already in the table (use --replace to
start over). The column types follow the database the DSN's Driver= names: SQLite3,
PostgreSQL, MariaDB/MySQL or SQL Server (Microsoft ODBC Driver 17/18, FreeTDS).
"""

EPILOG = """\
examples:
  python scripts/make_resumes.py --rows 2000 --db demo.db
  python scripts/make_resumes.py --rows 500 --seed 7 \\
      --dsn "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=test;Uid=postgres;"
  ENGINE_DSN="Driver={MariaDB Unicode};Server=127.0.0.1;Database=test;Uid=root;Pwd=;" \\
      python scripts/make_resumes.py --rows 100
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog="make_resumes.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, required=True, metavar="N",
                        help="how many resumes to insert")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="an SQLite file (created when absent)")
    where.add_argument("--dsn", metavar="DSN",
                       help="an ODBC connection string (default: $ENGINE_DSN)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--table", default="candidates",
                        help="table name, optionally schema-qualified (default candidates)")
    parser.add_argument("--replace", action="store_true",
                        help="delete the rows already in the table and its truth table first")
    parser.add_argument("--chunk-rows", type=int, default=500, metavar="N",
                        help="rows per insert transaction (default 500)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, fill the table, print one summary line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be >= 0")
    if args.db:
        dsn = f"Driver=SQLite3;Database={args.db}"
    else:
        dsn = args.dsn or os.environ.get("ENGINE_DSN", "")
        if not dsn:
            parser.error("give --db PATH or --dsn DSN (or set ENGINE_DSN)")
    try:
        result = fill_database(
            dsn, args.rows, seed=args.seed, table=args.table, replace=args.replace,
            chunk_rows=args.chunk_rows,
        )
    except ConfigError as exc:
        print(f"make_resumes: {mask(str(exc), dsn_secrets(dsn))}", file=sys.stderr)
        return 2
    except StoreError as exc:
        secrets = dsn_secrets(dsn)
        print(f"make_resumes: database error on {redact_dsn(dsn)}: {mask(str(exc), secrets)}",
              file=sys.stderr)
        return 1
    print(
        f"make_resumes: {result.rows} resumes (userid {result.first_id}..{result.last_id}, "
        f"seed {args.seed}) in {result.table} and {result.table}_truth on {result.dialect} "
        f"in {result.seconds:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
