"""Conservative, offline token estimates for budgets and batch sizing.

The engine needs a token count before a request is sent: to cut drafts under
``max_batch_tokens`` and to keep the enqueued tokens per model under the organisation's
limit. Under-counting is the expensive mistake (a batch failed with ``token_limit_exceeded``
after a 200 MB upload), so the estimate leans high.

tiktoken is deliberately not used: it downloads its encoding files on first use, and the
engine must never reach the network for this (and cannot, on air-gapped hosts or here). The
rule instead weighs each character by the UTF-8 width class it falls in, which tracks how
byte-pair tokenizers (cl100k_base, o200k_base) split text:

* ASCII (1 byte): 1/3 token per character. English prose is ~4 characters per token;
  code, numbers and JSON punctuation come closer to 3.
* U+0080..U+07FF (2 bytes: accented Latin, Greek, Cyrillic, Hebrew, Arabic): 1/2 token.
* U+0800 and above (3-4 bytes: CJK, kana, Hangul, Indic, Thai, emoji): 1 token each.

That is never below ``max(chars / 3, utf8_bytes / 4)``, the floor the design asks for.
"""

from __future__ import annotations

import math
import re

__all__ = ["estimate_tokens"]

_MID = re.compile("[\u0080-\u07ff]")
_WIDE = re.compile("[^\u0000-\u07ff]")


def estimate_tokens(text_or_bytes: str | bytes) -> int:
    """Return a conservative token estimate for a text (bytes are decoded as UTF-8)."""
    if isinstance(text_or_bytes, bytes | bytearray | memoryview):
        text = bytes(text_or_bytes).decode("utf-8", errors="replace")
    else:
        text = text_or_bytes
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / 3)
    mid = len(_MID.findall(text))
    wide = len(_WIDE.findall(text))
    narrow = len(text) - mid - wide
    return math.ceil(narrow / 3 + mid / 2 + wide)
