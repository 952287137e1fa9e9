"""``doctor``: every precondition of a run checked in order, one clear line each.

It does what the old ``test_config.py`` did (configuration and database reachable) and more:
the ODBC driver, the engine's tables, the source table and columns, the API and its key.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from engine.errors import EngineError
from engine.masking import dsn_secrets, mask
from engine.settings import ApiSettings, StoreSettings, redact_dsn

__all__ = ["run_checks"]

# Literal secrets of this doctor run (the API key, the DSN's passwords), masked in every line.
_secrets: list[str] = []


def _line(ok: bool, name: str, detail: str, *, warn: bool = False) -> bool:
    """Print one check's outcome and return it (a warning passes, and says so)."""
    mark = "warn" if warn else "ok  " if ok else "FAIL"
    print(f"{mark} {name:<14} {mask(detail, _secrets)}", flush=True)
    return ok


def _pricing_line(spec: Any) -> None:
    """Say what the job's model costs, or warn that costs will show as 0."""
    from engine.pricing import BATCH_DISCOUNT, price_for

    try:
        price = price_for(spec.model, spec.pricing)
    except EngineError as exc:
        _line(False, "pricing", str(exc))
        return
    if price is None:
        _line(True, "pricing", f"no price for {spec.model}: costs show as $0 and --max-cost-usd "
              "refuses to run; set the job's [pricing]", warn=True)
        return
    _line(True, "pricing", f"{spec.model}: ${price.input}/${price.output} per 1M input/output "
          f"tokens, x{BATCH_DISCOUNT} in batches")


async def _job_lines(store: Any, spec: Any) -> bool:
    """Check that the key identifies one row and that the job name and columns are its own."""
    try:
        problems = await store.key_problems(spec)
    except EngineError as exc:
        problems = [str(exc)]
    ok = True
    for problem in problems:
        ok &= _line(False, "source key", problem)
    if not problems:
        _line(True, "source key", f"{spec.source.key_column} identifies exactly one row")
    try:
        clashes = await store.job_problems(spec, record=False)
    except EngineError as exc:
        clashes = [f"{exc} (run 'init-db')"]
    for clash in clashes:
        ok &= _line(False, "job identity", clash)
    if not clashes:
        _line(True, "job identity", f"{spec.name}: recorded or new, no active job writes its "
              "columns")
    return ok


async def run_checks(
    args: argparse.Namespace,
    load: Callable[[argparse.Namespace], Any],
    store_settings: Callable[[argparse.Namespace, Any], StoreSettings],
) -> bool:
    """Run every check; True when all pass. Later checks are skipped when they cannot run."""
    import pyodbc

    from engine.batch_api import BatchApi
    from engine.store import Store
    from engine.store.dialects import driver_name

    _secrets[:] = [os.environ.get("OPENAI_API_KEY", ""), *dsn_secrets(getattr(args, "dsn", None)),
                   *dsn_secrets(os.environ.get("ENGINE_DSN"))]
    try:
        loaded = load(args)
    except EngineError as exc:
        return _line(False, "job file", str(exc))
    _line(True, "job file", f"{loaded.origin}: job {loaded.spec.name}, model {loaded.spec.model}")
    _pricing_line(loaded.spec)
    ok = True
    try:
        settings = store_settings(args, loaded)
    except EngineError as exc:
        return _line(False, "database", str(exc))
    _secrets.extend(dsn_secrets(settings.dsn))
    driver = driver_name(settings.dsn)
    installed = pyodbc.drivers()
    if driver is None:
        ok &= _line(True, "odbc driver", "DSN names no driver (a system DSN is used)")
    elif driver in installed:
        ok &= _line(True, "odbc driver", driver)
    else:
        return _line(
            False, "odbc driver",
            f"{driver!r} is not installed; installed: {', '.join(installed) or 'none'}",
        )
    try:
        store = await Store.open(settings)
    except EngineError as exc:
        return _line(False, "database", f"{redact_dsn(settings.dsn)}: {exc}")
    try:
        try:
            counts = await store.counts(loaded.spec.name)
            ok &= _line(True, "database", f"{store.dialect_name}; rows by state {counts}")
        except EngineError as exc:
            ok &= _line(False, "engine tables", f"{exc} (run 'init-db')")
        try:
            await store.check_source(loaded.spec)
            ok &= _line(True, "source table", f"{loaded.spec.source.table} and its columns exist")
        except EngineError as exc:
            ok &= _line(False, "source table", str(exc))
        else:
            ok &= await _job_lines(store, loaded.spec)
    finally:
        await store.close()
    try:
        api_settings = ApiSettings.from_env()
    except EngineError as exc:
        return _line(False, "api key", str(exc)) and False
    target = api_settings.base_url or "the OpenAI API"
    try:
        async with BatchApi(api_settings) as api:
            async for _batch in api.iter_recent_batches(1):
                break
        ok &= _line(True, "api", f"{target} reachable, key accepted")
    except EngineError as exc:
        ok &= _line(False, "api", f"{target}: {exc}")
    return ok
