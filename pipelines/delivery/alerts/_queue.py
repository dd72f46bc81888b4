"""The alerts table as an exactly-once delivery queue, and the resolution loop.

States: ``pending`` -> ``sending`` (claimed by one delivery run) -> ``sent``; a failed attempt
puts the alert back to ``pending`` with ``attempts``, ``last_error`` and an exponential-backoff
``next_attempt_at``, or to ``failed`` once ``DeliveryPolicy.max_attempts`` is reached (re-arm with
``enqueue_alerts(..., resend=True)``). The unique key (record_id, route, kind) makes enqueueing
idempotent, and an alert is claimed with a conditional update before it is sent, so two runs
never send it twice. A run that dies between sending and marking leaves the alert ``sending``;
after ``claim_timeout_s`` it is retried (the receiver can de-duplicate on the stable
``Message-ID``).
"""

from __future__ import annotations

import hashlib
import smtplib
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Row, func, or_, select, update

from pipelines.analysis.flagging import PRIORITIES, summarize
from pipelines.delivery.alerts._mailer import Mailer
from pipelines.delivery.alerts._messages import build_digest_message, build_p1_message
from pipelines.delivery.routing import RoutingConfig
from pipelines.storage import Store, schema

__all__ = [
    "ALERT_KINDS",
    "ALERT_STATUSES",
    "DeliveryPolicy",
    "DeliveryReport",
    "ack_alert",
    "alert_id",
    "deliver_pending",
    "enqueue_alerts",
    "list_alerts",
    "resolve_alert",
    "response_times",
]

ALERT_STATUSES: tuple[str, ...] = ("pending", "sending", "sent", "failed")
ALERT_KINDS: tuple[str, ...] = ("p1", "digest")
_MAX_TEXT_CHARS = 5000
_MESSAGE_LEVEL_ERRORS = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPDataError,
)
_PAYLOAD_COLUMNS = (
    "source",
    "channel",
    "platform",
    "url",
    "text",
    "author",
    "customer_id",
    "product",
    "store",
    "lang",
    "created_at",
    "rating",
    "nps",
)


