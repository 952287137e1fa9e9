"""PostgreSQL unreachable a while: flaky, so not collected by default; run it explicitly:

    ENGINE_REQUIRE_SERVICES=1 .venv/bin/python -m pytest -q tests/reliability/pending_db_faults.py

With the store fixes (lost connections transient on PostgreSQL, create_draft idempotent) it
passed about nine runs in ten. The other run the worker exited 0 with exactly one claim's
worth of rows (40) neither done nor dead and no error logged. Likely cause, fixed since in
Store.claim: a claim whose COMMIT landed but whose outcome was lost was retried under the same
token and claimed 40 more rows, stranding the first 40 as claimed until their lease ran out
(after the run went idle). Not yet run enough times since that fix to call it stable; run it
in a loop and move it into test_db_faults.py when it holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PG_DSN, _target
from tests.reliability import dbfaults


@pytest.mark.parametrize("outage_s", [1.5])
async def test_postgresql_unreachable_for_a_while(tmp_path: Path, outage_s: float) -> None:
    await dbfaults.scenario_database_unreachable(
        _target("postgresql", PG_DSN), tmp_path, outage_s
    )
