"""Per-recipient delivery rows (``alert_deliveries``) and the alert status derived from them.

Each alert has one row per recipient. An alert is ``sent`` only when every recipient was
accepted by the mail server, ``failed`` once a recipient failed for good and none is still open,
``sending`` while a delivery run holds a claim, and ``pending`` otherwise. The rows, the locks
taken to change them and the derived status live in ``pipelines.storage``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines._errors import DeliveryWarning
from pipelines.storage import (
    Store,
    alert_ids_of_records,
    describe_reply,
    ensure_deliveries,
    rearm_deliveries,
    retry_failed_deliveries,
    undelivered,
)

__all__ = [
    "DELIVERY_STATUSES",
    "DeliveryBacklog",
    "delivery_backlog",
    "describe_reply",
    "rearm_alerts",
    "retry_failed",
]

DELIVERY_STATUSES: tuple[str, ...] = ("pending", "sending", "sent", "failed")
_OPEN = ("pending", "sending")
_SHOWN = 20


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
    wanted = set(alert_ids) | set(alert_ids_of_records(store, record_ids))
    ensure_deliveries(store, moment, wanted)
    return rearm_deliveries(store, wanted, moment)


def retry_failed(store: Store, reference: str | None = None, now: datetime | None = None) -> int:
    """Try failed deliveries again (only those: recipients that accepted get nothing new).

    Args:
        store: The database.
        reference: An alert id or record id; every failed delivery when None.
        now: Time of the change; the current time when None.

    Returns:
        Deliveries re-armed.
    """
    return retry_failed_deliveries(store, reference, _utc(now or datetime.now(UTC)))


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
    rows = undelivered(store)
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
