"""Duplicate marking (author, normalized text, time window) and the text hash."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from pipelines.ingest.dedupe import duplicate_key, mark_duplicates, text_hash


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    columns = ["id", "source", "author", "customer_id", "created_at", "text"]
    return pd.DataFrame(
        [{column: row.get(column) for column in columns} for row in rows], columns=columns
    )


def marks(result: pd.DataFrame) -> dict[str, object]:
    return dict(zip(result["id"], result["duplicate_of"], strict=True))


def test_same_author_same_text_within_window() -> None:
    batch = frame(
        [
            {
                "id": "a",
                "author": "ali",
                "created_at": "2024-05-01T10:00:00Z",
                "text": "Kargo geç!!",
            },
            {
                "id": "b",
                "author": "ali",
                "created_at": "2024-05-01T18:00:00Z",
                "text": "kargo  GEÇ",
            },
            {
                "id": "c",
                "author": "ali",
                "created_at": "2024-05-02T09:00:00Z",
                "text": "kargo geç 🙁",
            },
            {"id": "d", "author": "ali", "created_at": "2024-05-02T11:00:00Z", "text": "kargo geç"},
            {"id": "e", "author": "ali", "created_at": "2024-05-01T12:00:00Z", "text": "kargo"},
        ]
    )
    result = mark_duplicates(batch)
    # d is 25 h after the first of the series: a new series starts
    assert marks(result) == {"a": None, "b": "a", "c": "a", "d": None, "e": None}
    assert list(result.columns) == [*batch.columns, "duplicate_of"]
    assert "duplicate_of" not in batch.columns


def test_window_is_configurable() -> None:
    batch = frame(
        [
            {"id": "a", "author": "x", "created_at": "2024-05-01T10:00:00Z", "text": "spam"},
            {"id": "b", "author": "x", "created_at": "2024-05-01T10:30:00Z", "text": "spam"},
        ]
    )
    assert marks(mark_duplicates(batch, window=timedelta(minutes=10)))["b"] is None
    assert marks(mark_duplicates(batch, window=timedelta(hours=1)))["b"] == "a"


def test_author_logic() -> None:
    batch = frame(
        [
            {
                "id": "a",
                "source": "x",
                "author": "ali",
                "created_at": "2024-05-01",
                "text": "Great",
            },
            {
                "id": "b",
                "source": "x",
                "author": "veli",
                "created_at": "2024-05-01",
                "text": "Great",
            },
            {
                "id": "c",
                "source": "y",
                "author": "ali",
                "created_at": "2024-05-01",
                "text": "Great",
            },
            {"id": "d", "customer_id": "c1", "created_at": "2024-05-01", "text": "Great"},
            {
                "id": "e",
                "source": "z",
                "customer_id": "c1",
                "created_at": "2024-05-01",
                "text": "great",
            },
            {"id": "f", "created_at": "2024-05-01", "text": "Great"},
            {"id": "g", "created_at": "2024-05-01", "text": "Great"},
            {"id": "h", "author": " ", "created_at": "2024-05-01", "text": "Great"},
        ]
    )
    # author handles are per source; customer ids are global; anonymous rows never match
    assert marks(mark_duplicates(batch)) == {
        "a": None, "b": None, "c": None, "d": None, "e": "d", "f": None, "g": None, "h": None,
    }  # fmt: skip


def test_existing_records_across_runs() -> None:
    existing = frame(
        [
            {"id": "old", "author": "ali", "created_at": "2024-05-01T08:00:00Z", "text": "Spam!"},
            {"id": "older", "author": "ali", "created_at": "2024-04-01T08:00:00Z", "text": "x"},
            {"id": "b", "author": "ali", "created_at": "2024-05-01T09:00:00Z", "text": "spam"},
        ]
    )
    existing["duplicate_of"] = [None, None, None]
    batch = frame(
        [
            {"id": "b", "author": "ali", "created_at": "2024-05-01T09:00:00Z", "text": "spam"},
            {"id": "n", "author": "ali", "created_at": "2024-05-01T20:00:00Z", "text": "SPAM"},
            {"id": "m", "author": "ali", "created_at": "2024-05-01T20:00:00Z", "text": "x"},
        ]
    )
    assert marks(mark_duplicates(batch, existing=existing)) == {"b": "old", "n": "old", "m": None}


def test_stored_duplicates_are_not_series_starts() -> None:
    existing = frame(
        [{"id": "dup", "author": "ali", "created_at": "2024-05-01T08:00:00Z", "text": "spam"}]
    )
    existing["duplicate_of"] = ["first"]
    batch = frame(
        [{"id": "n", "author": "ali", "created_at": "2024-05-01T09:00:00Z", "text": "spam"}]
    )
    assert marks(mark_duplicates(batch, existing=existing)) == {"n": None}


def test_bad_timestamps_are_kept_and_never_duplicates() -> None:
    batch = frame(
        [
            {"id": "a", "author": "ali", "created_at": "2024-05-01", "text": "spam"},
            {"id": "b", "author": "ali", "created_at": "not a date", "text": "spam"},
            {"id": "c", "author": "ali", "created_at": None, "text": "spam"},
        ]
    )
    result = mark_duplicates(batch)
    assert marks(result) == {"a": None, "b": None, "c": None}


def test_empty_batch_and_missing_column() -> None:
    empty = frame([])
    assert mark_duplicates(empty)["duplicate_of"].tolist() == []
    with pytest.raises(ValueError, match="created_at"):
        mark_duplicates(pd.DataFrame({"id": ["a"], "text": ["x"]}))


def test_duplicate_key() -> None:
    assert duplicate_key("<b>Kargo</b>   GEÇ!!! 😡") == duplicate_key("kargo geç")
    assert duplicate_key("كتاب") == duplicate_key("کتاب")
    assert duplicate_key("👍") != duplicate_key("👎")


def test_text_hash() -> None:
    digest = text_hash("Kargo geç geldi")
    assert len(digest) == 32
    assert int(digest, 16) >= 0
    assert digest == text_hash("Kargo geç geldi")
    assert digest != text_hash("Kargo geç geldi.")
