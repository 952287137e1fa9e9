"""Stored times come back aware and UTC, whatever the process's zone (DESIGN guarantee 6)."""

from __future__ import annotations

import calendar
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.logs import JsonFormatter
from engine.store.dialects import MysqlDialect, PostgresDialect, SqliteDialect
from engine.store.store import _to_datetime


@pytest.fixture(params=["America/Los_Angeles", "Asia/Tokyo", "Etc/GMT+12", "Pacific/Kiritimati"])
def process_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the process in a zone from UTC-12 to UTC+14."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.parametrize("raw", [
    datetime(2026, 3, 8, 10, 30, 0, 123456),  # PostgreSQL / MariaDB: naive UTC
    "2026-03-08 10:30:00.123456",  # SQLite: text
    datetime(2026, 3, 8, 19, 30, 0, 123456, tzinfo=timezone(timedelta(hours=9))),
])
def test_read_back_is_aware_utc(process_zone: str, raw: object) -> None:
    got = _to_datetime(raw)
    assert got is not None
    assert got.utcoffset() == timedelta(0)
    expected = calendar.timegm((2026, 3, 8, 10, 30, 0)) + 0.123456
    assert got.timestamp() == pytest.approx(expected)
    assert got == datetime(2026, 3, 8, 10, 30, 0, 123456, tzinfo=UTC)


def test_none_stays_none() -> None:
    assert _to_datetime(None) is None


def test_server_sessions_are_put_in_utc() -> None:
    assert PostgresDialect().zone_sql() == ["SET TIME ZONE 'UTC'"]
    assert MysqlDialect().zone_sql() == ["SET time_zone = '+00:00'"]
    assert SqliteDialect().zone_sql() == []  # its clock is UTC in every connection


def test_json_log_time_is_utc(process_zone: str) -> None:
    record = logging.LogRecord("engine", logging.INFO, __file__, 1, "hello", None, None)
    record.created = calendar.timegm((2026, 3, 8, 10, 30, 0)) + 0.25
    record.msecs = 250.0
    line = json.loads(JsonFormatter().format(record))
    assert line["ts"] == "2026-03-08T10:30:00.250Z"
