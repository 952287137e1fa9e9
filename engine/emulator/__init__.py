"""A local OpenAI Files + Batches API: the engine's test double and a feature for users.

``async with Emulator(EmulatorConfig(...)) as emu:`` serves the API at ``emu.base_url`` (what
``AsyncOpenAI(base_url=...)`` takes), with a clock of its own (``time_scale`` speeds it up,
``emu.advance_clock(s)`` jumps it), seeded fault injection and a record of every batch it
accepted. It follows the real API where clients depend on it: raw-byte uploads, the utf-8 and
size checks, file expiry, every endpoint of the SDK's ``BatchCreateParams``, and per-line 4xx
answers for bad request bodies. ``python -m engine.emulator`` runs it from a shell;
docs/EMULATOR.md lists what it reproduces and what it simplifies.
"""

from __future__ import annotations

from engine.emulator.config import EmulatorConfig, FaultConfig
from engine.emulator.server import Emulator
from engine.emulator.state import BatchRecord, Record, StatusChange

__all__ = ["BatchRecord", "Emulator", "EmulatorConfig", "FaultConfig", "Record", "StatusChange"]
