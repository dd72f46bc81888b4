"""Sources: read reviews, surveys and social posts from files and APIs into FeedbackRecords.

``load_sources(path)`` builds one reader per entry of ``configs/sources.yaml``; each reader's
``read_chunks(since)`` yields ``SourceBatch`` chunks of records, rejected rows (with a stable
reason code, for quarantine) and rows skipped (with a reason); the last chunk carries the
watermark to resume from. ``read(since)`` merges the chunks into one batch.
"""

from __future__ import annotations

from pipelines.ingest.sources._base import (
    DEFAULT_CHUNK_ROWS,
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
from pipelines.ingest.sources._files import (
    UNCHANGED_FILE,
    CsvSource,
    FileSource,
    JsonlSource,
    XlsxSource,
)
from pipelines.ingest.sources._http import HttpJsonSource

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "MAPPABLE_FIELDS",
    "MAX_TEXT_CHARS",
    "REJECT_REASONS",
    "UNCHANGED_FILE",
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
