"""From a source batch to stored, normalized, language-tagged records; every row accounted for.

rows read = stored + duplicates + quarantined, per source and run; anything else raises.
Records arrive protected by their source (``pipelines.ingest.privacy``); here the text and title
become their redacted analysis form and quarantined rows are redacted before they are stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import select

from pipelines._errors import CountBalanceError
from pipelines.ingest.dedupe import mark_duplicates, text_hash
from pipelines.ingest.language import detect_languages
from pipelines.ingest.normalize import normalize_text
from pipelines.ingest.privacy import scrub_quarantined
from pipelines.ingest.redact import redact
from pipelines.ingest.sources import Rejected, SourceBatch
from pipelines.storage import Store, schema

__all__ = ["DUPLICATE_WINDOW", "SourceCounts", "ingest_batch", "prepare_records"]

DUPLICATE_WINDOW = timedelta(days=1)
EMPTY_AFTER_NORMALIZATION = "empty_after_normalization"
_RECENT_COLUMNS = ("id", "author", "customer_id", "created_at", "text", "source")


@dataclass(frozen=True)
class SourceCounts:
    """What happened to the rows one source delivered in one run."""

    source: str
    read: int
    stored: int
    duplicates: int
    quarantined: int

    def as_dict(self) -> dict[str, int | str]:
        """Plain dict for artifacts and JSON."""
        return asdict(self)


def _analysis_text(text: str) -> tuple[str, dict[str, int]]:
    redaction = redact(normalize_text(text))
    return redaction.text, redaction.counts


def prepare_records(batch: SourceBatch) -> tuple[pd.DataFrame, list[Rejected]]:
    """Normalize, redact and language-tag the records of a batch (pure, no storage).

    Args:
        batch: What a source read.

    Returns:
        One row per record with the ``feedback`` table's columns (``text`` is the analysis
        text), and the records rejected because nothing was left after normalization.
    """
    rows: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for record in batch.records:
        text, pii_counts = _analysis_text(record.text)
        if not text.strip():
            raw = json.dumps(record.raw, ensure_ascii=False, default=str)
            rejected.append(Rejected(raw, EMPTY_AFTER_NORMALIZATION, "no text left"))
            continue
        title = _analysis_text(record.title)[0] if record.title else None
        row = record.model_dump(mode="python")
        row.update(text=text, title=title or None, pii_counts=pii_counts, text_hash=text_hash(text))
        row["channel"] = record.channel.value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, rejected
    guesses = detect_languages(frame["text"].tolist())
    frame["lang"] = [guess.lang for guess in guesses]
    frame["lang_confidence"] = [guess.confidence for guess in guesses]
    return frame, rejected


def _recent_records(store: Store, frame: pd.DataFrame) -> pd.DataFrame:
    table = schema.feedback
    authors = [value for value in frame["author"].dropna().unique().tolist()]
    customers = [value for value in frame["customer_id"].dropna().unique().tolist()]
    if not authors and not customers:
        return pd.DataFrame(columns=list(_RECENT_COLUMNS))
    oldest = frame["created_at"].min() - DUPLICATE_WINDOW
    query = select(*(table.c[name] for name in _RECENT_COLUMNS)).where(
        table.c.created_at >= oldest,
        table.c.duplicate_of.is_(None),
        table.c.author.in_(authors) | table.c.customer_id.in_(customers),
    )
    with store.engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return pd.DataFrame(rows, columns=list(_RECENT_COLUMNS))


def _to_rows(frame: pd.DataFrame, run_id: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    columns = [column.name for column in schema.feedback.columns]
    rows = []
    for record in frame.to_dict(orient="records"):
        row = {name: record.get(name) for name in columns}
        for name, value in row.items():
            if not isinstance(value, (dict, list, str)) and pd.isna(value):
                row[name] = None
        row.update(run_id=run_id, ingested_at=now)
        rows.append(row)
    return rows


def ingest_batch(batch: SourceBatch, store: Store, run_id: str) -> SourceCounts:
    """Store one source's batch: quarantine bad rows, drop known ids, mark copy-paste spam.

    Args:
        batch: What the source read.
        store: Destination database.
        run_id: Current run id.

    Returns:
        The per-source counts, also written to ``run_source_counts``.

    Raises:
        CountBalanceError: read != stored + duplicates + quarantined.
    """
    frame, empty_rows = prepare_records(batch)
    rejected = [*batch.rejected, *empty_rows]
    store.quarantine(batch.source, run_id, (scrub_quarantined(*row) for row in rejected))

    duplicates = 0
    stored = 0
    if not frame.empty:
        first_seen = ~frame["id"].duplicated()
        duplicates += int((~first_seen).sum())
        frame = frame[first_seen]
        known = store.existing_ids(schema.feedback, "id", frame["id"])
        duplicates += len(known)
        frame = frame[~frame["id"].isin(known)]
    if not frame.empty:
        frame = mark_duplicates(frame, DUPLICATE_WINDOW, existing=_recent_records(store, frame))
        inserted = store.insert_ignore(schema.feedback, _to_rows(frame, run_id))
        spam = int(frame["duplicate_of"].notna().sum())
        duplicates += spam + (len(frame) - inserted)
        stored = inserted - spam

    counts = SourceCounts(batch.source, batch.rows_read, stored, duplicates, len(rejected))
    if counts.read != counts.stored + counts.duplicates + counts.quarantined:
        raise CountBalanceError(
            f"source {batch.source!r}: read {counts.read} != stored {counts.stored} + duplicates "
            f"{counts.duplicates} + quarantined {counts.quarantined}. This is a bug; please report "
            "it with the source file."
        )
    store.upsert(schema.run_source_counts, [{"run_id": run_id, **counts.as_dict()}])
    if batch.watermark is not None:
        store.set_watermark(
            batch.source, _later(store.get_watermark(batch.source), batch.watermark)
        )
    return counts


def _later(stored: str | None, new: str) -> str:
    """The later of two watermarks, so a backfill never moves a timestamp watermark back."""
    if stored is None:
        return new
    try:
        return max(stored, new, key=datetime.fromisoformat)
    except ValueError:
        return new
