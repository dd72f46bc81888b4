"""File-to-file analysis: read feedback rows, run normalize/redact, language and the stages.

``analyze_frame`` is the library entry point (``feedback analyze`` is a thin wrapper); stages
run in the order given, so aspects, topics or flagging plug in by appending them. Every column
a stage adds is written to the output JSON lines, except in-memory vectors (``embedding``...).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from pipelines._errors import SourceError
from pipelines.ingest.dedupe import text_hash
from pipelines.ingest.language import detect_languages
from pipelines.ingest.normalize import normalize_text
from pipelines.ingest.privacy import protect_field
from pipelines.ingest.redact import redact
from pipelines.stages import Stage, StageContext

__all__ = [
    "ANALYSED_COLUMN",
    "INTERNAL_COLUMNS",
    "BadRow",
    "analyze_frame",
    "output_record",
    "read_feedback_file",
    "write_jsonl",
]

ANALYSED_COLUMN = "analysed"
LINE_COLUMN = "line"
# Columns kept in memory for later stages but never written to output files.
INTERNAL_COLUMNS: frozenset[str] = frozenset(
    {"embedding", "sentence_embeddings", ANALYSED_COLUMN, LINE_COLUMN, "text_hash"}
)
_CSV_SUFFIXES = {".csv", ".tsv"}


@dataclass(frozen=True)
class BadRow:
    """An input row that could not be analysed.

    Attributes:
        line: 1-based line (JSONL) or data row number (CSV, header excluded).
        reason: Why, e.g. ``missing text``.
    """

    line: int
    reason: str


def _present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip() != ""


def _validated(rows: Iterator[tuple[int, Any]]) -> tuple[pd.DataFrame, list[BadRow]]:
    good: list[dict[str, Any]] = []
    bad: list[BadRow] = []
    for line, row in rows:
        if not isinstance(row, Mapping):
            bad.append(BadRow(line, "not a JSON object"))
        elif not _present(row.get("id")):
            bad.append(BadRow(line, "missing id"))
        elif "text" not in row or row.get("text") is None:
            bad.append(BadRow(line, "missing text"))
        elif not isinstance(row["text"], str):
            bad.append(BadRow(line, "text is not a string"))
        elif not row["text"].strip():
            bad.append(BadRow(line, "empty text"))
        else:
            good.append({**row, "id": str(row["id"]), LINE_COLUMN: line})
    return pd.DataFrame(good), bad


def _jsonl_rows(handle: TextIO) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError:
            yield line, None


def read_feedback_file(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[BadRow]]:
    """Read a JSONL or CSV file of ``id``/``text`` rows (extra columns kept).

    Args:
        path: ``.csv``/``.tsv`` are read as CSV (UTF-8, header row); anything else as JSONL.

    Returns:
        The usable rows (column ``line`` holds the input position) and the rejected rows.

    Raises:
        SourceError: The file is missing or not UTF-8 text.
    """
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"input file {file} not found; pass a JSONL or CSV file")
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            if file.suffix.lower() in _CSV_SUFFIXES:
                delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
                reader = csv.DictReader(handle, delimiter=delimiter)
                if reader.fieldnames is None or not {"id", "text"} <= set(reader.fieldnames):
                    raise SourceError(
                        f"{file} needs a header row with 'id' and 'text' columns "
                        f"(found {reader.fieldnames or []})"
                    )
                return _validated(enumerate(reader, start=1))
            return _validated(_jsonl_rows(handle))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{file} is not UTF-8 text ({exc}); re-save it as UTF-8") from exc


def analyze_frame(
    frame: pd.DataFrame, stages: Sequence[Stage], context: StageContext
) -> pd.DataFrame:
    """Normalize and redact ``text``, detect the language, then run ``stages`` in order.

    Args:
        frame: Rows with ``id`` and ``text`` (other columns are carried along).
        stages: Analysis stages, e.g. ``[SentimentStage.from_config()]``.
        context: Store, run id and options handed to the stages.

    Returns:
        The frame with ``text`` replaced by the analysis text (normalized, PII-redacted), the
        other columns protected (``pipelines.ingest.privacy.protect_field``: author pseudonymised,
        identifiers redacted),
        ``pii_counts``, ``text_hash``, ``lang``, ``lang_confidence``, every stage's columns and
        ``analysed`` (False for rows with no text left after normalization; stages skip them).
        Row order and count are unchanged.
    """
    result = frame.copy()
    for column in [name for name in result.columns if name != "text"]:
        result[column] = [protect_field(str(column), value) for value in result[column]]
    redactions = [redact(normalize_text(str(text))) for text in result["text"]]
    result["text"] = [redaction.text for redaction in redactions]
    result["pii_counts"] = [redaction.counts for redaction in redactions]
    result["text_hash"] = [text_hash(text) for text in result["text"]]
    result[ANALYSED_COLUMN] = [bool(text.strip()) for text in result["text"]]
    usable = result[result[ANALYSED_COLUMN]].copy()
    guesses = detect_languages(usable["text"].tolist())
    usable["lang"] = [guess.lang for guess in guesses]
    usable["lang_confidence"] = [guess.confidence for guess in guesses]
    for stage in stages:
        usable = stage.run(usable, context)
    if len(usable) == len(result):
        return usable
    skipped = result[~result[ANALYSED_COLUMN]]
    return pd.concat([usable, skipped]).loc[result.index]


def _json_ready(value: Any) -> Any:
    """Plain JSON types for numpy/pandas values, recursively; NaN and NaT become None."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NaT or value is None:
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, str | int | float | bool):
        return value
    return None if pd.isna(value) else str(value)


def output_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One analysed row as a JSON-ready dict, without the internal columns.

    Args:
        row: A row of :func:`analyze_frame`'s result.

    Returns:
        Every other column, with numpy/pandas values converted to plain JSON types.
    """
    return {
        str(name): _json_ready(value) for name, value in row.items() if name not in INTERNAL_COLUMNS
    }


def write_jsonl(frame: pd.DataFrame, handle: TextIO) -> int:
    """Append the analysed rows of ``frame`` as JSON lines.

    Args:
        frame: :func:`analyze_frame`'s result; rows with ``analysed`` False are not written.
        handle: Open text file.

    Returns:
        Lines written.
    """
    written = 0
    for row in frame.to_dict(orient="records"):
        if row.get(ANALYSED_COLUMN) is False:
            continue
        handle.write(json.dumps(output_record(row), ensure_ascii=False) + "\n")
        written += 1
    return written
