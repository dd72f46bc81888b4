"""The triage web page, served by uvicorn on 127.0.0.1 and driven with httpx, on both backends:
link sign-in, expired and forged links, CSRF, per-lead access, escaping, the sign-in rate limit,
the audit log and label corrections."""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.delivery.alerts import list_alerts
from pipelines.storage import Store, latest_labels, schema, triage_events
from tests._smtp import smtp_server
from tests._web import ADMIN, FA_LEAD, LEAD, SECRET, LiveWeb, live_web, seed, write_config


class Inbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 OK"


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    inbox = Inbox()
    with smtp_server(inbox, monkeypatch):
        yield inbox


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config")


@pytest.fixture
def alerts(store: Store, config: Path) -> dict[str, str]:
    return seed(store, config)


@pytest.fixture
def web(store: Store, config: Path, alerts: dict[str, str], mailbox: Inbox) -> Iterator[LiveWeb]:
    with live_web(store, config) as running:
        yield running


def client(web: LiveWeb) -> httpx.Client:
    return httpx.Client(base_url=web.url, follow_redirects=False, timeout=10)


def signed_in(web: LiveWeb, lead: str, alert_id: str = "", action: str = "inbox") -> httpx.Client:
    browser = client(web)
    opened = browser.get(web.link(lead, alert_id, action))
    assert opened.status_code == 303, opened.text
    return browser


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "every form carries a CSRF token"
    return match.group(1)


def acked(store: Store, alert_id: str) -> bool:
    frame = list_alerts(store).set_index("alert_id")
    return bool(pd_notna(frame.loc[alert_id, "acked_at"]))


def pd_notna(value: Any) -> bool:
    return value is not None and value == value


def test_mail_link_signs_in_and_opens_the_alert_with_its_analysis(
    web: LiveWeb, alerts: dict[str, str], store: Store
) -> None:
    browser = client(web)
    opened = browser.get(web.link(FA_LEAD, alerts["fa1"], "open"))
    assert opened.status_code == 303
    assert opened.headers["location"] == f"/alerts/{alerts['fa1']}"
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    page = browser.get(opened.headers["location"])
    assert page.status_code == 200
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert 'class="feedback" dir="auto"' in html
    assert '<mark class="neg">سفارشم دو هفته دیر رسید.</mark>' in html
    assert '<mark class="neg">بسته‌بندی خوب بود.</mark>' not in html
    assert "C-fa1" in html and "1250.0" in html
    assert "delivery_shipping: negative" in html and "product_quality: positive" in html
    assert "negative 0.91" in html and "Asia/Tehran" not in html and "+0330" in html
    events = triage_events(store, action="signin")
    assert [(e.actor, e.alert_id) for e in events] == [(FA_LEAD, alerts["fa1"])]

    inbox = browser.get("/inbox")
    assert inbox.status_code == 200
    assert alerts["fa1"] in inbox.text and alerts["en1"] not in inbox.text


def test_expired_forged_and_foreign_links_are_refused(web: LiveWeb, alerts: dict[str, str]) -> None:
    browser = client(web)
    old = datetime.now(UTC) - timedelta(days=15)
    expired = browser.get(web.link(LEAD, alerts["en1"], "open", at=old))
    assert expired.status_code == 403 and "E071" in expired.text
    assert "set-cookie" not in expired.headers

    token = web.link(LEAD, alerts["en1"], "open").removeprefix("/l/")
    payload, mac = token.split(".")
    other = web.link(FA_LEAD, alerts["en1"], "open").removeprefix("/l/").split(".")[0]
    for forged in (f"{other}.{mac}", f"{payload}.{mac[:-2]}AA", "garbage", f"{payload}."):
        refused = browser.get(f"/l/{forged}")
        assert refused.status_code == 403 and "E072" in refused.text, forged
        assert "set-cookie" not in refused.headers

    from pipelines.delivery.links import LinkSigner

    foreign = LinkSigner("another-secret-" + "x" * 40, web.url).token(
        LEAD, alerts["en1"], "open", datetime.now(UTC)
    )
    assert browser.get(f"/l/{foreign}").status_code == 403
    assert browser.get("/inbox").headers["location"] == "/login"
    stranger = web.signer.token("stranger@example.com", "", "inbox", datetime.now(UTC))
    assert browser.get(f"/l/{stranger}").status_code == 403


