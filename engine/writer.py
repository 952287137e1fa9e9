"""Stage 4: download a finished batch's files, parse and validate each line, apply or requeue.

Results are applied in chunks, each chunk one fenced transaction, so a crash mid-batch leaves
every row either applied or still bound to the batch; running the writer again on the same
batch applies only what is left (the fence skips rows already done).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from engine.errors import (
    AuthenticationError,
    BatchApiError,
    ResultError,
    SpoolFullError,
    TransientApiError,
    TransientStoreError,
)
from engine.faults import crash_point
from engine.pipeline import (
    EngineEvent,
    PipelineContext,
    RemoteGone,
    abandon_batch,
    get_or_stop,
    is_not_found,
    sleep_or_stop,
)
from engine.pricing import cost_usd
from engine.results import Failure, Success, Usage
from engine.store import ApplyRow, BatchRecord, RequeueRow

__all__ = ["Writer"]

log = logging.getLogger("engine.writer")

# Lines read per step; between steps the event loop runs other stages.
READ_CHUNK_LINES = 2000
# Transient download failures (after the API wrapper's own retries) before a batch is left
# finished for a later run or adoption.
DOWNLOAD_TRIES = 5
# Downloads of a batch's result files that come back short or damaged (fewer lines than the
# batch's request_counts, a half-written last line) before the batch is quarantined.
WHOLE_FILE_TRIES = 4
# Failed applies of one batch (any exception in the writer), counted in the database, before
# it is quarantined: a poison batch must not stop the job or make its workers crash-loop.
APPLY_FAILURES_TO_QUARANTINE = 3
# Passes over the spooled result files when a check read after the apply still finds
# submitted rows (a COMMIT reported but not done) before the apply counts as failed.
SETTLE_PASSES = 3


@dataclass
class _Tally:
    """What one batch's results came to."""

    applied: int = 0
    requeued: int = 0
    dead: int = 0
    stale: int = 0
    skipped: int = 0  # results not written: the row was no longer pending, or not one row
    skipped_lines: int = 0
    first_skip: str = ""  # why the first unusable line was skipped (for its row's reason)
    usage: Usage = field(default_factory=lambda: Usage(0, 0, 0, 0))


