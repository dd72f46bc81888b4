"""Alert mails a lead can use, received by a real aiosmtpd server: respond-by from when the
pipeline stored the feedback, old feedback in the digest, the lead's language and timezone,
signed links per recipient, and the compact digest."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.delivery.alerts import Mailer, deliver_pending, enqueue_alerts, list_alerts
from pipelines.delivery.links import LinkSigner
from pipelines.delivery.routing import RoutingConfig, load_routing
from pipelines.storage import Store
from tests._smtp import smtp_server

T0 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
SECRET = "mail-test-secret-" + "m" * 32
BASE = "https://triage.example.com"
ROUTING = """
default_sla_hours: {P1: 4, P2: 24, P3: 72}
max_alert_age_days: 7
routes:
  - name: turkish
    match: {languages: [tr]}
    to: [tr-lead@example.com]
    lang: tr
    timezone: Europe/Istanbul
  - name: persian
    match: {languages: [fa]}
    to: [fa-lead@example.com, fa-deputy@example.com]
    lang: fa
    timezone: Asia/Tehran
  - name: romanian
    match: {languages: [ro]}
    to: [ro-lead@example.com]
    lang: ro
    timezone: Europe/Bucharest
  - name: default
    to: [lead@example.com]
"""


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(envelope.content, policy=default_policy)  # type: ignore[misc]
            for envelope in self.envelopes
        ]


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    handler = Inbox()
    with smtp_server(handler, monkeypatch):
        yield handler


def routing_of(tmp_path: Path, text: str = ROUTING) -> RoutingConfig:
    folder = tmp_path / "config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routing.yaml").write_text(text, encoding="utf-8")
    return load_routing(folder)


def flagged(record_id: str, priority: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": record_id,
        "source": "app_reviews",
        "channel": "review",
        "created_at": T0 - timedelta(days=3),
        "ingested_at": T0 - timedelta(hours=2),
        "text": f"Order {record_id} arrived broken and support never answered.",
        "customer_id": f"cust-{record_id}",
        "customer_value": 830.5,
        "lang": "en",
        "flagged": True,
        "priority": priority,
        "reasons": ["negative 0.95"],
        "aspects": [{"aspect": "delivery_shipping", "polarity": "negative"}],
    }
    row.update(overrides)
    return row


def bodies(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()


def raw_subject(envelope: Any) -> str:
    """The Subject as a strict RFC 2047 decoder shows it."""
    parsed = email.message_from_bytes(envelope.content)
    return str(make_header(decode_header(parsed["Subject"])))


def test_respond_by_counts_from_storage_and_the_mail_shows_the_feedback_age(
    inbox: Inbox, store: Store, tmp_path: Path
) -> None:
    enqueue_alerts(pd.DataFrame([flagged("r1", "P1")]), store, routing_of(tmp_path), now=T0)
    (alert,) = list_alerts(store).to_dict(orient="records")
    assert pd.Timestamp(alert["respond_by"]) == pd.Timestamp(T0 + timedelta(hours=2))
    deliver_pending(store, Mailer.from_env(), now=T0 + timedelta(hours=1))
    (message,) = inbox.messages()
    text, _ = bodies(message)
    assert "Respond by: 2025-03-10 11:00 UTC (SLA 4 h)" in text
    assert "Feedback age: 3 days" in text
    assert "Customer id: cust-r1" in text and "Customer value: 830.5" in text


def test_feedback_older_than_max_alert_age_goes_to_the_digest_never_a_p1_mail(
    inbox: Inbox, store: Store, tmp_path: Path
) -> None:
    batch = pd.DataFrame(
        [
            flagged("old", "P1", created_at=T0 - timedelta(days=21)),
            flagged("new", "P1", created_at=T0 - timedelta(days=6)),
        ]
    )
    enqueue_alerts(batch, store, routing_of(tmp_path), now=T0)
    kinds = dict(zip(list_alerts(store)["record_id"], list_alerts(store)["kind"], strict=True))
    assert kinds == {"old": "digest", "new": "p1"}
    deliver_pending(store, Mailer.from_env(), now=T0)
    subjects = [message["Subject"] for message in inbox.messages()]
    assert sorted(subject.strip()[:8] for subject in subjects) == ["[Digest]", "[P1] app"]
    (digest,) = [m for m in inbox.messages() if m["Subject"].startswith("[Digest]")]
    text, _ = bodies(digest)
    assert "Order old arrived" in text and "P1 |" in text

    patient = routing_of(
        tmp_path / "patient", ROUTING.replace("max_alert_age_days: 7", "max_alert_age_days: 30")
    )
    with Store(tmp_path / "other.duckdb") as other:
        enqueue_alerts(batch, other, patient, now=T0)
        assert set(list_alerts(other)["kind"]) == {"p1"}


def test_mail_frame_speaks_the_leads_language_and_timezone(
    inbox: Inbox, store: Store, tmp_path: Path
) -> None:
    batch = pd.DataFrame(
        [
            flagged("t1", "P1", lang="tr", text="Sipariş iki hafta gecikti, bir daha almam."),
            flagged("f1", "P1", lang="fa", text="سفارشم دو هفته دیر رسید و کسی جواب نداد"),
            flagged("o1", "P1", lang="ro", text="Comanda a întârziat două săptămâni."),
        ]
    )
    enqueue_alerts(batch, store, routing_of(tmp_path), now=T0)
    deliver_pending(store, Mailer.from_env(), now=T0)
    by_to = {
        message["To"]: (message, envelope)
        for message, envelope in zip(inbox.messages(), inbox.envelopes, strict=True)
    }

    turkish, envelope = by_to["tr-lead@example.com"]
    text, html = bodies(turkish)
    assert "Son yanıt zamanı: 2025-03-10 14:00 +03 (SLA 4 sa)" in text
    assert "Müşteri no: cust-t1" in text and "Geri bildirimin yaşı: 3 gün" in text
    assert turkish["Content-Language"] == "tr" and 'dir="ltr"' in html
    assert raw_subject(envelope) == "[P1] app_reviews: Sipariş iki hafta gecikti, bir daha almam."

    persian, envelope = by_to["fa-lead@example.com"]
    text, html = bodies(persian)
    assert '<html lang="fa" dir="rtl">' in html and "مهلت پاسخ" in html
    assert "2025-03-10 14:30 +0330" in text and "شناسه مشتری: cust-f1" in text
    assert raw_subject(envelope) == "[P1] app_reviews: سفارشم دو هفته دیر رسید و کسی جواب نداد"

    romanian, envelope = by_to["ro-lead@example.com"]
    text, _ = bodies(romanian)
    assert "Răspuns până la: 2025-03-10 13:00 EET" in text and "ID client: cust-o1" in text
    assert raw_subject(envelope) == "[P1] app_reviews: Comanda a întârziat două săptămâni."


def test_each_recipient_gets_links_bound_to_them_and_the_alert(
    inbox: Inbox, store: Store, tmp_path: Path
) -> None:
    signer = LinkSigner(SECRET, BASE)
    enqueue_alerts(
        pd.DataFrame([flagged("f1", "P1", lang="fa")]), store, routing_of(tmp_path), now=T0
    )
    alert_id = list_alerts(store)["alert_id"].iloc[0]
    report = deliver_pending(store, Mailer.from_env(), now=T0, links=signer)
    assert (report.messages_sent, report.alerts_sent) == (2, 1)
    seen = {}
    for envelope, message in zip(inbox.envelopes, inbox.messages(), strict=True):
        (recipient,) = envelope.rcpt_tos
        text, html = bodies(message)
        links = re.findall(rf"{re.escape(BASE)}/l/(\S+)", text)
        assert len(links) == 3
        claims = [signer.verify(token, now=T0) for token in links]
        assert [(c.recipient, c.alert_id, c.action) for c in claims] == [
            (recipient, alert_id, action) for action in ("open", "ack", "resolve")
        ]
        assert claims[0].expires_at == T0 + timedelta(days=14)
        assert all(f'href="{BASE}/l/{token}"' in html for token in links)
        seen[recipient] = message["Message-ID"]
    assert set(seen) == {"fa-lead@example.com", "fa-deputy@example.com"}
    assert len(set(seen.values())) == 2


def test_digest_is_one_compact_sorted_table_of_at_most_50_rows(
    inbox: Inbox, store: Store, tmp_path: Path
) -> None:
    batch = [
        flagged(f"d{n:02d}", "P3", ingested_at=T0 - timedelta(minutes=n)) for n in range(50)
    ] + [flagged(f"u{n}", "P2", ingested_at=T0 - timedelta(hours=n)) for n in range(5)]
    enqueue_alerts(pd.DataFrame(batch), store, routing_of(tmp_path), now=T0)
    signer = LinkSigner(SECRET, BASE)
    deliver_pending(store, Mailer.from_env(), now=T0, links=signer)
    (digest,) = inbox.messages()
    assert digest["Subject"] == "[Digest] 55 flagged feedback record(s) (5 P2, 50 P3)"
    text, html = bodies(digest)
    rows = [line for line in text.splitlines() if line.startswith(("P2 |", "P3 |"))]
    assert len(rows) == 50
    assert [row[:2] for row in rows[:5]] == ["P2"] * 5
    assert rows[0].startswith("P2 | 2025-03-11 05:00 UTC"), "earliest respond-by first"
    assert "Order u4 arrived" in rows[0]
    assert "5 more in the inbox" in text
    inbox_link = re.search(rf"Open the full inbox: {re.escape(BASE)}/l/(\S+)", text)
    assert inbox_link and signer.verify(inbox_link.group(1), now=T0).action == "inbox"
    assert html.count("<tr>") == 51
    assert "delivery_shipping" in rows[0] and "cust-u4" in rows[0]
