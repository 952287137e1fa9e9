"""Database faults: connections killed server-side mid-run, the database unreachable a while.

- PostgreSQL: psqlODBC reports a connection killed by pg_terminate_backend, or dropped by the
  network, as SQLSTATE HY000 ("The connection has been lost", "internal SAVEPOINT failed")
  on the next statement; the dialect classifies those messages as transient.
- MariaDB: while the server is unreachable Connector/ODBC reports "Can't connect to server"
  as HY000 with native code 2002 (2003 for a remote host): transient, like 2006/2013.
- Both: a connection lost during COMMIT is ambiguous. retry_store re-runs the transaction,
  so Store.create_draft finds its own batch row when the first commit had landed instead of
  failing on the duplicate primary key (the MariaDB KILL case hit it about one run in three).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import MYSQL_DSN, DbTarget, _target
from tests.reliability import dbfaults


async def test_connections_killed_mid_run(server_db: DbTarget, tmp_path: Path) -> None:
    await dbfaults.scenario_connections_killed(server_db, tmp_path)


@pytest.mark.parametrize("outage_s", [1.5])
async def test_database_unreachable_for_a_while(tmp_path: Path, outage_s: float) -> None:
    # MariaDB only: PostgreSQL's run is in pending_db_faults.py (it ends early now and then).
    await dbfaults.scenario_database_unreachable(_target("mysql", MYSQL_DSN), tmp_path, outage_s)
