"""Ingest: sources -> ``FeedbackRecord`` -> normalize, redact, dedupe, language -> stored rows.

Every row read is stored, a duplicate, quarantined with a reason, or skipped with a reason
(``ingest_source``, ``ingest_batch``).

The names below load on first use: the text helpers (``pipelines.ingest.normalize``,
``redact``, ``language``...) are imported by commands that read no source, such as ``feedback
analyze``, which should not pay for the source readers' HTTP and spreadsheet libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipelines.ingest import _batch

        return getattr(_batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
