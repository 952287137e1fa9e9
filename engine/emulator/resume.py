"""Rule-based resume extraction for the emulator's resume responder (being written)."""

from __future__ import annotations

from typing import Any

__all__ = ["RESUME_SCHEMA_NAME", "extract_resume"]

RESUME_SCHEMA_NAME = "resume"


def extract_resume(text: str) -> dict[str, Any]:
    """Extract the bundled resume schema's fields from a resume text by rules."""
    raise NotImplementedError
