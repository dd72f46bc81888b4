"""``feedback export``: analysed records to Parquet, CSV or JSON lines for BI and dbt."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from flows._cli_dates import parse_moment_option
from flows._cli_options import ConfigOption, DbOption
from pipelines._dates import to_utc
from pipelines._errors import ConfigError
from pipelines.export import EXPORT_FORMATS, EXPORT_SCHEMA_VERSION, records_frame, write_export
from pipelines.settings import load_settings
from pipelines.storage import Store, resolve_db_url

__all__ = ["register"]


def export(
    since: Annotated[
        datetime,
        typer.Option(
            "--since",
            parser=parse_moment_option,
            help="First day/instant, YYYY-MM-DD or ISO 8601 (naive: pipeline.yaml's timezone).",
        ),
    ],
    out: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    until: Annotated[
        datetime | None,
        typer.Option("--until", parser=parse_moment_option, help="End of the range, excluded."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"{'|'.join(EXPORT_FORMATS)} (default: from the file's suffix).",
        ),
    ] = None,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Write the analysed records created in [--since, --until) in the export schema.

    One row per record: redacted text, language, sentiment, aspects, topic, priority and the
    model versions (docs/schema.md).
    """
    if output is not None and output.lower() not in EXPORT_FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(EXPORT_FORMATS)}", param_hint="--format")
    settings = load_settings(config)
    start = to_utc(since, settings.timezone)
    end = to_utc(until, settings.timezone) if until is not None else None
    if end is not None and end <= start:
        raise ConfigError(
            f"--until ({end.isoformat()}) must be after --since ({start.isoformat()}); "
            "the range is [since, until).",
            code="E081",
        )
    url = resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)
    with Store(url, read_only=True) as store:
        frame = records_frame(store, start, end)
    rows = write_export(frame, out, output.lower() if output else None)
    typer.echo(f"Exported {rows} record(s) (schema version {EXPORT_SCHEMA_VERSION}) to {out}")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the CLI."""
    app.command()(export)
