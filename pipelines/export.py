"""Exports of analysed records for BI and dbt: one documented, versioned schema.

The columns, their pandas dtypes and meanings are ``EXPORT_COLUMNS`` (and docs/schema.md). Every
file carries ``schema_version``; Parquet files also in their metadata
(``feedback_export_schema_version``). A change that renames, removes or retypes a column bumps
``EXPORT_SCHEMA_VERSION``; new columns are appended without a bump.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines._errors import ConfigError
from pipelines.storage import Store, analysed_records

__all__ = [
    "EXPORT_COLUMNS",
    "EXPORT_DTYPES",
    "EXPORT_FORMATS",
    "EXPORT_SCHEMA_VERSION",
    "ExportColumn",
    "export_frame",
    "read_export",
    "records_frame",
    "write_export",
]

EXPORT_SCHEMA_VERSION = 1
EXPORT_FORMATS = ("parquet", "csv", "jsonl")
PARQUET_VERSION_KEY = b"feedback_export_schema_version"


@dataclass(frozen=True)
class ExportColumn:
    """One column of the export.

    Attributes:
        name: Column name.
        dtype: pandas dtype after reading (``read_export``, or ``pd.read_parquet``).
        meaning: What it holds.
    """

    name: str
    dtype: str
    meaning: str


_TIME = "datetime64[us, UTC]"
EXPORT_COLUMNS: tuple[ExportColumn, ...] = (
    ExportColumn("schema_version", "Int64", f"version of this layout ({EXPORT_SCHEMA_VERSION})"),
    ExportColumn("id", "string", "stable record id: hash of source and external id (or content)"),
    ExportColumn("source", "string", "source name from sources.yaml"),
    ExportColumn("channel", "string", "review, survey or social"),
    ExportColumn("created_at", _TIME, "when the customer wrote it (UTC)"),
    ExportColumn("lang", "string", "tr, fa, ro, en or other"),
    ExportColumn("lang_confidence", "Float64", "language detector confidence, 0..1"),
    ExportColumn("text", "string", "normalised text, personal identifiers redacted ([EMAIL]...)"),
    ExportColumn("title", "string", "title of a review, redacted"),
    ExportColumn("rating", "Int64", "star rating as given by the source"),
    ExportColumn("nps", "Int64", "NPS answer 0..10 (surveys)"),
    ExportColumn("customer_id", "string", "customer id from the source, unless it held an id"),
    ExportColumn("customer_value", "Float64", "customer value from the source"),
    ExportColumn("product", "string", "product, redacted"),
    ExportColumn("store", "string", "store or branch, redacted"),
    ExportColumn("platform", "string", "platform of a social post"),
    ExportColumn("url", "string", "link to the original, redacted"),
    ExportColumn("duplicate_of", "string", "id of the record this one copies (spam), else empty"),
    ExportColumn("sentiment", "string", "negative, neutral or positive (latest model)"),
    ExportColumn("sentiment_negative", "Float64", "probability of negative"),
    ExportColumn("sentiment_neutral", "Float64", "probability of neutral"),
    ExportColumn("sentiment_positive", "Float64", "probability of positive"),
    ExportColumn("sentiment_model", "string", "sentiment model version"),
    ExportColumn(
        "aspects", "string", 'JSON list of {"aspect", "polarity", "score"}; empty: none found'
    ),
    ExportColumn("aspects_model", "string", "aspect model version"),
    ExportColumn("topic_id", "Int64", "topic id, stable across refits; -1 unassigned"),
    ExportColumn("topic_label", "string", "human label (feedback topics rename) or automatic"),
    ExportColumn("topic_model", "string", "topic model version"),
    ExportColumn("flagged", "boolean", "needs a support lead's attention"),
    ExportColumn("priority", "string", "P1, P2 or P3 when flagged"),
    ExportColumn("flag_points", "Int64", "points of the flag rules that matched"),
    ExportColumn("churn_intent", "boolean", "the customer says they will leave"),
    ExportColumn("flag_reasons", "string", "JSON list of the human-readable reasons"),
    ExportColumn("flagging_rules", "string", "version of flagging.yaml's rules"),
)
EXPORT_DTYPES: dict[str, str] = {column.name: column.dtype for column in EXPORT_COLUMNS}
_JSON_COLUMNS = ("aspects", "flag_reasons")
_TIME_COLUMNS = tuple(name for name, dtype in EXPORT_DTYPES.items() if dtype == _TIME)


def _json_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def export_frame(records: pd.DataFrame) -> pd.DataFrame:
    """Records from ``analysed_records`` in the export layout: columns in order, documented
    dtypes, JSON text for lists.

    Args:
        records: ``pipelines.storage.analysed_records`` output.

    Returns:
        A frame with exactly ``EXPORT_COLUMNS``.
    """
    frame = records.copy()
    frame["schema_version"] = EXPORT_SCHEMA_VERSION
    for name in _JSON_COLUMNS:
        frame[name] = [_json_cell(value) for value in frame[name]]
    return _typed(frame[list(EXPORT_DTYPES)])


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for name, dtype in EXPORT_DTYPES.items():
        if dtype == _TIME:
            frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601").astype(_TIME)
        else:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
            frame[name] = frame[name].astype(dtype)
    return frame.reset_index(drop=True)


def records_frame(store: Store, since: datetime, until: datetime | None = None) -> pd.DataFrame:
    """Analysed records created in ``[since, until)`` in the export layout.

    Args:
        store: The database.
        since: First instant (aware).
        until: End, excluded (aware); None for no end.

    Returns:
        One row per record with ``EXPORT_COLUMNS``.
    """
    return export_frame(analysed_records(store, since, until))


def _format_of(path: Path, output: str | None) -> str:
    chosen = output or path.suffix.lstrip(".").lower()
    if chosen not in EXPORT_FORMATS:
        raise ConfigError(
            f"cannot tell the export format of {path.name}: use --format "
            f"{'|'.join(EXPORT_FORMATS)} or a file ending in .parquet, .csv or .jsonl.",
            code="E080",
        )
    return chosen


def write_export(frame: pd.DataFrame, path: str | os.PathLike[str], output: str | None) -> int:
    """Write an export file atomically (a partial file never has the final name).

    Args:
        frame: ``export_frame`` output.
        path: Target file.
        output: ``parquet``, ``csv`` or ``jsonl``; None: from the file's suffix.

    Returns:
        Rows written.

    Raises:
        ConfigError: E080 when the format is unknown.
    """
    target = Path(path)
    chosen = _format_of(target, output)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    if chosen == "parquet":
        table = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = {
            **(table.schema.metadata or {}),
            PARQUET_VERSION_KEY: b"%d" % EXPORT_SCHEMA_VERSION,
        }
        pq.write_table(table.replace_schema_metadata(metadata), partial)
    elif chosen == "csv":
        frame.to_csv(partial, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        frame.to_json(
            partial,
            orient="records",
            lines=True,
            date_format="iso",
            date_unit="us",
            force_ascii=False,
        )
    partial.replace(target)
    return len(frame)


def read_export(path: str | os.PathLike[str], output: str | None = None) -> pd.DataFrame:
    """Read an export file back with the documented dtypes.

    Args:
        path: An export file.
        output: Its format; None: from the suffix.

    Returns:
        The frame, ``EXPORT_COLUMNS`` with ``EXPORT_DTYPES``.
    """
    source = Path(path)
    chosen = _format_of(source, output)
    if chosen == "parquet":
        return _typed(pd.read_parquet(source))
    if chosen == "csv":
        dtypes = {name: dtype for name, dtype in EXPORT_DTYPES.items() if dtype != _TIME}
        return _typed(pd.read_csv(source, dtype=dtypes, keep_default_na=False, na_values=[""]))
    return _typed(pd.read_json(source, lines=True, dtype=False))
