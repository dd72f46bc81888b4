"""``feedback rerun``, ``feedback serve`` and ``feedback report``: the data team's operations."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows._cli_dates import parse_moment_option
from flows._cli_options import ConfigOption, DbOption, flow_db_parameter
from pipelines._errors import WebError
from pipelines.settings import load_settings
from pipelines.storage import Store, resolve_db_url

__all__ = ["register"]

console = Console(highlight=False)


def rerun(
    since: Annotated[
        datetime,
        typer.Option(
            "--since",
            parser=parse_moment_option,
            help="First day/instant of the range, YYYY-MM-DD or ISO 8601 (without an offset: "
            "pipeline.yaml's timezone).",
        ),
    ],
    until: Annotated[
        datetime | None,
        typer.Option(
            "--until",
            parser=parse_moment_option,
            help="End of the range, excluded (default: now).",
        ),
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", help="Only this source (repeatable).")
    ] = None,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="Only this analysis stage (repeatable), e.g. sentiment."),
    ] = None,
    reanalyze: Annotated[
        bool,
        typer.Option(
            "--reanalyze", help="Save every record again with the current model versions."
        ),
    ] = False,
    resend_alerts: Annotated[
        bool, typer.Option("--resend-alerts", help="Mail alerts again even if already sent.")
    ] = False,
    no_read: Annotated[
        bool,
        typer.Option("--no-read", help="Do not re-read the sources; only analyse stored records."),
    ] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Backfill or recompute the records created in [--since, --until)."""
    from pipelines._validate import check_configuration

    # Before Prefect is imported or started: errors in one line, at once.
    check_configuration(config, source, stage)
    from flows._children import start_temporary_prefect_server
    from flows.rerun import rerun as rerun_flow

    start_temporary_prefect_server()
    with flow_db_parameter(db) as flow_db, console.status("Running the rerun flow..."):
        summary = rerun_flow(
            since=since,
            until=until,
            sources=source,
            stages=stage,
            reanalyze=reanalyze,
            resend_alerts=resend_alerts,
            config_dir=str(config) if config else None,
            db=flow_db,
            read_sources=not no_read,
        )
    table = Table(title=f"Rerun {summary.run_id}")
    for column in ("source", "read", "stored", "duplicates", "quarantined", "skipped"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for c in summary.sources:
        table.add_row(
            c.source, *(str(v) for v in (c.read, c.stored, c.duplicates, c.quarantined, c.skipped))
        )
    console.print(table)
    console.print(f"Records needing analysis: {summary.analysed}")
    for name, rows in summary.stage_rows.items():
        how = " (from cache)" if name in summary.cached_stages else ""
        console.print(f"Stage {name} ({summary.model_versions.get(name)}): {rows} rows saved{how}")


def serve(
    config: ConfigOption = None,
    db: DbOption = None,
    cron: Annotated[
        str, typer.Option("--cron", help="Nightly schedule, in pipeline.yaml's timezone.")
    ] = "0 2 * * *",
    watch_interval: Annotated[
        float, typer.Option("--watch-interval", min=1.0, help="Seconds between watch runs.")
    ] = 60.0,
    port: Annotated[
        int, typer.Option("--port", help="Port of the local Prefect server (if one is started).")
    ] = 4200,
    web: Annotated[
        bool,
        typer.Option(
            "--web/--no-web", help="Also serve the triage web page (needs FEEDBACK_WEB_SECRET)."
        ),
    ] = True,
    web_port: Annotated[int, typer.Option("--web-port", help="Port of the triage page.")] = 8700,
) -> None:
    """Serve the nightly (cron), watch (interval) and rerun (on demand) deployments, and the
    triage web page (``--no-web`` to leave it out).

    Starts a local Prefect server (UI on http://127.0.0.1:PORT) unless PREFECT_API_URL is set.
    Stop with Ctrl-C.
    """
    from pipelines._validate import check_configuration

    timezone = check_configuration(config).timezone
    from flows._cli_web import start_web
    from flows.deployments import serve_locally

    if web:
        try:
            start_web("127.0.0.1", web_port, str(config) if config else None, db, background=True)
        except WebError as exc:
            reason = str(exc).split("] ", 1)[-1]
            raise WebError(
                f"{reason}; or leave the page out: feedback serve --no-web", code=exc.code
            ) from None
    console.print(
        f"Serving nightly ('{cron}', {timezone}), watch (every {watch_interval:g} s) and rerun "
        "(on demand). Ctrl-C stops."
    )
    serve_locally(
        str(config) if config else None,
        db,
        nightly_cron=cron,
        watch_interval=timedelta(seconds=watch_interval),
        port=port,
    )


def report(
    date: Annotated[
        datetime | None,
        typer.Option(
            "--date",
            parser=parse_moment_option,
            help="Report day, YYYY-MM-DD (default: yesterday, or the last day with feedback).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the HTML (default: reports_dir).")
    ] = None,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Regenerate the HTML report of one day (reports/<date>.html)."""
    from pipelines.delivery.report import generate_report

    settings = load_settings(config)
    url = resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or settings.database)
    with Store(url, read_only=True) as store:
        generated = generate_report(
            store, settings, date.date() if date else None, reports_dir=out, config_dir=config
        )
    summary = generated.report
    net = "–" if summary.net is None else f"{summary.net:+.0f}"
    console.print(
        f"Report {summary.day.isoformat()}: {summary.volume} records, net sentiment {net}, "
        f"{len(summary.priority_items)} P1/P2 item(s)"
    )
    console.print(f"Written to {generated.path}")


def register(app: typer.Typer) -> None:
    """Add the rerun/serve/report commands to the CLI."""
    app.command()(rerun)
    app.command()(serve)
    app.command()(report)
