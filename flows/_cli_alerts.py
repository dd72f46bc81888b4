"""``feedback alerts list|ack|resolve|retry``: the resolution loop of alert mails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows._cli_options import ConfigOption, DbOption
from pipelines.analysis.flagging import PRIORITIES
from pipelines.delivery.alerts import (
    ALERT_STATUSES,
    acknowledge,
    cli_actor,
    delivery_backlog,
    describe_reply,
    list_alerts,
    resolve,
    retry_failed,
)
from pipelines.settings import load_settings
from pipelines.storage import Store

__all__ = ["print_delivery_backlog", "register"]

console = Console()
alerts_app = typer.Typer(help="List, acknowledge and resolve alerts sent to support leads.")


def _open_store(db: str | None, config: Path | None, read_only: bool = False) -> Store:
    url = db or os.environ.get("FEEDBACK_DB_URL") or load_settings(config).database
    return Store(url, read_only=read_only)


def _when(value: object) -> str:
    return "" if value is None or value != value else f"{value:%Y-%m-%d %H:%M}"


@alerts_app.command("list")
def list_command(
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(ALERT_STATUSES)}.")
    ] = None,
    priority: Annotated[
        str | None, typer.Option(help=f"Only this priority: {', '.join(PRIORITIES)}.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many alerts.")] = 50,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """List alerts, most recent first."""
    if status is not None and status not in ALERT_STATUSES:
        raise typer.BadParameter(f"use one of {', '.join(ALERT_STATUSES)}", param_hint="--status")
    if priority is not None and priority.upper() not in PRIORITIES:
        raise typer.BadParameter(f"use one of {', '.join(PRIORITIES)}", param_hint="--priority")
    with _open_store(db, config, read_only=True) as store:
        frame = list_alerts(store, status, priority.upper() if priority else None, limit)
    table = Table(title=f"Alerts ({len(frame)})")
    table.add_column("id", no_wrap=True)
    for column in (
        "prio",
        "status",
        "route",
        "to",
        "record",
        "respond by",
        "sent",
        "acked",
        "resolved",
        "tries",
        "last error",
    ):
        table.add_column(column)
    for alert in frame.to_dict(orient="records"):
        table.add_row(
            alert["alert_id"],
            alert["priority"],
            alert["status"],
            alert["route"],
            ", ".join(alert["recipients"]),
            alert["record_id"],
            _when(alert["respond_by"]),
            _when(alert["sent_at"]),
            _when(alert["acked_at"]),
            _when(alert["resolved_at"]),
            str(alert["attempts"]),
            (alert["last_error"] or "")[:60],
        )
    console.print(table)


@alerts_app.command("ack")
def ack_command(
    alert: Annotated[str, typer.Argument(help="Alert id (or record id: all its alerts).")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Acknowledge an alert: someone is on it."""
    with _open_store(db, config) as store:
        matched = len(acknowledge(store, alert, cli_actor()))
    if not matched:
        console.print(f"[red]No alert with id {alert!r}; see `feedback alerts list`.[/red]")
        raise typer.Exit(code=1)
    console.print(f"Acknowledged {matched} alert(s).")


@alerts_app.command("resolve")
def resolve_command(
    alert: Annotated[str, typer.Argument(help="Alert id (or record id: all its alerts).")],
    note: Annotated[str | None, typer.Option(help="What was done, kept with the alert.")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Resolve an alert (records the resolution time for response-time reports)."""
    with _open_store(db, config) as store:
        matched = len(resolve(store, alert, cli_actor(), note=note))
    if not matched:
        console.print(f"[red]No alert with id {alert!r}; see `feedback alerts list`.[/red]")
        raise typer.Exit(code=1)
    console.print(f"Resolved {matched} alert(s).")


@alerts_app.command("retry")
def retry_command(
    alert: Annotated[
        str | None,
        typer.Argument(help="Alert id or record id; every failed delivery when omitted."),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Try failed deliveries again (after fixing the address or the server); recipients that
    already received the alert get nothing new."""
    with _open_store(db, config) as store:
        retried = retry_failed(store, alert)
    console.print(f"{retried} failed delivery(ies) will be tried by the next run.")


def print_delivery_backlog(store: Store, out: Console | None = None) -> None:
    """Print alert deliveries not accepted by the mail server yet, and their warnings.

    Args:
        store: The database.
        out: Where to print; this module's console when None.
    """
    out = out or console
    backlog = delivery_backlog(store)
    if not backlog.rows:
        out.print("Alert deliveries: every recipient accepted its alerts.")
        return
    table = Table(
        title=f"Alert deliveries not accepted yet ({backlog.queued} queued, "
        f"{backlog.retrying} retrying, {backlog.failed} failed)"
    )
    for column in ("alert", "to", "status", "tries", "next try", "last reply"):
        table.add_column(column)
    for row in backlog.rows:
        table.add_row(
            row["alert_id"],
            row["recipient"],
            row["status"],
            str(row["attempts"]),
            _when(row["next_attempt_at"]),
            escape(describe_reply(row["last_code"], row["reply"])[:80]),
        )
    out.print(table)
    for line in backlog.warnings():
        out.print(f"[yellow]Warning: {escape(line)}[/yellow]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``alerts`` command group to the CLI."""
    app.add_typer(alerts_app, name="alerts")
