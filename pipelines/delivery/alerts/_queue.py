"""The alerts table (what is queued, for whom) and the resolution loop (ack, resolve, times).

``enqueue_alerts`` is idempotent: the unique key (record_id, route, kind) means rerunning a batch
queues nothing new. Each alert gets one delivery row per recipient (see ``_ledger``), which
``deliver_pending`` (see ``_delivery``) mails exactly once per recipient.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from pipelines.analysis.flagging import PRIORITIES, summarize
from pipelines.delivery.alerts._ledger import DELIVERY_STATUSES, rearm_alerts
from pipelines.delivery.routing import RoutingConfig
from pipelines.storage import (
    Store,
    ack_alerts,
    alert_timings,
    ensure_deliveries,
    query_alerts,
    resolve_alerts,
    schema,
)

__all__ = [
    "ALERT_STATUSES",
    "ack_alert",
    "alert_id",
    "enqueue_alerts",
    "list_alerts",
    "resolve_alert",
    "response_times",
]

ALERT_STATUSES: tuple[str, ...] = DELIVERY_STATUSES
_MAX_TEXT_CHARS = 5000
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
    "customer_value",
    "ingested_at",
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


def _first_stored(record: dict[str, Any], moment: datetime) -> datetime:
    """When the pipeline first stored the record (``ingested_at``); ``moment`` when unknown."""
    value = record.get("ingested_at")
    if _missing(value) or value is None:
        return moment
    return _utc(pd.Timestamp(value).to_pydatetime())


def _age_at(record: dict[str, Any], moment: datetime) -> timedelta:
    """How old the feedback was at ``moment`` (zero when its creation time is unknown)."""
    value = record.get("created_at")
    if _missing(value) or value is None:
        return timedelta(0)
    return moment - _utc(pd.Timestamp(value).to_pydatetime())


def _negative_aspects(value: Any) -> list[str]:
    items = value if isinstance(value, list | tuple) else []
    return sorted(
        {
            str(item["aspect"])
            for item in items
            if isinstance(item, dict) and item.get("polarity") == "negative" and "aspect" in item
        }
    )


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
        now: Flag time; the current time when None. Respond-by counts from when the pipeline
            first stored the record (``ingested_at``; ``now`` when the batch lacks it), and a
            record older than ``max_alert_age_days`` at that time goes to the digest, never an
            immediate P1 mail.

    Returns:
        Number of alerts newly queued plus (with ``resend``) re-armed.
    """
    moment = _utc(now or datetime.now(UTC))
    max_age = timedelta(days=routing.max_alert_age_days)
    rows = []
    for record in flagged_batch.to_dict(orient="records"):
        if _missing(record.get("flagged")) or not bool(record.get("flagged")):
            continue
        priority = record.get("priority") if record.get("priority") in PRIORITIES else "P3"
        route = routing.route({**record, "priority": priority})
        stored_at = _first_stored(record, moment)
        stale = _age_at(record, stored_at) > max_age
        kind = "p1" if priority == "P1" and not stale else "digest"
        record_id = str(record["id"])
        reasons = [] if _missing(record.get("reasons")) else [str(r) for r in record["reasons"]]
        payload = {name: _plain(record.get(name)) for name in _PAYLOAD_COLUMNS}
        if isinstance(payload["text"], str):
            payload["text"] = payload["text"][:_MAX_TEXT_CHARS]
        payload.update(
            reasons=reasons,
            summary=summarize(priority, reasons),
            aspects=_negative_aspects(record.get("aspects")),
            stale=stale,
            max_alert_age_days=routing.max_alert_age_days,
            frame={"lang": route.lang, "timezone": route.timezone},
        )
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
                "respond_by": stored_at + timedelta(hours=sla_hours),
                "created_at": moment,
                "updated_at": moment,
            }
        )
    ids = [row["alert_id"] for row in rows]
    existing = store.existing_ids(schema.alerts, "alert_id", ids) if resend else set()
    queued = store.insert_ignore(schema.alerts, rows)
    ensure_deliveries(store, moment, ids)
    if not existing:
        return queued
    return queued + rearm_alerts(store, alert_ids=existing, now=moment)


def ack_alert(store: Store, reference: str, now: datetime | None = None) -> int:
    """Mark alerts as acknowledged (an earlier acknowledgement time is kept).

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        now: Acknowledgement time; the current time when None.

    Returns:
        Number of alerts matched (0: unknown id).
    """
    return ack_alerts(store, reference, _utc(now or datetime.now(UTC)))


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
    return resolve_alerts(store, reference, _utc(now or datetime.now(UTC)), note)


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
    return query_alerts(store, status, priority, limit)


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
    frame = alert_timings(store)
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
