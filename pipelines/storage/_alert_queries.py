"""Queries of the alert queue: alerts, per-recipient deliveries, claims and the ledger.

Each alert has one ``alert_deliveries`` row per recipient; the alert's status, attempts, last
error, next attempt and sent time are derived from them (``_refresh_alerts``). Every change to an
alert's deliveries locks the alert row first (PostgreSQL ``SELECT ... FOR UPDATE``, in alert-id
order so that concurrent runs cannot deadlock); DuckDB has a single writer, serialised by the
Store. A claim is a conditional ``UPDATE ... WHERE status = 'pending' ... RETURNING`` taken with
the alert rows locked, so concurrent delivery runs never claim the same delivery twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, exists, func, or_, select, update

from pipelines.storage import schema
from pipelines.storage._store import Store

__all__ = [
    "ClaimedDelivery",
    "DeliveryOutcome",
    "DeliveryRow",
    "ack_alerts",
    "alert_ids_of_records",
    "alert_statuses",
    "alert_timings",
    "claim_deliveries",
    "describe_reply",
    "ensure_deliveries",
    "pending_deliveries",
    "query_alerts",
    "rearm_deliveries",
    "release_stale_claims",
    "resolve_alerts",
    "retry_failed_deliveries",
    "settle_deliveries",
    "undelivered",
]

_CHUNK = 1000
_REPLY_CHARS = 1000
_RESET = {
    "status": "pending",
    "attempts": 0,
    "last_code": None,
    "last_reply": None,
    "next_attempt_at": None,
    "claimed_at": None,
    "claim": None,
}


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(set(values))
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


def describe_reply(code: int | None, reply: str | None) -> str:
    """``550 No such user``, or the connection error when the server gave no reply code.

    Args:
        code: SMTP reply code, None when the server was not reached.
        reply: Reply text or connection error.

    Returns:
        One line.
    """
    text = " ".join((reply or "").split())
    return f"{code} {text}".strip() if code is not None else text


@dataclass(frozen=True)
class DeliveryRow:
    """One ``alert_deliveries`` row (one alert, one recipient)."""

    alert_id: str
    recipient: str
    status: str
    attempts: int
    last_code: int | None
    last_reply: str | None
    next_attempt_at: datetime | None
    claimed_at: datetime | None
    claim: str | None
    sent_at: datetime | None
    message_id: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a run claimed, with its failed tries so far."""

    alert_id: str
    recipient: str
    attempts: int


@dataclass(frozen=True)
class DeliveryOutcome:
    """What a try did to one claimed delivery: the values its row gets.

    Attributes:
        alert_id: The alert.
        recipient: The recipient.
        status: ``sent``, ``pending`` (retry later) or ``failed`` (for good).
        attempts: Tries so far, this one included.
        last_code: SMTP reply code of a refusal (None: sent, or server not reached).
        last_reply: Reply text or connection error (None when sent).
        next_attempt_at: When to try again (``pending`` only).
        sent_at: When the server accepted it (``sent`` only).
        message_id: Message-ID of the accepted mail (``sent`` only).
    """

    alert_id: str
    recipient: str
    status: str
    attempts: int
    last_code: int | None = None
    last_reply: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    message_id: str | None = None


def _lock_alerts(connection: Connection, alert_ids: Sequence[str]) -> None:
    """Lock the alert rows (PostgreSQL) before their deliveries change, in alert-id order."""
    if connection.dialect.name != "postgresql" or not alert_ids:
        return
    alerts = schema.alerts
    connection.execute(
        select(alerts.c.alert_id)
        .where(alerts.c.alert_id.in_(sorted(set(alert_ids))))
        .order_by(alerts.c.alert_id)
        .with_for_update()
    ).all()


def _derived_status(statuses: set[str]) -> str:
    for status in ("sending", "pending", "failed"):
        if status in statuses:
            return status
    return "sent"


