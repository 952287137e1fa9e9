"""Batch engine: SQL rows in, OpenAI Batch API jobs out, answers written back to the rows."""

from __future__ import annotations

from engine.errors import (
    AuthenticationError,
    BatchApiError,
    ConfigError,
    DataFitError,
    EngineError,
    IdentifierError,
    LeaseExpiredError,
    LifecycleError,
    ResultError,
    StaleClaimError,
    StoreError,
    TransientApiError,
    TransientStoreError,
)
from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.settings import ApiSettings, EngineSettings, StoreSettings

__all__ = [
    "ApiSettings",
    "AuthenticationError",
    "BatchApiError",
    "ColumnMapping",
    "ConfigError",
    "DataFitError",
    "EngineError",
    "EngineSettings",
    "IdentifierError",
    "JobSpec",
    "LeaseExpiredError",
    "LifecycleError",
    "ResultError",
    "SourceSpec",
    "StaleClaimError",
    "StoreError",
    "StoreSettings",
    "TransientApiError",
    "TransientStoreError",
]

__version__ = "0.1.0"
