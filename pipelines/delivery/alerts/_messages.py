"""Building alert mails (one P1 record, or a digest): identical whatever the transport.

Everything that comes from customers is untrusted: header values have CR/LF and other control
characters replaced before they reach a header, HTML parts escape every value, and free text is
shown in ``<div dir="auto">`` so Persian renders right-to-left. Every value comes from the
stored record, protected at ingest (``pipelines.ingest.privacy``): the text is the redacted
analysis text, the author a pseudonym (or a handle its source keeps in clear), and the customer
is reached through ``customer_id``, never a stored e-mail.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

__all__ = ["AlertContent", "build_digest_message", "build_p1_message", "header_safe"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SUBJECT_CHARS = 150
_SNIPPET_CHARS = 70
_MESSAGE_ID_DOMAIN = "feedback-pipeline.local"

AlertContent = Mapping[str, Any]
"""One alert row: ``alert_id``, ``record_id``, ``priority``, ``generation``, ``respond_by``,
``sla_hours``, ``recipients`` and ``payload`` (source, channel, platform, url, text, author,
customer_id, product, store, lang, created_at, reasons, summary)."""


def header_safe(value: Any, limit: int = _SUBJECT_CHARS) -> str:
    """A value made safe for a mail header: no CR/LF or control characters, bounded length.

    Args:
        value: Any value (customer name, product, text snippet...).
        limit: Maximum number of characters kept.

    Returns:
        One line of at most ``limit`` characters.
    """
    line = " ".join(_CONTROL.sub(" ", "" if value is None else str(value)).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M %Z}".strip()
    return _text(value)


def _details(alert: AlertContent) -> list[tuple[str, str]]:
    payload = alert["payload"]
    where = " / ".join(part for part in (payload.get("channel"), payload.get("platform")) if part)
    return [
        ("Priority", _text(alert["priority"])),
        ("Respond by", f"{_when(alert['respond_by'])} (SLA {alert['sla_hours']:g} h)"),
        ("Why flagged", _text(payload.get("summary"))),
        ("Record id", _text(alert["record_id"])),
        (
            "Source",
            f"{_text(payload.get('source'))} ({where})" if where else _text(payload.get("source")),
        ),
        ("URL", _text(payload.get("url"))),
        ("Customer id", _text(payload.get("customer_id"))),
        ("Author", _text(payload.get("author"))),
        ("Product", _text(payload.get("product"))),
        ("Store", _text(payload.get("store"))),
        ("Language", _text(payload.get("lang"))),
        ("Created", _text(payload.get("created_at"))),
        ("Alert id", _text(alert["alert_id"])),
    ]


def _plain_section(alert: AlertContent) -> str:
    lines = [f"{label}: {header_safe(value, 1000)}" for label, value in _details(alert) if value]
    lines += ["", "Feedback (PII redacted):", _text(alert["payload"].get("text")), ""]
    lines.append(
        f"Acknowledge: feedback alerts ack {alert['alert_id']}    "
        f"Resolve: feedback alerts resolve {alert['alert_id']}"
    )
    return "\n".join(lines)


def _html_value(label: str, value: str) -> str:
    if label == "URL" and value.lower().startswith(("http://", "https://")):
        escaped = html.escape(value, quote=True)
        return f'<a href="{escaped}" dir="auto">{escaped}</a>'
    return f'<span dir="auto">{html.escape(value)}</span>'


def _html_section(alert: AlertContent) -> str:
    rows = "".join(
        f'<tr><th align="left">{html.escape(label)}</th>'
        f"<td>{_html_value(label, header_safe(value, 1000))}</td></tr>"
        for label, value in _details(alert)
        if value
    )
    text = html.escape(_text(alert["payload"].get("text")))
    return (
        f"<table>{rows}</table>"
        "<p><b>Feedback (PII redacted):</b></p>"
        f'<div dir="auto" style="white-space: pre-wrap; border-left: 3px solid #c00; '
        f'padding-left: 8px">{text}</div>'
        f"<p><code>feedback alerts ack {html.escape(str(alert['alert_id']))}</code> &middot; "
        f"<code>feedback alerts resolve {html.escape(str(alert['alert_id']))}</code></p>"
    )


def _message(
    sender: str,
    recipients: Sequence[str],
    subject: str,
    message_id: str,
    now: datetime,
    plain: str,
    html_body: str,
    extra_headers: Mapping[str, str],
) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["From"] = header_safe(sender, 250)
    message["To"] = ", ".join(header_safe(address, 250) for address in recipients)
    message["Subject"] = header_safe(subject)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{header_safe(message_id, 200)}@{_MESSAGE_ID_DOMAIN}>"
    message["Auto-Submitted"] = "auto-generated"
    for name, value in extra_headers.items():
        message[name] = header_safe(value, 4000)
    message.set_content(plain)
    message.add_alternative(
        f'<!DOCTYPE html><html><body style="font-family: sans-serif">{html_body}</body></html>',
        subtype="html",
    )
    return message


def _message_id(alert: AlertContent) -> str:
    return f"alert-{alert['alert_id']}-{alert['generation']}"


def build_p1_message(alert: AlertContent, sender: str, now: datetime) -> EmailMessage:
    """The immediate mail for one P1 record.

    Args:
        alert: The alert row (see ``AlertContent``).
        sender: From address.
        now: Date of the mail.

    Returns:
        A multipart/alternative (text + HTML) message.
    """
    payload = alert["payload"]
    who = f" {payload['author']}" if payload.get("author") else ""
    subject = (
        f"[{alert['priority']}] {payload.get('source', '')}{who}: "
        f"{header_safe(payload.get('text'), _SNIPPET_CHARS)}"
    )
    heading = f"{alert['priority']} negative feedback: respond by {_when(alert['respond_by'])}"
    return _message(
        sender,
        alert["recipients"],
        subject,
        _message_id(alert),
        now,
        f"{heading}\n\n{_plain_section(alert)}\n",
        f"<h2>{html.escape(heading)}</h2>{_html_section(alert)}",
        {
            "X-Feedback-Alert-Id": str(alert["alert_id"]),
            "X-Feedback-Record-Id": str(alert["record_id"]),
            "X-Feedback-Priority": str(alert["priority"]),
        },
    )


def build_digest_message(
    alerts: Sequence[AlertContent], sender: str, now: datetime
) -> EmailMessage:
    """One digest mail for a lead, listing every P2/P3 record of this delivery.

    Args:
        alerts: Alert rows sharing the same recipients, most urgent first.
        sender: From address.
        now: Date of the mail.

    Returns:
        A multipart/alternative (text + HTML) message.
    """
    counts: dict[str, int] = {}
    for alert in alerts:
        counts[str(alert["priority"])] = counts.get(str(alert["priority"]), 0) + 1
    breakdown = ", ".join(f"{count} {priority}" for priority, count in sorted(counts.items()))
    subject = f"[Digest] {len(alerts)} flagged feedback record(s) ({breakdown})"
    separator = "\n\n" + "-" * 60 + "\n\n"
    plain = subject + separator + separator.join(_plain_section(alert) for alert in alerts) + "\n"
    html_body = f"<h2>{html.escape(subject)}</h2>" + "<hr>".join(
        _html_section(alert) for alert in alerts
    )
    first = alerts[0]
    return _message(
        sender,
        first["recipients"],
        subject,
        "digest-"
        + hashlib.sha256(" ".join(sorted(map(_message_id, alerts))).encode()).hexdigest()[:32],
        now,
        plain,
        html_body,
        {"X-Feedback-Alert-Ids": " ".join(str(alert["alert_id"]) for alert in alerts)},
    )
