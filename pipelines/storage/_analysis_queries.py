"""Queries of the analysis: records in a run's scope, the ``stage_results`` ledger, topic models
and labels, stored results read back by later stages (trends, repeat complainers) and the
embedding cache.

A scope (``RunScope``, ``RangeScope``) says which ``feedback`` records an analysis pass covers;
copy-paste duplicates are never in scope.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, RowMapping, and_, exists, func, or_, select, true

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "RangeScope",
    "RecordScope",
    "RunScope",
    "WindowResults",
    "cached_vectors",
    "iter_chunks",
    "latest_topic_model_row",
    "load_run_records",
    "negative_customer_records",
    "newest_created_at",
    "range_scope",
    "run_scope",
    "saved_record_ids",
    "scoped_ids",
    "topic_exists",
    "topic_label_map",
    "topic_members",
    "window_records",
    "window_results",
]


@dataclass(frozen=True)
class RunScope:
    """The records a run stored, and those of earlier runs some stage never analysed.

    Attributes:
        run_id: The run.
        unanalysed_by: Stage names; records lacking results of any of them are in scope too.
    """

    run_id: str
    unanalysed_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class RangeScope:
    """The records created in ``[start, end)``, of ``sources`` or all.

    Attributes:
        start: First instant (UTC).
        end: End instant (UTC, excluded), or None.
        sources: Only these sources, or all (None).
    """

    start: datetime
    end: datetime | None = None
    sources: tuple[str, ...] | None = None


RecordScope = RunScope | RangeScope
"""Which ``feedback`` records an analysis pass covers."""


def run_scope(run_id: str, unanalysed_by: Sequence[str] = ()) -> RunScope:
    """The records a run stored, and those of earlier runs some stage never analysed.

    Args:
        run_id: The run.
        unanalysed_by: Stage names; records lacking results of any of them (an ingest-only run,
            a run that crashed mid-analysis) are in scope too, so nothing stored is left behind.

    Returns:
        The scope.
    """
    return RunScope(run_id, tuple(unanalysed_by))


def range_scope(
    start: datetime, end: datetime | None, sources: Sequence[str] | None = None
) -> RangeScope:
    """The records created in ``[start, end)``, of ``sources`` or all.

    Args:
        start: First instant (UTC).
        end: End instant (UTC, excluded), or None.
        sources: Only these sources, or all.

    Returns:
        The scope.
    """
    return RangeScope(start, end, None if sources is None else tuple(sources))


def _condition(scope: RecordScope) -> ColumnElement[bool]:
    """The scope as a condition on ``feedback``, duplicates excluded."""
    table = schema.feedback
    condition: ColumnElement[bool]
    if isinstance(scope, RunScope):
        results = schema.stage_results
        condition = table.c.run_id == scope.run_id
        for stage_name in scope.unanalysed_by:
            condition = condition | ~exists().where(
                results.c.record_id == table.c.id, results.c.stage == stage_name
            )
    else:
        condition = table.c.created_at >= scope.start
        if scope.end is not None:
            condition = condition & (table.c.created_at < scope.end)
        if scope.sources is not None:
            condition = condition & table.c.source.in_(list(scope.sources))
    return and_(condition, table.c.duplicate_of.is_(None))


def _analysed_columns() -> list[Any]:
    """``feedback``'s columns but ``raw``: audit data no stage reads, kept out of the stage
    results Prefect stores."""
    return [column for column in schema.feedback.c if column.name != "raw"]


def scoped_ids(store: Store, scope: RecordScope) -> list[str]:
    """Ids of the records in ``scope`` (duplicates excluded).

    Args:
        store: The database.
        scope: ``run_scope``, ``range_scope``.

    Returns:
        The record ids.
    """
    query = select(schema.feedback.c.id).where(_condition(scope))
    with store.engine.connect() as connection:
        return list(connection.execute(query).scalars())


def _keyset_pages(
    store: Store, columns: Sequence[Any], scope: RecordScope, chunk_size: int
) -> Iterator[list[RowMapping]]:
    """``columns`` of the records in ``scope`` (duplicates excluded), oldest first, by pages.

    Pages by ``(created_at, id)`` with a fresh connection per page, so saving between pages is
    safe and only one page is in memory.

    Args:
        store: The database.
        columns: Columns of ``feedback`` to read, ``created_at`` and ``id`` (the page key) among
            them.
        scope: ``run_scope``, ``range_scope``.
        chunk_size: Records per page.

    Yields:
        Lists of rows.
    """
    table = schema.feedback
    query = (
        select(*columns)
        .where(_condition(scope))
        .order_by(table.c.created_at, table.c.id)
        .limit(chunk_size)
    )
    after: ColumnElement[bool] = true()
    while True:
        with store.engine.connect() as connection:
            rows = connection.execute(query.where(after)).mappings().all()
        if not rows:
            return
        yield list(rows)
        if len(rows) < chunk_size:
            return
        last_time, last_id = rows[-1]["created_at"], rows[-1]["id"]
        after = or_(
            table.c.created_at > last_time,
            and_(table.c.created_at == last_time, table.c.id > last_id),
        )


def iter_chunks(store: Store, scope: RecordScope, chunk_size: int) -> Iterator[pd.DataFrame]:
    """The records in ``scope`` (duplicates excluded), oldest first, ``chunk_size`` at a time.

    Pages as ``_keyset_pages`` does: saving between chunks is safe, one chunk is in memory.

    Args:
        store: The database.
        scope: ``run_scope``, ``range_scope``.
        chunk_size: Records per chunk.

    Yields:
        Rows of ``feedback`` without ``raw``.
    """
    for rows in _keyset_pages(store, _analysed_columns(), scope, chunk_size):
        yield pd.DataFrame(rows)


def load_run_records(store: Store, run_id: str, unanalysed_by: Sequence[str] = ()) -> pd.DataFrame:
    """All records of ``run_scope`` at once (for small runs such as a watch poll).

    Args:
        store: The database.
        run_id: The run.
        unanalysed_by: See ``run_scope``.

    Returns:
        One row per record, with the ``feedback`` table's columns but ``raw``.
    """
    query = select(*_analysed_columns()).where(_condition(run_scope(run_id, unanalysed_by)))
    with store.engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all())


def newest_created_at(store: Store, scope: RecordScope) -> datetime | None:
    """The newest ``created_at`` in ``scope``.

    Args:
        store: The database.
        scope: ``run_scope``, ``range_scope``.

    Returns:
        The time, or None for an empty scope.
    """
    with store.engine.connect() as connection:
        return connection.execute(
            select(func.max(schema.feedback.c.created_at)).where(_condition(scope))
        ).scalar()


def saved_record_ids(
    store: Store, stage: str, version: str | None, record_ids: Sequence[str]
) -> set[str]:
    """Which records have results of a stage in ``stage_results``.

    Args:
        store: The database.
        stage: Stage name.
        version: Only results of this version; of any version when None.
        record_ids: Record ids to look up.

    Returns:
        Those of ``record_ids`` with results.
    """
    table = schema.stage_results
    found: set[str] = set()
    with store.engine.connect() as connection:
        for start in range(0, len(record_ids), 1000):
            query = select(table.c.record_id).where(
                table.c.stage == stage, table.c.record_id.in_(record_ids[start : start + 1000])
            )
            if version is not None:
                query = query.where(table.c.version == version)
            found.update(connection.execute(query).scalars())
    return found


def latest_topic_model_row(
    store: Store, encoder_version: str | None = None
) -> dict[str, Any] | None:
    """The ``topic_models`` row fitted last (on ``encoder_version`` when given).

    Args:
        store: The database.
        encoder_version: Restrict to models fitted on this encoder.

    Returns:
        Column -> value, or None when no model is stored.
    """
    table = schema.topic_models
    query = select(table).order_by(table.c.fitted_at.desc()).limit(1)
    if encoder_version is not None:
        query = query.where(table.c.encoder_version == encoder_version)
    with store.engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row is not None else None


def topic_label_map(store: Store) -> dict[int, str]:
    """Human topic labels.

    Args:
        store: The database.

    Returns:
        Topic id -> label.
    """
    table = schema.topic_labels
    with store.engine.connect() as connection:
        return {int(r.topic_id): r.label for r in connection.execute(select(table))}


def topic_exists(store: Store, topic_id: int) -> bool:
    """Whether any stored model has this topic id.

    Args:
        store: The database.
        topic_id: Stable topic id.

    Returns:
        True when ``topics`` has a row for it.
    """
    topics = schema.topics
    with store.engine.connect() as connection:
        return (
            connection.execute(
                select(topics.c.topic_id).where(topics.c.topic_id == topic_id).limit(1)
            ).first()
            is not None
        )


def window_records(
    store: Store, start: datetime, end: datetime, limit: int, seed: int
) -> pd.DataFrame:
    """Records created in ``[start, end]`` (duplicates excluded), or a seeded uniform sample of
    ``limit`` of them (bounded memory).

    Args:
        store: The database.
        start: First instant.
        end: Last instant (included).
        limit: At most this many records.
        seed: Seed of the sample.

    Returns:
        Columns ``id, text, lang, created_at``, by id.
    """
    table = schema.feedback
    columns = [table.c.id, table.c.text, table.c.lang, table.c.created_at]
    in_window = (
        (table.c.created_at >= start) & (table.c.created_at <= end) & table.c.duplicate_of.is_(None)
    )
    with store.engine.connect() as connection:
        ids = list(connection.execute(select(table.c.id).where(in_window)).scalars())
        if len(ids) > limit:
            sample = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
            ids = sorted(ids[index] for index in sample)
        else:
            ids.sort()
        rows = []
        for first in range(0, len(ids), 1000):
            query = select(*columns).where(table.c.id.in_(ids[first : first + 1000]))
            rows += connection.execute(query.order_by(table.c.id)).mappings().all()
    return pd.DataFrame(rows, columns=["id", "text", "lang", "created_at"])


def topic_members(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every stored topic assignment with its record's text, and every sentiment label.

    Args:
        store: The database.

    Returns:
        Assignments (``record_id, topic_id, similarity, created_at, text, lang``) and
        sentiment results (``record_id, label, created_at``), all versions.
    """
    record_topics, feedback, sentiment = schema.record_topics, schema.feedback, schema.sentiment
    with store.engine.connect() as connection:
        assignments = pd.DataFrame(
            connection.execute(
                select(
                    record_topics.c.record_id,
                    record_topics.c.topic_id,
                    record_topics.c.similarity,
                    record_topics.c.created_at,
                    feedback.c.text,
                    feedback.c.lang,
                ).join(feedback, feedback.c.id == record_topics.c.record_id)
            )
            .mappings()
            .all(),
            columns=["record_id", "topic_id", "similarity", "created_at", "text", "lang"],
        )
        sentiments = pd.DataFrame(
            connection.execute(
                select(sentiment.c.record_id, sentiment.c.label, sentiment.c.created_at)
            )
            .mappings()
            .all(),
            columns=["record_id", "label", "created_at"],
        )
    return assignments, sentiments