class Writer:
    """Applies finished batches one at a time, in the order they finish."""

    def __init__(self, ctx: PipelineContext) -> None:
        self._ctx = ctx
        self._inbox: asyncio.Queue[BatchRecord] = asyncio.Queue()
        self.busy = False
        self._download_tries: dict[str, int] = {}  # batch id -> transient download failures
        self._gone = RemoteGone(ctx.settings)  # result files that answer 404
        self._running = False  # run() consumes the inbox (single steps apply directly)

    @property
    def pending(self) -> int:
        """Finished batches waiting to be applied."""
        return self._inbox.qsize() + (1 if self.busy else 0)

    async def accept(self, record: BatchRecord) -> None:
        """Queue a finished batch."""
        await self._inbox.put(record)

    async def run(self) -> None:
        """Apply batches until the engine stops."""
        ctx = self._ctx
        self._running = True
        while not ctx.stopping.is_set():
            record = await get_or_stop(self._inbox, ctx.stopping)
            if record is None:
                return
            self.busy = True
            try:
                await self.apply_batch(record)
            except (
                AuthenticationError, TransientStoreError, SpoolFullError, asyncio.CancelledError
            ):
                # Not this batch's fault: the key, the database or the spool's disk is gone;
                # quarantining it would hide the cause and strand a batch that is fine.
                raise
            except Exception as exc:  # any failure of one batch is its own
                await self._apply_failed(record, exc)
            finally:
                self.busy = False

    async def apply_batch(self, record: BatchRecord) -> None:
        """Apply one finished batch's results and resolve every one of its rows."""
        ctx = self._ctx
        items = await ctx.store.batch_items(record.id)
        tokens = {custom_id: (key, token) for key, token, custom_id, _ in items}
        del items  # 50,000 rows of ids: keep only the map while the batch is applied
        seen: set[str] = set()
        tally = _Tally()
        status = record.remote_status or "unknown"
        try:
            if not await self._download_whole(record):
                return
            files = ((record.output_file_id, "output"), (record.error_file_id, "error"))
            for file_id, kind in files:
                if file_id:
                    await self._apply_file(record, file_id, kind, tokens, seen, tally)
        except AuthenticationError:
            raise
        except TransientApiError as exc:
            if self._retry_later(record, exc):
                return
            await self._give_up_download(record, exc)
            return
        except BatchApiError as exc:
            if is_not_found(exc) and await self._file_not_found(record, exc):
                return
            await self._give_up_download(record, exc)
            return
        self._gone.found(record.id)
        self._download_tries.pop(record.id, None)
        leftover = [cid for cid in tokens if cid not in seen]
        if leftover:
            await self._requeue_leftover(record, status, leftover, tokens, tally)
        await self._settle(record, status, tally)
        usage = tally.usage
        if record.input_tokens or record.output_tokens:
            usage = Usage(
                record.input_tokens, record.cached_tokens, record.output_tokens,
                record.reasoning_tokens,
            )
        cost = cost_usd(record.model, usage, batch=True, overrides=ctx.job.pricing)
        await ctx.record_batch(
            record,
            state="applied",
            input_tokens=usage.input_tokens,
            cached_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost,
        )
        if tally.skipped:
            log.warning(
                "batch %s: %d results not written: their rows were changed by another writer "
                "(no longer pending) or no longer have one row per key; see their items",
                record.id, tally.skipped, extra={"batch_id": record.id},
            )
        log.info(
            "batch %s: %d applied, %d requeued, %d dead, %d stale, $%.4f",
            record.id, tally.applied, tally.requeued, tally.dead, tally.stale, cost,
            extra={"batch_id": record.id, "remote_batch_id": record.remote_batch_id},
        )
        ctx.remove_spool(record.id)
        ctx.batches_applied += 1
        await ctx.done_with(record.id)

    def _retry_later(self, record: BatchRecord, exc: Exception) -> bool:
        """Queue the batch again after a backoff when a download failed transiently.

        The batch keeps its slot meanwhile, so run(until_idle=True) does not return with it
        unapplied. False once DOWNLOAD_TRIES are spent or the engine is stopping.
        """
        ctx = self._ctx
        tries = self._download_tries.get(record.id, 0) + 1
        if tries >= DOWNLOAD_TRIES or ctx.stopping.is_set() or not self._running:
            self._download_tries.pop(record.id, None)
            return False
        self._download_tries[record.id] = tries
        delay = min(
            max(ctx.settings.min_check_interval_s, 0.05) * 2**tries,
            max(ctx.settings.check_interval_s, 0.05),
        )
        log.warning(
            "batch %s: download failed (%s); trying again in %.2fs", record.id, exc, delay,
            extra={"batch_id": record.id},
        )
        asyncio.get_running_loop().call_later(delay, self._inbox.put_nowait, record)
        return True

    async def _file_not_found(self, record: BatchRecord, exc: BatchApiError) -> bool:
        """Retry a file that answers 404 until it has lasted, then abandon its batch (True).

        Rows not applied yet go back to pending with their attempts unused; rows already
        applied from the other file stay done. False when this process cannot wait (a single
        ``check``, or the engine is stopping): the batch stays finished for the next run.
        """
        ctx = self._ctx
        lasted = self._gone.not_found(record.id)
        if lasted is not None:
            reason = (
                f"a result file of remote batch {record.remote_batch_id} is gone: the API "
                f"answered {lasted} ({exc}); rows without a result were sent back without "
                "using an attempt"
            )
            await abandon_batch(ctx, record, reason, burn_attempt=False)
            return True
        if ctx.stopping.is_set() or not self._running:
            return False
        delay = max(ctx.settings.min_check_interval_s, ctx.settings.check_interval_s, 0.05)
        log.warning("batch %s: result file not found (%s); trying again in %.2fs", record.id,
                    exc, delay, extra={"batch_id": record.id})
        asyncio.get_running_loop().call_later(delay, self._inbox.put_nowait, record)
        return True

    async def _give_up_download(self, record: BatchRecord, exc: Exception) -> None:
        """Leave the batch finished: the next run (or the next adoption) downloads again."""
        ctx = self._ctx
        log.error(
            "batch %s: download failed: %s", record.id, exc, extra={"batch_id": record.id}
        )
        ctx.emit(EngineEvent(kind="error", job=ctx.job.name, batch_id=record.id,
                             message=f"download failed: {exc}"))
        await ctx.record_batch(record, error=f"download failed: {exc}"[:2000])
        await ctx.done_with(record.id, expire_lease=True)

    async def _apply_file(
        self,
        record: BatchRecord,
        file_id: str,
        kind: str,
        tokens: dict[str, tuple[str, str]],
        seen: set[str],
        tally: _Tally,
    ) -> None:
        """Download one result file and apply it chunk by chunk."""
        ctx = self._ctx
        path = ctx.spool_path(record.id, kind)  # downloaded whole by _download_whole
        crash_point("after_download")
        parse = ctx.parser.parse_output_line if kind == "output" else ctx.parser.parse_error_line
        lines = _iter_lines(path)
        while True:
            chunk = await asyncio.to_thread(_take, lines, READ_CHUNK_LINES)
            if not chunk:
                break
            successes: list[ApplyRow] = []
            failures: list[tuple[Failure, str, str]] = []
            for line in chunk:
                try:
                    outcome = parse(line)
                except Exception as exc:  # one line, however built, fails alone
                    why = str(exc) if isinstance(exc, ResultError) else _describe(exc)
                    tally.skipped_lines += 1
                    tally.first_skip = tally.first_skip or why[:300]
                    log.warning("batch %s: unusable %s line skipped: %s", record.id, kind, why)
                    continue
                owner = tokens.get(outcome.custom_id)
                if owner is None or outcome.custom_id in seen:
                    tally.skipped_lines += 1
                    continue
                seen.add(outcome.custom_id)
                tally.usage = tally.usage + outcome.usage
                key, token = owner
                if isinstance(outcome, Success):
                    successes.append(ApplyRow(key, token, outcome.values))
                else:
                    failures.append((outcome, key, token))
            await self._flush(successes, failures, tally)

    async def _flush(
        self,
        successes: list[ApplyRow],
        failures: list[tuple[Failure, str, str]],
        tally: _Tally,
    ) -> None:
        """Apply successes and requeue or dead-letter failures, each in fenced chunks."""
        ctx = self._ctx
        step = ctx.settings.apply_chunk_rows
        # Rows whose value the database refused (does not fit its column): retried, one
        # attempt used, as README promises; a bad answer may not come back next time.
        refused: list[RequeueRow] = []
        for start in range(0, len(successes), step):
            part = successes[start : start + step]
            outcome = await ctx.store.apply_results(ctx.job, part)
            crash_point("mid_apply")
            tally.applied += outcome.applied
            tally.stale += len(outcome.stale)
            tally.skipped += len(outcome.skipped)
            ctx.count("rows_skipped", len(outcome.skipped))
            ctx.count("rows_applied", outcome.applied)
            if outcome.applied:
                ctx.emit(EngineEvent(kind="rows_applied", job=ctx.job.name, rows=outcome.applied))
            if outcome.rejected:
                token_of = {row.key: row.claim_token for row in part}
                refused.extend(
                    RequeueRow(key, token_of[key], reason, burn_attempt=True)
                    for key, reason in outcome.rejected
                )
        dead = [
            RequeueRow(key, token, f.reason) for f, key, token in failures
            if f.disposition == "dead"
        ]
        retry = refused + [
            RequeueRow(key, token, f.reason, burn_attempt=f.disposition == "retry")
            for f, key, token in failures
            if f.disposition != "dead"
        ]
        await self._resolve(retry, dead, tally)

    async def _resolve(
        self, retry: list[RequeueRow], dead: list[RequeueRow], tally: _Tally
    ) -> None:
        """Requeue and dead-letter rows, counting and announcing the outcome."""
        ctx = self._ctx
        if retry:
            outcome = await ctx.store.requeue(ctx.job, retry, ctx.settings.max_attempts)
            tally.requeued += outcome.requeued
            tally.dead += outcome.dead
            tally.stale += len(outcome.stale)
            ctx.count("rows_requeued", outcome.requeued)
            ctx.count("rows_dead", outcome.dead)
            if outcome.requeued:
                ctx.emit(EngineEvent(kind="rows_requeued", job=ctx.job.name,
                                     rows=outcome.requeued, message=retry[0].reason))
            if outcome.dead:
                ctx.emit(EngineEvent(kind="rows_dead", job=ctx.job.name, rows=outcome.dead,
                                     message=retry[0].reason))
        if dead:
            outcome = await ctx.store.dead_letter(ctx.job, dead)
            tally.dead += outcome.dead
            tally.stale += len(outcome.stale)
            ctx.count("rows_dead", outcome.dead)
            if outcome.dead:
                ctx.emit(EngineEvent(kind="rows_dead", job=ctx.job.name, rows=outcome.dead,
                                     message=dead[0].reason))

    async def _requeue_leftover(
        self,
        record: BatchRecord,
        status: str,
        leftover: list[str],
        tokens: dict[str, tuple[str, str]],
        tally: _Tally,
    ) -> None:
        """Resolve rows that have no line in either file (a failed batch, or a short file)."""
        line_errors = await asyncio.to_thread(self._line_errors, record)
        reason = f"batch {status} without a result for this row"
        if tally.first_skip:
            # A whole file with unreadable lines: this row's line was one of them.
            reason = f"batch {status}: this row's line could not be read ({tally.first_skip})"
        if record.error:
            reason = f"batch {status}: {_first_error(record.error)}"
        retry: list[RequeueRow] = []
        for custom_id in leftover:
            key, token = tokens[custom_id]
            own = line_errors.get(custom_id)
            if own is not None:
                retry.append(RequeueRow(key, token, own))
            else:
                # A batch-level failure is not this row's fault when another line caused it.
                retry.append(RequeueRow(key, token, reason, burn_attempt=not line_errors))
        step = self._ctx.settings.apply_chunk_rows
        for start in range(0, len(retry), step):
            await self._resolve(retry[start : start + step], [], tally)

    def _line_errors(self, record: BatchRecord) -> dict[str, str]:
        """Map custom_id -> reason for validation errors that name a line of the input file."""
        if not record.error:
            return {}
        try:
            errors = orjson.loads(record.error)
        except orjson.JSONDecodeError:
            return {}
        by_line = {
            int(e["line"]): f"{e.get('code')}: {e.get('message')}"
            for e in errors
            if isinstance(e, dict) and isinstance(e.get("line"), int)
        }
        if not by_line:
            return {}
        path = self._ctx.spool_path(record.id)
        if not path.exists():
            return {}
        found: dict[str, str] = {}
        with path.open("rb") as spool:
            for number, line in enumerate(spool, start=1):
                if number in by_line:
                    try:
                        found[orjson.loads(line)["custom_id"]] = by_line[number]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
        return found

    async def _download_whole(self, record: BatchRecord) -> bool:
        """Download the batch's result files until they are whole; False once quarantined.

        A download can end early with a clean EOF (no Content-Length, or one equal to the
        short body) or with a half-written last line. Applying such a file and requeueing the
        rest would send and pay for rows the API has answered, so nothing is applied until
        both files agree with the batch's own request_counts (see _file_problem); a file that
        does not is fetched again with backoff, and after WHOLE_FILE_TRIES the batch is
        quarantined with the reason instead of having its rows re-sent.
        """
        ctx = self._ctx
        files = [(f, k) for f, k in ((record.output_file_id, "output"),
                                     (record.error_file_id, "error")) if f]
        problem = ""
        for attempt in range(1, WHOLE_FILE_TRIES + 1):
            for file_id, kind in files:
                await ctx.api.download_file(file_id, ctx.spool_path(record.id, kind))
            problem = await asyncio.to_thread(self._files_problem, record)
            if not problem:
                return True
            log.warning("batch %s: result files not whole (%s); download %d of %d",
                        record.id, problem, attempt, WHOLE_FILE_TRIES,
                        extra={"batch_id": record.id})
            delay = min(max(ctx.settings.min_check_interval_s, 0.05) * 2**attempt,
                        max(ctx.settings.check_interval_s, 0.05))
            if attempt < WHOLE_FILE_TRIES and await sleep_or_stop(delay, ctx.stopping):
                # Stopping: leave it finished for the next run rather than judge it now.
                await ctx.done_with(record.id, expire_lease=True)
                return False
        await self._quarantine(
            record, f"result files not whole after {WHOLE_FILE_TRIES} downloads: {problem}"
        )
        return False

    def _files_problem(self, record: BatchRecord) -> str:
        """Why the downloaded result files are not whole, or "" (runs in a thread).

        Lines are counted against request_counts (output = completed, error = failed, their
        sum = total): exactly for a completed batch, at least for one that expired or was
        cancelled (whose counts the API may fill late). The last line of each file must
        parse as an object with a custom_id unless it ends with a newline: a line cut in
        transfer has none. A complete line that cannot be read is a poison line, failed on
        its own by the apply, not a reason to hold the batch.
        """
        counts = {"output": 0, "error": 0}
        for kind in counts:
            path = self._ctx.spool_path(record.id, kind)
            if not path.exists():
                continue
            last = b""
            with path.open("rb") as source:
                for line in source:
                    if line.strip():
                        counts[kind] += 1
                        last = line
            if last and not last.endswith(b"\n") and not _is_result_line(last):
                return f"the last line of the {kind} file is cut"
        if record.request_total <= 0:
            return ""  # the API gave no counts: nothing to compare with
        expected = {"output": record.request_completed, "error": record.request_failed}
        exact = record.remote_status == "completed"
        for kind, want in expected.items():
            got = counts[kind]
            if got < want or (exact and got != want):
                return f"{kind} file has {got} lines, request_counts says {want}"
        if exact and sum(expected.values()) != record.request_total:
            return (f"request_counts: {record.request_completed} completed + "
                    f"{record.request_failed} failed != {record.request_total} total")
        return ""

    async def _settle(self, record: BatchRecord, status: str, tally: _Tally) -> None:
        """Make sure every row of the batch landed before the batch counts as applied.

        Guarantee 7's mechanism: a check read after the apply, on a connection the pool
        hands out afresh (a dead one fails the read and is replaced), lists the batch's
        items still ``submitted``. A driver may report a COMMIT that never happened
        (psqlODBC on a killed backend), so those rows are applied again from the spooled
        files, which stay until the batch is applied; the fence makes this idempotent.
        Chosen over one bigger transaction because that COMMIT can be lost the same way,
        and over a reconciler alone because the files are at hand now (the reconciler,
        Store.reopen_unsettled, still runs at start-up for batches marked applied before).
        After SETTLE_PASSES the apply counts as failed (see _apply_failed).
        """
        ctx = self._ctx
        for _pass in range(SETTLE_PASSES):
            left = await ctx.store.unsettled_items(record.id)
            if not left:
                return
            log.warning("batch %s: %d rows not settled after the apply (a commit that did "
                        "not land?); applying them again", record.id, len(left),
                        extra={"batch_id": record.id})
            tokens = {cid: (key, token) for key, token, cid in left}
            seen: set[str] = set()
            for kind in ("output", "error"):
                if ctx.spool_path(record.id, kind).exists():
                    await self._apply_file(record, "", kind, tokens, seen, tally)
            missing = [cid for cid in tokens if cid not in seen]
            if missing:
                await self._requeue_leftover(record, status, missing, tokens, tally)
        left = await ctx.store.unsettled_items(record.id)
        if left:
            raise ResultError(f"{len(left)} rows still unsettled after {SETTLE_PASSES} passes")

    async def _apply_failed(self, record: BatchRecord, exc: Exception) -> None:
        """Count a failed apply in the database; retry it later or quarantine it."""
        ctx = self._ctx
        reason = _describe(exc)
        log.error("batch %s: apply failed: %s", record.id, reason, exc_info=exc,
                  extra={"batch_id": record.id})
        count = await ctx.store.note_apply_failure(record.id, reason,
                                                   APPLY_FAILURES_TO_QUARANTINE)
        if count >= APPLY_FAILURES_TO_QUARANTINE:
            self._announce_quarantine(record, f"apply failed {count} times: {reason}")
            await ctx.done_with(record.id)
            return
        ctx.emit(EngineEvent(kind="error", job=ctx.job.name, batch_id=record.id,
                             message=f"apply failed ({count}): {reason}"))
        if ctx.stopping.is_set() or not self._running:
            await ctx.done_with(record.id, expire_lease=True)  # the next run tries again
            return
        # Keep the slot and try again after a backoff, so until_idle waits for the verdict.
        delay = min(max(ctx.settings.min_check_interval_s, 0.05) * 2**count,
                    max(ctx.settings.check_interval_s, 0.05))
        asyncio.get_running_loop().call_later(delay, self._inbox.put_nowait, record)

    async def _quarantine(self, record: BatchRecord, reason: str) -> None:
        """Hold a batch with its reason; its rows stay with it until ``release``."""
        await self._ctx.store.quarantine_batch(record.id, reason)
        self._announce_quarantine(record, reason)
        await self._ctx.done_with(record.id)

    def _announce_quarantine(self, record: BatchRecord, reason: str) -> None:
        """Log and emit a quarantine once."""
        ctx = self._ctx
        log.error("batch %s quarantined: %s (release it with: release %s)", record.id, reason,
                  record.id, extra={"batch_id": record.id})
        ctx.emit(EngineEvent(kind="batch_state", job=ctx.job.name, batch_id=record.id,
                             remote_batch_id=record.remote_batch_id,
                             state="quarantined", message=reason))


def _describe(exc: BaseException) -> str:
    """Type and message of an unexpected exception, short (a RecursionError's is long)."""
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _is_result_line(line: bytes) -> bool:
    """Whether a line parses as a JSON object carrying a string custom_id."""
    try:
        obj = orjson.loads(line)
    except (orjson.JSONDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("custom_id"), str)


def _first_error(error: str) -> str:
    """Return a short reason from the stored batch errors (JSON list) or plain text."""
    try:
        errors = orjson.loads(error)
    except orjson.JSONDecodeError:
        return error[:300]
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return f"{first.get('code')}: {first.get('message')}"[:300]
    return error[:300]


def _iter_lines(path: Path) -> Iterator[bytes]:
    """Yield the non-blank lines of a JSONL file, reading it in buffered chunks."""
    with path.open("rb") as source:
        for line in source:
            if line.strip():
                yield line


def _take(lines: Iterator[bytes], count: int) -> list[bytes]:
    """Next ``count`` lines from an iterator (run in a thread: it reads the disk)."""
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= count:
            break
    return chunk
