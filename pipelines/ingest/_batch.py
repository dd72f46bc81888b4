"""From a source to stored, normalized, language-tagged records; every row accounted for.

rows read = stored + duplicates + quarantined + skipped (with reasons), per source and run;
anything else raises. ``ingest_source`` streams a source chunk by chunk (read, normalize,
redact, dedupe by id, store), so memory is bounded by the chunk size, not the input; the
source's watermark is saved only after its last chunk is stored, so a crash re-reads (ids drop
what was stored) and never skips.
Records arrive protected by their source (``pipelines.ingest.privacy``); here the text and title
become their redacted analysis form and quarantined rows are redacted before they are stored.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from typing import Any, NamedTuple

import pandas as pd

from pipelines._errors import CountBalanceError, SourceError
from pipelines.ingest.dedupe import mark_duplicates, text_hash
from pipelines.ingest.language import detect_languages
from pipelines.ingest.normalize import normalize_text
from pipelines.ingest.privacy import scrub_quarantined
from pipelines.ingest.redact import redact
from pipelines.ingest.sources import (
    DEFAULT_CHUNK_ROWS,
    UNCHANGED_FILE,
    FileSource,
    Rejected,
    Source,
    SourceBatch,
)
from pipelines.storage import Refused, Store, recent_records, schema

__all__ = [
    "DB_REFUSED",
    "DUPLICATE_WINDOW",
    "OUT_OF_RANGE",
    "SourceCounts",
    "in_range",
    "ingest_batch",
    "ingest_source",
    "prepare_records",
]

DUPLICATE_WINDOW = timedelta(days=1)
EMPTY_AFTER_NORMALIZATION = "empty_after_normalization"
OUT_OF_RANGE = "out_of_range"
"""Skip reason: a row created outside the date range a run asked for (rerun, --since)."""
_WORKER_MIN_BYTES = 16 * 2**20
_QUEUED_CHUNKS = 2
DB_REFUSED = "db_refused"
_RECENT_COLUMNS = ("id", "author", "customer_id", "created_at", "text", "source")


@dataclass(frozen=True)
class SourceCounts:
    """What happened to the rows one source delivered in one run."""

    source: str
    read: int
    stored: int
    duplicates: int
    quarantined: int
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        """Nothing new came: every row was in a file ingested whole before."""
        return self.read == self.skip_reasons.get(UNCHANGED_FILE, 0)

    def as_dict(self) -> dict[str, Any]:
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
    authors = [value for value in frame["author"].dropna().unique().tolist()]
    customers = [value for value in frame["customer_id"].dropna().unique().tolist()]
    if not authors and not customers:
        return pd.DataFrame(columns=list(_RECENT_COLUMNS))
    oldest = frame["created_at"].min() - DUPLICATE_WINDOW
    return recent_records(store, authors, customers, oldest, _RECENT_COLUMNS)


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


class _Prepared(NamedTuple):
    """One chunk after ``prepare_records``: what storing it needs, picklable."""

    source: str
    rows_read: int
    skipped: dict[str, int]
    watermark: str | None
    frame: pd.DataFrame
    rejected: list[Rejected]


def _prepare(batch: SourceBatch, start: datetime | None, end: datetime | None) -> _Prepared:
    if start is not None:
        batch = in_range(batch, start, end)
    frame, empty_rows = prepare_records(batch)
    rejected = [*batch.rejected, *empty_rows]
    return _Prepared(batch.source, batch.rows_read, batch.skipped, batch.watermark, frame, rejected)


def _store_chunk(chunk: _Prepared, store: Store, run_id: str) -> tuple[int, int, int]:
    """Quarantine bad rows, drop known ids, mark copy-paste spam, store the rest.

    Returns:
        Rows stored, duplicates and quarantined.
    """
    frame, rejected = chunk.frame, chunk.rejected
    store.quarantine(chunk.source, run_id, (scrub_quarantined(*row) for row in rejected))

    duplicates = 0
    stored = 0
    if not frame.empty:
        first_seen = ~frame["id"].duplicated()
        duplicates += int((~first_seen).sum())
        frame = frame[first_seen]
        known = store.existing_ids(schema.feedback, "id", frame["id"])
        duplicates += len(known)
        frame = frame[~frame["id"].isin(known)]
    refused: list[Refused] = []
    if not frame.empty:
        frame = mark_duplicates(frame, DUPLICATE_WINDOW, existing=_recent_records(store, frame))
        inserted, refused = store.insert_or_refuse(schema.feedback, _to_rows(frame, run_id))
        _quarantine_refused(store, chunk.source, run_id, refused)
        frame = frame[~frame["id"].isin({row.row["id"] for row in refused})]
        spam = int(frame["duplicate_of"].notna().sum())
        duplicates += spam + (len(frame) - inserted)
        stored = inserted - spam
    return stored, duplicates, len(rejected) + len(refused)


def _prepare_in_worker(
    source: Source,
    since: str | None,
    chunk_rows: int,
    start: datetime | None,
    end: datetime | None,
    chunks: Queue[Any],
) -> None:
    """Body of the reader process: read and prepare chunks, hand them over through a queue."""
    try:
        for batch in source.read_chunks(since, chunk_rows):
            chunks.put(_prepare(batch, start, end))
        chunks.put(None)
    except Exception as exc:  # handed to the parent, which raises it
        chunks.put(exc)


def _prepared_chunks(
    source: Source,
    since: str | None,
    chunk_rows: int,
    start: datetime | None,
    end: datetime | None,
) -> Iterator[_Prepared]:
    """Chunks read and prepared here, or, for a large file source, by a second process.

    Preparing (normalize, redact, language) costs as much CPU as storing; a reader process
    overlaps the two on a second core. At most ``_QUEUED_CHUNKS`` chunks wait in between, so
    memory stays bounded. The process is a daemon and is killed when the read ends or fails.
    """
    if not _worth_a_worker(source):
        for batch in source.read_chunks(since, chunk_rows):
            yield _prepare(batch, start, end)
        return
    context = multiprocessing.get_context("spawn")
    chunks: Queue[Any] = context.Queue(maxsize=_QUEUED_CHUNKS)
    worker = context.Process(
        target=_prepare_in_worker,
        args=(source, since, chunk_rows, start, end, chunks),
        name=f"ingest-{source.name}",
        daemon=True,
    )
    worker.start()
    try:
        while True:
            try:
                item = chunks.get(timeout=1.0)
            except queue.Empty:
                if worker.is_alive():
                    continue
                raise SourceError(
                    f"source {source.name!r}: the reader process stopped (exit code "
                    f"{worker.exitcode}) before the end of the source; nothing after the "
                    "chunks stored was lost (the watermark did not move). Check memory and "
                    "rerun.",
                    code="E015",
                ) from None
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()


def _worth_a_worker(source: Source) -> bool:
    """A second process pays off for file sources of many MB on a machine with 2+ cores."""
    if not isinstance(source, FileSource) or (os.cpu_count() or 1) < 2:
        return False
    return sum(path.stat().st_size for path in source.files()) >= _WORKER_MIN_BYTES


class _Tally:
    """Counts of one source summed over its chunks."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.read = self.stored = self.duplicates = self.quarantined = 0
        self.skip_reasons: dict[str, int] = {}

    def add(
        self, batch: SourceBatch | _Prepared, stored: int, duplicates: int, quarantined: int
    ) -> None:
        self.read += batch.rows_read + sum(batch.skipped.values())
        self.stored += stored
        self.duplicates += duplicates
        self.quarantined += quarantined
        for reason, rows in batch.skipped.items():
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + rows

    def counts(self) -> SourceCounts:
        """The sums, checked: read = stored + duplicates + quarantined + skipped.

        Raises:
            CountBalanceError: The sums do not balance.
        """
        skipped = sum(self.skip_reasons.values())
        counts = SourceCounts(
            self.source,
            self.read,
            self.stored,
            self.duplicates,
            self.quarantined,
            skipped,
            dict(sorted(self.skip_reasons.items())),
        )
        if counts.read != counts.stored + counts.duplicates + counts.quarantined + skipped:
            raise CountBalanceError(
                f"source {self.source!r}: read {counts.read} != stored {counts.stored} + "
                f"duplicates {counts.duplicates} + quarantined {counts.quarantined} + skipped "
                f"{skipped}. This is a bug; please report it with the source file."
            )
        return counts