@dataclass(frozen=True)
class WindowResults:
    """Stored results about the records created in a window (every version), for trends.

    Attributes:
        aspects: ``record_id, aspect, polarity, stored_at, created_at``.
        topics: ``record_id, topic_id, stored_at, created_at``.
        sentiments: ``record_id, label, stored_at``.
    """

    aspects: pd.DataFrame
    topics: pd.DataFrame
    sentiments: pd.DataFrame


def window_results(store: Store, start: datetime, end: datetime) -> WindowResults:
    """Aspect mentions, topic assignments and sentiment of the records created in a window.

    Args:
        store: The database.
        start: Inclusive lower bound on the record's ``created_at``.
        end: Exclusive upper bound.

    Returns:
        The three result sets (``stored_at``: when the result was written).
    """
    feedback = schema.feedback
    aspects, topics, sentiment = schema.aspects, schema.record_topics, schema.sentiment
    in_window = (feedback.c.created_at >= start) & (feedback.c.created_at < end)
    with store.engine.connect() as connection:
        aspect_rows = pd.DataFrame(
            connection.execute(
                select(
                    aspects.c.record_id,
                    aspects.c.aspect,
                    aspects.c.polarity,
                    aspects.c.created_at.label("stored_at"),
                    feedback.c.created_at,
                )
                .join(feedback, feedback.c.id == aspects.c.record_id)
                .where(in_window)
            )
            .mappings()
            .all(),
            columns=["record_id", "aspect", "polarity", "stored_at", "created_at"],
        )
        topic_rows = pd.DataFrame(
            connection.execute(
                select(
                    topics.c.record_id,
                    topics.c.topic_id,
                    topics.c.created_at.label("stored_at"),
                    feedback.c.created_at,
                )
                .join(feedback, feedback.c.id == topics.c.record_id)
                .where(in_window)
            )
            .mappings()
            .all(),
            columns=["record_id", "topic_id", "stored_at", "created_at"],
        )
        sentiment_rows = pd.DataFrame(
            connection.execute(
                select(
                    sentiment.c.record_id,
                    sentiment.c.label,
                    sentiment.c.created_at.label("stored_at"),
                )
                .join(feedback, feedback.c.id == sentiment.c.record_id)
                .where(in_window)
            )
            .mappings()
            .all(),
            columns=["record_id", "label", "stored_at"],
        )
    return WindowResults(aspect_rows, topic_rows, sentiment_rows)


