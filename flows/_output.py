"""One way to print listings: ``--format table|json|csv`` for every listing command.

``table`` is a rich table on a terminal and plain, full-width, never truncated text when stdout is
not a terminal (a pipe or a file), so ``feedback status | grep`` sees every character. ``json`` and
``csv`` are for scripts: the same columns, values in ISO 8601 (times), numbers as numbers, lists
and mappings as JSON inside a CSV cell.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["FormatOption", "Listing", "OutputFormat", "print_listings"]


class OutputFormat(StrEnum):
    """How a listing command prints its rows."""

    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        case_sensitive=False,
        help="table (plain full-width text when piped), json or csv.",
    ),
]


@dataclass
class Listing:
    """Rows of one listing, with the columns in display order.

    Args:
        name: Key of the listing in JSON output when a command prints several.
        title: Heading printed above the table.
        columns: Column names, in order; rows may lack some (empty / null).
        rows: One mapping per row; values are scalars, datetimes, lists or mappings.
    """

    name: str
    title: str
    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]] = field(default_factory=list)


def _plain_value(value: Any) -> Any:
    """A JSON-serialisable value: ISO 8601 times, None for NULL/NaN/NaT, Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_value(v) for v in value]
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _cell_text(value: Any) -> str:
    """How a value reads in a table cell (one line)."""
    value = _plain_value(value)
    if value is None:
        return ""
    if isinstance(value, str):
        if len(value) >= 16 and value[4:5] == "-" and value[10:11] == "T":
            return value[:16].replace("T", " ")
        return " / ".join(value.splitlines())
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell_text(v) for v in value)
    return str(value)


def _csv_cell(value: Any) -> Any:
    value = _plain_value(value)
    if value is None:
        return ""
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _plain_table(listing: Listing) -> str:
    header = list(listing.columns)
    body = [[_cell_text(row.get(column)) for column in header] for row in listing.rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    lines = [listing.title] if listing.title else []
    for cells in [header, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _rich_table(listing: Listing) -> Table:
    table = Table(title=escape(listing.title))
    for column in listing.columns:
        table.add_column(column, overflow="fold")
    for row in listing.rows:
        table.add_row(*(escape(_cell_text(row.get(column))) for column in listing.columns))
    return table


def print_listings(
    listings: Listing | Sequence[Listing],
    output: OutputFormat,
    *,
    extra: Mapping[str, Any] | None = None,
    console: Console | None = None,
) -> None:
    """Print one or more listings to stdout in the chosen format.

    Args:
        listings: What to print. ``json`` prints a single listing as an array of objects, several
            as one object keyed by ``Listing.name`` (plus ``extra``); ``csv`` prints the first
            listing only (the one a command documents as its CSV); ``table`` prints them all.
        output: The ``--format`` value.
        extra: Scalar facts printed after the tables (``key: value``) or merged into the JSON
            object (e.g. ``records_stored``).
        console: Rich console used on a terminal (one is made when None).
    """
    many = not isinstance(listings, Listing)
    items: list[Listing] = list(listings) if many else [listings]  # type: ignore[arg-type]
    if output is OutputFormat.json:
        if many or extra:
            document: Any = {
                item.name: [_listing_row(item, row) for row in item.rows] for item in items
            }
            document.update({k: _plain_value(v) for k, v in (extra or {}).items()})
        else:
            document = [_listing_row(items[0], row) for row in items[0].rows]
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    if output is OutputFormat.csv:
        first = items[0]
        writer = csv.DictWriter(sys.stdout, fieldnames=list(first.columns), lineterminator="\n")
        writer.writeheader()
        for row in first.rows:
            writer.writerow({column: _csv_cell(row.get(column)) for column in first.columns})
        return
    terminal = sys.stdout.isatty()
    out = console or Console(highlight=False)
    for item in items:
        if terminal:
            out.print(_rich_table(item))
        else:
            sys.stdout.write(_plain_table(item) + "\n")
    for key, value in (extra or {}).items():
        label = key.replace("_", " ").capitalize()
        for line in value if isinstance(value, list) else [value]:
            sys.stdout.write(f"{label}: {_cell_text(line)}\n")


def _listing_row(listing: Listing, row: Mapping[str, Any]) -> dict[str, Any]:
    return {column: _plain_value(row.get(column)) for column in listing.columns}
