"""Database faults: connections killed server-side mid-run, the database unreachable a while.

Failing today, so not collected by default (the name does not start with test_); run it
explicitly:

    ENGINE_REQUIRE_SERVICES=1 .venv/bin/python -m pytest -q tests/reliability/pending_db_faults.py

- PostgreSQL: psqlODBC reports a connection killed by pg_terminate_backend, and one dropped
  by the network, as SQLSTATE HY000 "The connection has been lost" on the next statement.
  PostgresDialect.is_transient only knows 08xxx and its transient_states, so the store raises
  StoreError (not TransientStoreError), retry_store gives up at once, and the engine exits 1.
- MariaDB: while the server is unreachable, Connector/ODBC reports "Can't connect to server"
  as SQLSTATE HY000 with native code 2002 (2003 for a remote host). MysqlDialect's
  transient_codes hold 2006/2013 only, so a reconnect during an outage is fatal.
- Both (MariaDB seen; any dialect can hit it): a connection lost during COMMIT is ambiguous.
  retry_store re-runs the whole transaction, and Store.create_draft's retry fails on its own
  INSERT of the batch row (duplicate primary key, MariaDB 1062) when the first commit had in
  fact landed; the StoreError stops the engine. create_draft (engine/store/store.py) must be
  idempotent: treat an existing batch row with the same id as done (insert-ignore, then read
  back the bound items). The MariaDB KILL case fails this way about one run in three.

With the dialect fixes applied locally (HY000 "connection has been lost" / "server closed the
connection" transient on PostgreSQL, 2002/2003 transient on MariaDB), both PostgreSQL tests
pass and the MariaDB ones fail only on the create_draft duplicate. Once fixed, rename this
file to test_db_faults.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DbTarget
from tests.reliability import dbfaults


async def test_connections_killed_mid_run(server_db: DbTarget, tmp_path: Path) -> None:
    await dbfaults.scenario_connections_killed(server_db, tmp_path)


@pytest.mark.parametrize("outage_s", [1.5])
async def test_database_unreachable_for_a_while(
    server_db: DbTarget, tmp_path: Path, outage_s: float
) -> None:
    await dbfaults.scenario_database_unreachable(server_db, tmp_path, outage_s)