def negative_customer_records(
    store: Store, customer_ids: Sequence[str], start: datetime, end: datetime
) -> list[tuple[str, str, datetime]]:
    """Stored records of these customers with a ``negative`` sentiment result.

    Args:
        store: The database.
        customer_ids: Customer ids.
        start: First ``created_at`` (included).
        end: Last ``created_at`` (included).

    Returns:
        Distinct ``(record_id, customer_id, created_at)``; ``created_at`` naive on DuckDB.
    """
    feedback, sentiment = schema.feedback, schema.sentiment
    query = (
        select(feedback.c.id, feedback.c.customer_id, feedback.c.created_at)
        .join(sentiment, sentiment.c.record_id == feedback.c.id)
        .where(
            feedback.c.customer_id.in_(sorted(set(customer_ids))),
            sentiment.c.label == "negative",
            feedback.c.created_at >= start,
            feedback.c.created_at <= end,
        )
        .distinct()
    )
    with store.engine.connect() as connection:
        return [(record, customer, stamp) for record, customer, stamp in connection.execute(query)]


def cached_vectors(
    store: Store, model_version: str, text_hashes: Sequence[str], chunk_size: int = 1000
) -> dict[str, bytes]:
    """Stored embeddings of these texts, as written (little-endian float32 bytes).

    Args:
        store: The database.
        model_version: Encoder version (and pooled layers) the vectors come from.
        text_hashes: Hashes of the texts, without repeats.
        chunk_size: Hashes looked up per query.

    Returns:
        Text hash -> vector bytes, for the hashes found.
    """
    table = schema.embeddings
    found: dict[str, bytes] = {}
    with store.engine.connect() as connection:
        for start in range(0, len(text_hashes), chunk_size):
            rows = connection.execute(
                select(table.c.text_hash, table.c.vector).where(
                    table.c.model_version == model_version,
                    table.c.text_hash.in_(text_hashes[start : start + chunk_size]),
                )
            )
            for key, blob in rows:
                found[key] = blob
    return found
