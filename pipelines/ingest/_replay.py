"""Replay quarantined rows after a source or mapping fix: idempotent and counted.

Each open quarantined row (never replayed, or still bad at its last replay) of the chosen
sources is mapped again with the source's *current* configuration. A row that now maps becomes
records through the normal ingest path (redaction, dedupe by id, storage) and is marked
``replayed``; it is never replayed again, and its record ids dedupe anyway. A row that still
fails stays in quarantine with the new reason. The replay is a run (flow ``replay``) with its
counts per source: rows read = stored + duplicates + quarantined (new, e.g. no text left) +
skipped (``still_quarantined``). The next ``feedback run`` analyses the new records.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipelines.ingest._batch import SourceCounts, ingest_batch
from pipelines.ingest.sources import CsvSource, Source, SourceBatch
from pipelines.ingest.sources._base import RowRejected
from pipelines.storage import (
    REPLAYED,
    STILL_QUARANTINED,
    Store,
    finish_run,
    list_quarantined,
    pipeline_lock,
    record_replays,
    schema,
    start_run,
)

__all__ = ["ReplaySummary", "replay_quarantine"]


class ReplaySummary:
    """What a replay did.

    Attributes:
        run_id: The replay run.
        sources: Per-source counts (``skip_reasons['still_quarantined']``: rows still bad).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.sources: list[SourceCounts] = []


def _csv_header(source: CsvSource) -> list[str] | None:
    """The header of the source's first file now (the fix may have renamed columns)."""
    for path in source.files():
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
            for line in handle:
                if line.strip():
                    return [
                        name.strip()
                        for name in next(csv.reader([line], delimiter=source.config.delimiter))
                    ]
    return None


def _values(source: Source, raw: str, header: list[str] | None) -> dict[str, Any] | None:
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    if isinstance(source, CsvSource) and header is not None:
        try:
            fields = next(csv.reader([raw], delimiter=source.config.delimiter, strict=True), [])
        except csv.Error:
            return None
        if len(fields) == len(header):
            return dict(zip(header, fields, strict=True))
    return None


def _replay_source(store: Store, source: Source, run_id: str) -> SourceCounts:
    rows = list_quarantined(store, source=source.name)
    header = _csv_header(source) if isinstance(source, CsvSource) else None
    records = []
    outcomes: list[dict[str, Any]] = []
    for row in rows:
        values = _values(source, row["raw"], header)
        if values is None:
            outcomes.append(
                {
                    "quarantine_id": row["id"],
                    "outcome": STILL_QUARANTINED,
                    "reason": row["reason"],
                    "detail": "the row still cannot be parsed; it needs a corrected source row",
                }
            )
            continue
        try:
            produced = source.mapper.records(values, source.mapper.created_at(values))
        except RowRejected as exc:
            outcomes.append(
                {
                    "quarantine_id": row["id"],
                    "outcome": STILL_QUARANTINED,
                    "reason": exc.reason,
                    "detail": exc.detail,
                }
            )
            continue
        records.extend(produced)
        outcomes.append(
            {
                "quarantine_id": row["id"],
                "outcome": REPLAYED,
                "record_ids": [record.id for record in produced],
            }
        )
    batch = SourceBatch(source.name, records=records, rows_read=len(records))
    stored = ingest_batch(batch, store, run_id)
    still = sum(outcome["outcome"] == STILL_QUARANTINED for outcome in outcomes)
    counts = SourceCounts(
        source.name,
        read=stored.read + still,
        stored=stored.stored,
        duplicates=stored.duplicates,
        quarantined=stored.quarantined,
        skipped=stored.skipped + still,
        skip_reasons={**stored.skip_reasons, **({STILL_QUARANTINED: still} if still else {})},
    )
    store.upsert(schema.run_source_counts, [{"run_id": run_id, **counts.as_dict()}])
    record_replays(store, run_id, outcomes)
    return counts


def replay_quarantine(
    store: Store, sources: Sequence[Source], run_id: str | None = None
) -> ReplaySummary:
    """Replay the open quarantined rows of ``sources`` under the pipeline lock, as a run.

    Args:
        store: The database.
        sources: Sources (current configuration) whose rows are replayed.
        run_id: The run id; a fresh UUID when None.

    Returns:
        Per-source counts.
    """
    summary = ReplaySummary(run_id or str(uuid.uuid4()))
    with pipeline_lock(store, summary.run_id, "replay"):
        start_run(store, summary.run_id, "replay", {"sources": [source.name for source in sources]})
        try:
            for source in sources:
                summary.sources.append(_replay_source(store, source, summary.run_id))
        except Exception as exc:
            finish_run(store, summary.run_id, "failed", _counts(summary), None, str(exc))
            raise
        finish_run(store, summary.run_id, "completed", _counts(summary))
    return summary


def _counts(summary: ReplaySummary) -> dict[str, Any]:
    return {
        "sources": [counts.as_dict() for counts in summary.sources],
        "replayed_at": datetime.now(UTC).isoformat(),
    }
