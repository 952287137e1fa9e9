#!/usr/bin/env python3
"""Curated mutation check: take one guarantee's mechanism out, the tests named for it must fail.

Each mutation is a small, exact source edit (one ``old`` text that must occur exactly once in
its file, replaced by ``new``) applied to a temporary copy of the tree; only the tests mapped to
it run, against that copy. A mutation the tests do not catch prints ``SURVIVED``; one whose
``old`` text is gone prints ``NO LONGER APPLIES`` (the code moved and this list must follow
it). Either makes the exit status non-zero. The last line is
``mutations=N caught=N survived=N``.

    .venv/bin/python scripts/mutate.py            # every mutation (before a release)
    .venv/bin/python scripts/mutate.py --quick    # the CI subset
    .venv/bin/python scripts/mutate.py --list     # names, files and tests
    .venv/bin/python scripts/mutate.py --only fence_on_apply --only heartbeat_sweep
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass(frozen=True)
class Mutation:
    """One mechanism taken out: where, the exact edit, and the tests that must catch it."""

    name: str
    guarantee: str  # the DESIGN.md guarantee the mechanism serves, in a few words
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    quick: bool = False  # in the CI subset
    # Further (path, old, new) edits, for a mechanism the code carries out in two places.
    also: tuple[tuple[str, str, str], ...] = ()


RECOVERY = "tests/integration/test_recovery.py"
CRASH = "tests/reliability/test_crash_matrix.py"
STALE = "tests/reliability/test_stale_owner.py"
TIME = "tests/reliability/test_time_and_remote.py"
OK = "tests/reliability/test_no_single_ok.py"
POISON = "tests/reliability/test_poison.py"
KEYS = "tests/reliability/test_keys.py"
SPOOL = "tests/reliability/test_spool.py"
WHOLE = "tests/reliability/test_whole_files.py"
MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        name="fence_on_apply",
        guarantee="3 exactly-once effect: the claim-token fence",
        path="engine/store/store.py",
        old="                if wanted.get(str(key)) == token and state in states:",
        new="                if state in states:",
        tests=(
            "tests/integration/test_store.py::test_stale_worker_applies_nothing",
            "tests/reliability/test_guarantee_gaps.py::test_stale_worker_apply_after_takeover",
        ),
        quick=True,
    ),
    Mutation(
        name="reattach_by_metadata",
        guarantee="2 no double billing: re-attach after an unrecorded create",
        path="engine/submitter.py",
        old="            if meta.get(\"engine_batch\") == record.id "
        "and batch.status != \"failed\":",
        new="            if False:",
        tests=(f"{CRASH}::test_sigkill_at_each_crash_point[sqlite-after_create]",
               f"{RECOVERY}::test_restart_after_crash_at_each_point"),
        quick=True,
    ),
    Mutation(
        name="batch_lease_renewal",
        guarantee="4 many workers: a live worker keeps its batches",
        path="engine/poller.py",
        old="            lost = await ctx.store.renew_batch_leases(ctx.worker_id, owned, "
        "ctx.settings.lease_s)",
        new="            lost = []",
        # The same loop's adoption also re-leases the worker's own batches (the worker_id = ?
        # clause, there for a restart under the same id): take that renewal out as well.
        also=(("engine/store/store.py",
               "                f\"AND ({c('worker_id')} = ? OR {c('worker_id')} IS NULL \"",
               "                f\"AND (1 = 0 AND {c('worker_id')} = ? "
               "OR {c('worker_id')} IS NULL \""),),
        tests=("tests/reliability/test_guarantee_gaps.py::test_live_worker_keeps_its_batches",),
    ),
    Mutation(
        name="ownership_before_create",
        guarantee="2 no double billing: no create after the lease was lost",
        path="engine/submitter.py",
        old="        if not lost:\n            return started + ctx.settings.lease_s",
        new="        if True:\n            return started + ctx.settings.lease_s",
        tests=(STALE,),
    ),
    Mutation(
        name="adopter_settle_wait",
        guarantee="2 no double billing: an adopter waits out a create in flight",
        path="engine/submitter.py",
        old="        self.not_before[record.id] = time.monotonic() + settle_s",
        new="        self.not_before[record.id] = time.monotonic()",
        tests=("tests/reliability/test_guarantee_gaps.py::test_adopter_waits_for_a_create_in_flight",),
    ),
    Mutation(
        name="create_outside_transaction",
        guarantee="5 no transaction spans a network call",
        path="engine/submitter.py",
        old="            batch = await ctx.api.create_batch(\n"
        "                input_file_id,\n"
        "                record.endpoint,\n"
        "                {\"engine_batch\": record.id, \"engine_job\": ctx.job.name},\n"
        "                deadline=deadline,\n"
        "                wait_for_landing=not self._looping,\n"
        "            )\n",
        new="            async with ctx.store.pool.transaction():\n"
        "                batch = await ctx.api.create_batch(\n"
        "                    input_file_id,\n"
        "                    record.endpoint,\n"
        "                    {\"engine_batch\": record.id, \"engine_job\": ctx.job.name},\n"
        "                    deadline=deadline,\n"
        "                    wait_for_landing=not self._looping,\n"
        "                )\n",
        tests=("tests/integration/test_no_network_in_transaction.py",),
    ),
    Mutation(
        name="poll_holding_connection",
        guarantee="5 no transaction spans a network call (implicit ones included)",
        path="engine/poller.py",
        old="            batch = await ctx.api.retrieve_batch(record.remote_batch_id)\n",
        new="            async with ctx.store.pool.acquire() as held:\n"
        "                await held.fetchall(\"SELECT 1\")\n"
        "                batch = await ctx.api.retrieve_batch(record.remote_batch_id)\n",
        tests=("tests/integration/test_no_network_in_transaction.py::"
               "test_no_api_call_inside_a_transaction",),
    ),
    Mutation(
        name="resolve_rows_without_result",
        guarantee="1 nothing lost: rows a finished batch never answered go back",
        path="engine/writer.py",
        old="        line_errors = await asyncio.to_thread(self._line_errors, record)\n"
        "        reason = f\"batch {status} without a result for this row\"",
        new="        return\n"
        "        line_errors = await asyncio.to_thread(self._line_errors, record)\n"
        "        reason = f\"batch {status} without a result for this row\"",
        tests=("tests/reliability/test_guarantee_gaps.py::test_failed_batch_rows_go_back",),
        quick=True,
    ),
    Mutation(
        name="reap_own_orphans",
        guarantee="1 nothing lost: a restart under the same id frees its old claims",
        path="engine/engine.py",
        old="        await ctx.store.reap_expired(self.job, self.worker_id)",
        new="        await ctx.store.reap_expired(self.job)",
        tests=(f"{RECOVERY}::test_restart_after_crash_at_each_point",),
    ),
    Mutation(
        name="heartbeat_sweep",
        guarantee="11 dead workers found in seconds",
        path="engine/heartbeat.py",
        old="        claims, batches = await self._store.expire_dead_workers(\n"
        "            self._job, self._worker_id, self._batch_states\n        )",
        new="        claims, batches = 0, 0",
        tests=("tests/reliability/test_dead_workers.py::"
               "test_sigkill_then_until_idle_finishes_with_default_settings[sqlite]",),
    ),
    Mutation(
        name="until_idle_waits_for_orphans",
        guarantee="11 run --until-idle finishes or names what live workers hold",
        path="engine/producer.py",
        old="        if not orphans:\n            return False",
        new="        if True:\n            return False",
        tests=("tests/reliability/test_dead_workers.py::"
               "test_sigkill_then_until_idle_finishes_with_default_settings[sqlite]",),
        quick=True,
    ),
    Mutation(
        name="until_idle_names_live_holders",
        guarantee="11 run --until-idle names what live workers hold",
        path="engine/producer.py",
        old="        ctx.held_elsewhere = alive\n",
        new="        ctx.held_elsewhere = []\n",
        tests=("tests/reliability/test_dead_workers.py::"
               "test_until_idle_beside_a_live_worker_names_it[sqlite]",),
    ),
    # -- issue 11: the guarantees from the outside --------------------------------------------
    Mutation(
        name="utc_read_back",
        guarantee="6 time is UTC: stored times come back aware UTC",
        path="engine/store/store.py",
        old="    if found.tzinfo is None:\n        return found.replace(tzinfo=UTC)\n",
        new="    if found.tzinfo is None:\n        return found\n",
        tests=("tests/unit/test_time_utc.py::test_read_back_is_aware_utc",
               f"{TIME}::test_after_create_restart_in_other_zones"),
        quick=True,
    ),
    Mutation(
        name="utc_sessions",
        guarantee="6 time is UTC: server sessions run in UTC",
        path="engine/store/dialects.py",
        old="        return [\"SET TIME ZONE 'UTC'\"]",
        new="        return []",
        tests=("tests/unit/test_time_utc.py::test_server_sessions_are_put_in_utc",
               f"{TIME}::test_after_create_restart_in_other_zones"),
    ),
    Mutation(
        name="source_write_read_back",
        guarantee="7 no single ok: a write that changed nothing is not done",
        path="engine/store/store.py",
        old="            if unwritten:\n                raise _SourceNotWrittenError(unwritten)",
        new="            if False:\n                raise _SourceNotWrittenError(unwritten)",
        tests=(f"{OK}::test_write_that_changed_nothing_is_not_done",),
    ),
    Mutation(
        name="settle_before_applied",
        guarantee="7 no single ok: a batch is applied only when all its rows are",
        path="engine/writer.py",
        old="        await self._settle(record, status, tally)\n",
        new="",
        tests=(f"{OK}::test_commit_that_did_not_happen_is_applied_again",),
    ),
    Mutation(
        name="mariadb_strict",
        guarantee="7 no single ok: MariaDB warnings are errors",
        path="engine/store/dialects.py",
        old="\"'STRICT_TRANS_TABLES', 'STRICT_ALL_TABLES')\",",
        new="\"'NO_ZERO_DATE')\",",
        tests=(f"{OK}::test_mariadb_session_is_strict_whatever_the_server_default",),
    ),
    Mutation(
        name="poison_line_isolated",
        guarantee="8 no poison: one unreadable answer fails its own row",
        path="engine/results.py",
        old="        except (RecursionError, ValueError, TypeError, OverflowError) as exc:",
        new="        except (TypeError, OverflowError) as exc:",
        also=(("engine/results.py", "        except RecursionError:\n            # orjson stops",
               "        except ZeroDivisionError:\n            # orjson stops"),
              ("engine/writer.py",
               "                except Exception as exc:  # one line, however built, fails alone",
               "                except ResultError as exc:"),),
        tests=(f"{POISON}::test_deep_answer_fails_its_rows_only_through_the_cli",
               f"{POISON}::test_any_line_fails_alone"),
        quick=True,
    ),
    Mutation(
        name="remote_gone_abandon",
        guarantee="9 the remote side can forget: a 404 batch is abandoned",
        path="engine/poller.py",
        old="        await abandon_batch(ctx, record, reason, burn_attempt=False)\n        return"
        " True",
        new="        return False",
        tests=(f"{TIME}::test_api_forgets_mid_run[sqlite]",),
    ),
    Mutation(
        name="unique_key_check",
        guarantee="10 one key one row: duplicate keys are refused",
        path="engine/store/store.py",
        old="            f\"GROUP BY s.{src.key} HAVING COUNT(*) > 1\"",
        new="            f\"GROUP BY s.{src.key} HAVING COUNT(*) > 1000000\"",
        tests=(f"{KEYS}::test_duplicate_keys_are_refused_and_nothing_is_claimed",),
    ),
    Mutation(
        name="pending_filter_at_apply",
        guarantee="10 nobody else's data: a row another writer took is not overwritten",
        path="engine/store/store.py",
        old="        pending = f\"CASE WHEN s.{src.processed} IS NULL{src.filter} THEN 1 ELSE 0"
        " END\"",
        new="        pending = \"1\"",
        tests=(f"{KEYS}::test_another_writer_is_never_overwritten",),
        quick=True,
    ),
    Mutation(
        name="reset_rows_reopened",
        guarantee="10 a row reset to pending by hand is processed again",
        path="engine/store/store.py",
        old="            f\"AND i.{c('source_key')} = {key_text} AND i.{c('state')} = 'done')\"",
        new="            f\"AND i.{c('source_key')} = {key_text} AND i.{c('state')} = 'none')\"",
        tests=(f"{KEYS}::test_a_row_reset_by_hand_is_processed_again",),
    ),
    Mutation(
        name="spool_file_mode",
        guarantee="12 personal data at rest: spool files 0600",
        path="engine/spool.py",
        old="            os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through"
        " O_CREAT",
        new="            os.fchmod(fd, 0o644)",
        tests=(f"{SPOOL}::test_keep_spool_keeps_private_files_whatever_the_umask",),
    ),
    Mutation(
        name="spool_removed_when_done",
        guarantee="12 personal data at rest: a batch's files go when it ends",
        path="engine/pipeline.py",
        old="        if self.settings.keep_spool_files:\n            return\n"
        "        for path in batch_files(",
        new="        if True:\n            return\n        for path in batch_files(",
        tests=(f"{SPOOL}::test_spool_private_through_sigkills_and_emptied_when_batches_end",),
    ),
    Mutation(
        name="secret_masking_braces",
        guarantee="12 secrets masked in every ODBC form",
        path="engine/masking.py",
        old="        end = _brace_end(dsn, first) if first < size and dsn[first] == \"{\" else"
        " first",
        new="        end = first",
        tests=("tests/unit/test_masking.py",),
        quick=True,
    ),
    # -- issue 18: identity at the edges ---------------------------------------------------------
    Mutation(
        name="whole_file_check",
        guarantee="13 a file is whole before it counts",
        path="engine/writer.py",
        old="        if record.request_total <= 0:\n            return \"\"  # the API gave no"
        " counts",
        new="        if True:\n            return \"\"  # the API gave no counts",
        also=(("engine/writer.py",
               "            if last and not last.endswith(b\"\\n\") and not _is_result_line(last):",
               "            if False:"),),
        tests=(f"{WHOLE}::test_cut_download_is_fetched_again_never_resent",),
        quick=True,
    ),
    Mutation(
        name="late_create_twin_cancel",
        guarantee="14 one live remote batch per local batch: late twins are cancelled",
        path="engine/submitter.py",
        old="                    if twin.id != keep_id and twin.status in _TWIN_LIVE:",
        new="                    if False:",
        tests=(f"{TIME}::test_create_landing_after_the_bound_is_cancelled",),
    ),
    Mutation(
        name="custom_id_hashing",
        guarantee="15 keys round-trip: long keys map to a 64-character custom_id",
        path="engine/requests.py",
        old="    if len(custom_id) <= MAX_CUSTOM_ID_CHARS and not key.startswith(_HASHED):",
        new="    if True:",
        tests=(f"{KEYS}::test_text_keys_round_trip_in_a_binary_no_pad_column",),
    ),
    Mutation(
        name="job_identity",
        guarantee="16 a job is one thing: a name reused for another identity is refused",
        path="engine/store/store.py",
        old="            elif recorded is not None and not self._same_identity(recorded, mine):",
        new="            elif False:",
        tests=(f"{KEYS}::test_one_name_for_two_tables_is_refused_unless_migrated",),
    ),
)


def _copy_tree(dest: Path) -> None:
    """Copy the checkout's files (tracked and untracked, not ignored) into dest."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the work tree but still in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _apply(tree: Path, mutation: Mutation) -> str | None:
    """Apply the edits in tree; return why one cannot be applied, or None."""
    for name, old, new in ((mutation.path, mutation.old, mutation.new), *mutation.also):
        path = tree / name
        if not path.is_file():
            return f"{name} does not exist"
        text = path.read_text()
        found = text.count(old)
        if found != 1:
            return f"its text occurs {found} times in {name} (must be exactly once)"
        path.write_text(text.replace(old, new))
    return None


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def _run_tests(tree: Path, mutation: Mutation, timeout_s: float) -> tuple[int, list[str], str]:
    """Run the mutation's tests in tree; return (exit code, failing test ids, output tail)."""
    env = dict(os.environ)
    # The copy comes first on the path, ahead of the editable install of the real checkout,
    # in this process and in every engine subprocess the tests start.
    env["PYTHONPATH"] = str(tree)
    cmd = [PYTHON, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *mutation.tests]
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return 1, ["(timed out: the tests hung with the mechanism removed)"], out[-2000:]
    output = done.stdout + done.stderr
    return done.returncode, [m.group(2) for m in _FAILED.finditer(output)], output[-2000:]


