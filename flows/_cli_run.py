"""``feedback run``, ``feedback ingest`` and ``feedback status``."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows._cli_alerts import delivery_listing
from flows._cli_dates import parse_moment_option
from flows._cli_options import ConfigOption, DbOption, SourceOption, flow_db_parameter
from flows._cli_runs import RUN_COLUMNS, run_rows, stage_rows
from flows._output import FormatOption, Listing, OutputFormat, print_listings
from pipelines._secrets import mask_credentials
from pipelines.settings import load_settings, outbox_dir_for
from pipelines.storage import (
    Store,
    quarantine_summary,
    recent_runs,
    record_totals,
    resolve_db_url,
)

__all__ = ["register"]

console = Console()

SinceOption = Annotated[
    datetime | None,
    typer.Option(
        "--since",
        parser=parse_moment_option,
        help="Re-read every source, keeping rows created at or after this instant "
        "(YYYY-MM-DD or ISO 8601).",
    ),
]
ResendOption = Annotated[
    bool,
    typer.Option("--resend", help="Mail alerts for this run's records again, even if sent."),
]


def _db_url(config: Path | None, db: str | None) -> str:
    settings = load_settings(config)  # also when --db wins: a broken configuration fails here
    return resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)


def _run_flow(
    config: Path | None,
    db: str | None,
    sources: list[str] | None,
    since: datetime | None,
    stages: list[str] | None,
    resend_alerts: bool = False,
) -> None:
    from pipelines._validate import check_configuration

    # Configuration errors end here, at once, before Prefect is imported or started (the flow
    # checks again).
    check_configuration(config, sources, stages)
    database = mask_credentials(_db_url(config, db))
    from flows._children import start_temporary_prefect_server
    from flows.nightly import nightly

    start_temporary_prefect_server()
    with flow_db_parameter(db) as flow_db, console.status("Running the nightly flow..."):
        summary = nightly(
            config_dir=str(config) if config else None,
            db=flow_db,
            sources=sources,
            since=since,
            stages=stages,
            resend_alerts=resend_alerts,
        )
    table = Table(title=f"Run {summary.run_id}")
    for column in ("source", "read", "stored", "duplicates", "quarantined", "skipped"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for c in summary.sources:
        table.add_row(
            c.source, *(str(v) for v in (c.read, c.stored, c.duplicates, c.quarantined, c.skipped))
        )
    console.print(table)
    if summary.languages:
        console.print(
            "New records by language: "
            + ", ".join(f"{lang} {count}" for lang, count in sorted(summary.languages.items()))
        )
    if summary.unsupported_languages():
        console.print(summary.unsupported_line())
    for name, rows in summary.stage_rows.items():
        console.print(f"Stage {name} ({summary.model_versions.get(name)}): {rows} rows")
    console.print(f"Database: {database}")
    if summary.report:
        console.print(f"Report: {Path(summary.report).resolve()}")
    if "alerts" in summary.stage_rows:
        console.print(f"Alert e-mails: {_alert_destination(config, db)}")


def _alert_destination(config: Path | None, db: str | None) -> str:
    """Where this run's alert mails went: the SMTP server, or the outbox folder of .eml files."""
    host = os.environ.get("FEEDBACK_SMTP_HOST")
    if host:
        return f"SMTP server {host}:{os.environ.get('FEEDBACK_SMTP_PORT', '587')}"
    outbox = outbox_dir_for(load_settings(config), _db_url(config, db)).resolve()
    mails = len(list(outbox.glob("*.eml")))
    return f"{outbox} ({mails} .eml files; set FEEDBACK_SMTP_HOST to send them by SMTP)"


def run(
    config: ConfigOption = None,
    db: DbOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    resend: ResendOption = False,
) -> None:
    """Run the nightly flow once: ingest every source, analyse, flag and alert."""
    _run_flow(config, db, source, since, None, resend)


def ingest(
    config: ConfigOption = None,
    db: DbOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
) -> None:
    """Ingest sources into the database without running the analysis stages."""
    _run_flow(config, db, source, since, [])


def status(
    config: ConfigOption = None,
    db: DbOption = None,
    limit: int = 10,
    output: FormatOption = OutputFormat.table,
) -> None:
    """Show recent runs with their counts, what sits in quarantine and undelivered alerts.

    "Records stored" counts the originals, as the runs' "stored" do; copy-paste duplicates are
    kept (``duplicate_of``) but counted as duplicates. ``--format json`` prints one object (runs,
    stages, quarantine, deliveries, warnings, records_stored, copy_paste_duplicates_kept);
    ``--format csv`` prints the runs.
    """
    with Store(_db_url(config, db), read_only=True) as store:
        runs = recent_runs(store, limit)
        runs_listing = Listing("runs", "Recent runs", RUN_COLUMNS, run_rows(runs))
        rows = quarantine_summary(store)
        q_listing = Listing(
            "quarantine",
            "Quarantine",
            ("source", "reason", "rows"),
            [{"source": s, "reason": r, "rows": n} for s, r, n in rows],
        )
        deliveries, warnings = delivery_listing(store)
        rows_total, copy_paste = record_totals(store)
    stages_listing = Listing(
        "stages",
        "Stages of the recent runs (records saved: new / re-analysed, seconds)",
        ("run_id", "flow", "stage", "version", "rows", "new", "reanalysed", "seconds"),
        stage_rows(runs),
    )
    print_listings(
        [runs_listing, stages_listing, q_listing, deliveries],
        output,
        extra={
            "records_stored": rows_total - copy_paste,
            "copy_paste_duplicates_kept": copy_paste,
            "warnings": warnings,
        },
        console=console,
    )


def register(app: typer.Typer) -> None:
    """Add the run/ingest/status commands to the CLI."""
    app.command()(run)
    app.command()(ingest)
    app.command()(status)