def ingest_batch(batch: SourceBatch, store: Store, run_id: str) -> SourceCounts:
    """Store one batch (a whole small source, or a test's batch) and save its watermark.

    Args:
        batch: What the source read.
        store: Destination database.
        run_id: Current run id.

    Returns:
        The per-source counts, also written to ``run_source_counts``.

    Raises:
        CountBalanceError: read != stored + duplicates + quarantined + skipped.
    """
    tally = _Tally(batch.source)
    tally.add(batch, *_store_chunk(_prepare(batch, None, None), store, run_id))
    counts = tally.counts()
    store.upsert(schema.run_source_counts, [{"run_id": run_id, **counts.as_dict()}])
    if batch.watermark is not None:
        store.set_watermark(batch.source, batch.watermark)
    return counts


def in_range(batch: SourceBatch, start: datetime, end: datetime | None) -> SourceBatch:
    """The part of a batch created in ``[start, end)``; the other records count as skipped.

    Rejected rows are kept: they have no trustworthy date and go to quarantine (once).

    Args:
        batch: What a source read.
        start: First instant kept (UTC).
        end: First instant not kept (UTC), or None for no end.

    Returns:
        A batch without watermark, so a ranged read never moves the source's watermark.
    """
    kept = [
        record
        for record in batch.records
        if record.created_at >= start and (end is None or record.created_at < end)
    ]
    skipped = dict(batch.skipped)
    if len(kept) < len(batch.records):
        skipped[OUT_OF_RANGE] = skipped.get(OUT_OF_RANGE, 0) + len(batch.records) - len(kept)
    return SourceBatch(
        source=batch.source,
        records=kept,
        rejected=batch.rejected,
        rows_read=len(kept) + len(batch.rejected),
        skipped=skipped,
    )


