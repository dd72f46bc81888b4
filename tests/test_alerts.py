"""Alert delivery over a real aiosmtpd server on 127.0.0.1, the outbox, and the resolution loop."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from typer.testing import CliRunner

from flows.cli import app
from pipelines.delivery.alerts import (
    DeliveryPolicy,
    Mailer,
    ack_alert,
    deliver_pending,
    enqueue_alerts,
    list_alerts,
    resolve_alert,
    response_times,
)
from pipelines.delivery.routing import RoutingConfig, load_routing
from pipelines.storage import Store, schema

T0 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)

ROUTING = """
default_sla_hours: {P1: 4, P2: 24, P3: 72}
routes:
  - name: persian
    match: {languages: [fa]}
    to: [fa-lead@example.com]
  - name: default
    to: [lead@example.com]
"""


class Inbox:
    """aiosmtpd handler keeping every accepted envelope."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(envelope.content, policy=default_policy)  # type: ignore[misc]
            for envelope in self.envelopes
        ]


class SmtpServer:
    """A real SMTP server on a fixed free loopback port that tests can start and stop."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.inbox = Inbox()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def mailer(self) -> Mailer:
        return Mailer.from_env(
            environ={
                "FEEDBACK_SMTP_HOST": "127.0.0.1",
                "FEEDBACK_SMTP_PORT": str(self.port),
                "FEEDBACK_SMTP_SECURITY": "none",
                "FEEDBACK_SMTP_FROM": "alerts@example.com",
            }
        )


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_down() -> Iterator[SmtpServer]:
    server = SmtpServer()
    yield server
    server.stop()


@pytest.fixture
def routing(tmp_path: Path) -> RoutingConfig:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    return load_routing(folder)


def flagged(record_id: str, priority: str | None, **overrides: Any) -> dict[str, Any]:
    """One row of a flagged batch (feedback columns + flag columns)."""
    row: dict[str, Any] = {
        "id": record_id,
        "source": "shop_reviews",
        "channel": "review",
        "created_at": T0 - timedelta(hours=2),
        "text": f"Order {record_id} arrived broken and support never answered.",
        "rating": 1,
        "nps": None,
        "customer_id": "cust-1",
        "customer_value": None,
        "author": "Ayse Y.",
        "author_followers": None,
        "platform": None,
        "url": f"https://shop.example.com/reviews/{record_id}",
        "product": "Kettle K2",
        "store": None,
        "lang": "en",
        "sentiment": "negative",
        "flagged": priority is not None,
        "priority": priority,
        "reasons": ["negative 0.95", "rating 1/5"] if priority else [],
        "churn_intent": False,
    }
    row.update(overrides)
    return row


def parts(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()


def test_p1_mail_arrives_with_headers_escaped_html_and_rtl_persian(
    smtp: SmtpServer, store: Store, routing: RoutingConfig
) -> None:
    batch = pd.DataFrame(
        [
            flagged(
                "r-en",
                "P1",
                channel="social",
                platform="twitter",
                text="Worst service <script>alert('x')</script> & I'm switching to Acme",
                reasons=['churn intent ("switching to acme")', "negative 0.97", "12k followers"],
            ),
            flagged("r-fa", "P1", lang="fa", text="دیگه ازتون خرید نمی‌کنم، غذا سرد بود"),
            flagged("r-ok", None),
        ]
    )
    assert enqueue_alerts(batch, store, routing, now=T0) == 2
    report = deliver_pending(store, smtp.mailer(), now=T0)
    assert (report.messages_sent, report.alerts_sent, report.errors) == (2, 2, [])

    by_recipient = {tuple(envelope.rcpt_tos): envelope for envelope in smtp.inbox.envelopes}
    assert set(by_recipient) == {("lead@example.com",), ("fa-lead@example.com",)}
    assert all(envelope.mail_from == "alerts@example.com" for envelope in by_recipient.values())

    english, persian = sorted(
        smtp.inbox.messages, key=lambda message: message["To"] != "lead@example.com"
    )
    assert english["From"] == "alerts@example.com"
    assert english["To"] == "lead@example.com"
    assert english["Subject"].startswith("[P1] shop_reviews Ayse Y.: Worst service")
    assert english["X-Feedback-Record-Id"] == "r-en"
    assert english["X-Feedback-Priority"] == "P1"
    assert english["Message-ID"].startswith("<alert-")
    text, html = parts(english)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; I&#x27;m switching" in html
    assert "<script>alert('x')</script>" in text
    for expected in (
        "r-en",
        "shop_reviews",
        "https://shop.example.com/reviews/r-en",
        "12k followers",
        "Respond by: 2025-03-10 13:00 UTC (SLA 4 h)",
    ):
        assert expected in text
    assert "P1: churn intent" in html and "https://shop.example.com/reviews/r-en" in html

    assert persian["To"] == "fa-lead@example.com"
    assert "دیگه ازتون خرید" in persian["Subject"]
    text, html = parts(persian)
    assert '<div dir="auto"' in html
    assert "دیگه ازتون خرید نمی\u200cکنم، غذا سرد بود" in html
    assert "دیگه ازتون خرید نمی\u200cکنم" in text


def test_p2_p3_are_grouped_in_one_digest_per_lead(
    smtp: SmtpServer, store: Store, routing: RoutingConfig
) -> None:
    batch = pd.DataFrame(
        [
            flagged("a1", "P2"),
            flagged("a2", "P3"),
            flagged("a3", "P3", lang="fa", text="بسته دیر رسید"),
            flagged("a4", "P1"),
        ]
    )
    assert enqueue_alerts(batch, store, routing, now=T0) == 4
    report = deliver_pending(store, smtp.mailer(), now=T0)
    assert (report.messages_sent, report.alerts_sent) == (3, 4)
    subjects = {message["Subject"]: message for message in smtp.inbox.messages}
    digest = subjects["[Digest] 2 flagged feedback record(s) (1 P2, 1 P3)"]
    assert digest["To"] == "lead@example.com"
    text, html = parts(digest)
    assert "Priority | Respond by | Language | Aspect | Customer id | Feedback | Link" in text
    assert text.index("Order a1 arrived") < text.index("Order a2 arrived")
    assert "Order a4" not in text
    assert html.count("<tr>") == 3, "one header row and one compact row per record"
    persian_digest = subjects["[Digest] 1 flagged feedback record(s) (1 P3)"]
    assert persian_digest["To"] == "fa-lead@example.com"
    assert sum(subject.startswith("[P1]") for subject in subjects) == 1


def test_smtp_outage_loses_nothing_and_sends_nothing_twice(
    smtp_down: SmtpServer, store: Store, routing: RoutingConfig
) -> None:
    batch = pd.DataFrame([flagged("o1", "P1"), flagged("o2", "P2"), flagged("o3", "P3")])
    enqueue_alerts(batch, store, routing, now=T0)
    mailer = smtp_down.mailer()

    down = deliver_pending(store, mailer, now=T0)
    assert (down.messages_sent, down.alerts_retrying, down.alerts_failed) == (0, 3, 0)
    assert "ConnectionRefusedError" in down.errors[0]
    pending = list_alerts(store, status="pending")
    assert len(pending) == 3
    assert pending["attempts"].tolist() == [1, 1, 1]
    assert pending["last_error"].str.contains("Connection").all()

    smtp_down.start()
    backing_off = deliver_pending(store, mailer, now=T0 + timedelta(seconds=5))
    assert (backing_off.messages_sent, backing_off.alerts_waiting) == (0, 3)

    later = T0 + timedelta(minutes=2)
    recovered = deliver_pending(store, mailer, now=later)
    assert (recovered.messages_sent, recovered.alerts_sent) == (2, 3)
    again = deliver_pending(store, mailer, now=later + timedelta(hours=1))
    assert again.messages_sent == 0
    assert len(smtp_down.inbox.envelopes) == 2
    sent = list_alerts(store, status="sent")
    assert len(sent) == 3
    assert sent["attempts"].tolist() == [2, 2, 2]
    assert sent["last_error"].isna().all()


def test_alert_fails_after_max_attempts_and_resend_rearms_it(
    smtp_down: SmtpServer, store: Store, routing: RoutingConfig
) -> None:
    enqueue_alerts(pd.DataFrame([flagged("f1", "P1")]), store, routing, now=T0)
    policy = DeliveryPolicy(max_attempts=2, backoff_base_s=10)
    mailer = smtp_down.mailer()
    assert deliver_pending(store, mailer, T0, policy).alerts_retrying == 1
    assert deliver_pending(store, mailer, T0 + timedelta(seconds=11), policy).alerts_failed == 1
    assert list_alerts(store)["status"].tolist() == ["failed"]

    smtp_down.start()
    assert deliver_pending(store, mailer, T0 + timedelta(hours=1), policy).messages_sent == 0
    assert enqueue_alerts(pd.DataFrame([flagged("f1", "P1")]), store, routing, resend=True) == 1
    assert deliver_pending(store, mailer, T0 + timedelta(hours=1), policy).messages_sent == 1
    assert len(smtp_down.inbox.envelopes) == 1


def test_header_injection_in_customer_fields_is_neutralised(
    smtp: SmtpServer, store: Store, routing: RoutingConfig
) -> None:
    batch = pd.DataFrame(
        [
            flagged(
                "inj",
                "P1",
                author="Eve\r\nBcc: victim@example.com",
                product="Kettle\nX-Injected: yes",
                text="broken\r\nSubject: hacked\r\n\r\nfake body",
            )
        ]
    )
    enqueue_alerts(batch, store, routing, now=T0)
    deliver_pending(store, smtp.mailer(), now=T0)
    (envelope,) = smtp.inbox.envelopes
    assert envelope.rcpt_tos == ["lead@example.com"]
    (message,) = smtp.inbox.messages
    assert message["Bcc"] is None
    assert message["X-Injected"] is None
    assert len(message.get_all("Subject")) == 1
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert (
        message["Subject"]
        == "[P1] shop_reviews Eve Bcc: victim@example.com: broken Subject: hacked fake body"
    )
    raw_headers = envelope.content.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in raw_headers and b"\r\nX-Injected:" not in raw_headers
    text, _ = parts(message)
    assert "Author: Eve Bcc: victim@example.com" in text


def test_rerun_sends_nothing_new_and_resend_sends_again(
    smtp: SmtpServer, store: Store, routing: RoutingConfig
) -> None:
    batch = pd.DataFrame([flagged("x1", "P1"), flagged("x2", "P2")])
    mailer = smtp.mailer()
    assert enqueue_alerts(batch, store, routing, now=T0) == 2
    assert deliver_pending(store, mailer, now=T0).messages_sent == 2

    assert enqueue_alerts(batch, store, routing, now=T0 + timedelta(hours=1)) == 0
    assert deliver_pending(store, mailer, now=T0 + timedelta(hours=1)).messages_sent == 0
    assert len(smtp.inbox.envelopes) == 2

    assert enqueue_alerts(batch, store, routing, resend=True, now=T0 + timedelta(hours=2)) == 2
    resent = deliver_pending(store, mailer, now=T0 + timedelta(hours=2))
    assert (resent.messages_sent, resent.alerts_sent) == (2, 2)
    assert len(smtp.inbox.envelopes) == 4
    message_ids = [message["Message-ID"] for message in smtp.inbox.messages]
    assert len(set(message_ids)) == 4
    assert store.count(schema.alerts) == 2


def test_outbox_gets_the_same_mail_as_smtp_when_no_server_is_configured(
    smtp: SmtpServer, store: Store, routing: RoutingConfig, tmp_path: Path
) -> None:
    batch = pd.DataFrame([flagged("e1", "P1", text="<b>bold</b> claim"), flagged("e2", "P3")])
    outbox = tmp_path / "outbox"
    mailer = Mailer.from_env(outbox_dir=outbox, environ={})
    assert mailer.describe() == f"outbox folder {outbox}"
    enqueue_alerts(batch, store, routing, now=T0)
    report = deliver_pending(store, mailer, now=T0)
    assert report.messages_sent == 2
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 2
    from_files = {
        message["Subject"]: message
        for message in (
            email.message_from_bytes(path.read_bytes(), policy=default_policy) for path in files
        )
    }

    with Store(tmp_path / "other.duckdb") as other:
        enqueue_alerts(batch, other, routing, now=T0)
        deliver_pending(other, smtp.mailer(), now=T0)
    for over_smtp in smtp.inbox.messages:
        in_file = from_files[over_smtp["Subject"]]
        assert parts(in_file) == parts(over_smtp)
        for header in ("To", "Date", "Message-ID", "X-Feedback-Record-Id"):
            assert in_file[header] == over_smtp[header]
    (p1_file,) = [message for subject, message in from_files.items() if subject.startswith("[P1]")]
    assert "&lt;b&gt;bold&lt;/b&gt; claim" in parts(p1_file)[1]


def test_ack_resolve_and_response_times(store: Store, routing: RoutingConfig) -> None:
    batch = pd.DataFrame([flagged("t1", "P1"), flagged("t2", "P1"), flagged("t3", "P2")])
    enqueue_alerts(batch, store, routing, now=T0)
    ids = dict(zip(list_alerts(store)["record_id"], list_alerts(store)["alert_id"], strict=True))
    assert ack_alert(store, ids["t1"], now=T0 + timedelta(hours=1)) == 1
    assert resolve_alert(store, ids["t1"], now=T0 + timedelta(hours=3), note="refunded") == 1
    assert resolve_alert(store, "t2", now=T0 + timedelta(hours=6)) == 1
    assert ack_alert(store, ids["t1"], now=T0 + timedelta(hours=9)) == 1
    assert ack_alert(store, "no-such-alert") == 0

    t1 = list_alerts(store).set_index("record_id").loc["t1"]
    assert pd.Timestamp(t1["acked_at"]) == pd.Timestamp(T0 + timedelta(hours=1))
    assert t1["resolution"] == "refunded"

    times = response_times(store).set_index(["lead", "priority"])
    p1 = times.loc[("lead@example.com", "P1")]
    assert (p1["alerts"], p1["acked"], p1["resolved"], p1["open"]) == (2, 2, 2, 0)
    assert p1["median_hours_to_ack"] == pytest.approx(3.5)
    assert p1["median_hours_to_resolve"] == pytest.approx(4.5)
    assert p1["resolved_within_sla"] == pytest.approx(0.5)
    p2 = times.loc[("lead@example.com", "P2")]
    assert (p2["alerts"], p2["resolved"], p2["open"]) == (1, 0, 1)


def test_cli_lists_acks_and_resolves(store: Store, routing: RoutingConfig) -> None:
    enqueue_alerts(pd.DataFrame([flagged("c1", "P1"), flagged("c2", "P3")]), store, routing, now=T0)
    alert = list_alerts(store, priority="P1")["alert_id"].iloc[0]
    db = store.url.removeprefix("duckdb:///")
    runner = CliRunner(env={"COLUMNS": "250"})

    listed = runner.invoke(app, ["alerts", "list", "--db", db, "--priority", "P1"])
    assert listed.exit_code == 0, listed.output
    assert alert in listed.output and "Alerts (1)" in listed.output

    assert runner.invoke(app, ["alerts", "ack", alert, "--db", db]).exit_code == 0
    resolved = runner.invoke(app, ["alerts", "resolve", alert, "--db", db, "--note", "called back"])
    assert resolved.exit_code == 0 and "Resolved 1 alert(s)" in resolved.output
    assert list_alerts(store, priority="P1")["resolved_at"].notna().all()

    unknown = runner.invoke(app, ["alerts", "ack", "0000000000000000", "--db", db])
    assert unknown.exit_code == 1 and "No alert with id" in unknown.output
    bad_status = runner.invoke(app, ["alerts", "list", "--db", db, "--status", "lost"])
    assert bad_status.exit_code != 0
