"""Shared fixtures: the live databases every conformance test runs against.

SQLite always runs. PostgreSQL and MariaDB run on 127.0.0.1; when a server is absent the test
skips with the reason, unless ENGINE_REQUIRE_SERVICES=1 (CI), where it fails instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MYSQL_DSN, PG_DSN, DbTarget, _target


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbTarget]:
    """Every live database in turn (SQLite always; servers skip or fail when absent)."""
    if request.param == "sqlite":
        yield DbTarget("sqlite", f"Driver=SQLite3;Database={tmp_path / 'engine.db'}", "t_")
    elif request.param == "postgresql":
        yield _target("postgresql", PG_DSN)
    else:
        yield _target("mysql", MYSQL_DSN)


@pytest.fixture(params=["postgresql", "mysql"])
def server_db(request: pytest.FixtureRequest) -> DbTarget:
    """Each live server database (skips or fails when absent, like ``db``)."""
    if request.param == "postgresql":
        return _target("postgresql", PG_DSN)
    return _target("mysql", MYSQL_DSN)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> DbTarget:
    """An empty SQLite database file."""
    return DbTarget("sqlite", f"Driver=SQLite3;Database={tmp_path / 'engine.db'}", "t_")
