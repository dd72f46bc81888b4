"""Triage state: the audit log (an alert's history), assignments, login rate limits, and the
reads the triage web page needs (alerts with their assignee, a record's analysis, similar
feedback).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, or_, select

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "RecordContext",
    "TriageEvent",
    "alert_ids_for",
    "assign_alert",
    "count_login_attempts",
    "negative_aspects",
    "note_login_attempt",
    "record_context",
    "record_event",
    "similar_records",
    "triage_alerts",
    "triage_events",
]

_CHUNK = 1000
_ALERT_COLUMNS = (
    "alert_id",
    "record_id",
    "route",
    "kind",
    "priority",
    "recipients",
    "status",
    "payload",
    "sla_hours",
    "respond_by",
    "created_at",
    "sent_at",
    "acked_at",
    "resolved_at",
    "resolution",
)
_FEEDBACK_COLUMNS = (
    "id",
    "source",
    "channel",
    "created_at",
    "ingested_at",
    "text",
    "title",
    "rating",
    "nps",
    "customer_id",
    "customer_value",
    "author",
    "author_followers",
    "platform",
    "url",
    "product",
    "store",
    "lang",
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(set(values))
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


@dataclass(frozen=True)
class TriageEvent:
    """One audited action.

    Args:
        actor: Who: a lead's address, or ``cli:<user>`` for the command line.
        action: What: ``signin``, ``login_link``, ``ack``, ``assign``, ``resolve``, ``label``...
        alert_id: The alert acted on, if any.
        record_id: Its feedback record, if any.
        note: The person's note (resolution, assignment reason, label note).
        detail: Structured detail (assignee, labels given...).
        at: When; set by ``record_event`` when None.
    """

    actor: str
    action: str
    alert_id: str | None = None
    record_id: str | None = None
    note: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None


def record_event(store: Store, event: TriageEvent) -> None:
    """Append one row to the audit log (``triage_events``).

    Args:
        store: The database.
        event: What happened.
    """
    row = {
        "event_id": uuid.uuid4().hex,
        "occurred_at": _utc(event.at) or datetime.now(UTC),
        "actor": event.actor,
        "action": event.action,
        "alert_id": event.alert_id,
        "record_id": event.record_id,
        "note": event.note,
        "detail": dict(event.detail) or None,
    }
    with store.begin() as connection:
        connection.execute(schema.triage_events.insert(), [row])


def triage_events(
    store: Store,
    *,
    alert_id: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> list[TriageEvent]:
    """Audit rows, oldest first.

    Args:
        store: The database.
        alert_id: Only this alert's (its history).
        action: Only this action.
        limit: At most this many (the newest ones).

    Returns:
        The events.
    """
    table = schema.triage_events
    query = select(table).order_by(table.c.occurred_at.desc(), table.c.event_id)
    if alert_id is not None:
        query = query.where(table.c.alert_id == alert_id)
    if action is not None:
        query = query.where(table.c.action == action)
    if limit:
        query = query.limit(limit)
    with store.engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [
        TriageEvent(
            actor=row["actor"],
            action=row["action"],
            alert_id=row["alert_id"],
            record_id=row["record_id"],
            note=row["note"],
            detail=row["detail"] or {},
            at=_utc(row["occurred_at"]),
        )
        for row in reversed(rows)
    ]


def alert_ids_for(store: Store, reference: str) -> list[str]:
    """Alert ids an alert id or a record id refers to (a record may have several alerts).

    Args:
        store: The database.
        reference: An alert id or a record id.

    Returns:
        Matching alert ids, sorted; empty when nothing matches.
    """
    alerts = schema.alerts
    query = select(alerts.c.alert_id).where(
        or_(alerts.c.alert_id == reference, alerts.c.record_id == reference)
    )
    with store.engine.connect() as connection:
        return sorted(set(connection.execute(query).scalars()))


def assign_alert(store: Store, alert_id: str, assignee: str, by: str, at: datetime) -> None:
    """Assign an alert to a lead (replaces an earlier assignment).

    Args:
        store: The database.
        alert_id: The alert.
        assignee: The lead's address.
        by: Who assigned it.
        at: When.
    """
    table = schema.alert_assignments
    with store.begin() as connection:
        connection.execute(delete(table).where(table.c.alert_id == alert_id))
        connection.execute(
            table.insert(),
            [{"alert_id": alert_id, "assignee": assignee, "assigned_by": by, "assigned_at": at}],
        )


def negative_aspects(store: Store, record_ids: Iterable[str]) -> dict[str, list[str]]:
    """Aspects found negative per record (any model version), sorted by name.

    Args:
        store: The database.
        record_ids: The records.

    Returns:
        record id -> aspect names; records without a negative aspect are absent.
    """
    table = schema.aspects
    found: dict[str, set[str]] = {}
    with store.engine.connect() as connection:
        for chunk in _chunks(record_ids):
            query = select(table.c.record_id, table.c.aspect).where(
                table.c.record_id.in_(chunk), table.c.polarity == "negative"
            )
            for record_id, aspect in connection.execute(query):
                found.setdefault(record_id, set()).add(aspect)
    return {record_id: sorted(names) for record_id, names in found.items()}


def triage_alerts(store: Store, alert_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Alerts with what triage needs: assignee, negative aspects, respond-by in UTC.

    Args:
        store: The database.
        alert_ids: Only these alerts; all when None.

    Returns:
        One dict per alert: the ``alerts`` columns of triage, plus ``assignee`` (or None) and
        ``aspects`` (negative aspect names of its record).
    """
    alerts, assignments = schema.alerts, schema.alert_assignments
    query = select(*(alerts.c[name] for name in _ALERT_COLUMNS), assignments.c.assignee).join(
        assignments, assignments.c.alert_id == alerts.c.alert_id, isouter=True
    )
    scopes = (
        [query]
        if alert_ids is None
        else [query.where(alerts.c.alert_id.in_(chunk)) for chunk in _chunks(alert_ids)]
    )
    rows: list[dict[str, Any]] = []
    with store.engine.connect() as connection:
        for scoped in scopes:
            rows += [dict(row) for row in connection.execute(scoped).mappings()]
    aspects = negative_aspects(store, (row["record_id"] for row in rows))
    for row in rows:
        for name in ("respond_by", "created_at", "sent_at", "acked_at", "resolved_at"):
            row[name] = _utc(row[name])
        row["aspects"] = aspects.get(row["record_id"], [])
    return rows


