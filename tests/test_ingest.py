"""Ingestion: count balance, idempotency, copy-paste duplicates, quarantine, watermarks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from pipelines.ingest import ingest_batch
from pipelines.ingest.sources import Rejected, SourceBatch
from pipelines.records import Channel, FeedbackRecord, record_id
from pipelines.storage import Store, schema

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _record(external_id: str, text: str, minutes: int = 0, author: str | None = None):
    return FeedbackRecord(
        id=record_id("social", external_id),
        source="social",
        channel=Channel.SOCIAL,
        external_id=external_id,
        created_at=START + timedelta(minutes=minutes),
        text=text,
        author=author,
        raw={"post_id": external_id, "text": text},
    )


def _batch(records: list[FeedbackRecord], rejected: list[Rejected] | None = None) -> SourceBatch:
    rejected = rejected or []
    return SourceBatch(
        source="social",
        records=records,
        rejected=rejected,
        rows_read=len(records) + len(rejected),
        watermark=max(r.created_at for r in records).isoformat() if records else None,
    )


def _stored(store: Store) -> list[dict]:
    with store.engine.connect() as connection:
        rows = connection.execute(select(schema.feedback)).mappings().all()
    return [dict(row) for row in rows]


def test_counts_balance_and_rerun_changes_nothing(store: Store) -> None:
    records = [
        _record("1", "Kargo yine gecikti, rezalet! Bir daha asla almam.", author="ayse"),
        _record("2", "سفارشم دير رسيد و غذا سرد بود", 5, author="reza"),
        _record("3", "Livrarea a durat doua saptamani, nu mai comand", 9, author="ion"),
        _record("3", "Livrarea a durat doua saptamani, nu mai comand", 9, author="ion"),
    ]
    rejected = [Rejected('{"post_id": "9"}', "missing_text", "text is empty")]

    first = ingest_batch(_batch(records, rejected), store, "run-1")
    assert (first.read, first.stored, first.duplicates, first.quarantined) == (5, 3, 1, 1)

    again = ingest_batch(_batch(records, rejected), store, "run-2")
    assert (again.read, again.stored, again.duplicates, again.quarantined) == (5, 0, 4, 1)
    assert store.count(schema.feedback) == 3
    assert store.count(schema.quarantine) == 1
    assert store.count(schema.run_source_counts) == 2


def test_stored_text_is_normalized_redacted_and_language_tagged(store: Store) -> None:
    text = "Siparişim gelmedi &amp; kimse dönmedi. Bana ulaşın: ayse.k@example.com, 0532 123 45 67"
    ingest_batch(_batch([_record("1", text, author="ayse")]), store, "run-1")
    (row,) = _stored(store)
    assert "[EMAIL]" in row["text"] and "[PHONE]" in row["text"]
    assert "example.com" not in row["text"] and "&amp;" not in row["text"]
    assert row["pii_counts"] == {"EMAIL": 1, "PHONE": 1}
    assert row["lang"] == "tr" and row["lang_confidence"] > 0.6
    assert row["raw"]["text"] == text, "the raw row is kept for audit"


def test_persian_arabic_letters_are_folded_before_storage(store: Store) -> None:
    ingest_batch(_batch([_record("1", "كيفيت خيلي بد بود، ۲ روز دير رسيد")]), store, "run-1")
    (row,) = _stored(store)
    assert "ک" in row["text"] and "ی" in row["text"] and "2" in row["text"]
    assert "ك" not in row["text"] and "ي" not in row["text"]
    assert row["lang"] == "fa"


def test_copy_paste_spam_by_one_author_is_marked_duplicate(store: Store) -> None:
    spam = "WORST SERVICE EVER!!! @kavana never again"
    records = [
        _record("1", spam, 0, author="angry_bob"),
        _record("2", spam, 30, author="angry_bob"),
        _record("3", spam, 40, author="someone_else"),
    ]
    counts = ingest_batch(_batch(records), store, "run-1")
    assert (counts.stored, counts.duplicates) == (2, 1)
    by_id = {row["external_id"]: row for row in _stored(store)}
    assert by_id["2"]["duplicate_of"] == by_id["1"]["id"]
    assert by_id["3"]["duplicate_of"] is None

    later = ingest_batch(_batch([_record("4", spam, 90, author="angry_bob")]), store, "run-2")
    assert (later.stored, later.duplicates) == (0, 1), "spam is caught across runs too"


def test_text_empty_after_normalization_is_quarantined(store: Store) -> None:
    counts = ingest_batch(_batch([_record("1", "<br><p></p>"), _record("2", "ok")]), store, "r")
    assert (counts.read, counts.stored, counts.quarantined) == (2, 1, 1)
    with store.engine.connect() as connection:
        reasons = connection.execute(select(schema.quarantine.c.reason)).scalars().all()
    assert reasons == ["empty_after_normalization"]


def test_watermark_never_moves_back(store: Store) -> None:
    ingest_batch(_batch([_record("1", "fine", 600)]), store, "run-1")
    newest = store.get_watermark("social")
    ingest_batch(_batch([_record("0", "older backfilled row", 0)]), store, "run-2")
    assert store.get_watermark("social") == newest
