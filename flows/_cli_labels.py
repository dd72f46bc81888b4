"""``feedback label ID`` and ``feedback labels import FILE``: people's labels into the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows._cli_options import ConfigOption, DbOption
from pipelines._errors import LabelError
from pipelines.settings import load_settings
from pipelines.storage import Label, Store

__all__ = ["open_store", "register"]

console = Console()
labels_app = typer.Typer(help="Import labels people gave stored feedback.", no_args_is_help=True)


def open_store(db: str | None, config: Path | None) -> Store:
    """The store of ``--db``, ``$FEEDBACK_DB_URL`` or ``settings.yaml``, like every command.

    Args:
        db: The ``--db`` value.
        config: The ``--config`` folder.

    Returns:
        The opened store.
    """
    return Store(db or os.environ.get("FEEDBACK_DB_URL") or load_settings(config).database)


def _known_aspects(config: Path | None) -> list[str]:
    from pipelines.analysis.aspects import load_aspect_config

    return [aspect.name for aspect in load_aspect_config(config).aspects]


def label_command(
    record_id: Annotated[str, typer.Argument(help="Record id (as `feedback alerts list` shows).")],
    sentiment: Annotated[
        str | None, typer.Option(help="negative, neutral or positive (or neg/neu/pos).")
    ] = None,
    aspect: Annotated[
        list[str] | None,
        typer.Option(help="ASPECT:POLARITY, e.g. app_website_checkout:negative (repeatable)."),
    ] = None,
    not_complaint: Annotated[
        bool, typer.Option("--not-complaint", help="The record is not a complaint.")
    ] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who gives the label.")] = None,
    note: Annotated[str | None, typer.Option(help="Free text kept with the label.")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Label one stored record (trains the next `feedback train sentiment --db`)."""
    from pipelines.label_files import parse_aspects, parse_polarity
    from pipelines.storage import record_labels

    try:
        polarity = None if sentiment is None else parse_polarity(sentiment)
        aspects = parse_aspects(";".join(aspect or []))
    except ValueError as exc:
        raise LabelError(f"{record_id}: {exc}; nothing written") from exc
    label = Label(
        record_id,
        sentiment=polarity,
        aspects=aspects,
        not_complaint=not_complaint,
        labelled_by=by,
        note=note,
    )
    known = _known_aspects(config)
    with open_store(db, config) as store:
        record_labels(store, [label], known_aspects=known)
    console.print(f"labelled {record_id}")


@labels_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL with id or source+external_id.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Who labelled rows without labelled_by.")
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Import a file of labels, all or nothing (columns: id or source+external_id, sentiment,
    aspects as "a:neg;b:pos" in CSV or an object in JSONL, not_complaint, note, labelled_by)."""
    from pipelines.label_files import read_label_file
    from pipelines.storage import record_labels

    known = _known_aspects(config)
    with open_store(db, config) as store:
        labels = read_label_file(store, file, known_aspects=known, labelled_by=by)
        written = record_labels(store, labels, known_aspects=known)
    console.print(f"imported {written} label(s) from {file.name}")


def register(app: typer.Typer) -> None:
    """Add ``label`` and ``labels import`` to the ``feedback`` app.

    Args:
        app: The root typer app.
    """
    app.command("label")(label_command)
    app.add_typer(labels_app, name="labels")
