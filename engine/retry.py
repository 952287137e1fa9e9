"""Every retry policy of the engine, and nowhere else.

The OpenAI SDK is built with ``max_retries=0`` (see batch_api), so API retries are owned here
and never stacked on the SDK's own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from engine.errors import TransientApiError, TransientStoreError

__all__ = ["retry_api", "retry_store"]

log = logging.getLogger("engine.retry")
T = TypeVar("T")


def _log_retry(state: RetryCallState) -> None:
    """Say why a call is being retried (the exception's text carries no secrets)."""
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "retrying %s after attempt %d: %s",
        getattr(state.fn, "__qualname__", "call"),
        state.attempt_number,
        exc,
    )


class _WaitRetryAfter:
    """Wait what the server asked for in Retry-After when it did, else exponential jitter."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._fallback = wait_exponential_jitter(
            multiplier=initial_s, max=max_s, jitter=initial_s
        )
        self._max_s = max_s

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            return float(min(retry_after, self._max_s))
        return float(self._fallback(state))


async def _retrying(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException],
    attempts: int,
    wait: Callable[[RetryCallState], float],
    budget_s: float = 0.0,
) -> T:
    """Run ``call`` until it succeeds, raises something else, or attempts and budget run out."""
    stop: stop_base = stop_after_attempt(attempts)
    if budget_s > 0:
        # Both must be spent: a burst of quick failures still gets its attempts, and an
        # outage gets its time.
        stop = stop & stop_after_delay(budget_s)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop,
        wait=wait,
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


async def retry_store(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 8,
    initial_s: float = 0.05,
    max_s: float = 2.0,
    budget_s: float = 0.0,
) -> T:
    """Run one whole transaction, again on deadlock, lock timeout or lost connection.

    ``budget_s`` keeps retrying past ``attempts`` until that much time has passed since the
    first try, so a database that is down or restarting for a while is waited out.
    """
    wait = wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s)
    return await _retrying(
        call, retry_on=TransientStoreError, attempts=attempts, wait=wait, budget_s=budget_s
    )


async def retry_api(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 6,
    initial_s: float = 0.5,
    max_s: float = 60.0,
) -> T:
    """Run one Batch API call, again on 429/5xx/timeouts, honouring Retry-After."""
    wait = _WaitRetryAfter(initial_s, max_s)
    return await _retrying(call, retry_on=TransientApiError, attempts=attempts, wait=wait)
