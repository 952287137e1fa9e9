"""Settings reject bad values by name and never show secrets."""

from __future__ import annotations

import pytest

from engine import ConfigError, EngineSettings, StoreSettings
from engine.settings import redact_dsn


def test_redact_dsn_hides_password_in_any_case() -> None:
    dsn = "Driver={PostgreSQL Unicode};Server=db;UID=app;PWD=s3cret;"
    assert "s3cret" not in redact_dsn(dsn)
    assert "Server=db" in redact_dsn(dsn)
    assert "s3cret" not in redact_dsn("driver=x;Password=s3cret")


def test_store_settings_repr_has_no_password() -> None:
    settings = StoreSettings(dsn="Driver=X;Pwd=hunter2;")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"batch_size": 0}, "batch_size"), ({"max_in_flight": 0}, "max_in_flight"),
     ({"max_attempts": 0}, "max_attempts"), ({"lease_s": 0}, "lease_s")],
)
def test_engine_settings_name_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        EngineSettings(**kwargs)  # type: ignore[arg-type]
