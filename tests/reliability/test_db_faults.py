"""Database faults: connections killed server-side mid-run, the database unreachable a while.

- PostgreSQL: psqlODBC reports a connection killed by pg_terminate_backend, or dropped by the
  network, as SQLSTATE HY000 ("The connection has been lost", "internal SAVEPOINT failed")
  on the next statement; the dialect classifies those messages as transient.
- MariaDB: while the server is unreachable Connector/ODBC reports "Can't connect to server"
  as HY000 with native code 2002 (2003 for a remote host): transient, like 2006/2013.
- Both: a statement stopped by the query timeout (57014, 1969) while stuck behind locks on a
  loaded machine is transient too; once the engine runs, transient failures are retried for
  StoreSettings.outage_s (120 s by default), so an outage of a minute costs nothing.
- Both: a connection lost during COMMIT is ambiguous. retry_store re-runs the transaction,
  so Store.create_draft finds its own batch row when the first commit had landed instead of
  failing on the duplicate primary key (the MariaDB KILL case hit it about one run in three).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import dbfaults
from tests.support import DbTarget


async def test_connections_killed_mid_run(server_db: DbTarget, tmp_path: Path) -> None:
    await dbfaults.scenario_connections_killed(server_db, tmp_path)


# 12 s is more than the quick attempts of one transaction's retry last (about 5 s): only the
# store's outage budget (StoreSettings.outage_s) carries the run across it.
@pytest.mark.parametrize("outage_s", [1.5, 12.0])
async def test_database_unreachable_for_a_while(
    server_db: DbTarget, tmp_path: Path, outage_s: float
) -> None:
    await dbfaults.scenario_database_unreachable(server_db, tmp_path, outage_s)
