"""Command-line options shared by every ``feedback`` command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from pipelines._secrets import mask_credentials
from pipelines.storage import DB_URL_ENV

__all__ = ["ConfigOption", "DbOption", "SourceOption", "flow_db_parameter"]

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Folder with the YAML configuration files.")
]
DbOption = Annotated[
    str | None, typer.Option("--db", help="DuckDB file or SQLAlchemy URL (overrides config).")
]
SourceOption = Annotated[
    list[str] | None, typer.Option("--source", help="Only this source (repeatable).")
]


@contextmanager
def flow_db_parameter(db: str | None) -> Iterator[str | None]:
    """The ``db`` parameter to hand a flow while the block runs: a URL carrying a password goes
    through ``$FEEDBACK_DB_URL`` instead, because Prefect stores flow parameters in clear.

    Args:
        db: The ``--db`` value.

    Yields:
        ``db`` itself, or None while its credentials travel in ``$FEEDBACK_DB_URL``.
    """
    if db is None or mask_credentials(db) == db:
        yield db
        return
    before = os.environ.get(DB_URL_ENV)
    os.environ[DB_URL_ENV] = db
    try:
        yield None
    finally:
        if before is None:
            del os.environ[DB_URL_ENV]
        else:
            os.environ[DB_URL_ENV] = before