def test_state_changing_link_confirms_and_every_post_needs_the_csrf_token(
    web: LiveWeb, alerts: dict[str, str], store: Store
) -> None:
    browser = client(web)
    opened = browser.get(web.link(LEAD, alerts["en1"], "ack"))
    assert opened.headers["location"] == f"/alerts/{alerts['en1']}/confirm/ack"
    confirm = browser.get(opened.headers["location"])
    assert confirm.status_code == 200 and "Acknowledge this alert?" in confirm.text
    assert not acked(store, alerts["en1"]), "a GET (mail scanner prefetch) changes nothing"

    action = f"/alerts/{alerts['en1']}/ack"
    for token in ("", "0" * 32, "ü" * 32):
        refused = browser.post(action, data={"csrf": token})
        assert refused.status_code == 403 and "E074" in refused.text
    assert not acked(store, alerts["en1"])

    done = browser.post(action, data={"csrf": csrf_of(confirm), "note": "calling back"})
    assert done.status_code == 303
    assert acked(store, alerts["en1"])
    (event,) = triage_events(store, action="ack")
    assert (event.actor, event.alert_id, event.note) == (LEAD, alerts["en1"], "calling back")
    assert event.at is not None

    resolved = browser.post(
        f"/alerts/{alerts['en1']}/resolve", data={"csrf": csrf_of(confirm), "note": "refunded"}
    )
    assert resolved.status_code == 303
    page = browser.get(f"/alerts/{alerts['en1']}")
    assert "resolve</b> by lead@example.com" in page.text and "refunded" in page.text
    assert list_alerts(store).set_index("alert_id").loc[alerts["en1"], "resolution"] == "refunded"

    other = client(web)
    stolen = other.post(action, data={"csrf": csrf_of(confirm)})
    assert stolen.status_code == 303 and stolen.headers["location"] == "/login"


def test_a_lead_cannot_read_or_act_on_another_leads_alert(
    web: LiveWeb, alerts: dict[str, str], store: Store
) -> None:
    browser = signed_in(web, LEAD)
    page = browser.get("/inbox")
    token = csrf_of(page)
    foreign, unknown = alerts["fa1"], "0123456789abcdef"
    for alert_id in (foreign, unknown, "fa1", "2ca61c90b296ae1%27"):
        assert browser.get(f"/alerts/{alert_id}").status_code == 404
    assert browser.get(f"/alerts/{foreign}").text == browser.get(f"/alerts/{unknown}").text
    for action in ("ack", "resolve", "assign", "labels"):
        data = {"csrf": token, "assignee": LEAD, "sentiment": "positive"}
        assert browser.post(f"/alerts/{foreign}/{action}", data=data).status_code == 404
    assert browser.get(f"/alerts/{foreign}/confirm/ack").status_code == 404
    # A valid link of lead A for lead B's alert signs A in, but shows nothing of B's alert.
    crossed = client(web)
    opened = crossed.get(web.link(LEAD, foreign, "open"))
    assert crossed.get(opened.headers["location"]).status_code == 404
    assert not acked(store, foreign)
    assert store.count(schema.labels) == 0
    assert "سفارشم" not in page.text

    admin = signed_in(web, ADMIN)
    everything = admin.get("/inbox")
    assert foreign in everything.text and alerts["en1"] in everything.text
    assert admin.get(f"/alerts/{foreign}").status_code == 200


