"""What a batch cost: tokens times a per-1M-token price table, with the Batch API discount.

The table holds *standard* (not batch) USD prices per 1M tokens; ``cost_usd`` halves them
for batches (the Batch API bills 50% of standard on input, cached input and output).
Sources, read in the search corpus in November 2026 (prices change: a job can override):

* gpt-5 1.25/0.125/10, gpt-5-mini 0.25/0.025/2, gpt-5-nano 0.05/0.005/0.40, gpt-4.1
  2/0.50/8, gpt-4o 2.50/1.25/10, gpt-4o-mini 0.15/0.075/0.60: nicolalazzari.ai "OpenAI API
  Pricing Explained (2026)", standard table; gpt-4.1 and gpt-5-mini also in GitHub's
  docs/data/tables/copilot/models-and-pricing.yml.
* gpt-4.1-mini 0.40/0.10/1.60, text-embedding-3-small 0.02, text-embedding-3-large 0.13:
  oG-Memory perf/rate_cards.yaml and chatgptpricing-akr.pages.dev (which cites
  developers.openai.com/api/docs/pricing); gpt-4.1-nano 0.10/0.40 from several tables,
  cached 0.025 (a quarter of input, the GPT-4.1 family's cache rate).

Cost = (input - cached) * input + cached * cached_input + output * output, per 1M tokens.
Reasoning tokens are already inside output tokens and are not added again. A model not in
the table (or an Azure deployment name) costs 0 and is flagged (``Cost.known`` is False, and
a warning is logged once per model) unless the job gives prices. Job overrides
(``JobSpec.pricing``: ``input``, ``cached_input``, ``output``) are standard prices too, so
the discount applies to them the same way; a partial override keeps the table's other
prices, and a missing ``cached_input`` falls back to ``input``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import ConfigError
from engine.results import Usage

__all__ = ["BATCH_DISCOUNT", "PRICES", "Cost", "Price", "cost", "cost_usd", "price_for"]

log = logging.getLogger("engine.pricing")

BATCH_DISCOUNT = 0.5
_PER = 1_000_000
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_OVERRIDE_KEYS = frozenset({"input", "cached_input", "output"})
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class Price:
    """Standard USD prices per 1M tokens."""

    input: float
    cached_input: float
    output: float


@dataclass(frozen=True, slots=True)
class Cost:
    """A cost and whether a price was known for the model."""

    usd: float
    known: bool


PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    "text-embedding-3-small": Price(0.02, 0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.13, 0.0),
}


def price_for(model: str, overrides: Mapping[str, float] | None = None) -> Price | None:
    """Return the model's standard price with overrides applied, None when unknown."""
    base = PRICES.get(model) or PRICES.get(_DATED.sub("", model))
    if not overrides:
        return base
    unknown = set(overrides) - _OVERRIDE_KEYS
    if unknown:
        raise ConfigError(
            f"pricing: unknown key(s) {', '.join(sorted(unknown))}; use input, cached_input, "
            "output (USD per 1M tokens)"
        )
    if any(v < 0 for v in overrides.values()):
        raise ConfigError("pricing: prices must be >= 0")
    if base is None and "input" not in overrides:
        return None
    inp = overrides.get("input", base.input if base else 0.0)
    return Price(
        input=inp,
        cached_input=overrides.get("cached_input", base.cached_input if base else inp),
        output=overrides.get("output", base.output if base else 0.0),
    )


def cost(
    model: str, usage: Usage, *, batch: bool = True, overrides: Mapping[str, float] | None = None
) -> Cost:
    """Return the USD cost of the usage and whether the model's price was known."""
    price = price_for(model, overrides)
    if price is None:
        if model not in _warned:
            _warned.add(model)
            log.warning("no price for model %s: cost recorded as 0 (set the job's pricing)", model)
        return Cost(0.0, False)
    cached = min(usage.cached_tokens, usage.input_tokens)
    usd = (
        (usage.input_tokens - cached) * price.input
        + cached * price.cached_input
        + usage.output_tokens * price.output
    ) / _PER
    return Cost(usd * BATCH_DISCOUNT if batch else usd, True)


def cost_usd(
    model: str, usage: Usage, *, batch: bool = True, overrides: Mapping[str, float] | None = None
) -> float:
    """Return the USD cost of the usage (0.0 for an unknown model; see ``cost`` for the flag)."""
    return cost(model, usage, batch=batch, overrides=overrides).usd
