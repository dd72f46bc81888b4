"""Per-recipient delivery rows (``alert_deliveries``) and the alert status derived from them.

Each alert has one row per recipient. An alert is ``sent`` only when every recipient was
accepted by the mail server, ``failed`` once a recipient failed for good and none is still open,
``sending`` while a delivery run holds a claim, and ``pending`` otherwise. Every change to an
alert's rows locks the alert row first (PostgreSQL ``SELECT ... FOR UPDATE``, in alert-id order
so that concurrent runs cannot deadlock); DuckDB has a single writer, serialised by the Store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, exists, or_, select, update

from pipelines._errors import DeliveryWarning
from pipelines.storage import Store, schema

__all__ = [
    "DELIVERY_STATUSES",
    "DeliveryBacklog",
    "delivery_backlog",
    "describe_reply",
    "ensure_deliveries",
    "lock_alerts",
    "rearm_alerts",
    "refresh_alerts",
    "retry_failed",
]

DELIVERY_STATUSES: tuple[str, ...] = ("pending", "sending", "sent", "failed")
_OPEN = ("pending", "sending")
_CHUNK = 1000
_REPLY_CHARS = 1000
_SHOWN = 20


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(set(values))
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


def describe_reply(code: int | None, reply: str | None) -> str:
    """``550 No such user``, or the connection error when the server gave no reply code."""
    text = " ".join((reply or "").split())
    return f"{code} {text}".strip() if code is not None else text


def lock_alerts(connection: Connection, alert_ids: Sequence[str]) -> None:
    """Lock the alert rows (PostgreSQL) before their deliveries change, in alert-id order.

    Args:
        connection: The open transaction.
        alert_ids: Alerts about to change.
    """
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


def refresh_alerts(connection: Connection, alert_ids: Sequence[str], now: datetime) -> None:
    """Derive each alert's status, attempts, last error, next attempt and sent time from its
    delivery rows (call with the alerts locked, in the transaction that changed the rows).

    Args:
        connection: The open transaction.
        alert_ids: Alerts whose deliveries changed.
        now: ``updated_at`` of the alerts.
    """
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


_RESET = {
    "status": "pending",
    "attempts": 0,
    "last_code": None,
    "last_reply": None,
    "next_attempt_at": None,
    "claimed_at": None,
    "claim": None,
}


def _alert_ids_of(store: Store, record_ids: Iterable[str]) -> list[str]:
    alerts = schema.alerts
    found: list[str] = []
    with store.engine.connect() as connection:
        for chunk in _chunks(str(record_id) for record_id in record_ids):
            query = select(alerts.c.alert_id).where(alerts.c.record_id.in_(chunk))
            found += connection.execute(query).scalars().all()
    return found


def rearm_alerts(
    store: Store,
    *,
    alert_ids: Iterable[str] = (),
    record_ids: Iterable[str] = (),
    now: datetime | None = None,
) -> int:
    """Mail sent or failed alerts again, to every recipient (``--resend-alerts``).

    Alerts still pending or being sent are left alone, so nobody gets one twice in a row.
    The alert's generation goes up, which gives the new mail a new Message-ID.

    Args:
        store: The database.
        alert_ids: Alerts to re-arm.
        record_ids: Re-arm every alert of these records too.
        now: Time of the change; the current time when None.

    Returns:
        Alerts re-armed.
    """
    moment = _utc(now or datetime.now(UTC))
    alerts, deliveries = schema.alerts, schema.alert_deliveries
    wanted = set(alert_ids) | set(_alert_ids_of(store, record_ids))
    ensure_deliveries(store, moment, wanted)
    rearmed = 0
    for chunk in _chunks(wanted):
        with store.begin() as connection:
            lock_alerts(connection, chunk)
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
                .values(**_RESET, sent_at=None, message_id=None, updated_at=moment)
            )
            connection.execute(
                update(alerts)
                .where(alerts.c.alert_id.in_(targets))
                .values(generation=alerts.c.generation + 1)
            )
            refresh_alerts(connection, targets, moment)
            rearmed += len(targets)
    return rearmed


def retry_failed(store: Store, reference: str | None = None, now: datetime | None = None) -> int:
    """Try failed deliveries again (only those: recipients that accepted get nothing new).

    Args:
        store: The database.
        reference: An alert id or record id; every failed delivery when None.
        now: Time of the change; the current time when None.

    Returns:
        Deliveries re-armed.
    """
    moment = _utc(now or datetime.now(UTC))
    alerts, deliveries = schema.alerts, schema.alert_deliveries
    query = select(deliveries.c.alert_id).where(deliveries.c.status == "failed").distinct()
    if reference is not None:
        query = query.join(alerts, alerts.c.alert_id == deliveries.c.alert_id).where(
            or_(alerts.c.alert_id == reference, alerts.c.record_id == reference)
        )
    with store.engine.connect() as connection:
        wanted = connection.execute(query).scalars().all()
    retried = 0
    for chunk in _chunks(wanted):
        with store.begin() as connection:
            lock_alerts(connection, chunk)
            retried += connection.execute(
                update(deliveries)
                .where(deliveries.c.alert_id.in_(chunk), deliveries.c.status == "failed")
                .values(**_RESET, updated_at=moment)
            ).rowcount
            refresh_alerts(connection, chunk, moment)
    return int(retried)


@dataclass(frozen=True)
class DeliveryBacklog:
    """Alert deliveries the mail server has not accepted (yet): what runs and status show.

    Attributes:
        queued: Deliveries never tried yet (e.g. digests the watch flow leaves to the nightly).
        retrying: Deliveries tried, refused or not delivered, waiting for their next try.
        unreachable: Those of ``retrying`` whose last try could not reach the server at all.
        failed: Deliveries that reached the last allowed try.
        next_attempt_at: Earliest next try of a waiting delivery.
        rows: Up to 20 undelivered rows (alert, recipient, status, tries, last reply, next try),
            failed ones first.
    """

    queued: int = 0
    retrying: int = 0
    unreachable: int = 0
    failed: int = 0
    next_attempt_at: datetime | None = None
    rows: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def _example(self, statuses: tuple[str, ...], unreachable: bool | None = None) -> str:
        for row in self.rows:
            matches = unreachable is None or (row["last_code"] is None) == unreachable
            if row["status"] in statuses and row["attempts"] > 0 and matches:
                reply = describe_reply(row["last_code"], row["reply"])
                return f", e.g. {row['recipient']}: {reply}"
        return ""

    def warnings(self) -> list[str]:
        """One line per problem, with its code and the fix; empty when nothing is wrong."""
        when = f"{self.next_attempt_at:%Y-%m-%d %H:%M} UTC" if self.next_attempt_at else "soon"
        problems = []
        if self.unreachable:
            problems.append(
                DeliveryWarning(
                    f"the mail server could not be reached: {self.unreachable} alert "
                    f"delivery(ies) wait for a retry (next {when})"
                    f"{self._example(_OPEN, unreachable=True)}; check FEEDBACK_SMTP_HOST, "
                    "FEEDBACK_SMTP_PORT, the login and that the server accepts connections",
                    code="E040",
                )
            )
        refused = self.retrying - self.unreachable
        if refused:
            problems.append(
                DeliveryWarning(
                    f"the mail server refused {refused} alert delivery(ies), retried with "
                    f"backoff (next {when}){self._example(_OPEN, unreachable=False)}; if an "
                    "address is wrong, fix it in routing.yaml",
                    code="E041",
                )
            )
        if self.failed:
            problems.append(
                DeliveryWarning(
                    f"{self.failed} alert delivery(ies) failed after the last allowed try"
                    f"{self._example(('failed',))}; fix the address (routing.yaml) or the "
                    "server, then run 'feedback alerts retry'",
                    code="E042",
                )
            )
        return [str(problem) for problem in problems]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts and warnings (for the ``runs`` table)."""
        return {
            "queued": self.queued,
            "retrying": self.retrying,
            "unreachable": self.unreachable,
            "failed": self.failed,
            "warnings": self.warnings(),
        }


def delivery_backlog(store: Store) -> DeliveryBacklog:
    """What is not delivered yet, for ``feedback status`` and run summaries.

    Args:
        store: The database.

    Returns:
        Counts and the first undelivered rows.
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
        rows = connection.execute(query).all()
    tried = [row for row in rows if row.status in _OPEN and row.attempts > 0]
    waits = [row.next_attempt_at for row in tried if row.next_attempt_at is not None]
    return DeliveryBacklog(
        queued=sum(row.status in _OPEN and row.attempts == 0 for row in rows),
        retrying=len(tried),
        unreachable=sum(row.last_code is None and bool(row.last_reply) for row in tried),
        failed=sum(row.status == "failed" for row in rows),
        next_attempt_at=_utc(min(waits)) if waits else None,
        rows=tuple(
            {
                "alert_id": row.alert_id,
                "recipient": row.recipient,
                "status": row.status,
                "attempts": row.attempts,
                "last_code": row.last_code,
                "reply": row.last_reply,
                "next_attempt_at": row.next_attempt_at,
            }
            for row in rows[:_SHOWN]
        ),
    )
