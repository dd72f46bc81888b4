"""``fp.connect(db)``: read what the pipeline stored, as pandas DataFrames."""

from __future__ import annotations

import os
from datetime import date, datetime
from types import TracebackType
from typing import Self

import pandas as pd

from pipelines._dates import to_utc
from pipelines._errors import ConfigError
from pipelines.export import records_frame
from pipelines.settings import load_settings
from pipelines.storage import DB_URL_ENV, Store, resolve_db_url

__all__ = ["Connection", "connect"]


class Connection:
    """A read-only connection to a pipeline database.

    Args:
        store: The opened store.
        timezone: Zone of naive dates (``pipeline.yaml``'s ``timezone``).
    """

    def __init__(self, store: Store, timezone: str) -> None:
        self.store = store
        self.timezone = timezone

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the database."""
        self.store.close()

    def records(
        self, since: str | date | datetime, until: str | date | datetime | None = None
    ) -> pd.DataFrame:
        """Analysed records created in ``[since, until)``, in the export schema.

        Args:
            since: ``YYYY-MM-DD``, ISO 8601, a date or a datetime; naive values are in the
                pipeline's timezone.
            until: End, excluded; None: no end.

        Returns:
            One row per record with ``fp.EXPORT_COLUMNS`` and their dtypes (docs/schema.md).

        Raises:
            ConfigError: E081 for a date that cannot be read or ``until`` not after ``since``.
        """
        start = to_utc(since, self.timezone, "since")
        end = to_utc(until, self.timezone, "until") if until is not None else None
        if end is not None and end <= start:
            raise ConfigError(
                f"until ({end.isoformat()}) must be after since ({start.isoformat()}).",
                code="E081",
            )
        return records_frame(self.store, start, end)


def connect(
    db: str | os.PathLike[str] | None = None, config: str | os.PathLike[str] | None = None
) -> Connection:
    """Open a pipeline database read-only.

    Args:
        db: DuckDB file or SQLAlchemy URL; None: ``$FEEDBACK_DB_URL``, else ``pipeline.yaml``'s.
        config: Configuration folder; None: the embedded defaults.

    Returns:
        The connection (a context manager).
    """
    settings = load_settings(config)
    url = resolve_db_url(str(db) if db else os.environ.get(DB_URL_ENV) or settings.database)
    return Connection(Store(url, read_only=True), settings.timezone)
