"""Mailing due alert deliveries: claims, per-recipient outcomes, retries with backoff.

A delivery (one alert, one recipient) goes ``pending`` -> ``sending`` (claimed by one delivery
run) -> ``sent`` when the server accepted that recipient. A recipient the server refuses, or
every recipient when the server cannot be reached, goes back to ``pending`` with the SMTP reply,
``attempts`` and an exponential-backoff ``next_attempt_at``, or to ``failed`` at
``DeliveryPolicy.max_attempts``; only those recipients are mailed again. A claim is a
conditional ``UPDATE ... WHERE status = 'pending' ... RETURNING`` taken with the alert rows
locked, so concurrent delivery runs (nightly, watch, rerun; several processes on PostgreSQL)
never mail the same recipient the same alert twice. A run that dies between sending and
recording leaves the delivery ``sending``; after ``claim_timeout_s`` it is tried again (the
receiver can de-duplicate on the stable ``Message-ID``). The claims and outcomes are written by
``pipelines.storage`` (``claim_deliveries``, ``settle_deliveries``).
"""

from __future__ import annotations

import smtplib
import uuid
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from pipelines.analysis.flagging import PRIORITIES
from pipelines.delivery.alerts._ledger import _utc
from pipelines.delivery.alerts._mailer import Mailer
from pipelines.delivery.alerts._messages import build_digest_message, build_p1_message
from pipelines.delivery.links import LinkSigner
from pipelines.storage import (
    DeliveryOutcome,
    Store,
    alert_statuses,
    claim_deliveries,
    describe_reply,
    ensure_deliveries,
    pending_deliveries,
    release_stale_claims,
    settle_deliveries,
)

__all__ = ["ALERT_KINDS", "DeliveryPolicy", "DeliveryReport", "deliver_pending"]

ALERT_KINDS: tuple[str, ...] = ("p1", "digest")
_MESSAGE_LEVEL_ERRORS = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPDataError,
)
_REPLY_CHARS = 1000

Reply = tuple[int | None, str]


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry behaviour of ``deliver_pending`` (``delivery:`` in routing.yaml).

    Attributes:
        max_attempts: Failed tries after which a recipient's delivery becomes ``failed``.
        backoff_base_s: Wait after the first failure; doubles with each further failure.
        backoff_max_s: Upper bound of the wait.
        claim_timeout_s: A delivery left ``sending`` this long (crashed run) is retried.
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
        messages_sent: Mails the server accepted for at least one recipient.
        alerts_sent: Alerts tried in this call that every recipient has now received.
        alerts_retrying: Alerts tried in this call with a recipient waiting for another try.
        alerts_failed: Alerts tried in this call with a recipient that failed for good.
        alerts_waiting: Alerts with a delivery not yet due (backing off).
        deliveries_sent: Recipients that accepted an alert in this call.
        deliveries_retrying: Recipients refused (or not reached) that will be tried again.
        deliveries_failed: Recipients that reached ``max_attempts`` in this call.
        unreachable: The connection error when the server could not be reached (or the
            connection was lost), else None.
        errors: Distinct replies and errors met (``recipient: 550 ...``).
    """

    transport: str
    messages_sent: int = 0
    alerts_sent: int = 0
    alerts_retrying: int = 0
    alerts_failed: int = 0
    alerts_waiting: int = 0
    deliveries_sent: int = 0
    deliveries_retrying: int = 0
    deliveries_failed: int = 0
    unreachable: str | None = None
    errors: list[str] = field(default_factory=list)


def _due(
    store: Store, moment: datetime, kinds: Collection[str] | None
) -> tuple[list[dict[str, Any]], int]:
    """Pending deliveries due now, with their alert's content; and alerts backing off."""
    pending = pending_deliveries(store, kinds)
    due, waiting = [], set()
    for item in pending:
        item["respond_by"] = _utc(item["respond_by"])
        if item["next_attempt_at"] is None or _utc(item["next_attempt_at"]) <= moment:
            due.append(item)
        else:
            waiting.add(item["alert_id"])
    return due, len(waiting)


