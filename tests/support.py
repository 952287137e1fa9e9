"""Live database targets shared by tests/conftest.py, the tests and scripts/chaos.py.

SQLite always runs. PostgreSQL and MariaDB run on 127.0.0.1; when a server is absent a test
skips with the reason, unless ENGINE_REQUIRE_SERVICES=1 (CI), where it fails instead.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest

PG_DSN = os.environ.get(
    "ENGINE_TEST_PG_DSN",
    "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=test;Uid=postgres;",
)
MYSQL_DSN = os.environ.get(
    "ENGINE_TEST_MYSQL_DSN",
    "Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=test;Uid=root;Pwd=;",
)
REQUIRE_SERVICES = os.environ.get("ENGINE_REQUIRE_SERVICES") == "1"


@dataclass(frozen=True)
class DbTarget:
    """One live database for a test: its dialect, DSN and a unique table-name prefix."""

    dialect: str
    dsn: str
    prefix: str  # unique per test, so tests never see each other's tables


def _reachable(dsn: str) -> str | None:
    """Return None when a plain pyodbc connection works, else the reason it does not."""
    import pyodbc

    try:
        conn = pyodbc.connect(dsn, timeout=3)
    except pyodbc.Error as exc:
        return str(exc)
    conn.close()
    return None


_reach_cache: dict[str, str | None] = {}


def _target(dialect: str, dsn: str) -> DbTarget:
    """Return a target for a server database, skipping or failing when it is absent."""
    if dsn not in _reach_cache:
        _reach_cache[dsn] = _reachable(dsn)
    reason = _reach_cache[dsn]
    if reason is not None:
        message = f"{dialect} server not reachable: {reason}"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} (ENGINE_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return DbTarget(dialect, dsn, f"t{uuid.uuid4().hex[:10]}_")
