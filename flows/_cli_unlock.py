"""``feedback unlock``: free the pipeline lock of a run whose process died."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from flows._cli_options import ConfigOption, DbOption
from pipelines.settings import load_settings
from pipelines.storage import Store, force_release, resolve_db_url

__all__ = ["register"]

console = Console(highlight=False)


def _db_url(config: Path | None, db: str | None) -> str:
    return resolve_db_url(db or os.environ.get("FEEDBACK_DB_URL") or load_settings(config).database)


def unlock(config: ConfigOption = None, db: DbOption = None) -> None:
    """Free the pipeline lock of a run that died (marked crashed); refused while it is alive.

    Rarely needed: a dead run's lock frees itself within a minute, at once on the same machine.
    """
    with Store(_db_url(config, db)) as store:
        holder, crashed = force_release(store)
    if holder is None:
        console.print("The pipeline lock was free.")
    else:
        console.print(f"Freed the pipeline lock of {holder.describe()}.")
    if crashed:
        console.print(f"Marked crashed: {', '.join(crashed)}.")


def register(app: typer.Typer) -> None:
    """Add the unlock command to the CLI."""
    app.command()(unlock)
