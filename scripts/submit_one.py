"""Submit one batch of the job and print its remote id: the engine used as a library.

OPENAI_API_KEY=... python scripts/submit_one.py --job resumes --db demo.db
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from engine import ApiSettings, StoreSettings
from engine.engine import Engine
from engine.jobfile import load_job


async def main(job: str, db: str, batch_size: int) -> int:
    """Open the engine, submit one batch, print its id."""
    loaded = load_job(job)
    async with Engine(
        loaded.spec,
        store=StoreSettings.sqlite(db),
        api=ApiSettings.from_env(),
        settings=loaded.engine_settings(batch_size=batch_size),
    ) as engine:
        await engine.store.init_db()
        record = await engine.submit_one()
    if record is None:
        print("nothing pending")
        return 0
    print(record.remote_batch_id)
    return 0 if record.state == "submitted" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="resumes", help="job file or bundled job name")
    parser.add_argument("--db", default="batch-engine.db", help="SQLite file")
    parser.add_argument("--batch-size", type=int, default=100, help="requests in the batch")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.job, args.db, args.batch_size)))
