"""Ingest: sources -> ``FeedbackRecord`` -> normalize, redact, dedupe, language -> stored rows.

Every row read is stored, a duplicate, quarantined with a reason, or skipped with a reason
(``ingest_source``, ``ingest_batch``).
"""

from pipelines.ingest._batch import (
    DUPLICATE_WINDOW,
    OUT_OF_RANGE,
    SourceCounts,
    in_range,
    ingest_batch,
    ingest_source,
    prepare_records,
)

__all__ = [
    "DUPLICATE_WINDOW",
    "OUT_OF_RANGE",
    "SourceCounts",
    "in_range",
    "ingest_batch",
    "ingest_source",
    "prepare_records",
]
