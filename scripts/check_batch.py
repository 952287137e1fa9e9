"""Check one batch and apply its results if it has finished: the engine used as a library.

OPENAI_API_KEY=... python scripts/check_batch.py BATCH_ID --job resumes --db demo.db
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from engine import ApiSettings, StoreSettings
from engine.engine import Engine
from engine.jobfile import load_job


async def main(batch_id: str, job: str, db: str) -> int:
    """Open the engine, poll the batch once, apply it when finished, print its state."""
    loaded = load_job(job)
    async with Engine(
        loaded.spec, store=StoreSettings.sqlite(db), api=ApiSettings.from_env()
    ) as engine:
        record = await engine.check_batch(batch_id)
    print(f"{record.remote_batch_id}: {record.state} ({record.remote_status}), "
          f"{record.request_completed}/{record.request_total} completed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch_id", help="local or remote batch id")
    parser.add_argument("--job", default="resumes", help="job file or bundled job name")
    parser.add_argument("--db", default="batch-engine.db", help="SQLite file")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.batch_id, args.job, args.db)))
