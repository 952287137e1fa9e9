"""Jobs shipped with the engine (package data): ``--job NAME`` loads ``NAME.toml`` from here."""

from __future__ import annotations
