"""What the inbox and alert pages show, from the storage reads (no SQL here, no HTML)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.analysis.flagging import PRIORITIES
from pipelines.delivery.alerts import TRIAGE_STATUSES, triage_status
from pipelines.storage import Store, record_context, similar_records, triage_events

__all__ = [
    "HISTORY_ACTIONS",
    "STATUS_FILTERS",
    "Viewer",
    "alert_page",
    "can_see",
    "inbox_page",
]

STATUS_FILTERS: tuple[str, ...] = ("unresolved", *TRIAGE_STATUSES, "all")
HISTORY_ACTIONS = frozenset({"ack", "assign", "resolve", "label"})
_SNIPPET = 110
_SIMILAR_DAYS = 30
_SIMILAR_SHOWN = 5


@dataclass(frozen=True)
class Viewer:
    """The signed-in person.

    Attributes:
        email: Their address (casefolded).
        is_admin: Sees every alert (``users.yaml``).
        csrf: The CSRF token their forms must carry.
    """

    email: str
    is_admin: bool
    csrf: str


def _owners(alert: Mapping[str, Any]) -> set[str]:
    owners = {str(address).casefold() for address in alert.get("recipients") or []}
    if alert.get("assignee"):
        owners.add(str(alert["assignee"]).casefold())
    return owners


def can_see(alert: Mapping[str, Any], viewer: Viewer) -> bool:
    """A lead sees the alerts routed or assigned to them; an admin sees every alert."""
    return viewer.is_admin or viewer.email in _owners(alert)


def _zone(alert: Mapping[str, Any]) -> ZoneInfo:
    frame = (alert.get("payload") or {}).get("frame") or {}
    try:
        return ZoneInfo(str(frame.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _when(value: datetime | None, zone: ZoneInfo) -> str:
    return "" if value is None else f"{value.astimezone(zone):%Y-%m-%d %H:%M %Z}"


def _span(delta: timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.0f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 60:.0f} min"


def _parsed(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _snippet(text: Any, limit: int = _SNIPPET) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _row(alert: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    payload = alert.get("payload") or {}
    zone = _zone(alert)
    status = triage_status(alert)
    respond_by = alert["respond_by"]
    overdue = status != "resolved" and respond_by < now
    created = _parsed(payload.get("created_at"))
    return {
        "alert_id": alert["alert_id"],
        "priority": alert["priority"],
        "status": status,
        "respond_by": _when(respond_by, zone),
        "respond_by_at": respond_by,
        "due": ("overdue " if overdue else "in ") + _span(respond_by - now),
        "overdue": overdue,
        "lang": payload.get("lang") or "",
        "channel": payload.get("channel") or "",
        "aspects": list(alert.get("aspects") or payload.get("aspects") or []),
        "snippet": _snippet(payload.get("text")),
        "customer_id": payload.get("customer_id") or "",
        "leads": sorted(alert.get("recipients") or []),
        "assignee": alert.get("assignee") or "",
        "age": _span(now - created) if created else "",
    }


def _matches(row: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    status = filters.get("status") or "unresolved"
    if status == "unresolved" and row["status"] == "resolved":
        return False
    if status in TRIAGE_STATUSES and row["status"] != status:
        return False
    for key, column in (("priority", "priority"), ("language", "lang"), ("channel", "channel")):
        if filters.get(key) and row[column] != filters[key]:
            return False
    if filters.get("aspect") and filters["aspect"] not in row["aspects"]:
        return False
    lead = (filters.get("lead") or "").casefold()
    return not lead or lead in {*(item.casefold() for item in row["leads"]), row["assignee"]}


def inbox_page(
    alerts: Iterable[Mapping[str, Any]],
    viewer: Viewer,
    filters: Mapping[str, str],
    now: datetime,
) -> dict[str, Any]:
    """Rows, counts and filter choices of the inbox.

    Args:
        alerts: Every alert (``triage_alerts``); only those the viewer may see are used.
        viewer: Who looks.
        filters: ``status`` (one of ``STATUS_FILTERS``), ``priority``, ``language``,
            ``channel``, ``aspect``, ``lead``; empty values match everything.
        now: Current time (overdue, due in).

    Returns:
        ``rows`` (ordered by respond-by, then priority), ``counts`` per status over the
        visible alerts, and ``choices`` per filter.
    """
    visible = [_row(alert, now) for alert in alerts if can_see(alert, viewer)]
    counts = {status: sum(row["status"] == status for row in visible) for status in TRIAGE_STATUSES}
    counts["overdue"] = sum(row["overdue"] for row in visible)
    rows = sorted(
        (row for row in visible if _matches(row, filters)),
        key=lambda row: (row["respond_by_at"], PRIORITIES.index(row["priority"]), row["alert_id"]),
    )
    choices = {
        "status": list(STATUS_FILTERS),
        "priority": list(PRIORITIES),
        "language": sorted({row["lang"] for row in visible if row["lang"]}),
        "channel": sorted({row["channel"] for row in visible if row["channel"]}),
        "aspect": sorted({aspect for row in visible for aspect in row["aspects"]}),
        "lead": sorted({lead for row in visible for lead in row["leads"]}),
    }
    return {"rows": rows, "counts": counts, "choices": choices}


def _segments(text: str, sentences: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, bool]]:
    """The text cut into (piece, is a negative sentence) so the page can highlight them."""
    negative = [
        str(item.get("text") or "")
        for item in sentences or []
        if item.get("sentiment") == "negative" and item.get("text")
    ]
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for sentence in negative:
        start = text.find(sentence, cursor)
        if start < 0:
            continue
        if start > cursor:
            pieces.append((text[cursor:start], False))
        pieces.append((sentence, True))
        cursor = start + len(sentence)
    if cursor < len(text):
        pieces.append((text[cursor:], False))
    return pieces


def alert_page(
    store: Store, alert: Mapping[str, Any], viewer: Viewer, now: datetime
) -> dict[str, Any]:
    """Everything the alert page shows.

    Args:
        store: The database.
        alert: The alert (``triage_alerts`` row), already checked visible to ``viewer``.
        viewer: Who looks (similar feedback from alerts they may not see is left out).
        now: Current time.

    Returns:
        The template context: ``alert`` (row), ``payload``, ``record``, ``segments``,
        ``sentiment``, ``aspects``, ``topic``, ``reasons``, ``similar``, ``history``,
        ``source_url``.
    """
    payload = alert.get("payload") or {}
    context = record_context(store, alert["record_id"])
    record = context.feedback if context else {}
    text = str(record.get("text") or payload.get("text") or "")
    sentiment = context.sentiment if context else None
    created = record.get("created_at") or _parsed(payload.get("created_at"))
    ingested = record.get("ingested_at")
    topic = context.topic if context else None
    negative = [
        item["aspect"]
        for item in (context.aspects if context else [])
        if item["polarity"] == "negative"
    ] or list(alert.get("aspects") or [])
    similar = [
        {
            "id": item["id"],
            "when": _when(item["created_at"], _zone(alert)),
            "lang": item["lang"] or "",
            "channel": item["channel"],
            "snippet": _snippet(item["text"], 220),
        }
        for item in similar_records(
            store,
            alert["record_id"],
            topic_id=topic["topic_id"] if topic else None,
            aspects=negative,
            since=now - timedelta(days=_SIMILAR_DAYS),
        )
        if not item["alerts"] or any(can_see(owner, viewer) for owner in item["alerts"])
    ][:_SIMILAR_SHOWN]
    url = str(record.get("url") or payload.get("url") or "")
    zone = _zone(alert)
    history = [
        {
            "when": _when(event.at, zone),
            "actor": event.actor,
            "action": event.action,
            "note": event.note or "",
            "detail": dict(event.detail),
        }
        for event in triage_events(store, alert_id=alert["alert_id"])
        if event.action in HISTORY_ACTIONS
    ]
    flags = context.flags if context else None
    return {
        "alert": _row(alert, now),
        "payload": payload,
        "record": record,
        "text": text,
        "segments": _segments(text, sentiment.get("sentences") if sentiment else None),
        "sentiment": sentiment,
        "aspects": context.aspects if context else [],
        "topic": topic,
        "reasons": list(payload.get("reasons") or (flags or {}).get("reasons") or []),
        "summary": payload.get("summary") or "",
        "age": _span(now - created) if created else "",
        "created": _when(created, zone) if created else "",
        "stored": _when(ingested, zone) if ingested else "",
        "source_url": url if url.lower().startswith(("https://", "http://")) else "",
        "similar": similar,
        "history": history,
        "sent_at": _when(alert.get("sent_at"), zone),
        "acked_at": _when(alert.get("acked_at"), zone),
        "resolved_at": _when(alert.get("resolved_at"), zone),
        "resolution": alert.get("resolution") or "",
    }
