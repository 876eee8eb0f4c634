"""The relevance table's rows from impressions: a pair re-asked with the same score is not rewritten."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from schemas import decode_event
from schemas.ranker import RelevanceEntry, table_key
from worker.relevance_table import RecentRows, table_entries
from worker.triton_client import PairScore

VERSION = "querylife-v1-0123456789"


def rows(scores: dict[str, float], recent: RecentRows | None) -> dict[str, float]:
    pairs = {pid: PairScore(similarity=s, score=s, label="relevant") for pid, s in scores.items()}
    out = table_entries(
        "t", VERSION, "  Black  T-Shirt ", pairs, "impression", datetime.now(UTC), recent=recent
    )
    return {
        decode_event(RelevanceEntry, o.value).product_id: decode_event(RelevanceEntry, o.value).score
        for o in out
    }


def test_an_unchanged_pair_is_written_once_a_changed_one_again() -> None:
    recent = RecentRows(rewrite_s=3600.0)
    assert rows({"p1": 0.7, "p2": 0.2}, recent) == {"p1": 0.7, "p2": 0.2}
    assert rows({"p1": 0.7, "p2": 0.2}, recent) == {}  # the same search again: nothing new to write
    assert rows({"p1": 0.7 + 5e-7, "p2": 0.3}, recent) == {"p2": 0.3}  # last-bit noise is no change
    assert rows({"p1": 0.7, "p2": 0.3}, None) == {"p1": 0.7, "p2": 0.3}  # without memory: every pair
    assert table_key(VERSION, "black t-shirt", "p1") in recent.rows  # keyed like the table


def test_a_pair_is_rewritten_after_the_interval_and_memory_is_bounded() -> None:
    recent = RecentRows(rewrite_s=0.05, max_rows=3)
    assert recent.due(b"a", 0.5) and not recent.due(b"a", 0.5)
    time.sleep(0.06)
    assert recent.due(b"a", 0.5)  # refreshed: scored_at and the retention move on
    for key in (b"b", b"c", b"d"):
        assert recent.due(key, 0.1)
    assert list(recent.rows) == [b"b", b"c", b"d"]  # the least recently written left first
    assert recent.due(b"a", 0.5)