def test_assignment_shows_the_alert_to_the_assignee_and_corrections_land_in_labels(
    web: LiveWeb, alerts: dict[str, str], store: Store
) -> None:
    owner = signed_in(web, FA_LEAD)
    page = owner.get(f"/alerts/{alerts['fa1']}")
    token = csrf_of(page)
    stranger = owner.post(
        f"/alerts/{alerts['fa1']}/assign", data={"csrf": token, "assignee": "x@example.org"}
    )
    assert stranger.status_code == 400 and "E076" in stranger.text
    assigned = owner.post(
        f"/alerts/{alerts['fa1']}/assign",
        data={"csrf": token, "assignee": LEAD, "note": "speaks to the courier"},
    )
    assert assigned.status_code == 303
    assignee = signed_in(web, LEAD)
    assert alerts["fa1"] in assignee.get("/inbox?status=all").text
    assert assignee.get(f"/alerts/{alerts['fa1']}").status_code == 200

    corrected = owner.post(
        f"/alerts/{alerts['fa1']}/labels",
        data={
            "csrf": token,
            "sentiment": "neutral",
            "aspect:delivery_shipping": "neutral",
            "not_complaint": "on",
            "note": "a question, not a complaint",
        },
    )
    assert corrected.status_code == 303
    (label,) = latest_labels(store).to_dict(orient="records")
    assert (label["record_id"], label["sentiment"], label["not_complaint"]) == (
        "fa1",
        "neutral",
        True,
    )
    assert label["aspects"] == {"delivery_shipping": "neutral"}
    assert label["labelled_by"] == FA_LEAD and label["kind"] == "human"
    bad = owner.post(
        f"/alerts/{alerts['fa1']}/labels", data={"csrf": token, "sentiment": "furious"}
    )
    assert bad.status_code == 400 and "E090" in bad.text
    history = owner.get(f"/alerts/{alerts['fa1']}").text
    assert "assign</b> by fa-lead@example.com" in history and "speaks to the courier" in history
    assert "not a complaint" in history
    actions = [event.action for event in triage_events(store, alert_id=alerts["fa1"])]
    assert actions == ["assign", "label"]


def test_values_from_customers_and_topic_labels_are_escaped(
    store: Store, config: Path, mailbox: Inbox
) -> None:
    payload = "<script>alert(1)</script>"
    ids = seed(
        store,
        config,
        [
            {
                "record_id": "x1",
                "lang": "en",
                "text": f"Broken {payload} again. <img src=x onerror=alert(2)> fine.",
                "author": '"><svg onload=alert(3)>',
                "title": "<b>title</b>",
                "url": "javascript:alert(4)",
            }
        ],
    )
    now = datetime.now(UTC)
    store.insert_ignore(
        schema.record_topics,
        [
            {
                "record_id": "x1",
                "model_version": "t-1",
                "topic_id": 3,
                "similarity": 0.9,
                "run_id": "run-1",
                "created_at": now,
            }
        ],
    )
    store.insert_ignore(
        schema.topic_labels, [{"topic_id": 3, "label": "<iframe src=//evil>", "updated_at": now}]
    )
    with live_web(store, config) as web:
        browser = signed_in(web, LEAD)
        page = browser.get(f"/alerts/{ids['x1']}").text
        inbox = browser.get("/inbox").text
    for html in (page, inbox):
        assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;svg onload=alert(3)&gt;" in page
    assert "&lt;iframe src=//evil&gt;" in page and "<iframe" not in page
    assert "&lt;b&gt;title&lt;/b&gt;" in page
    assert "javascript:" not in page


def test_sign_in_page_mails_a_link_answers_alike_and_is_rate_limited(
    store: Store, config: Path, alerts: dict[str, str], mailbox: Inbox
) -> None:
    with live_web(store, config, login_per_address=2, login_per_client=4) as web:
        browser = client(web)
        form = browser.get("/login")
        token = csrf_of(form)
        assert browser.post("/login", data={"email": LEAD}).status_code == 403
        answers = [
            browser.post("/login", data={"email": address, "csrf": token})
            for address in (LEAD, "nobody@example.com")
        ]
        assert [answer.status_code for answer in answers] == [200, 200]
        assert answers[0].text == answers[1].text
        deadline = time.monotonic() + 10
        while not mailbox.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        (mail,) = mailbox.messages
        assert mail["To"] == LEAD
        link = re.search(r"(http://127\.0\.0\.1:\d+/l/\S+)", mail.get_content()).group(1)
        fresh = client(web)
        assert fresh.get(link).headers["location"] == "/inbox"
        assert fresh.get("/inbox").status_code == 200

        assert browser.post("/login", data={"email": LEAD, "csrf": token}).status_code == 200
        limited = browser.post("/login", data={"email": LEAD, "csrf": token})
        assert limited.status_code == 429 and "E075" in limited.text
        assert browser.post("/login", data={"email": "b@x.org", "csrf": token}).status_code == 200
        per_client = browser.post("/login", data={"email": "c@x.org", "csrf": token})
        assert per_client.status_code == 429, "four requests from one client per window"
        time.sleep(0.5)
        assert len(mailbox.messages) == 2, "unknown addresses and limited requests get no mail"
    assert store.count(schema.login_attempts) == 8
    assert [event.actor for event in triage_events(store, action="login_link")] == [LEAD, LEAD]


