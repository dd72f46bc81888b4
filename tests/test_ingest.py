"""Ingestion: count balance, idempotency, copy-paste duplicates, quarantine, late rows,
streaming in chunks, watermarks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pipelines._errors import SourceError
from pipelines.ingest import _batch as ingest_module
from pipelines.ingest import ingest_batch, ingest_source
from pipelines.ingest.sources import Rejected, Source, SourceBatch, load_sources
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
    # the bad row was quarantined by run-1: counted once, here as skipped
    assert (again.read, again.stored, again.duplicates, again.quarantined) == (5, 0, 4, 0)
    assert again.skip_reasons == {"already_quarantined": 1}
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


def _export_source(tmp_path: Path, kind: str = "jsonl") -> Source:
    (tmp_path / "exports").mkdir(exist_ok=True)
    config = tmp_path / "sources.yaml"
    config.write_text(
        f"""\
sources:
  - name: exports
    kind: {kind}
    channel: review
    path: "exports/*.{kind}"
    columns: {{external_id: id, created_at: at, text: text}}
""",
        encoding="utf-8",
    )
    (source,) = load_sources(config)
    return source


def _export(tmp_path: Path, name: str, *days: int, extra: tuple[str, ...] = ()) -> None:
    lines = [
        json.dumps({"id": f"r{day}", "at": f"2026-11-{day:02d}T12:00:00Z", "text": f"Day {day}"})
        for day in days
    ]
    (tmp_path / "exports" / name).write_text("\n".join([*lines, *extra]) + "\n")


def test_a_late_export_is_stored_not_skipped(store: Store, tmp_path: Path) -> None:
    """Defect 2: a second file with older dates stored 0 rows and nothing counted them."""
    source = _export_source(tmp_path)
    _export(tmp_path, "a.jsonl", 10, 11, 12)
    first = ingest_batch(source.read(store.get_watermark("exports")), store, "run-1")
    assert (first.read, first.stored) == (3, 3)

    _export(tmp_path, "b.jsonl", 1, 2, 12)  # late export: older rows, and one already stored
    late = ingest_batch(source.read(store.get_watermark("exports")), store, "run-2")

    assert (late.stored, late.duplicates, late.quarantined) == (2, 1, 0)
    assert late.skip_reasons == {"unchanged_file": 3}
    assert late.read == late.stored + late.duplicates + late.quarantined + late.skipped == 6
    assert store.count(schema.feedback) == 5


def test_ingest_source_streams_chunks_and_saves_the_watermark_last(
    store: Store, tmp_path: Path
) -> None:
    source = _export_source(tmp_path)
    _export(tmp_path, "a.jsonl", *range(1, 11), extra=("{broken", json.dumps({"id": "r3"})))
    _export(tmp_path, "b.jsonl", 3, 4, 20)

    counts = ingest_source(source, store, "run-1", chunk_rows=3)

    assert (counts.read, counts.stored, counts.duplicates, counts.quarantined) == (15, 11, 2, 2)
    assert store.count(schema.feedback) == 11
    assert store.get_watermark("exports") is not None
    with store.engine.connect() as connection:
        row = connection.execute(select(schema.run_source_counts)).mappings().one()
    assert (row["read"], row["skipped"], row["skip_reasons"]) == (15, 0, {})

    again = ingest_source(source, store, "run-2", chunk_rows=3)
    assert (again.read, again.skipped, again.stored, again.idle) == (15, 15, 0, True)
    ranged = ingest_source(
        source, store, "run-3", start=datetime(2026, 11, 5, tzinfo=UTC), end=None, chunk_rows=3
    )
    assert ranged.skip_reasons == {"already_quarantined": 2, "out_of_range": 6}
    assert ranged.read == ranged.duplicates + ranged.quarantined + ranged.skipped


def test_a_source_failing_midway_keeps_its_watermark(store: Store, tmp_path: Path) -> None:
    source = _export_source(tmp_path, "csv")
    folder = tmp_path / "exports"
    (folder / "a.csv").write_text("id,at,text\nr1,2026-11-01,one\nr2,2026-11-02,two\n")
    ingest_source(source, store, "run-1")
    before = store.get_watermark("exports")
    rows = "".join(f"r{n},2026-11-0{n},row {n}\n" for n in range(3, 7))
    (folder / "b.csv").write_text("id,at,text\n" + rows)
    (folder / "c.csv").write_text("id,when,text\nr7,2026-11-07,seven\n")  # wrong header

    with pytest.raises(SourceError, match="not in the header"):
        ingest_source(source, store, "run-2", chunk_rows=2)

    assert store.get_watermark("exports") == before, "saved only once the whole source is in"
    assert store.count(schema.feedback) == 6
    (folder / "c.csv").write_text("id,at,text\nr7,2026-11-07,seven\n")
    resumed = ingest_source(source, store, "run-3")
    assert (resumed.stored, resumed.duplicates, resumed.skipped) == (1, 4, 2)


def test_a_large_file_source_is_prepared_by_a_second_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "_WORKER_MIN_BYTES", 0)  # every file source is "large"
    source = _export_source(tmp_path, "csv")
    folder = tmp_path / "exports"
    rows = "".join(f"r{n},2026-11-0{n % 9 + 1},row {n}\n" for n in range(40))
    (folder / "a.csv").write_text("id,at,text\n" + rows + "r1,2026-11-02,row 1\n")
    (folder / "b.csv").write_text("id,when,text\nr99,2026-11-07,late\n")  # wrong header

    with Store(tmp_path / "feedback.duckdb") as store:
        with pytest.raises(SourceError, match="not in the header") as caught:
            ingest_source(source, store, "run-1", chunk_rows=7)

        assert caught.value.code == "E010", "the reader process's error keeps its code"
        assert store.count(schema.feedback) == 35, "a.csv's 5 full chunks came through the queue"
        assert store.get_watermark("exports") is None