def alert_id(record_id: str, route: str, kind: str) -> str:
    """The short, stable id of an alert (what ``feedback alerts ack`` takes).

    Args:
        record_id: Id of the flagged record.
        route: Route name.
        kind: ``p1`` or ``digest``.

    Returns:
        16 hex characters.
    """
    return hashlib.sha256(f"{record_id}\x1f{route}\x1f{kind}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry behaviour of ``deliver_pending``.

    Attributes:
        max_attempts: Failed attempts after which an alert becomes ``failed``.
        backoff_base_s: Wait after the first failure; doubles with each further failure.
        backoff_max_s: Upper bound of the wait.
        claim_timeout_s: An alert left ``sending`` this long (crashed run) is retried.
    """

    max_attempts: int = 10
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    claim_timeout_s: float = 900.0

    def backoff(self, attempts: int) -> timedelta:
        """Wait before the next attempt after ``attempts`` failed ones.

        Args:
            attempts: Failed attempts so far (>= 1).

        Returns:
            The delay.
        """
        return timedelta(seconds=min(self.backoff_base_s * 2 ** (attempts - 1), self.backoff_max_s))


@dataclass
class DeliveryReport:
    """What one ``deliver_pending`` call did.

    Attributes:
        transport: Where mail went (SMTP server or outbox folder).
        messages_sent: Mails handed to the transport.
        alerts_sent: Alerts those mails carried.
        alerts_retrying: Alerts whose attempt failed and that stay pending for a later call.
        alerts_failed: Alerts that reached ``max_attempts`` in this call and are now ``failed``.
        alerts_waiting: Pending alerts not yet due (backing off).
        errors: Distinct error messages met.
    """

    transport: str
    messages_sent: int = 0
    alerts_sent: int = 0
    alerts_retrying: int = 0
    alerts_failed: int = 0
    alerts_waiting: int = 0
    errors: list[str] = field(default_factory=list)


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    if _missing(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enqueue_alerts(
    flagged_batch: pd.DataFrame,
    store: Store,
    routing: RoutingConfig,
    *,
    resend: bool = False,
    now: datetime | None = None,
) -> int:
    """Queue one alert per flagged record (kind ``p1`` for P1, ``digest`` for P2/P3).

    Idempotent: an alert whose (record_id, route, kind) exists is left as it is, so rerunning a
    batch queues nothing new.

    Args:
        flagged_batch: Output of the flagging stage (``id``, ``flagged``, ``priority``,
            ``reasons`` and the record columns shown in the mail).
        store: The database.
        routing: Routing configuration choosing the leads and the SLA.
        resend: Re-arm alerts that were already sent or failed so they are mailed again.
        now: Flag time (respond-by = now + SLA); the current time when None.

    Returns:
        Number of alerts newly queued plus (with ``resend``) re-armed.
    """
    moment = _utc(now or datetime.now(UTC))
    rows = []
    for record in flagged_batch.to_dict(orient="records"):
        if _missing(record.get("flagged")) or not bool(record.get("flagged")):
            continue
        priority = record.get("priority") if record.get("priority") in PRIORITIES else "P3"
        route = routing.route({**record, "priority": priority})
        kind = "p1" if priority == "P1" else "digest"
        record_id = str(record["id"])
        reasons = [] if _missing(record.get("reasons")) else [str(r) for r in record["reasons"]]
        payload = {name: _plain(record.get(name)) for name in _PAYLOAD_COLUMNS}
        if isinstance(payload["text"], str):
            payload["text"] = payload["text"][:_MAX_TEXT_CHARS]
        payload.update(reasons=reasons, summary=summarize(priority, reasons))
        sla_hours = route.sla_hours[priority]
        rows.append(
            {
                "record_id": record_id,
                "route": route.name,
                "kind": kind,
                "alert_id": alert_id(record_id, route.name, kind),
                "priority": priority,
                "recipients": list(route.to),
                "status": "pending",
                "attempts": 0,
                "generation": 0,
                "payload": payload,
                "sla_hours": sla_hours,
                "respond_by": moment + timedelta(hours=sla_hours),
                "created_at": moment,
                "updated_at": moment,
            }
        )
    ids = [row["alert_id"] for row in rows]
    existing = store.existing_ids(schema.alerts, "alert_id", ids) if resend else set()
    queued = store.insert_ignore(schema.alerts, rows)
    if not existing:
        return queued
    alerts = schema.alerts
    with store.begin() as connection:
        rearmed = connection.execute(
            update(alerts)
            .where(alerts.c.alert_id.in_(sorted(existing)), alerts.c.status.in_(("sent", "failed")))
            .values(
                status="pending",
                attempts=0,
                last_error=None,
                next_attempt_at=None,
                claimed_at=None,
                generation=alerts.c.generation + 1,
                updated_at=moment,
            )
        ).rowcount
    return queued + int(rearmed)


def _as_alert(row: Row[Any]) -> dict[str, Any]:
    alert = dict(row._mapping)
    alert["respond_by"] = _utc(alert["respond_by"])
    return alert


def _group(due: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """P1 alerts one per mail; the others one digest per set of recipients."""
    ordered = sorted(
        due, key=lambda alert: (PRIORITIES.index(alert["priority"]), alert["respond_by"])
    )
    groups: list[list[dict[str, Any]]] = [[alert] for alert in ordered if alert["kind"] == "p1"]
    digests: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for alert in ordered:
        if alert["kind"] != "p1":
            digests.setdefault(tuple(sorted(alert["recipients"])), []).append(alert)
    return groups + list(digests.values())


def _claim(store: Store, group: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    alerts = schema.alerts
    with store.begin() as connection:
        claimed = set(
            connection.execute(
                update(alerts)
                .where(
                    alerts.c.alert_id.in_([alert["alert_id"] for alert in group]),
                    alerts.c.status == "pending",
                )
                .values(status="sending", claimed_at=now, updated_at=now)
                .returning(alerts.c.alert_id)
            ).scalars()
        )
    return [dict(alert) for alert in group if alert["alert_id"] in claimed]


def _mark_sent(
    store: Store, group: Sequence[Mapping[str, Any]], message_id: str, now: datetime
) -> None:
    alerts = schema.alerts
    with store.begin() as connection:
        connection.execute(
            update(alerts)
            .where(alerts.c.alert_id.in_([alert["alert_id"] for alert in group]))
            .values(
                status="sent",
                attempts=alerts.c.attempts + 1,
                last_error=None,
                next_attempt_at=None,
                claimed_at=None,
                sent_at=now,
                message_id=message_id,
                updated_at=now,
            )
        )


def _record_failure(
    store: Store,
    group: Sequence[Mapping[str, Any]],
    from_status: str,
    error: BaseException,
    now: datetime,
    policy: DeliveryPolicy,
    report: DeliveryReport,
) -> None:
    alerts = schema.alerts
    message = f"{type(error).__name__}: {error}"[:1000]
    if message not in report.errors:
        report.errors.append(message)
    with store.begin() as connection:
        for alert in group:
            attempts = int(alert["attempts"]) + 1
            gave_up = attempts >= policy.max_attempts
            changed = connection.execute(
                update(alerts)
                .where(alerts.c.alert_id == alert["alert_id"], alerts.c.status == from_status)
                .values(
                    status="failed" if gave_up else "pending",
                    attempts=attempts,
                    last_error=message,
                    next_attempt_at=None if gave_up else now + policy.backoff(attempts),
                    claimed_at=None,
                    updated_at=now,
                )
            ).rowcount
            if changed and gave_up:
                report.alerts_failed += 1
            elif changed:
                report.alerts_retrying += 1


def deliver_pending(
    store: Store,
    mailer: Mailer,
    now: datetime | None = None,
    policy: DeliveryPolicy | None = None,
    kinds: Collection[str] | None = None,
) -> DeliveryReport:
    """Send every due pending alert: P1 one mail per record, P2/P3 one digest per lead.

    Safe to call as often as wanted (nightly, watch loop): an alert is sent at most once unless
    re-armed; when the server is unreachable nothing is lost, the alerts stay pending with a
    backoff and a later call delivers them.

    Args:
        store: The database.
        mailer: SMTP or outbox mailer.
        now: The current time (tests pass a later time to skip the backoff).
        policy: Retry policy; ``DeliveryPolicy()`` when None.
        kinds: Only alerts of these kinds (``ALERT_KINDS``), e.g. ``["p1"]`` in the watch loop
            so digests wait for the nightly run; every kind when None.

    Returns:
        Counts of what was sent, what will be retried and what failed for good
        (``alerts_waiting`` counts only the selected kinds).

    Raises:
        ValueError: ``kinds`` names an unknown kind.
    """
    unknown_kinds = sorted(set(kinds or ()) - set(ALERT_KINDS))
    if unknown_kinds:
        raise ValueError(f"unknown alert kind(s) {unknown_kinds}; use any of {list(ALERT_KINDS)}")
    moment = _utc(now or datetime.now(UTC))
    rules = policy or DeliveryPolicy()
    report = DeliveryReport(transport=mailer.describe())
    alerts = schema.alerts
    with store.begin() as connection:
        connection.execute(
            update(alerts)
            .where(
                alerts.c.status == "sending",
                alerts.c.claimed_at < moment - timedelta(seconds=rules.claim_timeout_s),
            )
            .values(status="pending", claimed_at=None, updated_at=moment)
        )
    query = select(alerts).where(alerts.c.status == "pending")
    if kinds is not None:
        query = query.where(alerts.c.kind.in_(sorted(set(kinds))))
    with store.engine.connect() as connection:
        pending = [_as_alert(row) for row in connection.execute(query)]
    due = [
        alert
        for alert in pending
        if alert["next_attempt_at"] is None or _utc(alert["next_attempt_at"]) <= moment
    ]
    report.alerts_waiting = len(pending) - len(due)
    remaining = deque(_group(due))
    if not remaining:
        return report
    try:
        with mailer.connect() as send:
            while remaining:
                claimed = _claim(store, remaining[0], moment)
                remaining.popleft()
                if not claimed:
                    continue
                message = (
                    build_p1_message(claimed[0], mailer.sender, moment)
                    if claimed[0]["kind"] == "p1"
                    else build_digest_message(claimed, mailer.sender, moment)
                )
                try:
                    send(message)
                except (OSError, smtplib.SMTPException) as error:
                    _record_failure(store, claimed, "sending", error, moment, rules, report)
                    if isinstance(error, _MESSAGE_LEVEL_ERRORS):
                        continue
                    raise
                _mark_sent(store, claimed, str(message["Message-ID"]), moment)
                report.messages_sent += 1
                report.alerts_sent += len(claimed)
    except (OSError, smtplib.SMTPException) as error:
        unsent = [alert for group in remaining for alert in group]
        _record_failure(store, unsent, "pending", error, moment, rules, report)
    return report


def _resolve_reference(reference: str) -> Any:
    alerts = schema.alerts
    return or_(alerts.c.alert_id == reference, alerts.c.record_id == reference)


def ack_alert(store: Store, reference: str, now: datetime | None = None) -> int:
    """Mark alerts as acknowledged (an earlier acknowledgement time is kept).

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        now: Acknowledgement time; the current time when None.

    Returns:
        Number of alerts matched (0: unknown id).
    """
    alerts = schema.alerts
    moment = _utc(now or datetime.now(UTC))
    with store.begin() as connection:
        return int(
            connection.execute(
                update(alerts)
                .where(_resolve_reference(reference))
                .values(acked_at=func.coalesce(alerts.c.acked_at, moment), updated_at=moment)
            ).rowcount
        )


def resolve_alert(
    store: Store, reference: str, now: datetime | None = None, note: str | None = None
) -> int:
    """Mark alerts as resolved (and acknowledged, if they were not), with an optional note.

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        now: Resolution time; the current time when None.
        note: What was done, kept in ``resolution``.

    Returns:
        Number of alerts matched (0: unknown id).
    """
    alerts = schema.alerts
    moment = _utc(now or datetime.now(UTC))
    values: dict[str, Any] = {
        "acked_at": func.coalesce(alerts.c.acked_at, moment),
        "resolved_at": func.coalesce(alerts.c.resolved_at, moment),
        "updated_at": moment,
    }
    if note is not None:
        values["resolution"] = note
    with store.begin() as connection:
        return int(
            connection.execute(
                update(alerts).where(_resolve_reference(reference)).values(**values)
            ).rowcount
        )


def list_alerts(
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


_RESPONSE_COLUMNS = [
    "lead",
    "priority",
    "alerts",
    "acked",
    "resolved",
    "open",
    "median_hours_to_ack",
    "median_hours_to_resolve",
    "p90_hours_to_resolve",
    "resolved_within_sla",
]


def response_times(store: Store) -> pd.DataFrame:
    """Response time per lead and priority, measured from the alert's creation (flag time).

    Args:
        store: The database.

    Returns:
        Columns ``lead``, ``priority``, ``alerts``, ``acked``, ``resolved``, ``open``,
        ``median_hours_to_ack``, ``median_hours_to_resolve``, ``p90_hours_to_resolve`` and
        ``resolved_within_sla`` (share of resolved alerts resolved by their respond-by time).
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
        frame = pd.DataFrame([dict(row._mapping) for row in connection.execute(query)])
    if frame.empty:
        return pd.DataFrame(columns=_RESPONSE_COLUMNS)
    frame = frame.explode("recipients").rename(columns={"recipients": "lead"})
    for column in ("created_at", "acked_at", "resolved_at", "respond_by"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    hour = pd.Timedelta(hours=1)
    frame["hours_to_ack"] = (frame["acked_at"] - frame["created_at"]) / hour
    frame["hours_to_resolve"] = (frame["resolved_at"] - frame["created_at"]) / hour
    frame["within_sla"] = (frame["resolved_at"] <= frame["respond_by"]).where(
        frame["resolved_at"].notna()
    )
    summary = frame.groupby(["lead", "priority"], sort=True).agg(
        alerts=("priority", "size"),
        acked=("acked_at", "count"),
        resolved=("resolved_at", "count"),
        median_hours_to_ack=("hours_to_ack", "median"),
        median_hours_to_resolve=("hours_to_resolve", "median"),
        p90_hours_to_resolve=("hours_to_resolve", lambda hours: hours.quantile(0.9)),
        resolved_within_sla=("within_sla", lambda flags: flags.dropna().astype(float).mean()),
    )
    summary["open"] = summary["alerts"] - summary["resolved"]
    return summary.reset_index()[_RESPONSE_COLUMNS]
