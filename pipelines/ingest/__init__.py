"""Ingest: sources -> ``FeedbackRecord`` -> normalize, redact, dedupe, language -> stored rows.

Every row read is stored, a duplicate, or quarantined with a reason (``ingest_batch``).
"""

from pipelines.ingest._batch import DUPLICATE_WINDOW, SourceCounts, ingest_batch, prepare_records

__all__ = ["DUPLICATE_WINDOW", "SourceCounts", "ingest_batch", "prepare_records"]
