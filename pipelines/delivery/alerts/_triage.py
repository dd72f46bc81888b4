"""Triage actions, shared by the web page and ``feedback alerts ack|resolve``: each changes the
alert and writes the audit log (who, when, what), so an alert's history is the same whichever
way a lead acted.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pipelines.delivery.alerts._queue import ack_alert, resolve_alert
from pipelines.storage import (
    Label,
    Store,
    TriageEvent,
    alert_ids_for,
    assign_alert,
    record_event,
    record_labels,
)

__all__ = [
    "TRIAGE_STATUSES",
    "acknowledge",
    "assign",
    "cli_actor",
    "correct_labels",
    "resolve",
    "triage_status",
]

TRIAGE_STATUSES: tuple[str, ...] = ("open", "acknowledged", "resolved")


def cli_actor() -> str:
    """Who acts from the command line: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def triage_status(alert: Mapping[str, Any]) -> str:
    """``resolved``, ``acknowledged`` or ``open``, from the alert's times."""
    if alert.get("resolved_at") is not None:
        return "resolved"
    if alert.get("acked_at") is not None:
        return "acknowledged"
    return "open"


def _moment(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def acknowledge(
    store: Store,
    reference: str,
    actor: str,
    *,
    note: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Acknowledge alerts (someone is on it) and audit it.

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        actor: Who acknowledged.
        note: Optional note kept in the history.
        now: When; now when None.

    Returns:
        The alert ids acknowledged (empty: unknown reference).
    """
    moment = _moment(now)
    ids = alert_ids_for(store, reference)
    for alert_id in ids:
        ack_alert(store, alert_id, now=moment)
        record_event(store, TriageEvent(actor, "ack", alert_id, None, note, at=moment))
    return ids


def resolve(
    store: Store,
    reference: str,
    actor: str,
    *,
    note: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Resolve alerts (acknowledging them if needed), keep the note, and audit it.

    Args:
        store: The database.
        reference: An alert id, or a record id (all its alerts).
        actor: Who resolved.
        note: What was done (kept with the alert and in the history).
        now: When; now when None.

    Returns:
        The alert ids resolved (empty: unknown reference).
    """
    moment = _moment(now)
    ids = alert_ids_for(store, reference)
    for alert_id in ids:
        resolve_alert(store, alert_id, now=moment, note=note)
        record_event(store, TriageEvent(actor, "resolve", alert_id, None, note, at=moment))
    return ids


def assign(
    store: Store,
    alert_id: str,
    assignee: str,
    actor: str,
    *,
    note: str | None = None,
    now: datetime | None = None,
) -> None:
    """Assign an alert to another lead (who then sees it) and audit it.

    Args:
        store: The database.
        alert_id: The alert.
        assignee: The lead's address (the caller checks it is a known lead).
        actor: Who assigned.
        note: Why, kept in the history.
        now: When; now when None.
    """
    moment = _moment(now)
    assign_alert(store, alert_id, assignee, actor, moment)
    record_event(
        store,
        TriageEvent(actor, "assign", alert_id, None, note, {"assignee": assignee}, at=moment),
    )


def correct_labels(
    store: Store,
    alert_id: str,
    record_id: str,
    actor: str,
    *,
    sentiment: str | None = None,
    aspects: Mapping[str, str] | None = None,
    not_complaint: bool = False,
    note: str | None = None,
    known_aspects: Sequence[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Store a lead's "wrong label" correction in ``labels`` (what training reads) and audit it.

    Args:
        store: The database.
        alert_id: The alert the correction was made from.
        record_id: The feedback record corrected.
        actor: Who corrected it.
        sentiment: The right sentiment, if the stored one is wrong.
        aspects: Aspect -> right polarity.
        not_complaint: The record is not a complaint (a wrong flag).
        note: The lead's note.
        known_aspects: Aspect names to accept (aspects.yaml).
        now: When; now when None.

    Returns:
        Labels written (1).

    Raises:
        LabelError: E090 for an invalid value; nothing written.
    """
    moment = _moment(now)
    label = Label(
        record_id=record_id,
        sentiment=sentiment,
        aspects=dict(aspects or {}),
        not_complaint=not_complaint,
        labelled_by=actor,
        note=note,
    )
    written = record_labels(store, [label], known_aspects=known_aspects, at=moment)
    detail = {
        "sentiment": sentiment,
        "aspects": dict(aspects or {}),
        "not_complaint": not_complaint,
    }
    record_event(store, TriageEvent(actor, "label", alert_id, record_id, note, detail, at=moment))
    return written