def _refresh_alerts(connection: Connection, alert_ids: Sequence[str], now: datetime) -> None:
    """Derive each alert's status, attempts, last error, next attempt and sent time from its
    delivery rows (call with the alerts locked, in the transaction that changed the rows)."""
    deliveries, alerts = schema.alert_deliveries, schema.alerts
    rows: dict[str, list[Any]] = {}
    for chunk in _chunks(alert_ids):
        query = select(deliveries).where(deliveries.c.alert_id.in_(chunk))
        for row in connection.execute(query.order_by(deliveries.c.recipient)):
            rows.setdefault(row.alert_id, []).append(row)
    for alert_id, items in rows.items():
        status = _derived_status({item.status for item in items})
        unsent = [item for item in items if item.status != "sent" and item.last_reply]
        waits = [item.next_attempt_at for item in items if item.status == "pending"]
        claims = [item.claimed_at for item in items if item.status == "sending"]
        sent = [item for item in items if item.status == "sent" and item.sent_at is not None]
        latest = max(sent, key=lambda item: item.sent_at, default=None)
        last_error = "; ".join(
            f"{item.recipient}: {describe_reply(item.last_code, item.last_reply)}"
            for item in unsent
        )
        connection.execute(
            update(alerts)
            .where(alerts.c.alert_id == alert_id)
            .values(
                status=status,
                attempts=max(item.attempts for item in items),
                last_error=last_error[:_REPLY_CHARS] or None,
                next_attempt_at=min((w for w in waits if w is not None), default=None),
                claimed_at=max(claims, default=None),
                sent_at=latest.sent_at if latest and status == "sent" else None,
                message_id=latest.message_id if latest else None,
                updated_at=now,
            )
        )


def ensure_deliveries(store: Store, now: datetime, alert_ids: Iterable[str] | None = None) -> int:
    """Give alerts that have no delivery rows one per recipient, in the alert's state.

    New alerts get pending rows; alerts written before deliveries were tracked per recipient
    keep their state (sent stays sent, failed stays failed, anything else is pending).

    Args:
        store: The database.
        now: ``updated_at`` of the new rows.
        alert_ids: Only these alerts; every alert lacking rows when None.

    Returns:
        Delivery rows added.
    """
    alerts, deliveries = schema.alerts, schema.alert_deliveries
    query = select(
        alerts.c.alert_id,
        alerts.c.recipients,
        alerts.c.status,
        alerts.c.attempts,
        alerts.c.last_error,
        alerts.c.next_attempt_at,
        alerts.c.sent_at,
        alerts.c.message_id,
    ).where(~exists().where(deliveries.c.alert_id == alerts.c.alert_id))
    scopes = (
        [query]
        if alert_ids is None
        else [query.where(alerts.c.alert_id.in_(chunk)) for chunk in _chunks(alert_ids)]
    )
    rows = []
    with store.engine.connect() as connection:
        for scoped in scopes:
            for alert in connection.execute(scoped):
                status = alert.status if alert.status in ("sent", "failed") else "pending"
                rows += [
                    {
                        "alert_id": alert.alert_id,
                        "recipient": recipient,
                        "status": status,
                        "attempts": alert.attempts,
                        "last_code": None,
                        "last_reply": alert.last_error if status != "sent" else None,
                        "next_attempt_at": alert.next_attempt_at if status == "pending" else None,
                        "claimed_at": None,
                        "claim": None,
                        "sent_at": alert.sent_at if status == "sent" else None,
                        "message_id": alert.message_id if status == "sent" else None,
                        "updated_at": now,
                    }
                    for recipient in dict.fromkeys(alert.recipients)
                ]
    return store.insert_ignore(deliveries, rows)


def _alert_reference(reference: str) -> Any:
    alerts = schema.alerts
    return or_(alerts.c.alert_id == reference, alerts.c.record_id == reference)


