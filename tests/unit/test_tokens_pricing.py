"""Token estimates (conservative, offline) and batch cost from usage and prices."""

from __future__ import annotations

import math

import pytest

from engine.errors import ConfigError
from engine.pricing import PRICES, Cost, cost, cost_usd, price_for
from engine.results import Usage
from engine.tokens import estimate_tokens

# Real counts from OpenAI's tokenizers for these texts are at or below these figures
# (o200k_base / cl100k_base): English prose ~1 token per 4-4.5 chars, Chinese ~1 per char
# or less, Russian ~1 per 2.5-3.5 chars.
ENGLISH = "The quick brown fox jumps over the lazy dog. " * 20
CHINESE = "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。" * 10
RUSSIAN = "Машинное обучение — это раздел искусственного интеллекта. " * 10


def test_empty_is_zero() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens(b"") == 0


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, RUSSIAN, "🙂" * 50, "a1{}\"," * 100])
def test_never_below_the_floor(text: str) -> None:
    floor = max(len(text) / 3, len(text.encode("utf-8")) / 4)
    assert estimate_tokens(text) >= math.floor(floor)


def test_bytes_and_str_agree() -> None:
    for text in (ENGLISH, CHINESE, RUSSIAN):
        assert estimate_tokens(text.encode("utf-8")) == estimate_tokens(text)
    assert estimate_tokens(b"\xff\xfe broken") > 0


def test_script_weights() -> None:
    assert estimate_tokens(ENGLISH) == math.ceil(len(ENGLISH) / 3)
    # CJK: about one token per character, never fewer.
    assert estimate_tokens(CHINESE) >= len(CHINESE) * 0.95
    cyrillic = sum(1 for ch in RUSSIAN if "\u0400" <= ch <= "\u04ff")
    assert estimate_tokens(RUSSIAN) >= cyrillic / 2


def test_over_estimates_english_by_a_bounded_margin() -> None:
    # ~4.4 chars per real token for this text: the estimate is high, but not absurdly so.
    rough_real = len(ENGLISH) / 4.4
    assert rough_real < estimate_tokens(ENGLISH) < rough_real * 1.6


def test_large_text_keeps_the_floor() -> None:
    # The speed of this is scripts/bench_parts.py's "tokens" figure, against a baseline.
    text = ("Résumé: 10 years of Python, 数据 engineering. " * 10_000)[:400_000]
    floor = max(len(text) / 3, len(text.encode("utf-8")) / 4)
    assert estimate_tokens(text) >= math.floor(floor)
    assert estimate_tokens(text.encode("utf-8")) == estimate_tokens(text)


def test_table_covers_the_common_models() -> None:
    for model in (
        "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "text-embedding-3-small", "text-embedding-3-large",
    ):
        price = PRICES[model]
        assert price.input > 0
        assert 0 < price.cached_input <= price.input
        assert price.output >= 0


def test_batch_cost_is_half_of_standard() -> None:
    usage = Usage(input_tokens=1_000_000, cached_tokens=0, output_tokens=1_000_000)
    assert cost_usd("gpt-4o-mini", usage, batch=False) == pytest.approx(0.15 + 0.60)
    assert cost_usd("gpt-4o-mini", usage) == pytest.approx((0.15 + 0.60) / 2)


def test_cached_tokens_are_part_of_input_and_billed_at_cached_price() -> None:
    usage = Usage(input_tokens=1_000_000, cached_tokens=400_000, output_tokens=0)
    expected = (600_000 * 2.00 + 400_000 * 0.50) / 1e6
    assert cost_usd("gpt-4.1", usage, batch=False) == pytest.approx(expected)


def test_reasoning_tokens_are_not_billed_twice() -> None:
    with_reasoning = Usage(input_tokens=0, output_tokens=1000, reasoning_tokens=800)
    without = Usage(input_tokens=0, output_tokens=1000)
    assert cost_usd("gpt-5", with_reasoning) == cost_usd("gpt-5", without)


def test_dated_snapshots_use_the_base_price() -> None:
    assert price_for("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]


def test_unknown_model_costs_zero_and_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    usage = Usage(input_tokens=1000, output_tokens=1000)
    with caplog.at_level("WARNING", logger="engine.pricing"):
        assert cost("my-azure-deployment", usage) == Cost(0.0, False)
        assert cost_usd("my-azure-deployment", usage) == 0.0
    assert sum("my-azure-deployment" in r.getMessage() for r in caplog.records) == 1


def test_overrides_replace_and_complete_prices() -> None:
    usage = Usage(input_tokens=2_000_000, cached_tokens=1_000_000, output_tokens=1_000_000)
    result = cost("my-deployment", usage, batch=False, overrides={"input": 1.0, "output": 4.0})
    # cached_input falls back to input when neither table nor override gives it.
    assert result == Cost(pytest.approx(1.0 + 1.0 + 4.0), True)  # type: ignore[arg-type]
    partial = cost("gpt-4o", usage, batch=True, overrides={"output": 20.0})
    assert partial.usd == pytest.approx((1.0 * 2.50 + 1.0 * 1.25 + 1.0 * 20.0) / 2)


def test_bad_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        cost_usd("gpt-4o", Usage(), overrides={"inptu": 1.0})
    with pytest.raises(ConfigError, match=">= 0"):
        cost_usd("gpt-4o", Usage(), overrides={"input": -1.0})


def test_embeddings_cost() -> None:
    usage = Usage(input_tokens=10_000_000)
    assert cost_usd("text-embedding-3-small", usage, batch=False) == pytest.approx(0.2)
    assert cost_usd("text-embedding-3-large", usage) == pytest.approx(0.65)
