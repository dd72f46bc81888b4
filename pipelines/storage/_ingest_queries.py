"""Queries of ingestion and of ``feedback status``: stored records a new chunk is compared
with, and the quarantine summary."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd
from sqlalchemy import func, select

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = ["quarantine_summary", "recent_records"]


def recent_records(
    store: Store,
    authors: Sequence[str],
    customer_ids: Sequence[str],
    since: datetime,
    columns: Sequence[str],
) -> pd.DataFrame:
    """Stored originals (not duplicates) of these authors or customers created since a time.

    Args:
        store: The database.
        authors: Author values.
        customer_ids: Customer ids.
        since: First ``created_at`` (included).
        columns: ``feedback`` columns to return.

    Returns:
        One row per record, with ``columns``.
    """
    table = schema.feedback
    query = select(*(table.c[name] for name in columns)).where(
        table.c.created_at >= since,
        table.c.duplicate_of.is_(None),
        table.c.author.in_(authors) | table.c.customer_id.in_(customer_ids),
    )
    with store.engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return pd.DataFrame(rows, columns=list(columns))


def quarantine_summary(store: Store) -> list[tuple[str, str, int]]:
    """Quarantined rows per source and reason.

    Args:
        store: The database.

    Returns:
        ``(source, reason, rows)``, by source.
    """
    quarantine = schema.quarantine
    query = (
        select(quarantine.c.source, quarantine.c.reason, func.count().label("rows"))
        .group_by(quarantine.c.source, quarantine.c.reason)
        .order_by(quarantine.c.source)
    )
    with store.engine.connect() as connection:
        return [(source, reason, int(rows)) for source, reason, rows in connection.execute(query)]