def ack_alerts(store: Store, reference: str, now: datetime) -> int:
    """Set ``acked_at`` (an earlier acknowledgement time is kept).

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        now: Acknowledgement time.

    Returns:
        Number of alerts matched (0: unknown id).
    """
    alerts = schema.alerts
    with store.begin() as connection:
        return int(
            connection.execute(
                update(alerts)
                .where(_alert_reference(reference))
                .values(acked_at=func.coalesce(alerts.c.acked_at, now), updated_at=now)
            ).rowcount
        )


def resolve_alerts(store: Store, reference: str, now: datetime, note: str | None = None) -> int:
    """Set ``resolved_at`` and ``acked_at`` (earlier times are kept), and the note if given.

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        now: Resolution time.
        note: What was done, kept in ``resolution``.

    Returns:
        Number of alerts matched (0: unknown id).
    """
    alerts = schema.alerts
    values: dict[str, Any] = {
        "acked_at": func.coalesce(alerts.c.acked_at, now),
        "resolved_at": func.coalesce(alerts.c.resolved_at, now),
        "updated_at": now,
    }
    if note is not None:
        values["resolution"] = note
    with store.begin() as connection:
        return int(
            connection.execute(
                update(alerts).where(_alert_reference(reference)).values(**values)
            ).rowcount
        )


