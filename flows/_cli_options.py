"""Command-line options shared by every ``feedback`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ConfigOption", "DbOption", "SourceOption"]

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Folder with the YAML configuration files.")
]
DbOption = Annotated[
    str | None, typer.Option("--db", help="DuckDB file or SQLAlchemy URL (overrides config).")
]
SourceOption = Annotated[
    list[str] | None, typer.Option("--source", help="Only this source (repeatable).")
]
