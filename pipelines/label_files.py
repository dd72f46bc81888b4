"""Label files: CSV or JSONL rows naming a stored record and the labels a person gave it.

Each row names its record by ``id`` (the store's record id) or by ``source`` and
``external_id`` (the source's own id), and gives ``sentiment`` (negative/neutral/positive, or
neg/neu/pos) and/or ``aspects`` (CSV: ``"app_website_checkout:negative;price_value:pos"``; JSONL:
an object ``{"app_website_checkout": "negative"}``). Optional columns: ``not_complaint``
(true/false), ``note``, ``labelled_by`` (default: the importer's ``--by`` or the file's name).

A file is taken whole or not at all: every problem is reported with its line number and nothing
is written (``LabelFileError``, E091).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines._errors import LabelFileError
from pipelines.storage import Label, Store, resolve_external_ids, schema

__all__ = ["parse_aspects", "parse_polarity", "read_label_file"]

_POLARITY_ALIASES = {
    "negative": "negative",
    "neg": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "positive": "positive",
    "pos": "positive",
}
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}
_COLUMNS = {
    "id",
    "source",
    "external_id",
    "sentiment",
    "aspects",
    "not_complaint",
    "note",
    "labelled_by",
}
_MAX_PROBLEMS_SHOWN = 5


def parse_polarity(value: str) -> str:
    """``negative``/``neutral``/``positive`` for a polarity or its short form.

    Args:
        value: e.g. ``neg`` or ``Negative``.

    Returns:
        The full polarity.

    Raises:
        ValueError: Not a polarity.
    """
    polarity = _POLARITY_ALIASES.get(value.strip().lower())
    if polarity is None:
        raise ValueError(f"{value!r} is not negative, neutral or positive (or neg/neu/pos)")
    return polarity


def parse_aspects(value: str | Mapping[str, Any] | None) -> dict[str, str]:
    """Aspect -> polarity from ``"a:neg;b:pos"`` or a mapping.

    Args:
        value: The text form, a mapping, or None/empty.

    Returns:
        Aspect name -> full polarity.

    Raises:
        ValueError: A pair is malformed or a polarity unknown.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = [(str(name), str(polarity)) for name, polarity in value.items()]
    else:
        pairs = []
        for part in filter(None, (piece.strip() for piece in str(value).split(";"))):
            name, separator, polarity = part.partition(":")
            if not separator or not name.strip():
                raise ValueError(f"aspect {part!r} is not name:polarity")
            pairs.append((name.strip(), polarity))
    return {name: parse_polarity(polarity) for name, polarity in pairs}


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, Any]


def _rows(path: Path) -> list[_Row]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise LabelFileError(f"{path.name}: use a .csv or .jsonl file; nothing written")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if suffix == ".csv":
                reader = csv.DictReader(handle)
                unknown = sorted(set(reader.fieldnames or []) - _COLUMNS)
                if unknown:
                    raise LabelFileError(
                        f"{path.name}: unknown column(s) {unknown}; use {sorted(_COLUMNS)}; "
                        "nothing written"
                    )
                return [
                    _Row(reader.line_num, {k: v for k, v in row.items() if v not in (None, "")})
                    for row in reader
                ]
            rows = []
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    values = json.loads(line)
                except json.JSONDecodeError:
                    values = None
                if not isinstance(values, dict):
                    raise LabelFileError(
                        f"{path.name} line {number}: not a JSON object; nothing written"
                    )
                rows.append(_Row(number, {k: v for k, v in values.items() if v is not None}))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelFileError(f"cannot read {path}: {exc}; nothing written") from exc


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"not_complaint {value!r} is not true or false")


def _parse(row: _Row, labelled_by: str) -> tuple[tuple[str, str] | str, dict[str, Any]]:
    """(record key, Label keyword arguments) of one row; raises ValueError naming the problem."""
    values = row.values
    unknown = sorted(set(values) - _COLUMNS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}")
    if "id" in values:
        key: tuple[str, str] | str = str(values["id"]).strip()
    elif "source" in values and "external_id" in values:
        key = (str(values["source"]).strip(), str(values["external_id"]).strip())
    else:
        raise ValueError("give id, or source and external_id")
    aspects = values.get("aspects")
    if aspects is not None and not isinstance(aspects, str | Mapping):
        raise ValueError("aspects must be an object (JSONL) or 'name:polarity;...' (CSV)")
    sentiment = values.get("sentiment")
    return key, {
        "sentiment": None if sentiment is None else parse_polarity(str(sentiment)),
        "aspects": parse_aspects(aspects),
        "not_complaint": _flag(values.get("not_complaint", False)),
        "labelled_by": str(values.get("labelled_by") or labelled_by),
        "note": None if values.get("note") is None else str(values["note"]),
    }


def read_label_file(
    store: Store,
    path: str | os.PathLike[str],
    *,
    known_aspects: Sequence[str] | None = None,
    labelled_by: str | None = None,
) -> list[Label]:
    """The human labels of a CSV/JSONL file, their records resolved in ``store``.

    Args:
        store: The database holding the records.
        path: The file.
        known_aspects: Aspect names to accept (``aspects.yaml``); None accepts any.
        labelled_by: Who labelled rows without ``labelled_by`` (default: the file's name).

    Returns:
        One label per row, ready for ``record_labels``.

    Raises:
        LabelFileError: The file cannot be read, or rows are malformed, name unknown records,
            aspects or polarities (each named with its line).
    """
    file = Path(path)
    rows = _rows(file)
    problems: list[str] = []
    parsed: list[tuple[int, tuple[str, str] | str, dict[str, Any]]] = []
    for row in rows:
        try:
            key, fields = _parse(row, labelled_by or file.name)
        except ValueError as exc:
            problems.append(f"line {row.line}: {exc}")
            continue
        parsed.append((row.line, key, fields))
    external = [key for _, key, _ in parsed if isinstance(key, tuple)]
    resolved = resolve_external_ids(store, external) if external else {}
    direct = [key for _, key, _ in parsed if isinstance(key, str)]
    known_ids = store.existing_ids(schema.feedback, "id", direct) if direct else set()
    labels: list[Label] = []
    for line, key, fields in parsed:
        record_id = resolved.get(key) if isinstance(key, tuple) else key
        if record_id is None:
            problems.append(f"line {line}: no record with source/external_id {'/'.join(key)}")
            continue
        if isinstance(key, str) and key not in known_ids:
            problems.append(f"line {line}: no record with id {key!r}")
            continue
        label = Label(record_id, **fields)
        problems.extend(f"line {line}: {problem}" for problem in label.problems(known_aspects))
        labels.append(label)
    if not rows:
        problems.append("no label rows")
    if problems:
        shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
        more = len(problems) - _MAX_PROBLEMS_SHOWN
        raise LabelFileError(
            f"{file.name}: {len(problems)} problem(s), nothing written: {shown}"
            + (f" (+{more} more)" if more > 0 else "")
            + ". Fix the file and import it again."
        )
    return labels
