"""``feedback quarantine list|show ID|replay``: see the rows that could not be stored, and
replay them after fixing the source or its mapping."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from flows._cli_options import ConfigOption, DbOption, SourceOption
from flows._cli_runs import open_read_only
from flows._output import FormatOption, Listing, OutputFormat, print_listings
from pipelines.config import config_path
from pipelines.settings import load_settings
from pipelines.storage import Store, find_quarantined, list_quarantined, resolve_db_url

__all__ = ["QUARANTINE_COLUMNS", "register"]

QUARANTINE_COLUMNS = ("id", "source", "reason", "detail", "created_at", "replay", "replay_reason")
"""Columns of ``feedback quarantine list``."""

quarantine_app = typer.Typer(
    help="Rows that could not become records: list, show one, replay after a fix.",
    no_args_is_help=True,
)


@quarantine_app.command("list")
def list_command(
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Only this reason.")] = None,
    include_replayed: Annotated[
        bool, typer.Option("--all", help="Also rows a replay turned into records.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most N rows.")] = 200,
    config: ConfigOption = None,
    db: DbOption = None,
    output: FormatOption = OutputFormat.table,
) -> None:
    """List quarantined rows, oldest first (ids for `feedback quarantine show`)."""
    with open_read_only(config, db) as store:
        rows = list_quarantined(store, source, reason, include_replayed, limit)
    title = f"Quarantined rows ({len(rows)}{'' if include_replayed else ' open'})"
    print_listings(Listing("quarantine", title, QUARANTINE_COLUMNS, rows), output)


@quarantine_app.command("show")
def show_command(
    quarantine_id: Annotated[str, typer.Argument(help="Row id (or its first 8+ characters).")],
    config: ConfigOption = None,
    db: DbOption = None,
    output: FormatOption = OutputFormat.table,
) -> None:
    """Show one quarantined row: why, when, the raw row (redacted) and its last replay."""
    with open_read_only(config, db) as store:
        rows = find_quarantined(store, quarantine_id) if len(quarantine_id.strip()) >= 8 else []
    if len(rows) != 1:
        why = "no quarantined row" if not rows else f"{len(rows)} rows"
        typer.echo(
            f"Error: {why} with id {quarantine_id!r}; use an id (8+ characters) from "
            "`feedback quarantine list --all`.",
            err=True,
        )
        raise typer.Exit(code=1)
    (row,) = rows
    columns = (*QUARANTINE_COLUMNS, "run_id", "replay_detail", "replay_record_ids", "replayed_at")
    if output is not OutputFormat.table:
        print_listings(Listing("row", "", (*columns, "raw"), [row]), output)
        return
    fields = [{"field": name, "value": row[name]} for name in columns]
    print_listings(
        Listing("row", f"Quarantined row {row['id']}", ("field", "value"), fields), output
    )
    try:
        raw = json.dumps(json.loads(row["raw"]), ensure_ascii=False, indent=2)
    except ValueError:
        raw = row["raw"]
    typer.echo(f"raw (redacted):\n{raw}")


@quarantine_app.command("replay")
def replay_command(
    source: SourceOption = None,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Map the open quarantined rows again with the current sources.yaml (after a fix).

    Rows that now map are stored (ids dedupe; never replayed twice), the others stay with
    their new reason. The next `feedback run` analyses the new records.
    """
    from pipelines.ingest._replay import replay_quarantine
    from pipelines.ingest.sources import load_sources

    settings = load_settings(config)
    sources = load_sources(config_path("sources.yaml", config), names=source)
    url = resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)
    with Store(url) as store:
        summary = replay_quarantine(store, sources)
    rows = [
        {
            "source": c.source,
            "read": c.read,
            "stored": c.stored,
            "duplicates": c.duplicates,
            "quarantined": c.quarantined,
            "still_quarantined": c.skip_reasons.get("still_quarantined", 0),
        }
        for c in summary.sources
    ]
    columns = ("source", "read", "stored", "duplicates", "quarantined", "still_quarantined")
    print_listings(Listing("replay", f"Replay {summary.run_id}", columns, rows), OutputFormat.table)


def register(app: typer.Typer) -> None:
    """Add the ``quarantine`` command group to the CLI."""
    app.add_typer(quarantine_app, name="quarantine")
