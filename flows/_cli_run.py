"""``feedback run``, ``feedback ingest`` and ``feedback status``."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from flows._cli_alerts import print_delivery_backlog
from flows._cli_options import ConfigOption, DbOption, SourceOption, flow_db_parameter
from pipelines._secrets import mask_credentials
from pipelines.config import config_path
from pipelines.ingest.sources import load_sources
from pipelines.settings import load_settings
from pipelines.storage import Store, quarantine_summary, recent_runs, resolve_db_url, schema

__all__ = ["register"]

console = Console()

SinceOption = Annotated[
    datetime | None,
    typer.Option(
        "--since", help="Re-read every source, keeping rows created at or after this instant."
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
    from flows._children import start_temporary_prefect_server
    from flows.nightly import nightly

    # Configuration errors end here, at once, before Prefect starts (the flow checks again).
    database = mask_credentials(_db_url(config, db))
    load_sources(config_path("sources.yaml", config), names=sources)
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
    for name, rows in summary.stage_rows.items():
        console.print(f"Stage {name} ({summary.model_versions.get(name)}): {rows} rows")
    console.print(f"Database: {database}")
    if summary.report:
        console.print(f"Report: {Path(summary.report).resolve()}")
    if "alerts" in summary.stage_rows:
        console.print(f"Alert e-mails: {_alert_destination(config)}")


def _alert_destination(config: Path | None) -> str:
    """Where this run's alert mails went: the SMTP server, or the outbox folder of .eml files."""
    host = os.environ.get("FEEDBACK_SMTP_HOST")
    if host:
        return f"SMTP server {host}:{os.environ.get('FEEDBACK_SMTP_PORT', '587')}"
    outbox = load_settings(config).outbox_dir.resolve()
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


def status(config: ConfigOption = None, db: DbOption = None, limit: int = 10) -> None:
    """Show recent runs with their counts, what sits in quarantine and undelivered alerts."""
    with Store(_db_url(config, db), read_only=True) as store:
        runs = recent_runs(store, limit)
        table = Table(title="Recent runs")
        for column in ("started", "flow", "status", "read", "stored", "dup", "quar", "models"):
            table.add_column(column)
        for run_row in runs:
            per_source = (run_row.get("counts") or {}).get("sources", [])
            totals = pd.DataFrame(per_source).sum(numeric_only=True) if per_source else {}
            table.add_row(
                f"{run_row['started_at']:%Y-%m-%d %H:%M}",
                run_row["flow"],
                run_row["status"] + (f": {run_row['message'][:60]}" if run_row["message"] else ""),
                *(
                    str(int(totals.get(key, 0)))
                    for key in ("read", "stored", "duplicates", "quarantined")
                ),
                ", ".join(f"{k}={v}" for k, v in (run_row.get("model_versions") or {}).items()),
            )
        console.print(table)
        rows = quarantine_summary(store)
        q_table = Table(title="Quarantine")
        for column in ("source", "reason", "rows"):
            q_table.add_column(column)
        for source_name, reason, count in rows:
            q_table.add_row(source_name, reason, str(count))
        console.print(q_table)
        console.print(f"Records stored: {store.count(schema.feedback)}")
        print_delivery_backlog(store, console)


def register(app: typer.Typer) -> None:
    """Add the run/ingest/status commands to the CLI."""
    app.command()(run)
    app.command()(ingest)
    app.command()(status)
