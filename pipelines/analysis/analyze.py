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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from pipelines._errors import ConfigError, SourceError
from pipelines.analysis._embedding_lookup import is_embedding_column
from pipelines.ingest.dedupe import text_hash
from pipelines.ingest.language import DEFAULT_LANGUAGES, OTHER, detect_languages
from pipelines.ingest.normalize import normalize_text
from pipelines.ingest.privacy import protect_field
from pipelines.ingest.redact import redact
from pipelines.stages import Stage, StageContext

__all__ = [
    "ANALYSED_COLUMN",
    "KNOWN_LANGS",
    "BadRow",
    "analyze_frame",
    "count_input_rows",
    "is_internal_column",
    "iter_feedback_file",
    "output_record",
    "read_feedback_file",
    "write_jsonl",
]

ANALYSED_COLUMN = "analysed"
LINE_COLUMN = "line"
# Columns kept in memory for later stages but never written to output files, besides the
# vector columns (``is_embedding_column``).
_INTERNAL_COLUMNS: frozenset[str] = frozenset({ANALYSED_COLUMN, LINE_COLUMN, "text_hash"})
_CSV_SUFFIXES = {".csv", ".tsv"}


def is_internal_column(name: object) -> bool:
    """Whether a batch column stays in memory only (vectors, bookkeeping), never in outputs.

    Args:
        name: A column name.

    Returns:
        True for the bookkeeping columns (analysed flag, line, text hash) and every vector
            column.
    """
    return name in _INTERNAL_COLUMNS or is_embedding_column(name)


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


KNOWN_LANGS: tuple[str, ...] = (*DEFAULT_LANGUAGES, OTHER)
_LANG_REASON = (
    "lang {value!r} is not one of " + ", ".join(KNOWN_LANGS) + "; leave it empty to detect "
    "the language, or write 'other' for a language the models do not cover"
)


def _given_lang(value: object) -> str | None:
    """A user-supplied ``lang`` cell, lower-cased; None when empty (detect it)."""
    return str(value).strip().lower() if _present(value) else None


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
        elif _given_lang(row.get("lang")) not in (*KNOWN_LANGS, None):
            bad.append(BadRow(line, _LANG_REASON.format(value=row.get("lang"))))
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


@contextmanager
def _file_rows(path: str | os.PathLike[str]) -> Iterator[Iterator[tuple[int, Any]]]:
    """The file's rows as ``(line, row)``; a header or encoding problem is a SourceError."""
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"input file {file} not found; pass a JSONL or CSV file")
    with file.open(encoding="utf-8-sig", newline="") as handle:
        try:
            if file.suffix.lower() in _CSV_SUFFIXES:
                delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
                reader = csv.DictReader(handle, delimiter=delimiter)
                if reader.fieldnames is None or not {"id", "text"} <= set(reader.fieldnames):
                    raise SourceError(
                        f"{file} needs a header row with 'id' and 'text' columns "
                        f"(found {reader.fieldnames or []})"
                    )
                yield enumerate(reader, start=1)
            else:
                yield _jsonl_rows(handle)
        except UnicodeDecodeError as exc:
            raise SourceError(f"{file} is not UTF-8 text ({exc}); re-save it as UTF-8") from exc


def read_feedback_file(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[BadRow]]:
    """Read a JSONL or CSV file of ``id``/``text`` rows (extra columns kept).

    Args:
        path: ``.csv``/``.tsv`` are read as CSV (UTF-8, header row); anything else as JSONL.

    Returns:
        The usable rows (column ``line`` holds the input position) and the rejected rows.

    Raises:
        SourceError: The file is missing or not UTF-8 text.
    """
    with _file_rows(path) as rows:
        return _validated(rows)


def count_input_rows(path: str | os.PathLike[str]) -> int:
    """Rows of a feedback file (good and bad), read through once without keeping them.

    Args:
        path: As for :func:`read_feedback_file`.

    Returns:
        The number of rows :func:`iter_feedback_file` will yield in all.

    Raises:
        SourceError: The file is missing, lacks the header, or is not UTF-8 text.
    """
    with _file_rows(path) as rows:
        return sum(1 for _ in rows)


def iter_feedback_file(
    path: str | os.PathLike[str], chunk_size: int
) -> Iterator[tuple[pd.DataFrame, list[BadRow]]]:
    """Read a file like :func:`read_feedback_file`, ``chunk_size`` input rows at a time, so
    memory holds one chunk, not the file.

    Args:
        path: ``.csv``/``.tsv`` are read as CSV (UTF-8, header row); anything else as JSONL.
        chunk_size: Input rows per chunk (good and bad together).

    Yields:
        Per chunk its usable rows (may be empty) and its rejected rows.

    Raises:
        SourceError: The file is missing, lacks the header, or is not UTF-8 text (raised when
            the reading reaches the bad byte).
    """
    with _file_rows(path) as rows:
        while block := list(islice(rows, chunk_size)):
            yield _validated(iter(block))


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
        Row order and count are unchanged. A ``lang`` column given in ``frame`` is kept (its
        confidence 1.0); only its empty cells are detected.

    Raises:
        ConfigError: E083 when a given ``lang`` is not tr, fa, ro, en or other.
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
    given = [_given_lang(v) for v in usable["lang"]] if "lang" in usable else [None] * len(usable)
    invalid = sorted({str(lang) for lang in given if lang not in (*KNOWN_LANGS, None)})
    if invalid:
        raise ConfigError(_LANG_REASON.format(value=", ".join(invalid)), code="E083")
    guesses = detect_languages(usable["text"].tolist())
    # A language the user gave is kept as it is (confidence 1.0); only empty cells are detected.
    usable["lang"] = [lang or guess.lang for lang, guess in zip(given, guesses, strict=True)]
    usable["lang_confidence"] = [
        1.0 if lang else guess.confidence for lang, guess in zip(given, guesses, strict=True)
    ]
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
        str(name): _json_ready(value) for name, value in row.items() if not is_internal_column(name)
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
