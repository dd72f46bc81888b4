"""Totals for ``feedback status`` that must agree with the runs' own counts."""

from __future__ import annotations

from sqlalchemy import func, select

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = ["record_totals"]


def record_totals(store: Store) -> tuple[int, int]:
    """Rows in ``feedback``: all of them, and the copy-paste duplicates among them.

    Runs count a copy-paste duplicate (kept, with ``duplicate_of`` set, so later spam is still
    caught) under ``duplicates``, not ``stored``: the originals are ``all - duplicates``.

    Args:
        store: The database.

    Returns:
        ``(rows, copy_paste_duplicates)``.
    """
    table = schema.feedback
    query = select(func.count(), func.count(table.c.duplicate_of))
    with store.engine.connect() as connection:
        rows, duplicates = connection.execute(query).one()
    return int(rows), int(duplicates)
