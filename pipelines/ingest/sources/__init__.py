"""Sources: read reviews, surveys and social posts from files and APIs into FeedbackRecords.

``load_sources(path)`` builds one reader per entry of ``configs/sources.yaml``; each reader's
``read(since)`` returns a ``SourceBatch`` of records, rejected rows (with a stable reason
code, for quarantine) and the watermark to resume from.
"""

from __future__ import annotations

from pipelines.ingest.sources._base import (
    MAX_TEXT_CHARS,
    REJECT_REASONS,
    Rejected,
    Source,
    SourceBatch,
)
from pipelines.ingest.sources._build import build_source, load_sources
from pipelines.ingest.sources._config import (
    MAPPABLE_FIELDS,
    CsvSourceConfig,
    CursorPagination,
    HttpJsonSourceConfig,
    JsonlSourceConfig,
    PagePagination,
    SourceConfig,
    SourcesConfig,
    XlsxSourceConfig,
)
from pipelines.ingest.sources._encoding import detect_encoding
from pipelines.ingest.sources._files import CsvSource, FileSource, JsonlSource, XlsxSource
from pipelines.ingest.sources._http import HttpJsonSource

__all__ = [
    "MAPPABLE_FIELDS",
    "MAX_TEXT_CHARS",
    "REJECT_REASONS",
    "CsvSource",
    "CsvSourceConfig",
    "CursorPagination",
    "FileSource",
    "HttpJsonSource",
    "HttpJsonSourceConfig",
    "JsonlSource",
    "JsonlSourceConfig",
    "PagePagination",
    "Rejected",
    "Source",
    "SourceBatch",
    "SourceConfig",
    "SourcesConfig",
    "XlsxSource",
    "XlsxSourceConfig",
    "build_source",
    "detect_encoding",
    "load_sources",
]