def _check_imports(tree: Path) -> None:
    """Fail early if the copy's engine is not the one Python imports (a wrong path set-up)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    where = subprocess.run(
        [PYTHON, "-c", "import engine; print(engine.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not where.startswith(str(tree)):
        raise SystemExit(f"mutate: the copy's engine is not imported ({where}); check PYTHONPATH")


def main(argv: list[str] | None = None) -> int:
    """Apply each selected mutation in turn and report whether its tests caught it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the CI subset")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds for one mutation's tests (default 900)")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only) - names)
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(unknown)}; "
                     f"known: {', '.join(sorted(names))}")
    chosen = [
        m for m in MUTATIONS
        if (not args.only or m.name in args.only) and (not args.quick or m.quick)
    ]
    if args.list:
        for m in chosen:
            print(f"{m.name:32} {m.path:26} guarantee {m.guarantee}")
            for test in m.tests:
                print(f"{'':32} {test}")
        return 0
    caught = survived = broken = 0
    started = time.monotonic()
    for mutation in chosen:
        with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
            tree = Path(tmp)
            _copy_tree(tree)
            _check_imports(tree)
            why = _apply(tree, mutation)
            if why is not None:
                broken += 1
                print(f"{mutation.name}: NO LONGER APPLIES: {why}", flush=True)
                continue
            t0 = time.monotonic()
            code, failing, tail = _run_tests(tree, mutation, args.timeout)
            took = time.monotonic() - t0
            if code == 0:
                survived += 1
                print(f"{mutation.name}: SURVIVED ({took:.0f}s)", flush=True)
            elif code == 1 and failing:
                caught += 1
                print(f"{mutation.name}: caught by {len(failing)} tests ({took:.0f}s)",
                      flush=True)
            else:
                # Collection errors, no tests found, an internal error: not a catch.
                broken += 1
                print(f"{mutation.name}: TESTS DID NOT RUN (pytest exit {code}):\n{tail}",
                      flush=True)
    print(f"mutations={len(chosen)} caught={caught} survived={survived}"
          + (f" broken={broken}" if broken else "")
          + f" in {time.monotonic() - started:.0f}s")
    return 0 if survived == 0 and broken == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
