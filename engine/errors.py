"""The engine's exceptions: one root, EngineError, so callers can catch everything we raise.

EngineError
├── ConfigError                 a setting, job field or identifier is wrong (names it)
│   └── IdentifierError         a table or column name that cannot be used safely
├── LifecycleError              an Engine used out of order (reused, run before open)
├── LeaseExpiredError           a remote call was not started: this worker's lease ran out
├── StoreError                  the database failed
│   ├── TransientStoreError     deadlock, lock timeout, serialization, "database is locked",
│   │                           lost connection: safe to retry the whole transaction
│   ├── StaleClaimError         a fenced write found another worker's claim token
│   └── DataFitError            a value does not fit its column (too long, out of range,
│                               wrong type) or stored text is not valid in its encoding
├── BatchApiError               the Batch API refused or failed a call
│   ├── TransientApiError       429, 5xx, timeouts, dropped connections: retried
│   └── AuthenticationError     the key was refused (401/403): never retried
├── ResultError                 one output line could not be used (reason kept per row)
└── SpoolFullError              the spool's disk is full (names the directory, what to do)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BatchApiError",
    "ConfigError",
    "DataFitError",
    "EngineError",
    "IdentifierError",
    "LeaseExpiredError",
    "LifecycleError",
    "RemoteGoneError",
    "ResultError",
    "SpoolFullError",
    "StaleClaimError",
    "StoreError",
    "TransientApiError",
    "TransientStoreError",
]


class EngineError(Exception):
    """Root of every exception the engine raises on purpose."""


class ConfigError(EngineError):
    """A setting, job field or identifier is invalid; the message names the one at fault."""


class IdentifierError(ConfigError):
    """A table or column name that is not a plain identifier and would not be safe in SQL."""


class LifecycleError(EngineError):
    """An object with a lifecycle was used out of order (reused after close, run before open)."""


class LeaseExpiredError(EngineError):
    """The worker's lease on a batch ran out before a remote call could start.

    Starting it anyway could race a worker that adopted the batch meanwhile, so the caller
    renews the lease (or lets the batch go) and decides again.
    """


class StoreError(EngineError):
    """A database call failed in a way that retrying will not fix."""


class TransientStoreError(StoreError):
    """A database failure that is safe to retry as a whole transaction."""


class StaleClaimError(StoreError):
    """A fenced write matched no row: another worker holds the claim now."""


class DataFitError(StoreError):
    """One value cannot be written to or read from its column; retrying the same value fails.

    SQLSTATE class 22 (too long, out of range, not a number), MariaDB 1406/1264/1366, or
    source text that is not valid UTF-8. The message holds the database's text, never a DSN.
    """


class BatchApiError(EngineError):
    """The Batch API refused or failed a call."""


class TransientApiError(BatchApiError):
    """A Batch API failure worth retrying: rate limits, server errors, timeouts."""


class AuthenticationError(BatchApiError):
    """The Batch API refused the key; retrying cannot help."""


class ResultError(EngineError):
    """One output line could not be used; the reason goes back to the row."""


class SpoolFullError(EngineError):
    """The spool directory's disk (or quota) is full; the message says what to do."""


class RemoteGoneError(EngineError):
    """The remote side no longer knows a batch (404, or abandoned for it): nothing to do there."""