def ingest_source(
    source: Source,
    store: Store,
    run_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    record_idle: bool = True,
) -> SourceCounts:
    """Stream one source into the store, chunk by chunk, then save its watermark.

    Args:
        source: The source.
        store: Destination database.
        run_id: Current run id.
        start: Keep only rows created at or after this instant (UTC): the whole source is
            read from the start, rows outside ``[start, end)`` count as ``out_of_range``, and
            the watermark is left as it was. None: read from the watermark.
        end: End of the range (excluded), with ``start``.
        chunk_rows: Rows per chunk; bounds memory.
        record_idle: Write the counts to ``run_source_counts`` even when nothing new came
            (the watch loop passes False so idle polls leave no rows).

    Returns:
        The per-source counts, summed over the chunks.

    Raises:
        SourceError: The source cannot be read; chunks stored before stay (ids dedupe them
            on the next read) and the watermark is not moved.
        CountBalanceError: read != stored + duplicates + quarantined + skipped.
    """
    since = None if start is not None else store.get_watermark(source.name)
    tally = _Tally(source.name)
    watermark = None
    for chunk in _prepared_chunks(source, since, chunk_rows, start, end):
        tally.add(chunk, *_store_chunk(chunk, store, run_id))
        watermark = chunk.watermark
    counts = tally.counts()
    if record_idle or not counts.idle:
        store.upsert(schema.run_source_counts, [{"run_id": run_id, **counts.as_dict()}])
    if watermark is not None:
        store.set_watermark(source.name, watermark)
    return counts


def _quarantine_refused(store: Store, source: str, run_id: str, refused: list[Refused]) -> None:
    """Quarantine the records the database refused (``db_refused``, with its reason)."""
    store.quarantine(
        source,
        run_id,
        (
            (
                json.dumps(
                    row.row.get("raw") or {"id": row.row["id"]}, ensure_ascii=False, default=str
                ),
                DB_REFUSED,
                row.reason,
            )
            for row in refused
        ),
    )
