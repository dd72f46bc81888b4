"""Analysed records for exports and the Python API: one row per record, latest results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Select, Table, func, select

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = ["analysed_records"]


def _latest(table: Table, *columns: Any) -> Any:
    """``table``'s newest row per record (by ``created_at``, then version), as a subquery."""
    version = table.c.model_version if "model_version" in table.c else table.c.rules_version
    rank = (
        func.row_number()
        .over(partition_by=table.c.record_id, order_by=(table.c.created_at.desc(), version.desc()))
        .label("rank")
    )
    return select(table.c.record_id, *columns, rank).subquery()


def _records_query(since: datetime, until: datetime | None) -> Select[Any]:
    feedback = schema.feedback
    sentiment = _latest(
        schema.sentiment,
        schema.sentiment.c.label.label("sentiment"),
        schema.sentiment.c.negative.label("sentiment_negative"),
        schema.sentiment.c.neutral.label("sentiment_neutral"),
        schema.sentiment.c.positive.label("sentiment_positive"),
        schema.sentiment.c.model_version.label("sentiment_model"),
    )
    topic = _latest(
        schema.record_topics,
        schema.record_topics.c.topic_id,
        schema.record_topics.c.model_version.label("topic_model"),
    )
    flags = _latest(
        schema.flags,
        schema.flags.c.flagged,
        schema.flags.c.priority,
        schema.flags.c.points.label("flag_points"),
        schema.flags.c.churn_intent,
        schema.flags.c.reasons.label("flag_reasons"),
        schema.flags.c.rules_version.label("flagging_rules"),
    )
    topics = schema.topics
    labels = schema.topic_labels
    query = (
        select(
            feedback.c.id,
            feedback.c.source,
            feedback.c.channel,
            feedback.c.created_at,
            feedback.c.lang,
            feedback.c.lang_confidence,
            feedback.c.text,
            feedback.c.title,
            feedback.c.rating,
            feedback.c.nps,
            feedback.c.customer_id,
            feedback.c.customer_value,
            feedback.c.product,
            feedback.c.store,
            feedback.c.platform,
            feedback.c.url,
            feedback.c.duplicate_of,
            sentiment.c.sentiment,
            sentiment.c.sentiment_negative,
            sentiment.c.sentiment_neutral,
            sentiment.c.sentiment_positive,
            sentiment.c.sentiment_model,
            topic.c.topic_id,
            func.coalesce(labels.c.label, topics.c.auto_label).label("topic_label"),
            topic.c.topic_model,
            flags.c.flagged,
            flags.c.priority,
            flags.c.flag_points,
            flags.c.churn_intent,
            flags.c.flag_reasons,
            flags.c.flagging_rules,
        )
        .select_from(feedback)
        .outerjoin(sentiment, (sentiment.c.record_id == feedback.c.id) & (sentiment.c.rank == 1))
        .outerjoin(topic, (topic.c.record_id == feedback.c.id) & (topic.c.rank == 1))
        .outerjoin(
            topics,
            (topics.c.model_version == topic.c.topic_model)
            & (topics.c.topic_id == topic.c.topic_id),
        )
        .outerjoin(labels, labels.c.topic_id == topic.c.topic_id)
        .outerjoin(flags, (flags.c.record_id == feedback.c.id) & (flags.c.rank == 1))
        .where(feedback.c.created_at >= since)
        .order_by(feedback.c.created_at, feedback.c.id)
    )
    if until is not None:
        query = query.where(feedback.c.created_at < until)
    return query


def _aspects(store: Store, since: datetime, until: datetime | None) -> pd.DataFrame:
    """The aspect rows of records created in ``[since, until)``, every model version."""
    aspects = schema.aspects
    feedback = schema.feedback
    columns = ["record_id", "aspect", "polarity", "score", "model_version", "created_at"]
    query = (
        select(*(aspects.c[name] for name in columns))
        .join(feedback, feedback.c.id == aspects.c.record_id)
        .where(feedback.c.created_at >= since)
        .order_by(aspects.c.record_id, aspects.c.aspect)
    )
    if until is not None:
        query = query.where(feedback.c.created_at < until)
    with store.engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all(), columns=columns)


def _newest_aspects(aspects: pd.DataFrame) -> dict[str, tuple[list[dict[str, Any]], str]]:
    """Per record, the aspects of the model version saved last, and that version."""
    saved = aspects.groupby(["record_id", "model_version"], sort=False)["created_at"].max()
    newest = saved.reset_index().sort_values("created_at").drop_duplicates("record_id", keep="last")
    kept = aspects.merge(newest[["record_id", "model_version"]], on=["record_id", "model_version"])
    kept["score"] = kept["score"].astype(float).round(4)  # DuckDB stores REAL (float32)
    return {
        record_id: (
            group[["aspect", "polarity", "score"]].to_dict(orient="records"),
            group["model_version"].iloc[0],
        )
        for record_id, group in kept.groupby("record_id", sort=False)
    }


def analysed_records(store: Store, since: datetime, until: datetime | None = None) -> pd.DataFrame:
    """Records created in ``[since, until)`` with their latest analysis results.

    "Latest" is the newest saved row per record and stage (a ``rerun --reanalyze`` with a new
    model wins). Personal data is as stored: redacted text, no author, no raw source row.

    Args:
        store: The database.
        since: First instant (aware).
        until: End, excluded (aware); None for no end.

    Returns:
        One row per record, oldest first: the feedback columns, ``sentiment*``, ``topic_*``,
        flag columns, and ``aspects`` (list of ``{aspect, polarity, score}``) with
        ``aspects_model``.
    """
    with store.engine.connect() as connection:
        result = connection.execute(_records_query(since, until))
        frame = pd.DataFrame(result.mappings().all(), columns=list(result.keys()))
    grouped = _newest_aspects(_aspects(store, since, until))
    frame["aspects"] = [grouped.get(i, (None, None))[0] for i in frame["id"]]
    frame["aspects_model"] = [grouped.get(i, (None, None))[1] for i in frame["id"]]
    return frame
