"""Queries of chunked analysis: a scope's ids page by page, a chunk's records by id, and the
per-record stages' stored results, read back for the stages that run after them.

Chunk tasks (possibly on other machines) receive record ids, never records: each task reads its
own records, so what travels between processes stays small and holds no personal data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import select

from pipelines.storage import schema
from pipelines.storage._analysis_queries import _analysed_columns, _keyset_pages
from pipelines.storage._report_queries import _frame_of_records
from pipelines.storage._store import Store

__all__ = [
    "records_by_ids",
    "saved_by_run",
    "scoped_id_chunks",
    "stored_sentiment_rows",
    "stored_topic_rows",
]


def saved_by_run(
    store: Store, run_id: str, stages: Sequence[str], record_ids: Sequence[str]
) -> dict[str, set[str]]:
    """Which of ``record_ids`` each stage's results were last saved for by ``run_id``.

    Args:
        store: The database.
        run_id: The run.
        stages: Stage names.
        record_ids: Record ids to look up.

    Returns:
        Stage name -> record ids (empty sets for stages that saved none of them).
    """
    table = schema.stage_results
    found: dict[str, set[str]] = {stage: set() for stage in stages}
    with store.engine.connect() as connection:
        for start in range(0, len(record_ids), 1000):
            query = select(table.c.stage, table.c.record_id).where(
                table.c.run_id == run_id,
                table.c.stage.in_(list(stages)),
                table.c.record_id.in_(record_ids[start : start + 1000]),
            )
            for stage, record_id in connection.execute(query).all():
                found[str(stage)].add(str(record_id))
    return found


def scoped_id_chunks(store: Store, scope: Any, chunk_size: int) -> Iterator[list[str]]:
    """The ids of the records in ``scope`` (duplicates excluded), oldest first, in chunks.

    Same order and chunks as ``iter_chunks``; each page uses a fresh connection.

    Args:
        store: The database.
        scope: ``run_scope``, ``range_scope``.
        chunk_size: Ids per chunk.

    Yields:
        Lists of record ids.
    """
    table = schema.feedback
    for rows in _keyset_pages(store, [table.c.id, table.c.created_at], scope, chunk_size):
        yield [str(row["id"]) for row in rows]


def records_by_ids(store: Store, ids: Sequence[str]) -> pd.DataFrame:
    """The ``feedback`` rows (without ``raw``) of ``ids``, oldest first.

    Args:
        store: The database.
        ids: Record ids.

    Returns:
        One row per stored id.
    """
    table = schema.feedback
    frame = _frame_of_records(store, select(*_analysed_columns()), table.c.id, ids)
    if frame.empty:
        return pd.DataFrame(columns=[column.name for column in _analysed_columns()])
    return frame.sort_values(["created_at", "id"], ignore_index=True)


def stored_sentiment_rows(store: Store, ids: Sequence[str]) -> pd.DataFrame:
    """Every stored ``sentiment`` row of ``ids`` (all model versions).

    Returns:
        Columns ``record_id, model_version, label, negative, neutral, positive, sentences,
        created_at``.
    """
    table = schema.sentiment
    query = select(
        table.c.record_id,
        table.c.model_version,
        table.c.label,
        table.c.negative,
        table.c.neutral,
        table.c.positive,
        table.c.sentences,
        table.c.created_at,
    )
    return _frame_of_records(store, query, table.c.record_id, ids)


def stored_topic_rows(store: Store, ids: Sequence[str]) -> pd.DataFrame:
    """Every stored ``record_topics`` row of ``ids`` (all model versions).

    Returns:
        Columns ``record_id, model_version, topic_id, similarity, created_at``.
    """
    table = schema.record_topics
    query = select(
        table.c.record_id,
        table.c.model_version,
        table.c.topic_id,
        table.c.similarity,
        table.c.created_at,
    )
    return _frame_of_records(store, query, table.c.record_id, ids)
