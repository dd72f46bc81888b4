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
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.delivery.alerts._mailtext import RTL_LANGUAGES, age_text, mail_text
from pipelines.delivery.links import LinkSigner

__all__ = ["AlertContent", "build_digest_message", "build_p1_message", "header_safe"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SUBJECT_CHARS = 150
_SNIPPET_CHARS = 70
_DIGEST_ROWS = 50
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


def _frame(alert: AlertContent) -> tuple[str, ZoneInfo]:
    """The lead's language and timezone (``lang``/``timezone`` of the route, stored with it)."""
    frame = alert["payload"].get("frame") or {}
    lang = frame.get("lang") if frame.get("lang") in ("en", "tr", "ro", "fa") else "en"
    try:
        zone = ZoneInfo(str(frame.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return lang, zone


def _when(value: Any, zone: ZoneInfo) -> str:
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        return f"{moment.astimezone(zone):%Y-%m-%d %H:%M %Z}".strip()
    return _text(value)


def _isolated(text: str, lang: str) -> str:
    """Left-to-right text (times, ids) kept in order inside a right-to-left mail (LRI ... PDI)."""
    return f"\u2066{text}\u2069" if lang in RTL_LANGUAGES else text


def _parsed(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _age(alert: AlertContent, now: datetime, lang: str) -> str:
    created = _parsed(alert["payload"].get("created_at"))
    return "" if created is None else age_text(lang, (now - created).total_seconds())


def _details(alert: AlertContent, now: datetime) -> list[tuple[str, str, str]]:
    """(key, label, value) rows of one alert, labels in the lead's language."""
    payload = alert["payload"]
    lang, zone = _frame(alert)
    where = " / ".join(part for part in (payload.get("channel"), payload.get("platform")) if part)
    value = payload.get("customer_value")
    rows = [
        ("priority", _text(alert["priority"])),
        (
            "respond_by",
            f"{_isolated(_when(alert['respond_by'], zone), lang)} "
            f"({mail_text(lang, 'sla', hours=format(alert['sla_hours'], 'g'))})",
        ),
        ("why", _text(payload.get("summary"))),
        ("customer", _text(payload.get("customer_id"))),
        ("customer_value", "" if value is None else f"{value:g}"),
        ("age", _age(alert, now, lang)),
        ("record", _text(alert["record_id"])),
        (
            "source",
            f"{_text(payload.get('source'))} ({where})" if where else _text(payload.get("source")),
        ),
        ("url", _text(payload.get("url"))),
        ("author", _text(payload.get("author"))),
        ("product", _text(payload.get("product"))),
        ("store", _text(payload.get("store"))),
        ("language", _text(payload.get("lang"))),
        ("created", _text(payload.get("created_at"))),
        ("alert", _text(alert["alert_id"])),
    ]
    return [(key, mail_text(lang, key), text) for key, text in rows if text]


def _links(alert: AlertContent, links: LinkSigner | None, now: datetime) -> dict[str, str]:
    """Signed Open/Acknowledge/Resolve links for the alert's one recipient (none without a
    signer, or for a mail to several recipients: a link is bound to one lead)."""
    recipients = list(alert["recipients"])
    if links is None or len(recipients) != 1:
        return {}
    return {
        action: links.url(recipients[0], str(alert["alert_id"]), action, now)
        for action in ("open", "ack", "resolve")
    }


def _plain_section(alert: AlertContent, now: datetime, links: LinkSigner | None) -> str:
    lang, _ = _frame(alert)
    lines = [f"{label}: {header_safe(value, 1000)}" for _, label, value in _details(alert, now)]
    if alert["payload"].get("stale"):
        lines.append(mail_text(lang, "stale", days=_max_age(alert)))
    lines += ["", f"{mail_text(lang, 'feedback')}:", _text(alert["payload"].get("text")), ""]
    for action, url in _links(alert, links, now).items():
        lines.append(f"{mail_text(lang, action)}: {url}")
    lines.append(
        f"{mail_text(lang, 'terminal')}: feedback alerts ack {alert['alert_id']}    "
        f"feedback alerts resolve {alert['alert_id']}"
    )
    return "\n".join(lines)


def _max_age(alert: AlertContent) -> float:
    return float(alert["payload"].get("max_alert_age_days") or 7)


def _html_value(key: str, value: str) -> str:
    if key == "url" and value.lower().startswith(("http://", "https://")):
        escaped = html.escape(value, quote=True)
        return f'<a href="{escaped}" dir="auto">{escaped}</a>'
    return f'<span dir="auto">{html.escape(value)}</span>'


def _button(url: str, label: str, colour: str) -> str:
    return (
        f'<a href="{html.escape(url, quote=True)}" style="display: inline-block; '
        f"padding: 8px 14px; margin: 4px; background: {colour}; color: #fff; "
        f'text-decoration: none; border-radius: 4px">{html.escape(label)}</a>'
    )


def _html_section(alert: AlertContent, now: datetime, links: LinkSigner | None) -> str:
    lang, _ = _frame(alert)
    align = "right" if lang in RTL_LANGUAGES else "left"
    rows = "".join(
        f'<tr><th align="{align}" style="padding-inline-end: 12px">{html.escape(label)}</th>'
        f"<td>{_html_value(key, header_safe(value, 1000))}</td></tr>"
        for key, label, value in _details(alert, now)
    )
    stale = (
        f"<p><i>{html.escape(mail_text(lang, 'stale', days=_max_age(alert)))}</i></p>"
        if alert["payload"].get("stale")
        else ""
    )
    text = html.escape(_text(alert["payload"].get("text")))
    colours = {"open": "#1f5fbf", "ack": "#8a6d00", "resolve": "#2e7d32"}
    buttons = "".join(
        _button(url, mail_text(lang, action), colours[action])
        for action, url in _links(alert, links, now).items()
    )
    alert_id = html.escape(str(alert["alert_id"]))
    return (
        f"<table>{rows}</table>{stale}"
        f"<p><b>{html.escape(mail_text(lang, 'feedback'))}:</b></p>"
        f'<div dir="auto" style="white-space: pre-wrap; border-inline-start: 3px solid #c00; '
        f'padding-inline-start: 8px">{text}</div>'
        + (f"<p>{buttons}</p>" if buttons else "")
        + f"<p>{html.escape(mail_text(lang, 'terminal'))}: "
        f"<code>feedback alerts ack {alert_id}</code> &middot; "
        f"<code>feedback alerts resolve {alert_id}</code></p>"
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
    lang: str,
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
    direction = "rtl" if lang in RTL_LANGUAGES else "ltr"
    message.add_alternative(
        f'<!DOCTYPE html><html lang="{lang}" dir="{direction}">'
        f'<body dir="{direction}" style="font-family: sans-serif">{html_body}</body></html>',
        subtype="html",
    )
    message["Content-Language"] = lang
    return message


def _message_id(alert: AlertContent) -> str:
    recipients = ",".join(sorted(alert["recipients"]))
    return (
        f"alert-{alert['alert_id']}-{alert['generation']}-"
        + hashlib.sha256(recipients.encode()).hexdigest()[:8]
    )


def build_p1_message(
    alert: AlertContent, sender: str, now: datetime, links: LinkSigner | None = None
) -> EmailMessage:
    """The immediate mail for one P1 record, framed in the lead's language and timezone.

    Args:
        alert: The alert row (see ``AlertContent``).
        sender: From address.
        now: Date of the mail.
        links: Signs the Open/Acknowledge/Resolve links; no links when None.

    Returns:
        A multipart/alternative (text + HTML) message.
    """
    payload = alert["payload"]
    lang, zone = _frame(alert)
    who = f" {payload['author']}" if payload.get("author") else ""
    subject = (
        f"[{alert['priority']}] {payload.get('source', '')}{who}: "
        f"{header_safe(payload.get('text'), _SNIPPET_CHARS)}"
    )
    heading = mail_text(
        lang,
        "p1_heading",
        priority=alert["priority"],
        when=_isolated(_when(alert["respond_by"], zone), lang),
    )
    return _message(
        sender,
        alert["recipients"],
        subject,
        _message_id(alert),
        now,
        f"{heading}\n\n{_plain_section(alert, now, links)}\n",
        f"<h2>{html.escape(heading)}</h2>{_html_section(alert, now, links)}",
        {
            "X-Feedback-Alert-Id": str(alert["alert_id"]),
            "X-Feedback-Record-Id": str(alert["record_id"]),
            "X-Feedback-Priority": str(alert["priority"]),
        },
        lang,
    )


def _digest_row(
    alert: AlertContent, now: datetime, links: LinkSigner | None
) -> tuple[str, str, str, str, str, str, str]:
    payload = alert["payload"]
    _, zone = _frame(alert)
    return (
        str(alert["priority"]),
        _when(alert["respond_by"], zone),
        _text(payload.get("lang")),
        ", ".join(payload.get("aspects") or []),
        _text(payload.get("customer_id")),
        header_safe(payload.get("text"), _SNIPPET_CHARS),
        _links(alert, links, now).get("open", ""),
    )


def build_digest_message(
    alerts: Sequence[AlertContent], sender: str, now: datetime, links: LinkSigner | None = None
) -> EmailMessage:
    """One digest mail for a lead: one compact table row per P2/P3 (or stale) record.

    Rows (priority, respond-by, language, aspect, customer id, one-line snippet, link) come in
    the order given (most urgent first); at most 50, then a link to the full inbox.

    Args:
        alerts: Alert rows sharing the same recipients, most urgent first.
        sender: From address.
        now: Date of the mail.
        links: Signs each row's Open link and the inbox link; none when None.

    Returns:
        A multipart/alternative (text + HTML) message.
    """
    first = alerts[0]
    lang, _ = _frame(first)
    counts: dict[str, int] = {}
    for alert in alerts:
        counts[str(alert["priority"])] = counts.get(str(alert["priority"]), 0) + 1
    breakdown = ", ".join(f"{count} {priority}" for priority, count in sorted(counts.items()))
    subject = mail_text(lang, "digest_subject", count=len(alerts), breakdown=breakdown)
    shown = [_digest_row(alert, now, links) for alert in alerts[:_DIGEST_ROWS]]
    headers = [
        mail_text(lang, key)
        for key in ("priority", "respond_by", "language", "aspect", "customer", "snippet", "link")
    ]
    recipients = list(first["recipients"])
    inbox = links.inbox_url(recipients[0], now) if links and len(recipients) == 1 else ""
    hidden = len(alerts) - len(shown)
    footer = [mail_text(lang, "more", count=hidden)] if hidden else []
    footer += [f"{mail_text(lang, 'inbox')}: {inbox}"] if inbox else []
    plain = "\n".join(
        [subject, "", " | ".join(headers)]
        + [" | ".join(row) for row in shown]
        + [""]
        + footer
        + [f"{mail_text(lang, 'terminal')}: feedback alerts list"]
    )
    align = "right" if lang in RTL_LANGUAGES else "left"
    head = "".join(
        f'<th align="{align}" style="padding: 4px 8px; border-bottom: 1px solid #999">'
        f"{html.escape(label)}</th>"
        for label in headers
    )
    body_rows = "".join(
        "<tr>"
        + "".join(
            f'<td style="padding: 3px 8px; border-bottom: 1px solid #ddd" dir="auto">'
            f"{html.escape(cell)}</td>"
            for cell in row[:-1]
        )
        + (
            f'<td style="padding: 3px 8px; border-bottom: 1px solid #ddd"><a href="'
            f'{html.escape(row[-1], quote=True)}">{html.escape(mail_text(lang, "open"))}</a></td>'
            if row[-1]
            else '<td style="padding: 3px 8px; border-bottom: 1px solid #ddd">'
            f"<code>{html.escape(str(alert['alert_id']))}</code></td>"
        )
        + "</tr>"
        for row, alert in zip(shown, alerts, strict=False)
    )
    more = f"<p>{html.escape(footer[0])}</p>" if hidden else ""
    inbox_html = (
        f"<p>{_button(inbox, mail_text(lang, 'inbox'), '#1f5fbf')}</p>"
        if inbox
        else f"<p>{html.escape(mail_text(lang, 'no_links'))}</p>"
    )
    html_body = (
        f"<h2>{html.escape(subject)}</h2>"
        f'<table style="border-collapse: collapse; font-size: 14px">'
        f"<tr>{head}</tr>{body_rows}</table>{more}{inbox_html}"
    )
    return _message(
        sender,
        recipients,
        subject,
        "digest-"
        + hashlib.sha256(
            " ".join([*sorted(map(_message_id, alerts)), *sorted(recipients)]).encode()
        ).hexdigest()[:32],
        now,
        plain + "\n",
        html_body,
        {"X-Feedback-Alert-Ids": " ".join(str(alert["alert_id"]) for alert in alerts)},
        lang,
    )
