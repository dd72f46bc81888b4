"""``feedback topics`` (list discovered topics) and ``feedback topics rename ID LABEL``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows._cli_options import ConfigOption, DbOption
from flows._output import FormatOption, Listing, OutputFormat, print_listings
from pipelines._errors import ModelError
from pipelines.analysis.topics import list_topics, rename_topic
from pipelines.settings import load_settings
from pipelines.storage import Store

__all__ = ["register"]

console = Console()
topics_app = typer.Typer(
    help="Discovered topics: list them, rename one (labels survive refits).",
    invoke_without_command=True,
)


def _open_store(db: str | None, config: Path | None, read_only: bool = False) -> Store:
    url = db or os.environ.get("FEEDBACK_DB_URL") or load_settings(config).database
    return Store(url, read_only=read_only)


@topics_app.callback()
def topics_command(
    context: typer.Context,
    examples: Annotated[int, typer.Option(help="Example texts shown per topic.")] = 2,
    db: DbOption = None,
    config: ConfigOption = None,
    output: FormatOption = OutputFormat.table,
) -> None:
    """List topics: id, label, size, net sentiment (-100..100), languages, example texts."""
    if context.invoked_subcommand is not None:
        return
    with _open_store(db, config, read_only=True) as store:
        frame = list_topics(store, examples=examples)
    if frame.empty and output is OutputFormat.table:
        console.print("No topic model yet: run the nightly pipeline first (`feedback run`).")
        return
    rows = frame.to_dict(orient="records")
    columns = ("id", "label", "size", "net_sentiment", "languages", "examples")
    print_listings(Listing("topics", f"Topics ({len(rows)})", columns, rows), output)


@topics_app.command("rename")
def rename_command(
    topic_id: Annotated[int, typer.Argument(help="Topic id from `feedback topics`.")],
    label: Annotated[str, typer.Argument(help='New label, e.g. "Late deliveries".')],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Give a topic a human label; it is kept when the topic model is refitted."""
    with _open_store(db, config) as store:
        try:
            rename_topic(store, topic_id, label)
        except ModelError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(code=1) from exc
    console.print(f"Topic {topic_id} is now {label.strip()!r}.")


def register(app: typer.Typer) -> None:
    """Add the ``topics`` command group to the CLI.

    Args:
        app: The root typer app.
    """
    app.add_typer(topics_app, name="topics")
