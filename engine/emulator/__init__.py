"""A local OpenAI Files + Batches API: the engine's test double and a feature for users."""

from __future__ import annotations