def query_alerts(
    store: Store,
    status: str | None = None,
    priority: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Alerts, most recent first.

    Args:
        store: The database.
        status: Only this status (pending, sending, sent, failed).
        priority: Only this priority (P1, P2, P3).
        limit: At most this many rows.

    Returns:
        One row per alert with every column of the ``alerts`` table.
    """
    alerts = schema.alerts
    query = select(alerts).order_by(alerts.c.created_at.desc(), alerts.c.alert_id)
    if status:
        query = query.where(alerts.c.status == status)
    if priority:
        query = query.where(alerts.c.priority == priority)
    if limit:
        query = query.limit(limit)
    with store.engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    return pd.DataFrame(rows, columns=[column.name for column in alerts.columns])


def alert_timings(store: Store) -> pd.DataFrame:
    """Every alert's recipients, priority and times (what response times are computed from).

    Args:
        store: The database.

    Returns:
        Columns ``recipients``, ``priority``, ``created_at``, ``acked_at``, ``resolved_at``,
        ``respond_by``; no columns at all when there is no alert.
    """
    alerts = schema.alerts
    query = select(
        alerts.c.recipients,
        alerts.c.priority,
        alerts.c.created_at,
        alerts.c.acked_at,
        alerts.c.resolved_at,
        alerts.c.respond_by,
    )
    with store.engine.connect() as connection:
        return pd.DataFrame([dict(row._mapping) for row in connection.execute(query)])


def alert_ids_of_records(store: Store, record_ids: Iterable[str]) -> list[str]:
    """Ids of every alert about these records.

    Args:
        store: The database.
        record_ids: Record ids.

    Returns:
        The alert ids.
    """
    alerts = schema.alerts
    found: list[str] = []
    with store.engine.connect() as connection:
        for chunk in _chunks(str(record_id) for record_id in record_ids):
            query = select(alerts.c.alert_id).where(alerts.c.record_id.in_(chunk))
            found += connection.execute(query).scalars().all()
    return found


def rearm_deliveries(store: Store, alert_ids: Iterable[str], now: datetime) -> int:
    """Reset every delivery of the alerts that are sent or failed to pending, and raise their
    generation (a new Message-ID); alerts still pending or being sent are left alone.

    Args:
        store: The database.
        alert_ids: Alerts to re-arm (they must have their delivery rows).
        now: Time of the change.

    Returns:
        Alerts re-armed.
    """
    alerts, deliveries = schema.alerts, schema.alert_deliveries
    rearmed = 0
    for chunk in _chunks(alert_ids):
        with store.begin() as connection:
            _lock_alerts(connection, chunk)
            targets = (
                connection.execute(
                    select(alerts.c.alert_id).where(
                        alerts.c.alert_id.in_(chunk), alerts.c.status.in_(("sent", "failed"))
                    )
                )
                .scalars()
                .all()
            )
            if not targets:
                continue
            connection.execute(
                update(deliveries)
                .where(deliveries.c.alert_id.in_(targets))
                .values(**_RESET, sent_at=None, message_id=None, updated_at=now)
            )
            connection.execute(
                update(alerts)
                .where(alerts.c.alert_id.in_(targets))
                .values(generation=alerts.c.generation + 1)
            )
            _refresh_alerts(connection, targets, now)
            rearmed += len(targets)
    return rearmed


def retry_failed_deliveries(store: Store, reference: str | None, now: datetime) -> int:
    """Reset failed deliveries to pending (only those: the others are left as they are).

    Args:
        store: The database.
        reference: An alert id or record id; every failed delivery when None.
        now: Time of the change.

    Returns:
        Deliveries re-armed.
    """
    alerts, deliveries = schema.alerts, schema.alert_deliveries
    query = select(deliveries.c.alert_id).where(deliveries.c.status == "failed").distinct()
    if reference is not None:
        query = query.join(alerts, alerts.c.alert_id == deliveries.c.alert_id).where(
            _alert_reference(reference)
        )
    with store.engine.connect() as connection:
        wanted = connection.execute(query).scalars().all()
    retried = 0
    for chunk in _chunks(wanted):
        with store.begin() as connection:
            _lock_alerts(connection, chunk)
            retried += connection.execute(
                update(deliveries)
                .where(deliveries.c.alert_id.in_(chunk), deliveries.c.status == "failed")
                .values(**_RESET, updated_at=now)
            ).rowcount
            _refresh_alerts(connection, chunk, now)
    return int(retried)


def undelivered(store: Store) -> list[DeliveryRow]:
    """Deliveries not accepted by the mail server: failed first, then most recently changed.

    Args:
        store: The database.

    Returns:
        The delivery rows whose status is not ``sent``.
    """
    deliveries = schema.alert_deliveries
    query = (
        select(deliveries)
        .where(deliveries.c.status != "sent")
        .order_by(
            (deliveries.c.status != "failed"), deliveries.c.updated_at.desc(), deliveries.c.alert_id
        )
    )
    with store.engine.connect() as connection:
        return [DeliveryRow(**row) for row in connection.execute(query).mappings()]


def pending_deliveries(store: Store, kinds: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Pending deliveries with their alert's content.

    Args:
        store: The database.
        kinds: Only alerts of these kinds; every kind when None.

    Returns:
        One dict per delivery: ``alert_id``, ``recipient``, ``next_attempt_at``, ``record_id``,
        ``kind``, ``priority``, ``generation``, ``payload``, ``sla_hours``, ``respond_by``.
    """
    deliveries, alerts = schema.alert_deliveries, schema.alerts
    query = (
        select(
            deliveries.c.alert_id,
            deliveries.c.recipient,
            deliveries.c.next_attempt_at,
            alerts.c.record_id,
            alerts.c.kind,
            alerts.c.priority,
            alerts.c.generation,
            alerts.c.payload,
            alerts.c.sla_hours,
            alerts.c.respond_by,
        )
        .join(alerts, alerts.c.alert_id == deliveries.c.alert_id)
        .where(deliveries.c.status == "pending")
    )
    if kinds is not None:
        query = query.where(alerts.c.kind.in_(sorted(set(kinds))))
    with store.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def claim_deliveries(
    store: Store,
    alert_ids: Collection[str],
    recipients: Collection[str],
    now: datetime,
    token: str,
) -> list[ClaimedDelivery]:
    """Claim the deliveries of these alerts to these recipients that are pending and due.

    Args:
        store: The database.
        alert_ids: The alerts.
        recipients: The recipients.
        now: Claim time; a delivery whose next attempt is later is not due.
        token: This delivery run's claim token.

    Returns:
        The deliveries claimed (now ``sending``), none that another run holds.
    """
    deliveries = schema.alert_deliveries
    alert_ids = sorted(set(alert_ids))
    with store.begin() as connection:
        _lock_alerts(connection, alert_ids)
        claimed = connection.execute(
            update(deliveries)
            .where(
                deliveries.c.alert_id.in_(alert_ids),
                deliveries.c.recipient.in_(sorted(set(recipients))),
                deliveries.c.status == "pending",
                or_(
                    deliveries.c.next_attempt_at.is_(None),
                    deliveries.c.next_attempt_at <= now,
                ),
            )
            .values(status="sending", claimed_at=now, claim=token, updated_at=now)
            .returning(deliveries.c.alert_id, deliveries.c.recipient, deliveries.c.attempts)
        ).all()
        if claimed:
            _refresh_alerts(connection, alert_ids, now)
    return [ClaimedDelivery(row.alert_id, row.recipient, row.attempts) for row in claimed]


def settle_deliveries(
    store: Store, outcomes: Sequence[DeliveryOutcome], now: datetime, token: str
) -> list[DeliveryOutcome]:
    """Record the outcome of claimed deliveries, in one transaction.

    Args:
        store: The database.
        outcomes: One per claimed delivery.
        now: ``updated_at`` of the rows.
        token: The claim token; a delivery no longer ``sending`` under it is left as it is.

    Returns:
        The outcomes recorded (those whose claim was still held).
    """
    deliveries = schema.alert_deliveries
    alert_ids = sorted({outcome.alert_id for outcome in outcomes})
    recorded = []
    with store.begin() as connection:
        _lock_alerts(connection, alert_ids)
        for outcome in outcomes:
            changed = connection.execute(
                update(deliveries)
                .where(
                    deliveries.c.alert_id == outcome.alert_id,
                    deliveries.c.recipient == outcome.recipient,
                    deliveries.c.status == "sending",
                    deliveries.c.claim == token,
                )
                .values(
                    status=outcome.status,
                    attempts=outcome.attempts,
                    claimed_at=None,
                    claim=None,
                    last_code=outcome.last_code,
                    last_reply=outcome.last_reply,
                    next_attempt_at=outcome.next_attempt_at,
                    **(
                        {"sent_at": outcome.sent_at, "message_id": outcome.message_id}
                        if outcome.status == "sent"
                        else {}
                    ),
                    updated_at=now,
                )
            ).rowcount
            if changed:
                recorded.append(outcome)
        _refresh_alerts(connection, alert_ids, now)
    return recorded


def release_stale_claims(store: Store, cutoff: datetime, now: datetime) -> int:
    """Deliveries left ``sending`` since before ``cutoff`` (a crashed run) become pending.

    Args:
        store: The database.
        cutoff: Claims taken before this are stale.
        now: ``updated_at`` of the rows.

    Returns:
        Alerts whose deliveries were released.
    """
    deliveries = schema.alert_deliveries
    stale = (deliveries.c.status == "sending", deliveries.c.claimed_at < cutoff)
    with store.engine.connect() as connection:
        alert_ids = (
            connection.execute(select(deliveries.c.alert_id).where(*stale).distinct())
            .scalars()
            .all()
        )
    if not alert_ids:
        return 0
    with store.begin() as connection:
        _lock_alerts(connection, alert_ids)
        connection.execute(
            update(deliveries)
            .where(deliveries.c.alert_id.in_(alert_ids), *stale)
            .values(status="pending", claimed_at=None, claim=None, updated_at=now)
        )
        _refresh_alerts(connection, alert_ids, now)
    return len(alert_ids)


def alert_statuses(store: Store, alert_ids: Collection[str]) -> list[str]:
    """The status of each of these alerts.

    Args:
        store: The database.
        alert_ids: The alerts.

    Returns:
        One status per alert found.
    """
    alerts = schema.alerts
    with store.engine.connect() as connection:
        return list(
            connection.execute(
                select(alerts.c.status).where(alerts.c.alert_id.in_(sorted(alert_ids)))
            ).scalars()
        )