@dataclass(frozen=True)
class RecordContext:
    """What the analysis stored about one feedback record.

    Attributes:
        feedback: The record's columns (redacted text, customer id and value, times...).
        sentiment: Label, scores and ``sentences`` of the newest sentiment row, or None.
        aspects: Aspect, polarity and score rows of the newest aspects model.
        topic: ``topic_id``, ``label`` and ``similarity`` of the newest topic assignment.
        flags: Priority, points, reasons and churn intent of the newest flag row, or None.
    """

    feedback: dict[str, Any]
    sentiment: dict[str, Any] | None
    aspects: list[dict[str, Any]]
    topic: dict[str, Any] | None
    flags: dict[str, Any] | None


def _newest(connection: Any, table: Any, record_id: str) -> dict[str, Any] | None:
    row = (
        connection.execute(
            select(table).where(table.c.record_id == record_id).order_by(table.c.created_at.desc())
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def record_context(store: Store, record_id: str) -> RecordContext | None:
    """The record and its newest analysis results.

    Args:
        store: The database.
        record_id: ``feedback.id``.

    Returns:
        The context, or None when the record is not stored.
    """
    feedback = schema.feedback
    with store.engine.connect() as connection:
        row = (
            connection.execute(
                select(*(feedback.c[name] for name in _FEEDBACK_COLUMNS)).where(
                    feedback.c.id == record_id
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        sentiment = _newest(connection, schema.sentiment, record_id)
        newest_aspect = _newest(connection, schema.aspects, record_id)
        aspects: list[dict[str, Any]] = []
        if newest_aspect is not None:
            table = schema.aspects
            aspects = [
                dict(item)
                for item in connection.execute(
                    select(table.c.aspect, table.c.polarity, table.c.score)
                    .where(
                        table.c.record_id == record_id,
                        table.c.model_version == newest_aspect["model_version"],
                    )
                    .order_by(table.c.aspect)
                ).mappings()
            ]
        topic = _newest(connection, schema.record_topics, record_id)
        if topic is not None:
            label = connection.execute(
                select(schema.topic_labels.c.label).where(
                    schema.topic_labels.c.topic_id == topic["topic_id"]
                )
            ).scalar()
            if label is None:
                label = connection.execute(
                    select(schema.topics.c.auto_label).where(
                        schema.topics.c.model_version == topic["model_version"],
                        schema.topics.c.topic_id == topic["topic_id"],
                    )
                ).scalar()
            topic = {**topic, "label": label}
        flags = _newest(connection, schema.flags, record_id)
    record = dict(row)
    for name in ("created_at", "ingested_at"):
        record[name] = _utc(record[name])
    return RecordContext(record, sentiment, aspects, topic, flags)


def similar_records(
    store: Store,
    record_id: str,
    *,
    topic_id: int | None,
    aspects: Sequence[str],
    since: datetime,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Recent feedback sharing the record's topic or one of its negative aspects.

    Args:
        store: The database.
        record_id: The record itself (left out).
        topic_id: Its topic (None or -1: no topic match).
        aspects: Its negative aspects.
        since: Only feedback created at or after this time.
        limit: At most this many, newest first.

    Returns:
        Dicts with ``id``, ``created_at``, ``lang``, ``channel``, ``text`` and ``alerts``
        (the ``recipients`` and ``assignee`` of each alert of that record, for access checks).
    """
    feedback = schema.feedback
    conditions = []
    if topic_id is not None and topic_id >= 0:
        topics = schema.record_topics
        conditions.append(
            feedback.c.id.in_(select(topics.c.record_id).where(topics.c.topic_id == topic_id))
        )
    if aspects:
        table = schema.aspects
        conditions.append(
            feedback.c.id.in_(
                select(table.c.record_id).where(
                    table.c.aspect.in_(list(aspects)), table.c.polarity == "negative"
                )
            )
        )
    if not conditions:
        return []
    query = (
        select(
            feedback.c.id,
            feedback.c.created_at,
            feedback.c.lang,
            feedback.c.channel,
            feedback.c.text,
        )
        .where(
            or_(*conditions),
            feedback.c.id != record_id,
            feedback.c.created_at >= since,
            feedback.c.duplicate_of.is_(None),
        )
        .order_by(feedback.c.created_at.desc(), feedback.c.id)
        .limit(limit)
    )
    alerts, assignments = schema.alerts, schema.alert_assignments
    with store.engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
        owners: dict[str, list[dict[str, Any]]] = {}
        for chunk in _chunks(row["id"] for row in rows):
            owned = connection.execute(
                select(alerts.c.record_id, alerts.c.recipients, assignments.c.assignee)
                .join(assignments, assignments.c.alert_id == alerts.c.alert_id, isouter=True)
                .where(alerts.c.record_id.in_(chunk))
            ).mappings()
            for item in owned:
                owners.setdefault(item["record_id"], []).append(
                    {"recipients": item["recipients"], "assignee": item["assignee"]}
                )
    for row in rows:
        row["created_at"] = _utc(row["created_at"])
        row["alerts"] = owners.get(row["id"], [])
    return rows


def note_login_attempt(store: Store, keys: Sequence[str], at: datetime) -> None:
    """Count one sign-in request against each key (hashed address, hashed client).

    Args:
        store: The database.
        keys: Rate-limit keys (never an address in clear).
        at: When.
    """
    rows = [{"attempt_id": uuid.uuid4().hex, "key": key, "requested_at": at} for key in keys]
    with store.begin() as connection:
        connection.execute(schema.login_attempts.insert(), rows)


def count_login_attempts(store: Store, key: str, since: datetime) -> int:
    """Sign-in requests counted against ``key`` since a time.

    Args:
        store: The database.
        key: A rate-limit key.
        since: Start of the window.

    Returns:
        The number of requests.
    """
    table = schema.login_attempts
    query = select(func.count()).where(table.c.key == key, table.c.requested_at >= since)
    with store.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())