def test_cli_ack_and_resolve_share_the_audited_actions(
    store: Store, config: Path, alerts: dict[str, str]
) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    db = store.url.removeprefix("duckdb:///")
    acked_out = runner.invoke(app, ["alerts", "ack", alerts["en1"], "--db", db])
    assert acked_out.exit_code == 0, acked_out.output
    resolved = runner.invoke(
        app, ["alerts", "resolve", "fa1", "--db", db, "--note", "called the customer"]
    )
    assert resolved.exit_code == 0 and "Resolved 1 alert(s)" in resolved.output
    events = triage_events(store)
    assert [(e.action, e.alert_id, e.note) for e in events] == [
        ("ack", alerts["en1"], None),
        ("resolve", alerts["fa1"], "called the customer"),
    ]
    assert all(event.actor.startswith("cli:") for event in events)


def test_web_refuses_to_start_without_a_secret(config: Path, tmp_path: Path) -> None:
    runner = CliRunner(env={"FEEDBACK_WEB_SECRET": None, "FEEDBACK_WEB_SECRET_BLOCK": None})
    result = runner.invoke(app, ["web", "--config", str(config), "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 1
    assert "[E070]" in result.output and "export FEEDBACK_WEB_SECRET=" in result.output
    short = CliRunner(env={"FEEDBACK_WEB_SECRET": SECRET[:20]})
    result = short.invoke(app, ["web", "--config", str(config)])
    assert result.exit_code == 1 and "fewer than 32" in result.output
    # serve checks every configuration file first (it also runs the flows): a complete folder.
    served = runner.invoke(app, ["serve", "--config", str(DEFAULT_CONFIG_DIR)])
    assert served.exit_code == 1
    assert "[E070]" in served.output and "feedback serve --no-web" in served.output


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("users.yaml", "admin: [data-team@example.com]\n", "key 'admin'"),
        ("users.yaml", "admins: ['Data Team <dt@example.com>']\n", "not a plain email address"),
        ("routing.yaml", None, "key 'routes.0.lang'"),
        ("routing.yaml", "timezone", "unknown timezone"),
    ],
)
def test_web_configuration_fails_closed(
    config: Path, tmp_path: Path, file: str, text: str | None, expected: str
) -> None:
    from pipelines._errors import ConfigError
    from pipelines.web import load_web_settings

    routing = (config / "routing.yaml").read_text(encoding="utf-8")
    if text is None:
        text = routing.replace("lang: fa", "lang: de")
    elif text == "timezone":
        text = routing.replace("timezone: Asia/Tehran", "timezone: Mars/Olympus")
    (config / file).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_web_settings(
            config, str(tmp_path / "x.duckdb"), environ={"FEEDBACK_WEB_SECRET": SECRET}
        )
    assert expected in str(refused.value)


def test_a_link_from_an_outbox_mail_opens_that_alerts_page(
    store: Store,
    config: Path,
    alerts: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `make run` leaves: the alert stage writes .eml files whose links open the page."""
    from pipelines.delivery.alerts import AlertStage
    from pipelines.delivery.routing import load_routing
    from pipelines.stages import StageContext

    monkeypatch.delenv("FEEDBACK_SMTP_HOST", raising=False)
    monkeypatch.delenv("FEEDBACK_WEB_URL", raising=False)
    monkeypatch.setenv("FEEDBACK_WEB_SECRET", SECRET)
    outbox = tmp_path / "outbox"
    report = AlertStage(load_routing(config), outbox).deliver(StageContext(store, "run-1"))
    assert report.messages_sent == 2
    with live_web(store, config) as web:
        for path in sorted(outbox.glob("*.eml")):
            mail = email.message_from_bytes(path.read_bytes(), policy=default_policy)
            text = mail.get_body(preferencelist=("plain",)).get_content()
            opened = re.search(r"http://127\.0\.0\.1:8700(/l/\S+)", text)
            assert opened, "FEEDBACK_WEB_URL's default base, a signed link"
            browser = httpx.Client(base_url=web.url, follow_redirects=True, timeout=10)
            page = browser.get(opened.group(1))
            assert page.status_code == 200 and mail["X-Feedback-Alert-Id"] in page.text
            assert "Respond by" in page.text
