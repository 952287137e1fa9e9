"""Pure helpers of the store: chunking of results by rows and by text size."""

from __future__ import annotations

from engine.store import ApplyRow
from engine.store.store import _apply_chunks


def test_apply_chunks_bounded_by_rows() -> None:
    rows = [ApplyRow(str(i), "t", {"a": "x"}) for i in range(1001)]
    sizes = [len(c) for c in _apply_chunks(rows, 500)]
    assert sizes == [500, 500, 1]


def test_apply_chunks_bounded_by_text_size() -> None:
    big = "y" * 3_000_000
    rows = [ApplyRow(str(i), "t", {"a": big, "n": i}) for i in range(7)]
    chunks = list(_apply_chunks(rows, 500))
    assert [len(c) for c in chunks] == [2, 2, 2, 1]
    assert [r.key for c in chunks for r in c] == [str(i) for i in range(7)]


def test_apply_chunks_keeps_one_huge_row() -> None:
    rows = [ApplyRow("1", "t", {"a": "z" * 20_000_000})]
    assert [len(c) for c in _apply_chunks(rows, 500)] == [1]
