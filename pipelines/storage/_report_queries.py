"""Queries of the daily report: records of a period and the analysis results about them.

Each function returns the rows as stored (one per stored result, every model version); the
report picks the latest version itself. A function given no record id queries nothing and
returns an empty frame without columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "alert_states",
    "flagged_results",
    "latest_created_before",
    "period_records",
    "record_aspects",
    "record_sentiments",
    "record_topic_assignments",
    "sent_alerts_of_records",
    "stored_topics",
]


def _frame(store: Store, query: Any) -> pd.DataFrame:
    with store.engine.connect() as connection:
        result = connection.execute(query)
        return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))


def latest_created_before(store: Store, end: datetime) -> datetime | None:
    """The newest ``created_at`` of a record created before ``end``.

    Args:
        store: The database.
        end: Exclusive upper bound.

    Returns:
        The time (naive on DuckDB, aware on PostgreSQL), or None without such a record.
    """
    table = schema.feedback
    with store.engine.connect() as connection:
        return connection.execute(
            select(func.max(table.c.created_at)).where(table.c.created_at < end)
        ).scalar_one_or_none()


def period_records(store: Store, start: datetime, end: datetime) -> pd.DataFrame:
    """Records created in ``[start, end)``, copy-paste duplicates excluded.

    Args:
        store: The database.
        start: First instant.
        end: End instant (excluded).

    Returns:
        Columns ``id, source, channel, lang, created_at, text``.
    """
    table = schema.feedback
    query = select(
        table.c.id,
        table.c.source,
        table.c.channel,
        table.c.lang,
        table.c.created_at,
        table.c.text,
    ).where(table.c.created_at >= start, table.c.created_at < end, table.c.duplicate_of.is_(None))
    return _frame(store, query)


def record_sentiments(store: Store, record_ids: Sequence[str]) -> pd.DataFrame:
    """Stored sentiment results of these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        Columns ``record_id, model_version, label, created_at``.
    """
    if not record_ids:
        return pd.DataFrame()
    table = schema.sentiment
    query = select(table.c.record_id, table.c.model_version, table.c.label, table.c.created_at)
    return _frame(store, query.where(table.c.record_id.in_(record_ids)))


def record_aspects(store: Store, record_ids: Sequence[str]) -> pd.DataFrame:
    """Stored aspect mentions of these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        Columns ``record_id, aspect, model_version, polarity, score, created_at``.
    """
    if not record_ids:
        return pd.DataFrame()
    table = schema.aspects
    query = select(
        table.c.record_id,
        table.c.aspect,
        table.c.model_version,
        table.c.polarity,
        table.c.score,
        table.c.created_at,
    )
    return _frame(store, query.where(table.c.record_id.in_(record_ids)))


def record_topic_assignments(store: Store, record_ids: Sequence[str]) -> pd.DataFrame:
    """Stored topic assignments of these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        Columns ``record_id, model_version, topic_id, created_at``.
    """
    if not record_ids:
        return pd.DataFrame()
    table = schema.record_topics
    query = select(table.c.record_id, table.c.model_version, table.c.topic_id, table.c.created_at)
    return _frame(store, query.where(table.c.record_id.in_(record_ids)))


def stored_topics(store: Store) -> pd.DataFrame:
    """Every row of ``topics`` (all model versions).

    Args:
        store: The database.

    Returns:
        The ``topics`` table's columns.
    """
    return _frame(store, select(schema.topics))


def flagged_results(store: Store, record_ids: Sequence[str]) -> pd.DataFrame:
    """Stored flagging results that flagged these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        Columns ``record_id, rules_version, priority, reasons, created_at``.
    """
    if not record_ids:
        return pd.DataFrame()
    flags = schema.flags
    query = select(
        flags.c.record_id,
        flags.c.rules_version,
        flags.c.priority,
        flags.c.reasons,
        flags.c.created_at,
    ).where(flags.c.record_id.in_(record_ids), flags.c.flagged.is_(True))
    return _frame(store, query)


def alert_states(store: Store, record_ids: Sequence[str]) -> pd.DataFrame:
    """Status, acknowledgement and resolution time of the alerts about these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        Columns ``record_id, status, acked_at, resolved_at``.
    """
    alerts = schema.alerts
    query = select(alerts.c.record_id, alerts.c.status, alerts.c.acked_at, alerts.c.resolved_at)
    return _frame(store, query.where(alerts.c.record_id.in_(record_ids)))


def sent_alerts_of_records(store: Store, record_ids: Sequence[str]) -> pd.DataFrame:
    """Recipients and priority of the sent alerts about these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        Columns ``recipients, priority``.
    """
    if not record_ids:
        return pd.DataFrame()
    alerts = schema.alerts
    query = select(alerts.c.recipients, alerts.c.priority).where(
        alerts.c.record_id.in_(record_ids), alerts.c.status == "sent"
    )
    return _frame(store, query)
