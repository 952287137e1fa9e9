"""A local OpenAI Files + Batches API: the engine's test double and a feature for users.

``async with Emulator(EmulatorConfig(...)) as emu:`` serves the API at ``emu.base_url`` (what
``AsyncOpenAI(base_url=...)`` takes), with a clock of its own, seeded fault injection and a
record of every batch it accepted. ``python -m engine.emulator`` runs it from a shell.
"""

from __future__ import annotations

from engine.emulator.config import EmulatorConfig, FaultConfig
from engine.emulator.server import Emulator
from engine.emulator.state import BatchRecord, Record, StatusChange

__all__ = ["BatchRecord", "Emulator", "EmulatorConfig", "FaultConfig", "Record", "StatusChange"]