def _group(due: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A P1 alert is one mail per due recipient (its links are bound to that lead); other
    alerts one digest per recipient."""
    ordered = sorted(
        due,
        key=lambda item: (
            PRIORITIES.index(item["priority"]),
            item["respond_by"],
            item["alert_id"],
            item["recipient"],
        ),
    )
    p1: dict[str, list[dict[str, Any]]] = {}
    digests: dict[str, list[dict[str, Any]]] = {}
    for item in ordered:
        if item["kind"] == "p1":
            p1.setdefault(f"{item['alert_id']}\x1f{item['recipient']}", []).append(item)
        else:
            digests.setdefault(item["recipient"], []).append(item)
    return list(p1.values()) + list(digests.values())


def _claim(
    store: Store, group: Sequence[Mapping[str, Any]], moment: datetime, token: str
) -> list[dict[str, Any]]:
    """Claim the group's deliveries still pending and due; returns those claimed."""
    claimed = claim_deliveries(
        store,
        {item["alert_id"] for item in group},
        {item["recipient"] for item in group},
        moment,
        token,
    )
    attempts = {(row.alert_id, row.recipient): row.attempts for row in claimed}
    return [
        {**item, "attempts": attempts[(item["alert_id"], item["recipient"])]}
        for item in group
        if (item["alert_id"], item["recipient"]) in attempts
    ]


def _message(
    claimed: Sequence[Mapping[str, Any]],
    sender: str,
    moment: datetime,
    links: LinkSigner | None,
) -> tuple[EmailMessage, list[str]]:
    """The mail of a claimed group and its envelope recipients."""
    recipients = list(dict.fromkeys(item["recipient"] for item in claimed))
    alerts = [{**item, "recipients": recipients} for item in claimed]
    if alerts[0]["kind"] == "p1":
        return build_p1_message(alerts[0], sender, moment, links), recipients
    return build_digest_message(alerts, sender, moment, links), recipients


def _replies(error: BaseException, recipients: Sequence[str]) -> dict[str, Reply]:
    """Per recipient, the reply (or connection error) that kept the mail from them."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return {
            str(address): (code, reply.decode("utf-8", "replace"))
            for address, (code, reply) in error.recipients.items()
        }
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        return dict.fromkeys(recipients, (error.smtp_code, decoded))
    return dict.fromkeys(recipients, (None, f"{type(error).__name__}: {error}"))


def _settle(
    store: Store,
    claimed: Sequence[Mapping[str, Any]],
    refused: Mapping[str, Reply],
    message_id: str | None,
    moment: datetime,
    token: str,
    policy: DeliveryPolicy,
    report: DeliveryReport,
) -> None:
    """Record each claimed delivery as sent, or refused: retry later or failed for good."""
    outcomes = []
    for item in claimed:
        attempts = int(item["attempts"]) + 1
        reply = refused.get(item["recipient"])
        if reply is None:
            outcomes.append(
                DeliveryOutcome(
                    item["alert_id"],
                    item["recipient"],
                    "sent",
                    attempts,
                    sent_at=moment,
                    message_id=message_id,
                )
            )
            continue
        gave_up = attempts >= policy.max_attempts
        outcomes.append(
            DeliveryOutcome(
                item["alert_id"],
                item["recipient"],
                "failed" if gave_up else "pending",
                attempts,
                last_code=reply[0],
                last_reply=reply[1][:_REPLY_CHARS],
                next_attempt_at=None if gave_up else moment + policy.backoff(attempts),
            )
        )
        error = f"{item['recipient']}: {describe_reply(*reply)}"
        if error not in report.errors:
            report.errors.append(error)
    for outcome in settle_deliveries(store, outcomes, moment, token):
        report.deliveries_sent += outcome.status == "sent"
        report.deliveries_retrying += outcome.status == "pending"
        report.deliveries_failed += outcome.status == "failed"


def _release_stale_claims(store: Store, moment: datetime, policy: DeliveryPolicy) -> None:
    """Deliveries a crashed run left ``sending`` past the claim timeout become pending again."""
    release_stale_claims(store, moment - timedelta(seconds=policy.claim_timeout_s), moment)


def _count_alerts(store: Store, alert_ids: set[str], report: DeliveryReport) -> None:
    for status in alert_statuses(store, alert_ids):
        report.alerts_sent += status == "sent"
        report.alerts_failed += status == "failed"
        report.alerts_retrying += status in ("pending", "sending")


def deliver_pending(
    store: Store,
    mailer: Mailer,
    now: datetime | None = None,
    policy: DeliveryPolicy | None = None,
    kinds: Collection[str] | None = None,
    links: LinkSigner | None = None,
) -> DeliveryReport:
    """Send every due delivery: P1 one mail per alert and recipient, P2/P3 one digest per
    recipient.

    Safe to call as often as wanted, from several processes at once: a recipient gets an alert
    once unless it is re-armed. A recipient the server refuses is retried alone with backoff;
    when the server is unreachable nothing is lost, every due delivery waits with a backoff and
    ``report.unreachable`` says why.

    Args:
        store: The database.
        mailer: SMTP or outbox mailer.
        now: The current time (tests pass a later time to skip the backoff).
        policy: Retry policy; ``DeliveryPolicy()`` when None.
        kinds: Only alerts of these kinds (``ALERT_KINDS``), e.g. ``["p1"]`` in the watch loop
            so digests wait for the nightly run; every kind when None.
        links: Signs the triage page links of each mail (``LinkSigner.from_env()``); mails
            carry no links when None.

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
    ensure_deliveries(store, moment)
    _release_stale_claims(store, moment, rules)
    due, report.alerts_waiting = _due(store, moment, kinds)
    remaining = deque(_group(due))
    token = uuid.uuid4().hex
    tried: set[str] = set()
    try:
        if remaining:
            with mailer.connect() as send:
                while remaining:
                    claimed = _claim(store, remaining.popleft(), moment, token)
                    if not claimed:
                        continue
                    tried.update(item["alert_id"] for item in claimed)
                    message, recipients = _message(claimed, mailer.sender, moment, links)
                    message_id = str(message["Message-ID"])
                    try:
                        refused = send(message, recipients)
                    except (OSError, smtplib.SMTPException) as error:
                        replies = _replies(error, recipients)
                        _settle(store, claimed, replies, None, moment, token, rules, report)
                        if isinstance(error, _MESSAGE_LEVEL_ERRORS):
                            continue
                        raise
                    _settle(store, claimed, refused, message_id, moment, token, rules, report)
                    report.messages_sent += 1
    except (OSError, smtplib.SMTPException) as error:
        report.unreachable = f"{type(error).__name__}: {error}"[:_REPLY_CHARS]
        while remaining:
            claimed = _claim(store, remaining.popleft(), moment, token)
            if claimed:
                tried.update(item["alert_id"] for item in claimed)
                replies = _replies(error, [item["recipient"] for item in claimed])
                _settle(store, claimed, replies, None, moment, token, rules, report)
    if tried:
        _count_alerts(store, tried, report)
    return report
